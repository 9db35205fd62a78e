"""The threshold-search objective in pure NumPy: what Ray Tune trials evaluate, and the exact optimum they are measured by.

One `ThresholdProblem` per modality holds the val teacher logits z (N, T, C), weak labels y (N, C) and dense GT g (N, T, C).
Harvested labels are h = (z > theta_c) AND y (METHOD-NOTES; `filter_by_weak=False` drops the AND). Two objectives:

* "fidelity" (default; VALOR Table 3): global micro F of h against g, in percent,
      F(theta) = 2 TP / (2 TP + FP + FN) = 2 sum_c tp_c(theta_c) / (sum_c k_c(theta_c) + P)
  with tp_c = true positives of class c, k_c = labels class c harvests (tp + fp), P = all GT positives. A ratio of sums of
  per-class terms: each tp_c, k_c is a step function of theta_c that changes only at the distinct logit values of class c's
  candidate entries (those with y = 1). Sorting them once gives both as cumulative sums, so
    - the exact 1-D optimum of theta_c with the other classes fixed is an argmax over that class's prefix sums, and
    - the exact joint optimum follows from Dinkelbach's method: for a fixed lambda, max_theta 2 TP - lambda (K + P)
      separates by class; iterate lambda <- F(theta) until it stops changing (finitely many steps, usually 2-4).
  Both take milliseconds on LLP val (649 videos); `exact_optimum` is the reference the searches and tests are scored by.
  A coordinate-wise optimum of this objective is also a global one (at it every theta_c maximises 2 tp_c - F k_c), so
  block coordinate ascent with exact line searches -- what the default Tune searcher runs -- converges to it.
* "official": the per-modality official segment-level F (mean over videos of the per-video class-averaged F) of h as
  predictions. Not separable; the 1-D line search evaluates every candidate of one class on all videos at once.

Thresholds are chosen at midpoints between consecutive distinct logit values (rounded to float32 and kept strictly
between them, so float32 and float64 copies harvest the same labels), the robust choice when they are then applied to
the train videos.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal, Optional, Sequence

import numpy as np

from valor_core.metrics import segment_f_score

__all__ = [
    "Objective",
    "OBJECTIVES",
    "LogitsError",
    "ThresholdProblem",
    "validate_logits",
    "harvest_reference",
    "SearchResult",
    "coordinate_ascent",
    "blocks",
]

Objective = Literal["fidelity", "official"]
OBJECTIVES = ("fidelity", "official")


class LogitsError(ValueError):
    """Teacher logits unusable for a search or a harvest (wrong shape, non-finite values, missing videos)."""


def validate_logits(logits: np.ndarray, name: str, video_ids: Optional[Sequence[str]] = None,
                    segments: int = 10, classes: int = 25) -> np.ndarray:
    """`logits` as a float32 (N, segments, classes) array, or LogitsError naming the problem (and the first bad video)."""
    z = np.asarray(logits)
    if z.dtype == object:
        raise LogitsError(f"{name}: ragged or non-numeric values (object array of shape {z.shape}); "
                          f"expected a ({segments}, {classes}) float array per video")
    if z.ndim != 3 or z.shape[1:] != (segments, classes):
        raise LogitsError(f"{name}: expected shape (N, {segments}, {classes}), got {z.shape}")
    if not np.issubdtype(z.dtype, np.number) or np.issubdtype(z.dtype, np.complexfloating):
        raise LogitsError(f"{name}: expected real numbers, got dtype {z.dtype}")
    z = z.astype(np.float32, copy=False)
    bad = ~np.isfinite(z).all(axis=(1, 2))
    if bad.any():
        rows = np.flatnonzero(bad)
        who = [str(video_ids[i]) for i in rows[:3]] if video_ids is not None else [f"row {i}" for i in rows[:3]]
        more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        kind = "NaN" if np.isnan(z[rows[0]]).any() else "infinite"
        raise LogitsError(f"{name}: {len(rows)} video(s) have NaN/infinite logits ({kind} in {', '.join(who)}{more})")
    return z


def harvest_reference(logits: np.ndarray, weak: np.ndarray, thresholds, filter_by_weak: bool = True) -> np.ndarray:
    """Plain NumPy harvest, written independently of valor_core.labels (used as the reference in tests)."""
    z = np.asarray(logits, np.float64)
    th = np.broadcast_to(np.asarray(thresholds, np.float64), (z.shape[-1],))
    out = z > th[None, None, :]
    if filter_by_weak:
        out = out & (np.asarray(weak)[:, None, :] > 0)
    return out.astype(np.uint8)


def _midpoint(hi: float, lo: float) -> float:
    """A float32 value strictly between lo < hi (z > value keeps hi, drops lo), as a Python float."""
    m = np.float32((float(hi) + float(lo)) / 2.0)
    if not (np.float32(lo) < m < np.float32(hi)):
        m = np.float32(lo)  # adjacent float32 values: z > lo still keeps hi and drops lo
    return float(m)


@dataclass
class _ClassCurve:
    """Class c's candidate entries sorted by logit, descending, grouped by distinct value.

    Choice j (0..m) harvests the entries whose logit is among the j largest distinct values; `thresholds[j]` realises it.
    ctp[j], ck[j]: true positives / harvested labels of choice j."""

    values: np.ndarray  # (m,) distinct logits, descending
    ctp: np.ndarray  # (m+1,) int64
    ck: np.ndarray  # (m+1,) int64
    thresholds: np.ndarray  # (m+1,) float64

    def choice(self, theta: float) -> int:
        """How many distinct values are > theta (the choice a threshold makes)."""
        return int(np.searchsorted(-self.values, -theta, side="left"))


def _curve(z: np.ndarray, g: np.ndarray) -> _ClassCurve:
    order = np.argsort(-z, kind="stable")
    zs, gs = z[order], g[order].astype(np.int64)
    if zs.size == 0:
        return _ClassCurve(np.zeros(0, np.float32), np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([np.inf]))
    new = np.r_[True, zs[1:] != zs[:-1]]
    starts = np.flatnonzero(new)
    values = zs[starts]
    ends = np.r_[starts[1:], zs.size]
    ctp = np.r_[0, np.cumsum(gs)[ends - 1]]
    ck = np.r_[0, ends].astype(np.int64)
    m = values.size
    th = np.empty(m + 1, np.float64)
    span = float(values[0] - values[-1]) if m > 1 else 1.0
    edge = max(span / max(m - 1, 1), 1e-3)
    th[0] = float(np.float32(float(values[0]) + edge / 2))  # above everything: harvest nothing
    for j in range(1, m):
        th[j] = _midpoint(values[j - 1], values[j])
    th[m] = float(np.float32(float(values[-1]) - edge / 2))  # below everything: harvest every candidate
    if not th[0] > values[0]:
        th[0] = float(np.nextafter(values[0], np.float32(np.inf)))
    if not th[m] < values[-1]:
        th[m] = float(np.nextafter(values[-1], np.float32(-np.inf)))
    return _ClassCurve(values, ctp, ck, th)


@dataclass
class ThresholdProblem:
    """The search problem of one modality on the val split (see the module docstring)."""

    logits: np.ndarray  # (N, T, C) float32
    weak: np.ndarray  # (N, C) uint8
    gt: np.ndarray  # (N, T, C) uint8
    filter_by_weak: bool = True
    modality: str = ""
    curves: list = field(default_factory=list, repr=False)
    positives: int = 0  # P: GT positives (all videos, segments, classes)

    @classmethod
    def build(cls, logits: np.ndarray, weak: np.ndarray, gt: np.ndarray, filter_by_weak: bool = True,
              modality: str = "") -> "ThresholdProblem":
        z = validate_logits(logits, f"{modality or 'teacher'} logits", segments=np.shape(logits)[1] if np.ndim(logits) == 3 else 10,
                            classes=np.shape(logits)[-1])
        y = (np.asarray(weak) > 0).astype(np.uint8)
        g = (np.asarray(gt) > 0).astype(np.uint8)
        if y.shape != (z.shape[0], z.shape[2]) or g.shape != z.shape:
            raise LogitsError(f"{modality}: logits {z.shape}, weak {y.shape} and GT {g.shape} do not match")
        p = cls(z, y, g, filter_by_weak, modality)
        mask = np.broadcast_to(y[:, None, :] > 0, z.shape) if filter_by_weak else np.ones(z.shape, bool)
        for c in range(z.shape[2]):
            sel = mask[:, :, c]
            p.curves.append(_curve(z[:, :, c][sel], g[:, :, c][sel]))
        p.positives = int(g.sum())
        return p

    @property
    def num_classes(self) -> int:
        return self.logits.shape[2]

    # --- the fidelity objective, from the sorted curves (microseconds) -------------------------------------------

    def choices(self, thresholds) -> np.ndarray:
        th = np.broadcast_to(np.asarray(thresholds, np.float64), (self.num_classes,))
        return np.array([cv.choice(t) for cv, t in zip(self.curves, th)])

    def counts(self, thresholds) -> tuple[np.ndarray, np.ndarray]:
        """Per-class (tp, harvested) of the thresholds, each (C,) int64."""
        j = self.choices(thresholds)
        tp = np.array([cv.ctp[i] for cv, i in zip(self.curves, j)], np.int64)
        k = np.array([cv.ck[i] for cv, i in zip(self.curves, j)], np.int64)
        return tp, k

    def fidelity(self, thresholds) -> float:
        tp, k = self.counts(thresholds)
        return _micro(int(tp.sum()), int(k.sum()), self.positives)

    def harvest(self, thresholds) -> np.ndarray:
        return harvest_reference(self.logits, self.weak, thresholds, self.filter_by_weak)

    def official(self, thresholds) -> float:
        return 100.0 * float(np.mean(segment_f_score(self.harvest(thresholds), self.gt)))

    def score(self, thresholds, objective: Objective = "fidelity") -> float:
        if objective == "fidelity":
            return self.fidelity(thresholds)
        if objective == "official":
            return self.official(thresholds)
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")

    # --- exact optimum of the fidelity objective --------------------------------------------------------------------

    def exact_optimum(self, init=None, max_iter: int = 100) -> tuple[np.ndarray, float]:
        """Per-class thresholds maximising fidelity exactly (Dinkelbach), and that fidelity. Ties keep `init`'s choice
        when it is optimal, else the fewest labels."""
        init_j = self.choices(init) if init is not None else None
        if self.positives == 0:
            th = np.array([cv.thresholds[0] for cv in self.curves])
            return th, self.fidelity(th)
        lam = self.fidelity(init) / 100.0 if init is not None else 0.0
        best_j = None
        for _ in range(max_iter):
            j = []
            for c, cv in enumerate(self.curves):
                gain = 2.0 * cv.ctp - lam * cv.ck
                top = gain.max()
                pick = int(np.flatnonzero(gain >= top - 1e-9)[0])
                if init_j is not None and gain[init_j[c]] >= top - 1e-9:
                    pick = int(init_j[c])
                j.append(pick)
            tp = sum(int(cv.ctp[i]) for cv, i in zip(self.curves, j))
            k = sum(int(cv.ck[i]) for cv, i in zip(self.curves, j))
            new = 2.0 * tp / (k + self.positives)
            best_j = j
            if new <= lam + 1e-12:
                break
            lam = new
        th = np.array([cv.thresholds[i] for cv, i in zip(self.curves, best_j)])
        return th, self.fidelity(th)

    def exact_unified(self) -> tuple[float, float]:
        """The best single threshold for all classes (fidelity), exactly, and its fidelity."""
        z, g = self.logits, self.gt
        mask = np.broadcast_to(self.weak[:, None, :] > 0, z.shape) if self.filter_by_weak else np.ones(z.shape, bool)
        whole = _curve(z[mask], g[mask])
        f = 2.0 * whole.ctp / np.maximum(whole.ck + self.positives, 1)
        j = int(np.argmax(f))
        return float(whole.thresholds[j]), self.fidelity(np.full(self.num_classes, whole.thresholds[j]))

    def unified_grid(self, points: int = 33) -> np.ndarray:
        """`points` unified thresholds spanning the candidate logits (1st to 99th percentile)."""
        vals = np.concatenate([cv.values for cv in self.curves]) if self.curves else np.zeros(0)
        if vals.size == 0:
            return np.zeros(points)
        lo, hi = np.percentile(vals, [1, 99])
        return np.linspace(lo, hi, points)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class search ranges (lo, hi): every distinct choice lies inside."""
        lo = np.array([cv.thresholds[-1] for cv in self.curves])
        hi = np.array([cv.thresholds[0] for cv in self.curves])
        return lo, hi

    # --- exact 1-D line searches --------------------------------------------------------------------------------------

    def line_search(self, thresholds, c: int, objective: Objective = "fidelity",
                    max_candidates: int = 256) -> tuple[float, float]:
        """Best theta_c with the other thresholds fixed, and the objective it reaches. Keeps theta_c when nothing is
        strictly better. Fidelity: exact over every distinct value; official: over up to `max_candidates` of them."""
        th = np.array(np.broadcast_to(np.asarray(thresholds, np.float64), (self.num_classes,)))
        cv = self.curves[c]
        if objective == "fidelity":
            tp, k = self.counts(th)
            rest_tp, rest_k = int(tp.sum() - tp[c]), int(k.sum() - k[c])
            denom = rest_k + cv.ck + self.positives
            f = np.where(denom > 0, 2.0 * (rest_tp + cv.ctp) / np.maximum(denom, 1), 1.0) * 100.0
            cur = cv.choice(th[c])
            j = int(np.argmax(f))
            if f[j] <= f[cur] + 1e-9:
                return float(th[c]), float(f[cur])
            return float(cv.thresholds[j]), float(f[j])
        if objective == "official":
            return self._official_line_search(th, c, max_candidates)
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")

    def _official_line_search(self, th: np.ndarray, c: int, max_candidates: int) -> tuple[float, float]:
        cv = self.curves[c]
        cand = cv.thresholds
        if cand.size > max_candidates:
            cand = cand[np.unique(np.linspace(0, cand.size - 1, max_candidates).round().astype(int))]
        cand = np.unique(np.r_[cand, th[c]])
        h = self.harvest(th).astype(bool)
        g = self.gt.astype(bool)
        tp = np.count_nonzero(h & g, axis=1).astype(np.float64)  # (N, C)
        fp = np.count_nonzero(h & ~g, axis=1).astype(np.float64)
        fn = np.count_nonzero(~h & g, axis=1).astype(np.float64)
        scored = (tp + fp > 0) | (tp + fn > 0)
        fc = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=scored)
        rest_s = fc.sum(1) - fc[:, c]
        rest_k = scored.sum(1) - scored[:, c]
        z = self.logits[:, :, c]  # (N, T)
        pred = z[:, :, None] > cand[None, None, :]  # (N, T, J)
        if self.filter_by_weak:
            pred &= (self.weak[:, c] > 0)[:, None, None]
        gc = g[:, :, c][:, :, None]
        ctp = np.count_nonzero(pred & gc, axis=1).astype(np.float64)  # (N, J)
        cfp = np.count_nonzero(pred & ~gc, axis=1).astype(np.float64)
        cfn = gc.sum(1).astype(np.float64) - ctp
        sc = (ctp + cfp > 0) | (ctp + cfn > 0)
        f_c = np.divide(2 * ctp, 2 * ctp + cfp + cfn, out=np.zeros_like(ctp), where=sc)
        k = rest_k[:, None] + sc
        video = np.where(k > 0, (rest_s[:, None] + f_c) / np.maximum(k, 1), 1.0)
        score = 100.0 * video.mean(0)
        cur = int(np.flatnonzero(cand == th[c])[0])
        j = int(np.argmax(score))
        if score[j] <= score[cur] + 1e-9:
            return float(th[c]), float(score[cur])
        return float(cand[j]), float(score[j])

    def block_update(self, thresholds, classes: Iterable[int], objective: Objective = "fidelity",
                     passes: int = 1, tol: float = 1e-9) -> tuple[np.ndarray, float]:
        """Gauss-Seidel over `classes` (an exact line search each), up to `passes` times or until a pass gains less
        than `tol`; returns the new thresholds and their score."""
        th = np.array(np.broadcast_to(np.asarray(thresholds, np.float64), (self.num_classes,)))
        score = self.score(th, objective)
        for _ in range(max(1, passes)):
            before = score
            for c in classes:
                th[c], score = self.line_search(th, int(c), objective)
            if score - before < tol:
                break
        return th, score


