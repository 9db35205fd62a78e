"""Learning-rate schedule values (VALOR appendix B; official lr_warm_up_cos_anneal) and the 2020 HAN StepLR."""
from __future__ import annotations

import math

import pytest

from valor_core.config import OptimConfig
from valor_core.presets import get_preset
from valor_core.schedule import lr_at_epoch


@pytest.mark.parametrize("preset, lr_max, lr_min", [("valor", 1e-4, 1e-6), ("valor+", 3e-4, 3e-6)])
def test_warmup_cosine_values(preset, lr_max, lr_min):
    o = get_preset(preset).optim
    assert (o.warmup_epochs, o.epochs) == (10, 60)
    assert lr_at_epoch(1, o) == pytest.approx(lr_max / 10)  # e / 10 * lr_max
    assert lr_at_epoch(9, o) == pytest.approx(0.9 * lr_max)
    assert lr_at_epoch(10, o) == pytest.approx(lr_max)  # cosine starts at its peak
    assert lr_at_epoch(11, o) == pytest.approx(lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi / 50)))
    assert lr_at_epoch(35, o) == pytest.approx((lr_max + lr_min) / 2)
    assert lr_at_epoch(60, o) == pytest.approx(lr_min)  # ends at the minimum


def test_official_formula_everywhere():
    o = get_preset("valor").optim

    def official(e, warm=10, total=60, lo=1e-6, hi=1e-4):  # Franklin905/VALOR main_avvp.py
        if e < warm:
            return e / warm * hi
        return lo + 0.5 * (hi - lo) * (1.0 + math.cos((e - warm) / (total - warm) * math.pi))

    assert [lr_at_epoch(e, o) for e in range(1, 61)] == pytest.approx([official(e) for e in range(1, 61)])


def test_generalised_warmup_and_length():
    o = OptimConfig(lr_max=1.0, lr_min=0.0, warmup_epochs=2, epochs=6)
    assert [lr_at_epoch(e, o) for e in (1, 2, 4, 6)] == pytest.approx([0.5, 1.0, 0.5, 0.0])


def test_step_schedule_of_the_2020_han():
    o = get_preset("han").optim
    assert o.schedule == "step" and (o.step_size, o.gamma, o.epochs) == (10, 0.1, 40)
    assert [lr_at_epoch(e, o) for e in (1, 10, 11, 20, 21, 40)] == pytest.approx([3e-4, 3e-4, 3e-5, 3e-5, 3e-6, 3e-7])


def test_bad_epoch_and_schedule():
    with pytest.raises(ValueError, match="from 1"):
        lr_at_epoch(0, OptimConfig())
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at_epoch(1, OptimConfig(schedule="nope"))  # type: ignore[arg-type]
