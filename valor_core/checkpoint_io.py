"""One owner for reading a torch checkpoint file: always `torch.load(weights_only=True)`, never unpickling code.

A file that needs more than tensors and plain containers (a pickled class or function: unpickling it would run code)
is refused with ONE line naming the file and the globals it holds, raised as the caller's error type. Formats that
hold NumPy arrays or scalars (laion_clap's training checkpoints) are read with exactly those NumPy globals
allow-listed (`torch.serialization.safe_globals`), under both the NumPy 1 (`numpy.core`) and NumPy 2 (`numpy._core`)
names a pickle may carry.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable


class UnsafeCheckpoint(ValueError):
    """A checkpoint file that holds more than weights (or is no torch file); the message names it and what it held."""


def numpy_globals() -> list:
    """The NumPy globals an ndarray / NumPy scalar pickle refers to, as `safe_globals` entries ((object, name) pairs
    for the names the object does not carry itself)."""
    import numpy as np

    multiarray = np._core.multiarray if int(np.__version__.split(".")[0]) >= 2 else np.core.multiarray
    dtypes = [getattr(np.dtypes, n) for n in getattr(np.dtypes, "__all__", ())]
    out: list = [np.ndarray, np.dtype, *dtypes]
    for fn in (multiarray._reconstruct, multiarray.scalar):
        out += [(fn, f"{prefix}.multiarray.{fn.__name__}") for prefix in ("numpy.core", "numpy._core")]
    return out


def _held_globals(path: str) -> list[str]:
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - a legacy (non-zip) or broken file: the unpickler's own words are used instead
        return []


def _gist(err: BaseException) -> str:
    """The unpickler's reason in one line (torch's message spans many lines of advice)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Unsupported", "Trying to", "Can only")) or "not an allowed global" in ln:
            return ln.rstrip(".")
    return lines[0].rstrip(".") if lines else type(err).__name__


def load_weights(path: str, *, error: Callable[[str], BaseException] = UnsafeCheckpoint, numpy: bool = False,
                 map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` (with `numpy`, NumPy arrays/scalars allowed too); a file that needs more
    raises `error("PATH: ... holds X ...")`, one line."""
    import torch

    allowed = numpy_globals() if numpy else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as err:
        held = [g for g in _held_globals(path) if g not in {_name(a) for a in allowed}]
        what = f"it holds {', '.join(held)}" if held else _gist(err)
        raise error(f"{path}: refused: {what}; valor loads only tensors and plain containers (torch.load "
                    f"weights_only=True), as unpickling anything else could run code. Re-save it as a plain "
                    f"state_dict of tensors") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for a file that is no torch checkpoint
        raise error(f"{path}: not a torch checkpoint ({type(err).__name__}: {_gist(err)})") from None


def _name(entry) -> str:
    return entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