def _micro(tp: int, k: int, positives: int) -> float:
    denom = k + positives  # 2TP + FP + FN = TP + FP + (TP + FN) = harvested + positives
    return 100.0 if denom == 0 else 100.0 * 2.0 * tp / denom


# --- the in-process coordinate ascent (the "plain loop", and the per-trial kernel of the Tune searcher) ------------------


@dataclass
class SearchResult:
    thresholds: np.ndarray
    score: float
    steps: int  # line searches run
    sweeps: int
    history: list = field(default_factory=list)  # score after each sweep


def blocks(num_classes: int, size: int) -> list[list[int]]:
    """Classes split into contiguous blocks of at most `size` (the unit of work of one Tune trial)."""
    size = max(1, int(size))
    return [list(range(i, min(i + size, num_classes))) for i in range(0, num_classes, size)]


def coordinate_ascent(problem: ThresholdProblem, init, objective: Objective = "fidelity", max_sweeps: int = 20,
                      tol: float = 1e-6) -> SearchResult:
    """Cyclic coordinate ascent with exact line searches from `init` until a sweep gains less than `tol`."""
    th = np.array(np.broadcast_to(np.asarray(init, np.float64), (problem.num_classes,)))
    score = problem.score(th, objective)
    hist, steps, sweeps = [score], 0, 0
    for sweeps in range(1, max_sweeps + 1):
        th, new = problem.block_update(th, range(problem.num_classes), objective)
        steps += problem.num_classes
        hist.append(new)
        gained = new - score
        score = new
        if gained < tol:
            break
    return SearchResult(th, score, steps, sweeps, hist)
