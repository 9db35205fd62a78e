"""Device, precision, batch size and host-to-device transfer policy shared by the teachers and the paper's backbones.

Precision (`TeacherConfig.precision`, a backbone's `precision` option):
- "auto": bf16 on CUDA, fp32 on CPU.  "fp32" / "bf16" / "fp16": as named, on any device (bf16 on CPU is the same code
  path as on CUDA, so CI tests it).
- Low precision means the tower's *weights* are cast (no autocast: autocast re-casts every fp32 weight at every
  matmul and disables nn.MultiheadAttention's fused fast path). What stays fp32:
  * normalisation layers (LayerNorm, BatchNorm, GroupNorm): their parameters and running statistics stay fp32.
    BatchNorm takes bf16 activations with fp32 parameters (CUDA and CPU have mixed-dtype kernels; the output is
    bf16). LayerNorm and GroupNorm become fp32 islands (below): CUDA's kernels refuse a bf16 input with fp32
    parameters ("expected scalar type BFloat16 but found Float", pytorch#138128) although CPU's accept it;
  * input pre-processing: uint8 -> [0, 1] -> mean/std (CLIP, ResNet, R(2+1)D), the CLAP int16 round trip, STFT, mel
    filterbank and dB (fp32 on the device; cuFFT has no bf16), VGGish's log-mel (float64, as before);
  * modules named as fp32 "islands" (`cast_tower(keep_fp32=...)`): computed in fp32, output cast to the tower dtype
    (CLAP without fusion: the tower's own spectrogram/log-mel front end);
  * softmax and attention accumulate in fp32 inside the kernels (SDPA / fused MHA);
  * the outputs: embeddings are cast to fp32, L2-normalised and scored against the fp32 text embeddings in fp32.
  The text towers run in fp32 (their 25 caption embeddings are computed once per teacher and cached).

Batch size (`TeacherConfig.batch_size`, backbones' `batch_size`): 0 = auto -- 64 on CPU; on CUDA the largest power of
two whose estimated activation memory (`per_item_mib` per item, a conservative per-model constant) fits in half of
the free device memory (or of what the process's memory-fraction cap leaves, when it is lower), at least 64 and at
most the model's cap (CLIP 512 frames, CLAP 256 segments).

Transfers: `upload` copies a host array to the device once per batch (pinned memory, non_blocking=True on CUDA);
the model code then works on device tensors and returns one host copy at the end (one host sync per batch).
"""
from __future__ import annotations

import functools
import warnings
from typing import Iterable, Optional

import numpy as np

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CPU_BATCH = 64
NORMS = ("LayerNorm", "BatchNorm", "GroupNorm")  # class-name stems kept with fp32 parameters


def resolve_device(device: Optional[str] = "auto"):
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device) -> str:
    """"auto" -> "bf16" on CUDA, "fp32" elsewhere; an explicit value is kept (bf16 runs on CPU too)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if getattr(device, "type", str(device)) == "cuda" else "fp32"
    return precision


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def auto_batch_size(requested: int, device, per_item_mib: float, cap: int) -> int:
    """requested >= 1 is kept; 0 = auto (module docstring): 64 on CPU, by free memory on CUDA."""
    requested = int(requested)
    if requested < 0:
        raise ValueError(f"batch_size {requested}: must be >= 1, or 0 for automatic")
    if requested:
        return requested
    if getattr(device, "type", "cpu") != "cuda":
        return CPU_BATCH
    import torch

    free, total = torch.cuda.mem_get_info(device)
    # a process capped at a share of the device (workflows.extract: actors holding a fraction of a GPU) sizes
    # from what its cap leaves
    capped = total * torch.cuda.get_per_process_memory_fraction(device) - torch.cuda.memory_reserved(device)
    fits = int(max(0.0, min(free, capped)) * 0.5 / (per_item_mib * 2 ** 20))
    size = CPU_BATCH
    while size * 2 <= min(fits, cap):
        size *= 2
    return size


class _Fp32Island:
    """Mixin: compute the wrapped module in fp32 (its parameters are fp32) and hand the tower dtype on."""

    island_dtype = None

    def forward(self, *args, **kwargs):
        def up(a):
            return a.float() if hasattr(a, "is_floating_point") and a.is_floating_point() else a

        y = super().forward(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})
        return y.to(self.island_dtype) if self.island_dtype is not None else y


@functools.lru_cache(maxsize=None)
def _island_class(cls):
    return type(f"Fp32{cls.__name__}", (_Fp32Island, cls), {})


def is_norm(module) -> bool:
    return any(stem in type(module).__name__ for stem in NORMS)


def cast_tower(module, precision: str, keep_fp32: Iterable = ()):
    """Cast `module`'s weights to `precision` in place (module docstring): norm layers keep fp32 parameters, layer
    and group norms and the `keep_fp32` submodules become fp32 islands. fp32 is a no-op. Returns the module."""
    if precision == "fp32":
        return module
    dtype = torch_dtype(precision)
    module.to(dtype)
    norms = [m for m in module.modules() if is_norm(m)]
    for m in norms:
        m.float()
    islands = [m for m in norms if "BatchNorm" not in type(m).__name__]  # no mixed-dtype kernel on CUDA
    for m in islands + list(keep_fp32):
        m.float()
        if not isinstance(m, _Fp32Island):
            m.__class__ = _island_class(type(m))
        m.island_dtype = dtype
    return module


def maybe_compile(module, enabled: bool):
    """torch.compile(module) when enabled (compiled lazily, at the first forward), else the module itself."""
    if not enabled:
        return module
    import torch

    return torch.compile(module)


def host_stack(arrays, device):
    """Concatenate same-shaped host arrays along axis 0 into one host tensor, written once into page-locked memory
    when `device` is CUDA (so `upload` makes no second staging copy); a plain CPU tensor otherwise."""
    import torch

    first = np.asarray(arrays[0])
    dtype = torch.from_numpy(np.empty(0, first.dtype)).dtype
    total = sum(len(a) for a in arrays)
    out = torch.empty((total, *first.shape[1:]), dtype=dtype,
                      pin_memory=getattr(device, "type", str(device)) == "cuda")
    view = out.numpy()
    pos = 0
    for a in arrays:
        view[pos:pos + len(a)] = a
        pos += len(a)
    return out


def upload(array, device):
    """Host array (or CPU tensor) -> tensor on `device` in its own dtype (uint8 frames travel as uint8), one copy:
    pinned memory + non_blocking=True on CUDA."""
    import torch

    if isinstance(array, torch.Tensor):
        t = array
    else:
        a = np.ascontiguousarray(array)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a read-only buffer (Ray batches): never written through, only read
            t = torch.from_numpy(a)
    if getattr(device, "type", str(device)) == "cuda" and t.device.type == "cpu":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)
