"""The AVE metric and VALOR's AVE inference rule (VALOR appendix F; Tian et al. 2018).

Segment accuracy: the fraction of all (video, segment) pairs whose predicted class -- one of the C events or
background -- equals the GT class, in percent (AVE-ECCV18 `compute_acc`: correct segments / (N x 10)).

Inference ("we combine the audio and visual prediction to obtain the audio-visual event", section 4.5/appendix F; the
paper gives no formula): per segment the two modalities' C + 1 logits are averaged -- the modality mean of Eq. 11 taken
per segment instead of over time -- and the argmax over C + 1 classes is the segment's class (`rule="mean"`).
`rule="product"` instead takes the argmax of sigmoid(z^a) x sigmoid(z^v), the AVVP audio-visual rule (P_a x P_v).
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Rule = Literal["mean", "product"]


def segment_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    """pred, gt: (N, T) integer classes (background included) -> accuracy in percent."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"predictions {pred.shape} and GT {gt.shape} must both be (N, T)")
    if gt.size == 0:
        raise ValueError("no segments to score")
    return float(100.0 * np.count_nonzero(pred == gt) / gt.size)


def combine(segment_logits: np.ndarray, rule: Rule = "mean") -> np.ndarray:
    """(N, T, 2, C+1) audio/visual segment logits -> (N, T) int64 audio-visual class per segment (module doc)."""
    z = np.asarray(segment_logits, dtype=np.float64)
    if z.ndim != 4 or z.shape[2] != 2:
        raise ValueError(f"segment logits must be (N, T, 2, C+1), got {z.shape}")
    if rule == "mean":
        score = z.mean(axis=2)
    elif rule == "product":
        score = -np.logaddexp(0.0, -z).sum(axis=2)  # log sigmoid(z_a) + log sigmoid(z_v), monotone in the product
    else:
        raise ValueError(f"unknown combine rule {rule!r}; expected mean or product")
    return score.argmax(axis=-1).astype(np.int64)
