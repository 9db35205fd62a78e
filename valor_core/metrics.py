"""The official AVVP evaluation (Tian et al. 2020, `utils/eval_metrics.py`), vectorised over videos, and VALOR's label
fidelity (Table 3).

All inputs are 0/1 arrays shaped `(N, T, C)` (videos, segments, classes; T = 10, C = 25 on LLP), segment-major like
everything in valor. Any integer/bool dtype works; values must be 0 or 1.

Definitions (METHOD-NOTES, matched line by line against the reference implementation in tests/test_metrics.py):

* Segment level, per video and class: TP/FP/FN summed over the T segments; F_c = 2TP / (2TP + FP + FN). Only classes
  with TP+FP > 0 or TP+FN > 0 (present in the prediction or the GT) are scored; the video's F is the mean over scored
  classes, or 1.0 when none is ("all true negatives"). The reported number is the mean over videos, in percent.
* Event level: each class row is split into events = maximal runs of 1s. A predicted event is a TP if *some* GT event of
  the class has IoU >= 0.5 with it (counted in segments: 3 * inter >= len_p + len_g, which is exactly the official
  `inter >= 0.5 * union`), else an FP; a GT event no predicted event reaches is an FN. Not one-to-one: two predicted
  events can both be TPs on one GT event, and a predicted event that matches counts once however many GT events it hits.
* Audio-visual: prediction and GT are the element-wise products A*V.  Type@AV = mean of the audio, visual and
  audio-visual scores.  Event@AV = per-video F with the audio and visual per-class counts added (TP_a+TP_v, ...).
* Label fidelity (VALOR Table 3) = a global micro F: TP/FP/FN pooled over all videos, segments and classes.

Hot path: no per-video Python loops. Segment counts are sums; event counts encode each 10-segment class row as an
integer, look up its runs in a 2^T table and compare all run pairs of all rows at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = [
    "AVVPScores",
    "segment_counts",
    "event_counts",
    "f_from_counts",
    "segment_f_score",
    "event_f_score",
    "segment_f_score_pooled",
    "event_f_score_pooled",
    "evaluate",
    "label_fidelity",
    "micro_f",
    "SCORE_KEYS",
]

SCORE_KEYS = ("audio", "visual", "av", "type", "event")  # the order papers report them in


def _as01(x: np.ndarray, name: str) -> np.ndarray:
    """`x` as a (N, T, C) bool array (a zero-copy view for bool/uint8/int8); (T, C) is taken as one video.
    Raises on values other than 0/1."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"{name}: expected a (N, T, C) 0/1 array, got shape {x.shape}")
    if x.dtype == np.bool_:
        return x
    if x.size:
        ok = x.max() <= 1 if x.dtype.kind == "u" else bool(((x == 0) | (x == 1)).all())
        if not ok:
            raise ValueError(f"{name}: values must be 0 or 1 (threshold probabilities before scoring)")
    if x.dtype.itemsize == 1 and x.dtype.kind in "ui":
        return x.view(np.bool_)
    return x != 0


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as01(pred, "pred"), _as01(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    return p, g


# --- row codes: each (video, class) row of T segments as one integer, bit s = segment s ---------------------------------

MAX_SEGMENTS = 16


def _row_codes(x: np.ndarray) -> np.ndarray:
    """(N, T, C) bool -> (N, C) uint16 code of each class row, bit s = segment s."""
    n, t, c = x.shape
    if t > MAX_SEGMENTS:
        raise ValueError(f"at most {MAX_SEGMENTS} segments per video are supported, got {t}")
    u = x.view(np.uint8)
    codes = np.zeros((n, c), np.uint16)
    for s in range(t):  # T small shifts of (N, C) slices: faster than packbits over a strided axis
        codes |= u[:, s, :].astype(np.uint16) << s
    return codes


_POPCOUNT = np.unpackbits(np.arange(1 << MAX_SEGMENTS, dtype=">u2").view(np.uint8)).reshape(-1, 16).sum(1, dtype=np.int64)


class _Rows:
    """Row codes of a (pred, gt) pair; `T` is the number of segments."""

    __slots__ = ("p", "g", "t")

    def __init__(self, p: np.ndarray, g: np.ndarray, t: int):
        self.p, self.g, self.t = p, g, t


def _codes(pred: np.ndarray, gt: np.ndarray) -> _Rows:
    p, g = _pair(pred, gt)
    return _Rows(_row_codes(p), _row_codes(g), p.shape[1])


# --- per-class counts ----------------------------------------------------------------------------------------------


def _segment_counts(r: _Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _POPCOUNT[r.p & r.g], _POPCOUNT[r.p & ~r.g], _POPCOUNT[~r.p & r.g]


def segment_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment-level TP, FP, FN per video and class, each (N, C) int64."""
    return _segment_counts(_codes(pred, gt))


_RUN_CACHE: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def _run_table(t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every T-bit row code (bit s = segment s): run starts, ends (exclusive), validity mask, run count."""
    if t not in _RUN_CACHE:
        if t > MAX_SEGMENTS:
            raise ValueError(f"at most {MAX_SEGMENTS} segments per video are supported, got {t}")
        max_runs = (t + 1) // 2
        codes = np.arange(1 << t)
        bits = (codes[:, None] >> np.arange(t)) & 1  # (2^T, T)
        padded = np.pad(bits, ((0, 0), (1, 1)))
        starts = (padded[:, 1:-1] == 1) & (padded[:, :-2] == 0)
        ends = (padded[:, 1:-1] == 1) & (padded[:, 2:] == 0)
        rs = np.zeros((1 << t, max_runs), np.int8)
        re = np.zeros((1 << t, max_runs), np.int8)
        r, s = np.nonzero(starts)
        rs[r, (np.cumsum(starts, axis=1) - 1)[r, s]] = s
        r, e = np.nonzero(ends)
        re[r, (np.cumsum(ends, axis=1) - 1)[r, e]] = e + 1
        n = starts.sum(1)
        valid = np.arange(max_runs)[None, :] < n[:, None]
        _RUN_CACHE[t] = (rs, re, valid, n.astype(np.int64))
    return _RUN_CACHE[t]


def _event_counts(r: _Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rs, re, valid, nruns = _run_table(r.t)
    cp, cg = r.p.ravel(), r.g.ravel()
    tp = np.zeros(cp.shape, np.int64)
    fp = nruns[cp]  # rows where one side is empty: every predicted event is an FP ...
    fn = nruns[cg]  # ... and every GT event an FN
    both = np.flatnonzero(cp & cg)  # only rows whose prediction and GT overlap can hold a match
    if both.size:
        a, b = cp[both], cg[both]
        sp, ep, vp = rs[a][:, :, None], re[a][:, :, None], valid[a][:, :, None]
        sg, eg, vg = rs[b][:, None, :], re[b][:, None, :], valid[b][:, None, :]
        inter = np.minimum(ep, eg) - np.maximum(sp, sg)
        # IoU >= 0.5  <=>  inter >= 0.5 * (len_p + len_g - inter)  <=>  3 inter >= len_p + len_g  (exact in integers)
        match = (inter > 0) & (3 * inter >= (ep - sp) + (eg - sg)) & vp & vg
        hit_p = match.any(axis=2).sum(axis=1)
        hit_g = match.any(axis=1).sum(axis=1)
        tp[both] = hit_p
        fp[both] -= hit_p
        fn[both] -= hit_g
    shape = r.p.shape
    return tp.reshape(shape), fp.reshape(shape), fn.reshape(shape)


def event_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event-level TP, FP, FN per video and class, each (N, C) int64 (official `event_wise_metric`)."""
    return _event_counts(_codes(pred, gt))


# --- per-video F -----------------------------------------------------------------------------------------------------


def f_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-video F (N,) from per-class counts (N, C): mean of 2TP/(2TP+FP+FN) over classes present in prediction or GT;
    1.0 for a video where no class is present (the official "all true negatives" rule)."""
    tp2 = 2 * np.asarray(tp, dtype=np.float64)
    denom = tp2 + fp + fn
    scored = denom > 0  # = (TP+FP > 0) or (TP+FN > 0) for non-negative counts
    f = np.divide(tp2, denom, out=np.zeros_like(denom), where=scored)
    k = np.count_nonzero(scored, axis=1)
    return np.where(k > 0, f.sum(axis=1) / np.maximum(k, 1), 1.0)


def segment_f_score(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Official segment-level F per video, (N,) in [0, 1]."""
    return f_from_counts(*segment_counts(pred, gt))


def event_f_score(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Official event-level F per video, (N,) in [0, 1]."""
    return f_from_counts(*event_counts(pred, gt))


def _pooled(counts_a, counts_v) -> np.ndarray:
    return f_from_counts(*(x + y for x, y in zip(counts_a, counts_v)))


def segment_f_score_pooled(pred_audio, pred_visual, gt_audio, gt_visual) -> np.ndarray:
    """Segment-level Event@AV per video: F with audio and visual per-class counts added together."""
    return _pooled(segment_counts(pred_audio, gt_audio), segment_counts(pred_visual, gt_visual))


def event_f_score_pooled(pred_audio, pred_visual, gt_audio, gt_visual) -> np.ndarray:
    """Event-level Event@AV per video: F with audio and visual per-class event counts added together."""
    return _pooled(event_counts(pred_audio, gt_audio), event_counts(pred_visual, gt_visual))


# --- the ten numbers ------------------------------------------------------------------------------------------------


@dataclass
class AVVPScores:
    """The ten numbers of an AVVP table, in percent: `segment[k]` and `event[k]` for k in audio, visual, av, type, event.

    `per_video` (optional) holds the per-video F arrays in [0, 1] under keys like "segment.audio"."""

    segment: dict[str, float]
    event: dict[str, float]
    videos: int = 0
    per_video: Optional[dict[str, np.ndarray]] = field(default=None, repr=False, compare=False)

    def get(self, key: str) -> float:
        """A number by dotted key, e.g. "segment.type" (TrainConfig.select_metric)."""
        level, _, name = key.partition(".")
        table = {"segment": self.segment, "event": self.event}.get(level)
        if table is None or name not in table:
            raise KeyError(f"unknown score {key!r}; expected segment.<k> or event.<k> with k in {SCORE_KEYS}")
        return table[name]

    def flat(self) -> dict[str, float]:
        """{"segment.audio": ..., ..., "event.event": ...} (MLflow-friendly)."""
        return {f"{lvl}.{k}": v for lvl, tab in (("segment", self.segment), ("event", self.event)) for k, v in tab.items()}

    def as_dict(self, decimals: Optional[int] = None) -> dict[str, dict[str, float]]:
        r = (lambda v: round(float(v), decimals)) if decimals is not None else float
        return {"segment": {k: r(self.segment[k]) for k in SCORE_KEYS}, "event": {k: r(self.event[k]) for k in SCORE_KEYS}}


def evaluate(pred_audio: np.ndarray, pred_visual: np.ndarray, gt_audio: np.ndarray, gt_visual: np.ndarray,
             keep_per_video: bool = False) -> AVVPScores:
    """All ten official numbers (percent) for 0/1 predictions and GT, each (N, T, C)."""
    ra, rv = _codes(pred_audio, gt_audio), _codes(pred_visual, gt_visual)
    if ra.p.shape != rv.p.shape or ra.t != rv.t:
        raise ValueError(f"audio and visual shapes differ: {np.shape(pred_audio)} vs {np.shape(pred_visual)}")
    rav = _Rows(ra.p & rv.p, ra.g & rv.g, ra.t)  # A*V of 0/1 rows = bitwise AND of their codes
    per_video: dict[str, np.ndarray] = {}
    for level, counter in (("segment", _segment_counts), ("event", _event_counts)):
        ca, cv, cav = counter(ra), counter(rv), counter(rav)
        per_video[f"{level}.audio"] = f_from_counts(*ca)
        per_video[f"{level}.visual"] = f_from_counts(*cv)
        per_video[f"{level}.av"] = f_from_counts(*cav)
        per_video[f"{level}.event"] = _pooled(ca, cv)
    n = ra.p.shape[0]
    tables: dict[str, dict[str, float]] = {}
    for level in ("segment", "event"):
        means = {k: 100.0 * float(np.mean(per_video[f"{level}.{k}"])) if n else float("nan")
                 for k in ("audio", "visual", "av", "event")}
        tables[level] = {"audio": means["audio"], "visual": means["visual"], "av": means["av"],
                         "type": (means["audio"] + means["visual"] + means["av"]) / 3.0, "event": means["event"]}
    return AVVPScores(segment=tables["segment"], event=tables["event"], videos=n,
                      per_video=per_video if keep_per_video else None)


# --- label fidelity (VALOR Table 3) ---------------------------------------------------------------------------------


def micro_f(tp: float, fp: float, fn: float) -> float:
    """2TP / (2TP + FP + FN) in percent; 100.0 when there is nothing to find and nothing was predicted."""
    denom = 2 * tp + fp + fn
    return 100.0 if denom == 0 else 100.0 * 2 * tp / denom


def label_fidelity(pred: np.ndarray, gt: np.ndarray) -> float:
    """VALOR Table 3: global micro F (percent) of 0/1 labels against GT, TP/FP/FN pooled over videos, segments and
    classes. Any shape works as long as pred and gt match (e.g. (N, 10, 25) for one modality)."""
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    return micro_f(tp, fp, fn)


def score_split(split, audio: np.ndarray, visual: np.ndarray, videos_in_split: Optional[int] = None) -> dict:
    """`valor evaluate --json`'s object for 0/1 predictions aligned to an LLPSplit with dense GT: split, videos, the ten
    official numbers (segment and event level) and the label fidelity, in percent with 2 decimals.

    `videos_in_split` (default: all of `split`) is how many videos the whole split has: scores on fewer videos say so
    (`videos_scored` < `videos_in_split`) and are not comparable with the official numbers (`official_comparable`)."""
    s = evaluate(audio, visual, split.audio_gt, split.visual_gt)
    scored = int(len(split))
    total = scored if videos_in_split is None else int(videos_in_split)
    out: dict = {"split": split.name, "videos": scored, "videos_scored": scored, "videos_in_split": total,
                 "official_comparable": scored == total}
    out.update(s.as_dict(decimals=2))
    out["fidelity"] = {
        "audio": round(label_fidelity(audio, split.audio_gt), 2),
        "visual": round(label_fidelity(visual, split.visual_gt), 2),
        "av": round(label_fidelity(audio * visual, split.av_gt), 2),
    }
    return out
