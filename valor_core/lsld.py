"""LSLD: language-guided segment-level label denoising (Fan, Wu, Du, Lin, NeurIPS 2023; code fyyCS/LSLD main.py).

    captions(weak)             every non-empty subset of a video's k <= max_labels weak labels, plus "other" (Sec. 3.2)
    best_captions(seg, text)   the most similar caption per segment, cosine of L2-normalised embeddings (Eq. 3)
    remove_labels(...)         a segment keeps the labels of its best caption's subset; "other" removes all (Sec. 3.3)
    reweight(labels, sim)      visual dynamic re-weighting of unreliable segments into soft labels (Eq. 4)
    lsld_loss(out, ...)        3 BCE(p^a_t, y~^a_t) + 1 BCE(p^v_t, y^^v_t) + 1 BCE(p, y) (Eq. 2 with segment labels)

NumPy only, except `lsld_loss` (torch, imported when called). Where paper and code differ the code's behaviour is the
default and the paper's a named option (LSLDConfig.rule): the code compares strictly (s < Max_w/o, s > Min_w) and keeps
the hard label when alpha*s or beta*s falls outside (0, 1); the paper writes <=, >= and Min(1, .) (clipped to [0, 1]).
"""
from __future__ import annotations

from itertools import combinations
from typing import Optional, Sequence

import numpy as np

from valor_core.classes import CLASSES, NUM_CLASSES
from valor_core.config import LSLDConfig

# the code's natural phrases for the 25 classes (fyyCS/LSLD main.py refineLabel `categories`), Table 6 order
PHRASES: tuple[str, ...] = (
    "Speeching", "Car", "Cheering", "Dog", "Cat", "Frying food", "playing basketball", "Fire alarm ringing", "Chainsaw",
    "playing the Cello", "playing the Banjo", "Singing", "Chicken", "playing the Violin", "Vacuum cleaner",
    "Baby laughter", "playing the Accordion", "Lawn-mower", "Motorcycle", "Helicopter", "playing the guitar",
    "Telephone bell ringing", "Baby cry", "Blender", "Clapping")
OTHER = "other"
CLASS_TEXTS: tuple[str, ...] = CLASSES  # re-weighting compares segments with the raw class names (getVisualCleanLabel)


def subsets(weak: np.ndarray, max_labels: int = 3) -> list[tuple[int, ...]]:
    """The caption subsets of one video (C,) 0/1: all non-empty subsets of its labels, largest first, then () =
    "other" (Sec. 3.2); [] when it has no label or more than max_labels (its labels are then kept as they are)."""
    labels = tuple(int(c) for c in np.flatnonzero(np.asarray(weak) > 0))
    if not labels or len(labels) > max_labels:
        return []
    return [s for k in range(len(labels), 0, -1) for s in combinations(labels, k)] + [()]


def caption(subset: Sequence[int], prefix: str = "", phrases: Sequence[str] = PHRASES) -> str:
    """The prompt of one subset: "A and B" (or "other" for the empty subset), after `prefix` (CLAP: "This is a sound
    of ")."""
    return prefix + (" and ".join(phrases[c] for c in subset) if subset else OTHER)


