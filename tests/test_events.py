"""valor_core.events on hand-made segment probabilities: events, windows, merging across window borders."""
from __future__ import annotations

import numpy as np
import pytest

from valor_core.classes import CLASSES
from valor_core.events import find_events, lanes, plan_windows, runs, stitch, window_frames

C = len(CLASSES)


def _probs(n: int, audio: dict, visual: dict) -> tuple[np.ndarray, np.ndarray]:
    """(n, C) probabilities: 0.1 everywhere, `value` on the [i0, i1) ranges of {class: [(i0, i1, value)]}."""
    pa, pv = np.full((n, C), 0.1), np.full((n, C), 0.1)
    for p, spec in ((pa, audio), (pv, visual)):
        for c, ranges in spec.items():
            for i0, i1, value in ranges:
                p[i0:i1, c] = value
    return pa, pv


def test_runs():
    assert runs(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]
    assert runs(np.zeros(4, bool)) == [] and runs(np.ones(3, bool)) == [(0, 3)]


def test_events_split_into_audio_visual_and_single_modality_parts():
    # class 3: audio on 1..6, visual on 4..9 -> audio 1-4, audio-visual 4-6, visual 6-9; class 0: visual only at 0
    pa, pv = _probs(10, {3: [(1, 6, 0.8)]}, {3: [(4, 9, 0.6)], 0: [(0, 1, 0.9)]})
    edges = np.arange(11.0)
    ev = find_events(pa >= 0.5, pv >= 0.5, pa, pv, edges)
    got = [(e["class"], e["modality"], e["start"], e["end"], e["confidence"]) for e in ev]
    assert got == [(CLASSES[0], "visual", 0.0, 1.0, 0.9), (CLASSES[3], "audio", 1.0, 4.0, 0.8),
                   (CLASSES[3], "audio-visual", 4.0, 6.0, 0.6), (CLASSES[3], "visual", 6.0, 9.0, 0.6)]
    # every on-segment is in exactly one event, and the lanes give back the per-modality runs
    for mod, p in (("audio", pa), ("visual", pv)):
        cover = np.zeros((10, C), int)
        for e in lanes(ev, mod):
            cover[e["segments"][0]:e["segments"][1], CLASSES.index(e["class"])] += 1
        assert (cover == (p >= 0.5)).all()


def test_confidence_is_the_mean_probability():
    pa, pv = _probs(10, {5: [(2, 4, 0.7), (4, 5, 0.9)]}, {5: [(2, 5, 0.55)]})
    (e,) = find_events(pa >= 0.5, pv >= 0.5, pa, pv, np.arange(11.0))
    assert e["modality"] == "audio-visual" and e["confidence"] == pytest.approx(0.55)
    (e,) = find_events(pa >= 0.5, pv >= 2, pa, pv, np.arange(11.0))
    assert e["modality"] == "audio" and e["confidence"] == pytest.approx((0.7 * 2 + 0.9) / 3, abs=1e-4)


@pytest.mark.parametrize("duration,policy,windows,kept,last", [
    (10.0, "uniform", 1, 10, 10.0), (10.03, "uniform", 1, 10, 10.03), (9.5, "uniform", 1, 10, 9.5),
    (4.5, "pad_trim", 1, 5, 4.5), (10.0, "pad_trim", 1, 10, 10.0), (14.0, "uniform", 2, 14, 14.0),
    (20.02, "uniform", 2, 20, 20.0), (20.5, "pad_trim", 3, 21, 20.5), (30.0, "uniform", 3, 30, 30.0)])
def test_plan_windows(duration, policy, windows, kept, last):
    w = plan_windows(duration, 10, 1.0, policy)
    assert (w.windows, w.kept) == (windows, kept)
    assert w.edges[0] == 0 and w.edges[-1] == pytest.approx(last) and (np.diff(w.edges) > 0).all()
    if windows > 1 or policy == "pad_trim":
        assert np.allclose(np.diff(w.edges)[:-1], 1.0)
    else:  # uniform: T equal parts of the clip
        assert np.allclose(np.diff(w.edges), duration / 10)


def test_windows_merge_across_borders():
    """A 23-s video in 3 windows: an event over both borders (6..21 s) is one event; one ending exactly at a border
    and one starting at the next window's first segment of another modality stay apart."""
    w = plan_windows(23.0, 10, 1.0)
    assert (w.windows, w.kept) == (3, 23)
    pa = np.full((3, 10, C), 0.1)
    pv = np.full((3, 10, C), 0.1)
    pa[0, 6:, 2] = pa[1, :, 2] = pa[2, :1, 2] = 0.9  # class 2 audio 6..21 s
    pv[0, 8:, 7] = 0.8  # class 7: visual 8..10 s, then audio 10..12 s
    pa[1, :2, 7] = 0.8
    pa[2, 5:, 4] = 0.9  # class 4: 25..30 s, but the video ends at 23 s: segments 25.. are padding, dropped
    on_a, on_v = stitch(pa >= 0.5, w.kept), stitch(pv >= 0.5, w.kept)
    ev = find_events(on_a, on_v, stitch(pa, w.kept), stitch(pv, w.kept), w.edges)
    got = [(e["class"], e["modality"], e["start"], e["end"]) for e in ev]
    assert got == [(CLASSES[2], "audio", 6.0, 21.0), (CLASSES[7], "visual", 8.0, 10.0),
                   (CLASSES[7], "audio", 10.0, 12.0)]
    assert stitch(pa).shape == (30, C) and stitch(pa, w.kept).shape == (23, C)


def test_window_frames_pick_each_window_like_a_10s_clip():
    dense = np.arange(3 * 80)  # grid frame index of the dense stack of 3 windows
    frames = window_frames(dense, 3, 10, 8)
    one = np.round(np.linspace(0, 79, 10)).astype(int)  # what decode picks from a 10-s clip
    assert frames.shape == (3, 10) and (frames == one[None] + 80 * np.arange(3)[:, None]).all()
    assert (window_frames(dense, 3, 10, 8, "per_segment")[1] == 80 + np.arange(10) * 8 + 4).all()


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="do not agree"):
        find_events(np.zeros((10, C), bool), np.zeros((10, C), bool), np.zeros((10, C)), np.zeros((10, C)),
                    np.arange(10.0))
    with pytest.raises(ValueError):
        plan_windows(0.0)
