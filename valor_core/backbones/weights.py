"""Where a backbone's weights come from: `random`, an explicit local file, or ("" = default) the file torch.hub would
have downloaded, looked up in the torch hub cache (`torch.hub.get_dir()/checkpoints/`, i.e. $TORCH_HOME) -- never
downloaded. A missing file is a BackboneError naming the file and how to obtain it."""
from __future__ import annotations

import os
from typing import Optional

from valor_core.checkpoint_io import load_weights


class BackboneError(RuntimeError):
    """A backbone cannot be built: unknown name, missing or mismatching weights file (the message says why)."""


class MissingWeights(BackboneError, FileNotFoundError):
    """The weights file a backbone needs is not here."""


def hub_checkpoints_dir() -> str:
    """torch.hub's checkpoint cache, found without importing torch: $TORCH_HOME, else $XDG_CACHE_HOME/torch, else
    ~/.cache/torch; then hub/checkpoints."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return os.path.join(home, "hub", "checkpoints")


def resolve(name: str, spec: Optional[str], filename: str, url: str, flag: str) -> Optional[str]:
    """spec -> a local file path, or None for random init. "" / None = `filename` in the torch hub cache. `flag`: the
    option that names the file (`--vggish-weights`, or `--weights vggish=` whose value follows without a space)."""
    spec = (spec or "").strip()
    sep = "" if flag.endswith("=") else " "
    if spec in ("random", "none"):
        return None
    path = spec or os.path.join(hub_checkpoints_dir(), filename)
    if not os.path.isfile(path):
        raise MissingWeights(f"{name} weights {path!r} not found: download {url} on a machine with network access and "
                             f"copy it to {os.path.join(hub_checkpoints_dir(), filename)} (or pass {flag}{sep}PATH; "
                             f"`{flag}{sep}random` for random weights)")
    return path


def load_state(path: str) -> dict:
    """A plain state dict from a .pth file ({"state_dict": ...} / {"model": ...} wrappers and DataParallel `module.`
    prefixes accepted)."""
    state = load_weights(path, error=BackboneError)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise BackboneError(f"{path}: not a state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_into(model, path: str, name: str, rename=None) -> None:
    """Strictly load `path` (keys mapped by `rename`, a state dict -> state dict function) into `model`; a
    BackboneError naming what does not match."""
    state = load_state(path)
    try:
        result = model.load_state_dict(rename(state) if rename else state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise BackboneError(f"{name} weights {path} do not match the network: {str(err).splitlines()[-1].strip()}") \
            from None
    if result.missing_keys or result.unexpected_keys:
        raise BackboneError(f"{name} weights {path} do not match the network: missing {result.missing_keys[:4]}, "
                            f"unexpected {result.unexpected_keys[:4]}")