def best_captions(segments: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """(T,) index of the most similar caption per segment: argmax_n of cos(f_t^n, f_v^t) (Eq. 3; the softmax over
    prompts does not change the argmax). segments (T, d), texts (N, d), any norm."""
    seg = _normalise(segments)
    txt = _normalise(texts)
    return np.argmax(txt @ seg.T, axis=0)


def remove_labels(weak: np.ndarray, caps: list[tuple[int, ...]], best: np.ndarray, segments: int) -> np.ndarray:
    """(T, C) uint8 denoised labels y~_t (Sec. 3.3): segment t keeps the classes of caps[best[t]]; "other" keeps none.
    Without captions (no label, or too many) every segment keeps the weak labels."""
    out = np.repeat((np.asarray(weak) > 0).astype(np.uint8)[None], segments, axis=0)
    if not caps:
        return out
    out[:] = 0
    for t in range(segments):
        out[t, list(caps[int(best[t])])] = 1
    return out


def denoise(weak: np.ndarray, emb: np.ndarray, encode_text, prefix: str = "", max_labels: int = 3,
            ok: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, T, C) uint8 y~ for N videos: weak (N, C), emb (N, T, d) segment embeddings of one teacher, encode_text(list
    of prompts) -> (n, d) that teacher's text embeddings. Rows with ok False (no teacher output) keep the weak
    labels. Prompts are encoded once for the whole set."""
    weak = np.asarray(weak)
    n, t = emb.shape[:2]
    caps = [subsets(weak[i], max_labels) for i in range(n)]
    prompts = sorted({caption(s, prefix) for c in caps for s in c})
    index = {p: i for i, p in enumerate(prompts)}
    text = np.asarray(encode_text(prompts), np.float32) if prompts else np.zeros((0, emb.shape[-1]), np.float32)
    if text.shape[-1] != emb.shape[-1] and prompts:
        raise ValueError(f"text embeddings have width {text.shape[-1]} but the segment embeddings {emb.shape[-1]}: "
                         "the features were made with another teacher")
    out = np.zeros((n, t, NUM_CLASSES), np.uint8)
    for i in range(n):
        usable = caps[i] and (ok is None or ok[i])
        rows = [index[caption(s, prefix)] for s in caps[i]] if usable else []
        best = best_captions(emb[i], text[rows]) if usable else None
        out[i] = remove_labels(weak[i], caps[i] if usable else [], best, t)
    return out


def class_similarity(emb: np.ndarray, class_text: np.ndarray) -> np.ndarray:
    """(N, T, C) s_c = cos(segment, class description) (Eq. 3 without the softmax, as the code
    computes it)."""
    return (_normalise(emb) @ _normalise(class_text).T).astype(np.float32)


def reweight(labels: np.ndarray, sim: np.ndarray, cfg: LSLDConfig = LSLDConfig(),
             mask: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, T, C) float32 y^^v (Eq. 4) from y~ (N, T, C) 0/1 and s (N, T, C). Per class c over the segments in `mask`
    (N,) (default all): Min_w = lowest s of segments with c, Max_w/o = highest s of those without; when they overlap,
    positives below Max_w/o get alpha*s and negatives above Min_w get beta*s. Rows outside `mask` are returned as is."""
    y = np.asarray(labels, np.float32).copy()
    s = np.asarray(sim, np.float32)
    idx = np.flatnonzero(np.ones(len(y), bool) if mask is None else np.asarray(mask, bool))
    strict = cfg.rule == "code"
    for c in range(y.shape[-1]):
        yc, sc = y[idx, :, c], s[idx, :, c]
        pos, neg = yc > 0.5, yc <= 0.5
        if not pos.any() or not neg.any():
            continue
        min_w, max_wo = sc[pos].min(), sc[neg].max()
        if not max_wo > min_w:  # no overlap of the two groups: no unreliable segment
            continue
        low_pos = pos & ((sc < max_wo) if strict else (sc <= max_wo))
        high_neg = neg & ((sc > min_w) if strict else (sc >= min_w))
        yc[low_pos] = _soft(sc[low_pos], cfg.alpha, yc[low_pos], strict)  # Eq. 4, first case
        yc[high_neg] = _soft(sc[high_neg], cfg.beta, yc[high_neg], strict)  # Eq. 4, second case
        y[idx, :, c] = yc
    return y


def _soft(s: np.ndarray, weight: float, hard: np.ndarray, strict: bool) -> np.ndarray:
    v = weight * s
    if strict:  # the code: weight*s only where 0 < weight*s < 1, else the hard label stays
        return np.where((v > 0) & (v < 1), v, hard).astype(np.float32)
    return np.clip(v, 0.0, 1.0).astype(np.float32)  # the paper: Min(1, weight*s), clipped at 0


def lsld_loss(out, weak, audio_labels, visual_labels, cfg: LSLDConfig = LSLDConfig()):
    """L = w_a BCE(p^a_t, y~^a_t) + w_v BCE(p^v_t, y^^v_t) + w BCE(p, y) (Eq. 2 with the segment labels; weights 3:1:1
    as main.py's audio/visual/video_weight), BCE on probabilities (nn.BCELoss, mean over batch, time and class); `out`
    is a valor_core.han.HANOutput, probabilities clamped to [1e-7, 1 - 1e-7]."""
    import torch.nn.functional as F

    def bce(p, y):
        return F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), y)

    loss_a = bce(out.segment_prob[:, :, 0], audio_labels)
    loss_v = bce(out.segment_prob[:, :, 1], visual_labels)
    return cfg.audio_weight * loss_a + cfg.visual_weight * loss_v + cfg.video_weight * bce(out.global_prob, weak)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
