"""Per-epoch learning rate (epochs count from 1; the rate is set at the start of each epoch).

warmup_cosine (VALOR appendix B / official `lr_warm_up_cos_anneal`), W = warmup_epochs, E = epochs:
    lr(e) = e / W * lr_max                                                   for e < W
    lr(e) = lr_min + 0.5 (lr_max - lr_min) (1 + cos(pi (e - W) / (E - W)))   otherwise
step (2020 HAN: torch StepLR(step_size, gamma) stepped after every epoch):
    lr(e) = lr_max * gamma ** ((e - 1) // step_size)
"""
from __future__ import annotations

import math

from valor_core.config import OptimConfig


def lr_at_epoch(epoch: int, optim: OptimConfig) -> float:
    if epoch < 1:
        raise ValueError(f"epochs count from 1, got {epoch}")
    if optim.schedule == "step":
        return optim.lr_max * optim.gamma ** ((epoch - 1) // optim.step_size)
    if optim.schedule == "warmup_cosine":
        warm = optim.warmup_epochs
        if epoch < warm:
            return epoch / warm * optim.lr_max
        span = max(optim.epochs - warm, 1)
        return optim.lr_min + 0.5 * (optim.lr_max - optim.lr_min) * (1 + math.cos(math.pi * (epoch - warm) / span))
    if optim.schedule == "constant":
        return optim.lr_max
    raise ValueError(f"unknown schedule {optim.schedule!r}; expected warmup_cosine, step or constant")
