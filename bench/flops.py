"""FLOPs one HAN training video costs (forward + backward + loss), counted by torch.utils.flop_counter on the real model.

Shared by bench/gpu.py and bench/train_cpu.py: a training throughput (videos/s) times this, divided by the device's
measured matmul rate, is the fraction of the hardware's ceiling the loop reaches.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from valor_core.arrays import AVVPArrays
from valor_core.config import TrainConfig, replace
from valor_core.fit import TARGETS, build_model, to_tensors
from valor_core.losses import compute_loss

FLOP_BATCH = 16  # videos in the counted step (FLOPs per video do not depend on it: every op is per video)


def train_flops_per_video(cfg: TrainConfig, train: AVVPArrays) -> float:
    """Forward + backward FLOPs of one training step of `cfg` on FLOP_BATCH videos of `train`, per video (CPU)."""
    cpu = replace(cfg, device="cpu")
    model = build_model(cpu)
    batch = {k: v[:FLOP_BATCH].float() for k, v in to_tensors(train.take(np.arange(FLOP_BATCH)), cpu).items()}
    targets = {k: batch[k] for k in ("weak",) + TARGETS[cpu.loss]}
    with FlopCounterMode(display=False) as counter:
        out = model(batch["audio"], batch.get("frames"), batch.get("clips"))
        compute_loss(cpu.loss, out, targets, cpu.label_smoothing).backward()
    return float(counter.get_total_flops()) / FLOP_BATCH
