"""How much a low-precision teacher changes its logits and the labels harvested from them (for bench/gpu.py).

    from valor_core.teachers.agreement import precision_agreement, compare_logits
    rec = precision_agreement("clip", "ViT-L-14:random", frames, TeacherConfig(device="cuda"))
    rec = compare_logits(fp32_logits, bf16_logits, "clip")

The harvested label of a segment-class cell is valor_core.labels.harvest_labels' rule, logit > the Table 6 threshold
of the class (theta^CLIP for CLIP, theta^CLAP for CLAP), AND the video-level weak label when one is given (None = every
class weak, i.e. the threshold test alone).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from valor_core.classes import CLAP_THRESHOLDS, CLIP_THRESHOLDS
from valor_core.config import TeacherConfig, replace
from valor_core.labels import harvest_labels
from valor_core.teachers.clap import load_clap_teacher
from valor_core.teachers.clip import load_clip_teacher

THRESHOLDS = {"clip": CLIP_THRESHOLDS, "clap": CLAP_THRESHOLDS}
LOADERS = {"clip": load_clip_teacher, "clap": load_clap_teacher}


def compare_logits(reference: np.ndarray, other: np.ndarray, kind: str = "clip",
                   weak: Optional[np.ndarray] = None, thresholds: Optional[np.ndarray] = None) -> dict:
    """Reference (fp32) vs other (e.g. bf16) logits of the same items, (..., 25) each.

    kind: "clip" | "clap" picks the Table 6 thresholds (or give `thresholds`, (25,) or a scalar); weak: (n, 25)
    video-level labels for (n, T, 25) logits, None = all classes weak. NaN rows (videos without input) are dropped.
    Returns {"items": rows compared, "cells": rows x 25, "max_abs_diff", "mean_abs_diff", "top1_agreement" (fraction
    of rows with the same argmax class), "label_agreement" (fraction of cells whose harvested label is equal),
    "labels_on" (fraction of reference cells harvested as positive)}."""
    a = np.asarray(reference, np.float32)
    b = np.asarray(other, np.float32)
    if a.shape != b.shape or a.shape[-1] != 25:
        raise ValueError(f"logits must have equal shapes (..., 25), got {a.shape} and {b.shape}")
    th = THRESHOLDS[kind] if thresholds is None else np.asarray(thresholds, np.float32)
    if a.ndim == 3:
        w = np.ones((a.shape[0], 25), np.uint8) if weak is None else np.asarray(weak, np.uint8)
    else:
        a, b = a.reshape(-1, 25)[:, None], b.reshape(-1, 25)[:, None]
        w = np.ones((a.shape[0], 25), np.uint8)
    ok = np.isfinite(a).all(axis=-1) & np.isfinite(b).all(axis=-1)  # (n, T)
    la = harvest_labels(np.nan_to_num(a), w, th)
    lb = harvest_labels(np.nan_to_num(b), w, th)
    fa, fb = a[ok], b[ok]  # (rows, 25)
    if not len(fa):
        raise ValueError("no finite logit rows to compare")
    return {"items": int(len(fa)), "cells": int(fa.size),
            "max_abs_diff": float(np.abs(fa - fb).max()), "mean_abs_diff": float(np.abs(fa - fb).mean()),
            "top1_agreement": float((fa.argmax(-1) == fb.argmax(-1)).mean()),
            "label_agreement": float((la[ok] == lb[ok]).mean()), "labels_on": float(la[ok].mean())}


def precision_agreement(kind: str, spec: str, inputs, cfg: TeacherConfig = TeacherConfig(), low: str = "bf16",
                        weak: Optional[np.ndarray] = None, seed: int = 0) -> dict:
    """Build the `kind` ("clip" | "clap") teacher of `spec` twice on cfg.device -- fp32 and `low` precision, the
    same weights (torch seeded with `seed` before each build, so `MODEL:random` specs agree too) -- run
    `segment_logits(inputs)` on both and `compare_logits` them. inputs: what segment_logits takes (per-video (T, H, W,
    3) uint8 frames for CLIP, (T, L) float audio for CLAP, or DecodedVideo objects). Adds "reference" and "low"
    (the precisions) to the record."""
    import torch

    if kind not in THRESHOLDS:
        raise ValueError(f"kind {kind!r}: choose clip or clap")
    load = LOADERS[kind]
    logits = {}
    for p in ("fp32", low):
        torch.manual_seed(seed)
        teacher = load(spec, replace(cfg, precision=p))
        logits[p] = teacher.segment_logits(inputs)[0]
        del teacher
    rec = compare_logits(logits["fp32"], logits[low], kind, weak)
    rec.update(reference="fp32", low=low)
    return rec
