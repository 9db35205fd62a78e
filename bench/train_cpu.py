"""Seconds per training epoch of a HAN preset (default `valor`: d=512 x 1 layer, batch 64, AdamW, Eq. 9 loss) on
10,000 LLP-sim train videos, in-process on CPU (valor_core.fit.train_epoch), plus videos/s.

    .venv/bin/python bench/train_cpu.py [--preset valor] [--videos 10000] [--epochs 1] [--threads N] [--set k=v ...]

Inputs: LLP-sim with the preset's real input widths (VGGish-like 128, ResNet-like 2048, R(2+1)D-like 512); the sim
has one frame step per segment, which is what the model sees anyway: `fit.to_tensors` averages the ResNet stream's
8 steps per segment once, before training (identical result, see valor_core/han.py). Targets: Table 6 harvested
labels. The figure excludes the one-off simulation and tensor set-up (printed separately) and the val evaluation
(printed separately). The epoch runs at the preset's epoch-1 learning rate.

Also printed: the best videos/s as a fraction of what this machine's fp32 matmul rate allows, i.e. videos/s /
(matmul FLOP/s / FLOPs per video). FLOPs per video: one training step's forward + backward on one batch, counted by
torch.utils.flop_counter.FlopCounterMode (matmuls and attention; elementwise work is not counted), / batch size.
Matmul rate: the best of a few 1024 x 1024 fp32 torch.mm at the same thread count.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.flops import flops_per_video  # noqa: E402
from valor_core.llp import DEFAULT_ANNOTATIONS  # noqa: E402

DEFAULT_LLP = DEFAULT_ANNOTATIONS  # the LLP files shipped with valor


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", default=DEFAULT_LLP)
    ap.add_argument("--preset", default="valor")
    ap.add_argument("--videos", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: $VALOR_THREADS or 1)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    import torch

    from valor_core.fit import (build_model, build_optimizer, compile_model, configure_threads, evaluate_model,
                                graphed_step, iterate_batches, to_tensors, train_epoch)
    from valor_core.labels import harvest_labels, thresholds_for
    from valor_core.sim import simulate
    from workflows.train import resolve_config

    threads = configure_threads(args.threads)
    cfg = resolve_config(argparse.Namespace(preset=args.preset, overrides=args.overrides + ["model.frame_steps=1"]))
    t0 = time.perf_counter()
    features = "clip_clap" if cfg.features == "clip_clap" else "vggish_resnet_r2p1d"
    dims = {} if features == "clip_clap" else {"audio_dim": cfg.model.audio_dim, "frame_dim": cfg.model.frame_dim,
                                               "clip_dim": cfg.model.clip_dim}
    data = simulate(args.annotations, seed=0, splits=("train", "val"), features=features, **dims)
    train, val = data["train"], data["val"]
    if args.videos < len(train):
        train = train.take(np.arange(args.videos))
    elif args.videos > len(train):  # more than LLP has: repeat rows
        train = train.take(np.arange(args.videos) % len(train))
    th = cfg.labels
    train.audio_labels = harvest_labels(train.clap_logits, train.weak, thresholds_for(th, "audio"))
    train.visual_labels = harvest_labels(train.clip_logits, train.weak, thresholds_for(th, "visual"))
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    tensors = to_tensors(train, cfg)
    train_model, step = compile_model(model, cfg), graphed_step(model, optimizer, cfg)  # --set compile=...
    t_setup = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    n = len(train)
    print(f"preset {cfg.preset}: d={cfg.model.hidden} x {cfg.model.layers}, batch {cfg.optim.batch_size}, loss "
          f"{cfg.loss}; {n} LLP-sim train videos; torch {torch.__version__}, {threads} CPU thread(s); "
          f"sim+harvest {t_sim:.1f} s, model+tensors {t_setup:.2f} s")
    times = []
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        batches = iterate_batches(tensors, cfg.optim.batch_size, gen)
        loss = train_epoch(train_model, optimizer, batches, cfg, epoch, step)
        times.append(time.perf_counter() - t0)
        print(f"epoch {epoch}: {times[-1]:.1f} s ({n / times[-1]:.0f} videos/s), loss {loss:.4f}", flush=True)
    t0 = time.perf_counter()
    scores = evaluate_model(model, val)
    t_eval = time.perf_counter() - t0
    best = min(times)
    print(f"val evaluation ({len(val)} videos, predict + official metrics): {t_eval:.2f} s; "
          f"segment Type@AV {scores.segment['type']:.2f}")
    print(f"seconds per epoch: {best:.1f}  ({n / best:.0f} videos/s)")
    flops = flops_per_video(model, tensors, cfg)
    rate = matmul_flops_per_s()
    bound = rate / flops
    print(f"FLOPs per video (training step, forward + backward): {flops / 1e6:.1f} MFLOP; fp32 matmul "
          f"{rate / 1e9:.1f} GFLOP/s on {threads} thread(s) -> {bound:.0f} videos/s at that rate; measured "
          f"{n / best:.0f} videos/s = {100 * n / best / bound:.1f}% of it")
    return 0


def matmul_flops_per_s(n: int = 1024, seconds: float = 1.0) -> float:
    """Best fp32 torch.mm FLOP/s of n x n matrices over ~`seconds` (torch's current thread count)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


if __name__ == "__main__":
    sys.exit(main())
