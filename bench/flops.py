"""FLOPs one HAN training video costs (forward + loss + backward), counted by torch.utils.flop_counter on the real model
(matmuls and attention; elementwise work is not counted).

Shared by bench/gpu.py and bench/train_cpu.py: a training throughput (videos/s) times this, divided by the device's
measured matmul rate, is the fraction of the hardware's ceiling the loop reaches.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from valor_core.arrays import AVVPArrays
from valor_core.config import TrainConfig, replace
from valor_core.fit import TARGETS, _forward, build_model, to_tensors
from valor_core.losses import compute_loss

FLOP_BATCH = 16  # videos in the counted step when the caller gives no batch (FLOPs per video do not depend on it)


def flops_per_video(model: torch.nn.Module, tensors: dict, cfg: TrainConfig) -> float:
    """Counted FLOPs of one training step (forward, loss, backward) on one batch of `tensors`, per video; on a copy of
    the model, with the RNG state restored (a run being measured is unaffected)."""
    bs = min(cfg.optim.batch_size, len(next(iter(tensors.values()))))
    batch = {name: t[:bs] for name, t in tensors.items()}
    twin = copy.deepcopy(model).train()
    device = next(twin.parameters()).device
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        out = _forward(twin, batch, device)
        targets = {name: batch[name].to(device).float() for name in ("weak",) + TARGETS[cfg.loss]}
        compute_loss(cfg.loss, out, targets, cfg.label_smoothing).backward()
    return counter.get_total_flops() / bs


def train_flops_per_video(cfg: TrainConfig, train: AVVPArrays) -> float:
    """flops_per_video of a fresh `cfg` model on FLOP_BATCH videos of `train`, on the CPU."""
    cpu = replace(cfg, device="cpu", **{"optim.batch_size": FLOP_BATCH})
    return flops_per_video(build_model(cpu), to_tensors(train.take(np.arange(FLOP_BATCH)), cpu), cpu)
