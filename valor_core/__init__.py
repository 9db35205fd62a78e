"""valor_core: the science of VALOR (Lai, Chen, Wang, NeurIPS 2023) as a plain PyTorch/NumPy library.

Never imports ray: the Ray workflows in `workflows/` and `tuning/` pass arrays and dataclasses in.
"""
from valor_core.classes import CLASSES, NUM_CLASSES, NUM_SEGMENTS

__version__ = "0.1.0"
__all__ = ["CLASSES", "NUM_CLASSES", "NUM_SEGMENTS", "__version__"]
