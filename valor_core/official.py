"""The official checkpoints in valor's HAN: a state dict saved by the 2020 or the VALOR training script, mapped key by
key onto `valor_core.han.HAN` with every tensor accounted for.

    model, cfg = load_official(PATH, "han")          # AVVP-ECCV20 main_avvp.py: torch.save(model.state_dict(), ...)
    model, cfg = load_official(PATH, "valor++")      # Franklin905/VALOR main_avvp.py: .../checkpoint_best.pt

Both official networks are a class `MMIL_Net` with the same names for what they share (VALOR kept the 2020 ones), so
the key table is one; the architectures differ in what their state dict holds beside it that the forward never reads,
ignored by name (`Layout.unused`). An official key with no place in valor's HAN, a valor tensor no official key fills,
and a shape that differs are errors naming the key and the shapes. The model config is the preset's
(`valor_core.presets`), so a checkpoint trained with other sizes is refused by its shapes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import Tensor

from valor_core.checkpoint_io import load_weights
from valor_core.config import TrainConfig
from valor_core.han import HAN
from valor_core.presets import get_preset

# (official prefix, valor prefix); "{i}" is a layer index; first match wins (so the attention renames come first).
# MultiheadAttention and Linear/LayerNorm keep their own parameter names (in_proj_weight, out_proj.bias, weight, ...).
KEYS: tuple[tuple[str, str], ...] = (
    ("fc_a.", "fc_audio."),  # Linear(Da, d)
    ("fc_v.", "fc_frames."),  # Linear(Df, d): ResNet-152 2048 | CLIP 768
    ("fc_st.", "fc_clips."),  # Linear(512, d): R(2+1)D-18
    ("fc_fusion.", "fc_fusion."),  # Linear(2d, d)
    ("fc_prob.", "fc_prob."),  # Linear(d, 25): segment logits
    ("fc_frame_att.", "fc_frame_att."),  # Linear(d, 25): temporal attention (Eq. 3)
    ("fc_av_att.", "fc_av_att."),  # Linear(d, 25): modality attention (Eq. 4)
    ("hat_encoder.layers.{i}.cm_attn.", "layers.{i}.cross_attn."),  # cross-modal attention (Eq. 1)
    ("hat_encoder.layers.{i}.self_attn.", "layers.{i}.self_attn."),
    ("hat_encoder.layers.{i}.", "layers.{i}."),  # linear1, linear2, norm1, norm2
)


@dataclass(frozen=True)
class Layout:
    """One official architecture's state dict: where it comes from and what it holds that the forward never reads."""

    source: str
    unused: tuple[str, ...]  # official key prefixes, ignored


HAN_2020 = Layout(
    source="YapengTian/AVVP-ECCV20 nets/net_audiovisual.py MMIL_Net",
    # built in __init__, never called in forward; hat_encoder's own norm1/norm2 are skipped (Encoder norm=None)
    unused=("audio_encoder.", "visual_encoder.", "cmt_encoder.", "hat_encoder.norm1.", "hat_encoder.norm2."),
)
VALOR = Layout(
    source="Franklin905/VALOR main_network.py MMIL_Net",
    unused=("hat_encoder.final_norm_a.", "hat_encoder.final_norm_v."),  # applied only with norm_where=pre_norm
)
LAYOUTS: dict[str, Layout] = {"han": HAN_2020, "valor": VALOR, "valor+": VALOR, "valor++": VALOR}


class OfficialCheckpointError(ValueError):
    """An official state dict that does not fit the preset's HAN; the message names the keys and shapes."""


def _rename(key: str, pairs) -> Optional[str]:
    for src, dst in pairs:
        m = re.match(re.escape(src).replace(re.escape("{i}"), r"(?P<i>\d+)"), key)
        if m:
            return dst.format(**m.groupdict()) + key[m.end():]
    return None


def official_name(valor_key: str) -> Optional[str]:
    """The official key that fills `valor_key` (the table read backwards)."""
    return _rename(valor_key, [(dst, src) for src, dst in KEYS])


def _shape(t) -> tuple[int, ...]:
    return tuple(getattr(t, "shape", ()))


def convert(state: Mapping[str, Tensor], layout: Layout, expected: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """valor's state dict (keys and shapes of `expected`) from the official `state`; OfficialCheckpointError lists
    every key left over, missing or of the wrong shape."""
    out: dict[str, Tensor] = {}
    placed: set[str] = set()
    problems: list[str] = []
    for key in sorted(state):
        if key.startswith(layout.unused):
            continue
        target = _rename(key, KEYS)
        if target is None or target not in expected:
            problems.append(f"unknown key {key!r} {_shape(state[key])}" + (f" (-> {target!r})" if target else ""))
            continue
        placed.add(target)
        if _shape(state[key]) != _shape(expected[target]):
            problems.append(f"key {key!r}: shape {_shape(state[key])} in the checkpoint, valor's {target!r} needs "
                            f"{_shape(expected[target])}")
        else:
            out[target] = state[key]
    problems += [f"missing key {official_name(k)!r} {_shape(expected[k])} (valor's {k!r})"
                 for k in expected if k not in placed]
    if problems:
        raise OfficialCheckpointError(f"not a {layout.source} state dict for this preset: " + "; ".join(problems))
    return out


def load_official_state(model: HAN, state: Mapping[str, Tensor], preset: str) -> HAN:
    """Load the official `state` of `preset`'s architecture into `model` (strict); returns it in eval mode."""
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise OfficialCheckpointError("an official checkpoint is a plain state_dict (a mapping of names to tensors), "
                                      f"got {type(state).__name__}")
    model.load_state_dict(convert(state, LAYOUTS[preset], model.state_dict()), strict=True)
    return model.eval()


def load_official(path: str, preset: str) -> tuple[HAN, TrainConfig]:
    """(preset's HAN with the official weights of `path`, in eval mode; the preset's TrainConfig)."""
    if preset not in LAYOUTS:
        raise OfficialCheckpointError(f"no official checkpoint layout for preset {preset!r}; one of "
                                      f"{', '.join(LAYOUTS)}")
    cfg = get_preset(preset)
    try:
        state = load_weights(path, error=OfficialCheckpointError)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise OfficialCheckpointError(f"{path}: cannot read a torch state dict ({type(err).__name__}: {err})") from None
    return load_official_state(HAN(cfg.model), state, preset), cfg
