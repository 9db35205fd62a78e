"""The pictures of a training run (matplotlib Agg), logged to MLflow by workflows/train_ray.py:

    classwise_f_<split>.png    class-wise segment-level F per modality (VALOR Fig. 6/7)
    timelines_<split>.png      parsing timelines of the richest GT videos, GT vs prediction (VALOR Fig. 5)
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from valor_core.classes import CLASSES


def classwise_f(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-class segment-level F in percent (25,), TP/FP/FN pooled over the split's videos and segments; NaN for a
    class absent from both prediction and GT."""
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    tp = (p & g).sum(axis=(0, 1)).astype(float)
    fp = (p & ~g).sum(axis=(0, 1)).astype(float)
    fn = (~p & g).sum(axis=(0, 1)).astype(float)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 100.0 * 2 * tp / denom, np.nan)


def plot_classwise(pred_audio, pred_visual, gt_audio, gt_visual, path: str, title: str = "") -> str:
    """Class-wise segment-level F-score bars, one panel per modality (VALOR Fig. 6/7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    x = np.arange(len(CLASSES))
    for ax, name, pred, gt, color in ((axes[0], "audio", pred_audio, gt_audio, "tab:blue"),
                                      (axes[1], "visual", pred_visual, gt_visual, "tab:orange")):
        f = classwise_f(pred, gt)
        ax.bar(x, np.nan_to_num(f), color=color)
        ax.set_ylabel(f"{name} F (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{name}: class-wise segment-level F (mean {np.nanmean(f):.1f})", fontsize=10)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(CLASSES, rotation=70, ha="right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def pick_timeline_videos(gt_audio: np.ndarray, gt_visual: np.ndarray, k: int = 4) -> list[int]:
    """k videos with the richest GT (most active audio+visual segment-classes, some non-aligned), deterministic."""
    a, v = np.asarray(gt_audio).astype(bool), np.asarray(gt_visual).astype(bool)
    richness = a.sum(axis=(1, 2)) + v.sum(axis=(1, 2)) + 2 * (a ^ v).sum(axis=(1, 2))
    return [int(i) for i in np.argsort(-richness, kind="stable")[:k]]


def plot_timelines(video_ids: Sequence[str], pred_audio, pred_visual, gt_audio, gt_visual, path: str,
                   picks: Optional[Iterable[int]] = None, title: str = "") -> str:
    """Parsing timelines (VALOR Fig. 5): per video and modality, GT (upper bar) vs prediction (lower bar) per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = list(picks) if picks is not None else pick_timeline_videos(gt_audio, gt_visual)
    fig, axes = plt.subplots(len(picks), 2, figsize=(12, 2.2 * len(picks) + 0.6), squeeze=False)
    for row, i in enumerate(picks):
        for col, (name, pred, gt) in enumerate((("audio", pred_audio, gt_audio), ("visual", pred_visual, gt_visual))):
            ax = axes[row][col]
            p, g = np.asarray(pred[i]).astype(bool), np.asarray(gt[i]).astype(bool)  # (10, 25)
            classes = [c for c in range(p.shape[1]) if p[:, c].any() or g[:, c].any()]
            for y, c in enumerate(classes):
                for t in np.flatnonzero(g[:, c]):
                    ax.broken_barh([(t, 1)], (y + 0.52, 0.4), color="tab:green")
                for t in np.flatnonzero(p[:, c]):
                    ax.broken_barh([(t, 1)], (y + 0.08, 0.4), color="tab:red", alpha=0.8)
            ax.set_xlim(0, p.shape[0])
            ax.set_ylim(0, max(len(classes), 1))
            ax.set_yticks(np.arange(len(classes)) + 0.5)
            ax.set_yticklabels([CLASSES[c] for c in classes], fontsize=7)
            ax.set_xticks(range(p.shape[0] + 1))
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{video_ids[i]} - {name} (green GT, red prediction)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
