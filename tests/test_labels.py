"""VALOR label elaboration: truth tables, strict '>', thresholds from LabelConfig."""
from __future__ import annotations

import numpy as np
import pytest

from valor_core.classes import CLAP_THRESHOLDS, CLIP_THRESHOLDS
from valor_core.config import LabelConfig
from valor_core.labels import harvest_labels, thresholds_for


@pytest.mark.parametrize("z_above,y,filt,expected", [
    (False, 0, True, 0), (False, 1, True, 0), (True, 0, True, 0), (True, 1, True, 1),  # (z > theta) AND y
    (False, 0, False, 0), (False, 1, False, 0), (True, 0, False, 1), (True, 1, False, 1),  # no-filter ablation
])
def test_truth_table(z_above, y, filt, expected):
    theta = np.full(25, 2.0)
    z = np.full((1, 10, 25), 3.0 if z_above else 1.0)
    w = np.full((1, 25), y, np.uint8)
    out = harvest_labels(z, w, theta, filter_by_weak=filt)
    assert out.dtype == np.uint8 and out.shape == (1, 10, 25)
    assert (out == expected).all()


def test_strict_greater_than():
    theta = np.arange(25, dtype=np.float32)
    z = np.broadcast_to(theta, (10, 25)).copy()  # exactly at the threshold -> off
    assert harvest_labels(z, np.ones(25), theta).sum() == 0
    assert harvest_labels(np.nextafter(z, np.inf), np.ones(25), theta).sum() == 250


def test_per_class_and_unified_and_shapes():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 10, (4, 10, 25))
    w = (rng.random((4, 25)) < 0.3).astype(np.uint8)
    th = rng.normal(0, 5, 25)
    out = harvest_labels(z, w, th)
    assert np.array_equal(out, ((z > th[None, None]) & (w[:, None, :] == 1)).astype(np.uint8))
    # a scalar threshold equals the same value for every class
    assert np.array_equal(harvest_labels(z, w, 1.5), harvest_labels(z, w, np.full(25, 1.5)))
    # single video (T, C) with weak (C,)
    assert np.array_equal(harvest_labels(z[1], w[1], th), out[1])
    with pytest.raises(ValueError):
        harvest_labels(z, w[0], th)
    with pytest.raises(ValueError):
        harvest_labels(z, w, th[:3])


def test_thresholds_for():
    cfg = LabelConfig()
    assert np.array_equal(thresholds_for(cfg, "visual"), CLIP_THRESHOLDS)
    assert np.array_equal(thresholds_for(cfg, "audio"), CLAP_THRESHOLDS)
    assert thresholds_for(cfg, "visual")[0] == 20 and thresholds_for(cfg, "audio")[5] == -2  # Table 6 spot checks
    cfg = LabelConfig(unified_clip=17.0, clap_thresholds=tuple(range(25)))
    assert (thresholds_for(cfg, "visual") == 17.0).all()
    assert np.array_equal(thresholds_for(cfg, "audio"), np.arange(25, dtype=np.float32))
    cfg = LabelConfig(clap_thresholds=tuple(range(25)), unified_clap=1.0)  # unified overrides per-class
    assert (thresholds_for(cfg, "audio") == 1.0).all()
    with pytest.raises(ValueError):
        thresholds_for(LabelConfig(clip_thresholds=(1.0, 2.0)), "visual")
    with pytest.raises(ValueError):
        thresholds_for(cfg, "text")
