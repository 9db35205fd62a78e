"""Events from segment predictions, and long videos as windows of the model's length (pure NumPy, no torch/Ray).

Segment states. For class c and segment t, a = the audio prediction is on, v = the visual prediction is on (the
official rule: segment prob >= 0.5 and the window's video-level prob >= 0.5; valor_core.fit.decide). The segment's
state is "audio-visual" when a and v, "audio" when a only, "visual" when v only, none otherwise.

An event is a maximal run of consecutive segments of one class with the same (non-none) state. So a class's audio and
visual runs are split into audio-visual parts where both are on and audio-only / visual-only parts elsewhere: the
events of one class never overlap, and every on-segment of that class is in exactly one event.
    start, end   the first segment's start and the last segment's end, in seconds (never past the duration)
    confidence   the mean over the event's segments of p_audio (audio), p_visual (visual), min(p_audio, p_visual) (AV)

Windows. A video no longer than T x segment_seconds (+ TOLERANCE_S) is one window, cut as MediaConfig.length_policy
says (uniform: T equal segments of duration / T s; pad_trim: segments of segment_seconds, those starting at or past
the end dropped). A longer one is cut into W = ceil((duration - TOLERANCE_S) / (T x segment_seconds)) consecutive
windows of T segments of segment_seconds (the last one padded); the model predicts each window on its own (its own
video-level probability), the windows' segments are concatenated (`stitch`) and the segments starting at or past the
end dropped. Events are then found on the whole sequence, so a run that reaches a window's last segment and goes on
at the next window's first is one event: events merge across window borders.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from valor_core.classes import CLASSES

TOLERANCE_S = 0.05  # as valor_core.media.decode: lengths within 50 ms of nominal are nominal (AAC padding)
MODALITIES = ("audio", "visual", "audio-visual")  # state codes 1, 2, 3


@dataclass(frozen=True)
class WindowPlan:
    """How a video of `duration` s is cut: `windows` windows of `segments` segments; `edges` (n + 1,) the times of
    the n kept segments' borders (n = len(edges) - 1 <= windows x segments)."""

    duration: float
    windows: int
    segments: int
    edges: np.ndarray

    @property
    def kept(self) -> int:
        return len(self.edges) - 1

    @property
    def windowed(self) -> bool:
        return self.windows > 1


def plan_windows(duration: float, segments: int = 10, segment_seconds: float = 1.0, policy: str = "uniform",
                 tolerance: float = TOLERANCE_S) -> WindowPlan:
    """The windows and segment borders of a video of `duration` seconds (module doc)."""
    if duration <= 0 or segments < 1 or segment_seconds <= 0:
        raise ValueError(f"plan_windows: duration {duration}, segments {segments}, segment_seconds {segment_seconds}")
    nominal = segments * segment_seconds
    if duration <= nominal + tolerance:
        if policy == "uniform":
            return WindowPlan(duration, 1, segments, np.linspace(0.0, duration, segments + 1))
        if policy != "pad_trim":
            raise ValueError(f"unknown length policy {policy!r}")
        windows = 1
    else:
        windows = int(math.ceil((duration - tolerance) / nominal))
    starts = np.arange(windows * segments) * segment_seconds
    keep = max(1, int(np.count_nonzero(starts < duration - tolerance)))
    edges = np.arange(keep + 1) * segment_seconds
    edges[-1] = min(edges[-1], duration)
    return WindowPlan(duration, windows, segments, edges.astype(np.float64))


def stitch(per_window: np.ndarray, kept: Optional[int] = None) -> np.ndarray:
    """(W, T, ...) per-window arrays -> (W x T, ...) in time order, cut to the first `kept` segments."""
    x = np.asarray(per_window)
    flat = x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
    return flat if kept is None else flat[:kept]


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each maximal run of True in a 1-D mask."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.diff(m.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def states(audio_on: np.ndarray, visual_on: np.ndarray) -> np.ndarray:
    """(n, C) codes: 0 none, 1 audio only, 2 visual only, 3 audio-visual."""
    return (np.asarray(audio_on, bool).astype(np.int8) + 2 * np.asarray(visual_on, bool).astype(np.int8))


def find_events(audio_on: np.ndarray, visual_on: np.ndarray, audio_prob: np.ndarray, visual_prob: np.ndarray,
                edges: np.ndarray, classes: Sequence[str] = CLASSES) -> list[dict]:
    """The events (module doc) of (n, C) on-masks and probabilities with segment borders `edges` (n + 1,), sorted
    by start, then class order: [{"class", "modality", "start", "end", "confidence", "segments": [i0, i1)}]."""
    code = states(audio_on, visual_on)
    pa, pv = np.asarray(audio_prob, np.float64), np.asarray(visual_prob, np.float64)
    n, C = code.shape
    if len(edges) != n + 1 or pa.shape != (n, C) or pv.shape != (n, C) or len(classes) != C:
        raise ValueError(f"find_events: masks {code.shape}, probs {pa.shape}/{pv.shape}, {len(edges)} edges, "
                         f"{len(classes)} classes do not agree")
    conf = {1: pa, 2: pv, 3: np.minimum(pa, pv)}
    out = []
    for c in range(C):
        for k in (1, 2, 3):
            for i0, i1 in runs(code[:, c] == k):
                out.append({"class": classes[c], "modality": MODALITIES[k - 1], "start": round(float(edges[i0]), 3),
                            "end": round(float(edges[i1]), 3),
                            "confidence": round(float(conf[k][i0:i1, c].mean()), 4), "segments": [i0, i1]})
    order = {name: i for i, name in enumerate(classes)}
    out.sort(key=lambda e: (e["start"], order[e["class"]], MODALITIES.index(e["modality"])))
    return out


def lanes(events: list[dict], modality: str) -> list[dict]:
    """The events that show in the `audio` or `visual` lane (audio-visual events show in both)."""
    return [e for e in events if e["modality"] in (modality, "audio-visual")]


def window_frames(dense: np.ndarray, windows: int, segments: int, per_segment: int,
                  sampling: str = "linspace8fps") -> np.ndarray:
    """(W x T x S, ...) dense grid frames -> (W, T, ...) the T frames of each window, picked within the window as
    valor_core.media.decode picks them from a clip of exactly T segments (linspace over its grid, or mid-segment)."""
    m = segments * per_segment
    if sampling == "linspace8fps":
        local = np.round(np.linspace(0, m - 1, segments)).astype(np.int64)
    elif sampling == "per_segment":
        local = np.arange(segments) * per_segment + per_segment // 2
    else:
        raise ValueError(f"unknown frame_sampling {sampling!r}")
    idx = (np.arange(windows)[:, None] * m + local[None, :])
    return np.asarray(dense)[idx]
