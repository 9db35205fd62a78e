"""VALOR label elaboration (Lai et al. 2023, section 3.2): harvest dense per-modality labels from teacher logits.

    y_hat[t, c] = (z[t, c] > theta_c) AND y[c]

z = CLIP logits for the visual modality, CLAP logits for audio (100 x cosine / CLAP logit scale x cosine); theta =
Table 6 class-dependent thresholds (strict `>`), or one unified threshold for all classes (Table 8 ablation); y = the
video's weak label. `filter_by_weak=False` is the no-filter ablation (the AND is dropped).
"""
from __future__ import annotations

from typing import Literal, Union

import numpy as np

from valor_core.classes import CLAP_THRESHOLDS, CLIP_THRESHOLDS, NUM_CLASSES
from valor_core.config import LabelConfig

__all__ = ["harvest_labels", "thresholds_for"]

Modality = Literal["audio", "visual"]


def thresholds_for(labels_cfg: LabelConfig, modality: Modality) -> np.ndarray:
    """The (25,) float32 thresholds a LabelConfig selects for a modality: visual = CLIP, audio = CLAP.

    Precedence: unified_* (one value for all classes) > explicit per-class tuple > Table 6 defaults."""
    if modality == "visual":
        unified, per_class, default = labels_cfg.unified_clip, labels_cfg.clip_thresholds, CLIP_THRESHOLDS
    elif modality == "audio":
        unified, per_class, default = labels_cfg.unified_clap, labels_cfg.clap_thresholds, CLAP_THRESHOLDS
    else:
        raise ValueError(f"modality must be 'audio' or 'visual', got {modality!r}")
    if unified is not None:
        return np.full(NUM_CLASSES, float(unified), np.float32)
    if per_class is not None:
        th = np.asarray(per_class, np.float32)
        if th.shape != (NUM_CLASSES,):
            raise ValueError(f"{modality} thresholds need {NUM_CLASSES} values, got {th.shape}")
        return th
    return default.astype(np.float32).copy()


def harvest_labels(logits: np.ndarray, weak: np.ndarray, thresholds: Union[np.ndarray, float],
                   filter_by_weak: bool = True) -> np.ndarray:
    """Harvested labels (same shape as `logits`, uint8) = (logits > thresholds) AND weak.

    logits: (N, T, C) or (T, C) teacher logits; weak: (N, C) or (C,) 0/1 video labels (matching the batch shape);
    thresholds: (C,) per-class values or a scalar (unified). With filter_by_weak=False the weak label is ignored."""
    z = np.asarray(logits)
    if z.ndim not in (2, 3):
        raise ValueError(f"logits must be (N, T, C) or (T, C), got shape {z.shape}")
    c = z.shape[-1]
    th = np.asarray(thresholds, dtype=np.float64)
    if th.ndim == 0:
        th = np.full(c, float(th))
    if th.shape != (c,):
        raise ValueError(f"thresholds must be a scalar or ({c},), got shape {th.shape}")
    out = z > th  # broadcast over the class axis
    if filter_by_weak:
        y = np.asarray(weak)
        expected = (z.shape[0], c) if z.ndim == 3 else (c,)
        if y.shape != expected:
            raise ValueError(f"weak labels must have shape {expected} for logits {z.shape}, got {y.shape}")
        out &= (y != 0)[..., None, :] if z.ndim == 3 else (y != 0)[None, :]
    return out.astype(np.uint8)


def modality_agnostic(audio: np.ndarray, visual: np.ndarray) -> np.ndarray:
    """VALOR Table 2's modality-agnostic labels: a segment's event without its modality, y_t^a OR y_t^v, given to both
    modalities (uint8, the shape of the inputs)."""
    return ((np.asarray(audio) > 0) | (np.asarray(visual) > 0)).astype(np.uint8)
