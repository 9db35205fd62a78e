"""Ray Train throughput of the `valor` preset on LLP-sim: epoch time and videos/s for 1 and 2 CPU workers (and one GPU
worker when present), the data-feeding choice (object-store arrays vs Ray Data), and the full 60-epoch estimate.

    python bench/train.py [--videos 10000] [--epochs 2] [--workers 1 2] [--no-ray-data] [--json]

Each configuration is a real `workflows.train_ray.train` run (TorchTrainer, DDP gloo on CPU / NCCL on GPU, per-epoch
checkpoints, best-val tracking), MLflow off so the numbers are training only. Per epoch the rank-0 worker times the
training pass (`train_seconds`, shard of every rank in parallel) and the whole epoch with its val scoring and
checkpoint (`seconds`). The 60-epoch estimate = measured fixed overhead (Ray start, worker group, data put, final
scoring) + 60 x the mean measured epoch -- an extrapolation from `--epochs` epochs, said so in the output.

The Ray Data variant feeds the same DDP loop from `ray.data.from_arrow(...)` (tensor columns) through
`get_dataset_shard("train").iter_torch_batches(...)` with a local shuffle buffer instead of index batches over the
arrays in the object store: same model, same batch size, only the batch source differs.

Measured (Nov 2026, this project's 2-core CPU machine, shared with other jobs; `valor` preset d=512x1, batch 64):
    nearly idle (load ~2):  2 workers 52 s/epoch (193 videos/s), 1 worker (2 threads) 51-95 s/epoch; Ray start +
                            worker group + final scoring ~20-25 s; 60 epochs extrapolated ~54 min (2 workers)
    loaded (load 12-30):    2 workers 119-175 s/epoch, 1 worker 444 s/epoch (2 threads contend badly)
    data feeding only:      object-store arrays 0.6-2.1 s/epoch vs Ray Data iter_torch_batches 7-26 s/epoch
The 3-min target for 60 epochs is out of reach on 2 cores: 600,000 video passes of a 5.1M-parameter HAN at ~190
videos/s take ~53 min; the work divides over more CPU workers or GPUs (`--workers N`, `--gpu`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}.items():
    os.environ.setdefault(_k, _v)


def ray_data_loop(config: dict) -> None:
    """The DDP loop of workflows.train_ray with batches from a Ray Data shard (timing only, no checkpoints)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from valor_core.fit import build_model, build_optimizer, train_epoch
    from workflows.checkpoints import config_from_dict

    torch.set_num_threads(int(config["threads"]))
    cfg = config_from_dict(config["train"])
    ctx = ray.train.get_context()
    model = ray.train.torch.prepare_model(build_model(cfg))
    optimizer = build_optimizer(model.module if hasattr(model, "module") else model, cfg)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(1, cfg.optim.epochs + 1):
        t0 = time.perf_counter()
        batches = shard.iter_torch_batches(batch_size=config["batch"], local_shuffle_buffer_size=config["batch"] * 8,
                                           drop_last=True)
        loss = train_epoch(model, optimizer, batches, cfg, epoch)
        if dist.is_initialized():
            dist.barrier()
        seconds = time.perf_counter() - t0
        if ctx.get_world_rank() == 0:
            with open(config["timings"], "a") as f:
                f.write(f"{seconds}\n")
        ray.train.report({"epoch": epoch, "train_seconds": seconds, "loss": loss})


def feed_loop(config: dict) -> None:
    """Data feeding only (no model): one epoch = every batch of this rank's shard, materialised as float32 tensors."""
    import ray
    import ray.train
    import torch

    from workflows.ray_train_harness import rank_batches
    from workflows.train_ray import shard_indices

    torch.set_num_threads(int(config["threads"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config["mode"] == "arrays":
        payload = ray.get(config["data_ref"])
        tensors = {k: torch.from_numpy(v) for k, v in payload.items()}
        n = len(next(iter(tensors.values())))
    else:
        shard = ray.train.get_dataset_shard("train")
    for epoch in range(1, config["epochs"] + 1):
        t0 = time.perf_counter()
        rows = 0
        if config["mode"] == "arrays":
            batches = rank_batches(tensors, shard_indices(n, world, rank, 0, epoch), config["batch"])
        else:
            batches = shard.iter_torch_batches(batch_size=config["batch"],
                                               local_shuffle_buffer_size=config["batch"] * 8, drop_last=True)
        for batch in batches:
            rows += len(next(iter(batch.values())))
            for t in batch.values():
                t.float()
        seconds = time.perf_counter() - t0
        if rank == 0:
            with open(config["timings"], "a") as f:
                f.write(f"{seconds} {rows}\n")
        ray.train.report({"epoch": epoch, "seconds": seconds})


def run_feed_only(cfg, data, workers: int, mode: str, epochs: int = 3) -> dict:
    import numpy as np
    import pyarrow as pa
    import ray
    import ray.train
    from ray.data.extensions import ArrowTensorArray
    from ray.train.torch import TorchTrainer

    from valor_core.fit import to_tensors
    from workflows.train_ray import per_worker_batch

    arrays = {k: np.ascontiguousarray(t.numpy()) for k, t in to_tensors(data["train"], cfg).items()}
    timings = tempfile.mktemp(prefix="valor-bench-feed-")
    config = {"mode": mode, "epochs": epochs, "threads": 1, "timings": timings,
              "batch": per_worker_batch(cfg.optim.batch_size, workers)}
    datasets = None
    if mode == "arrays":
        config["data_ref"] = ray.put(arrays)
    else:
        datasets = {"train": ray.data.from_arrow(pa.table({k: ArrowTensorArray.from_numpy(v)
                                                           for k, v in arrays.items()}))}
    storage = tempfile.mkdtemp(prefix="valor-bench-")
    TorchTrainer(feed_loop, train_loop_config=config, datasets=datasets,
                 scaling_config=ray.train.ScalingConfig(num_workers=workers),
                 run_config=ray.train.RunConfig(name=f"bench-feed-{mode}-{os.getpid()}", storage_path=storage)).fit()
    shutil.rmtree(storage, ignore_errors=True)
    with open(timings) as f:
        rows = [line.split() for line in f if line.strip()]
    os.remove(timings)
    secs = [float(r[0]) for r in rows]
    return {"mode": f"feed-only {mode}", "workers": workers, "epoch_seconds": secs,
            "rows_per_rank": int(rows[-1][1]) if rows else 0}


def run_ray_data(cfg, data, workers: int, epochs: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import ray
    import ray.train
    from ray.data.extensions import ArrowTensorArray
    from ray.train.torch import TorchTrainer

    from valor_core.config import replace, to_dict
    from valor_core.fit import to_tensors
    from workflows.train_ray import per_worker_batch

    cfg = replace(cfg, **{"optim.epochs": epochs})
    t0 = time.perf_counter()
    tensors = to_tensors(data["train"], cfg)
    table = pa.table({k: ArrowTensorArray.from_numpy(np.ascontiguousarray(t.numpy())) for k, t in tensors.items()})
    ds = ray.data.from_arrow(table)
    threads = max(1, int(ray.available_resources().get("CPU", 1) // workers))

    timings = tempfile.mktemp(prefix="valor-bench-raydata-")
    storage = tempfile.mkdtemp(prefix="valor-bench-")
    trainer = TorchTrainer(
        ray_data_loop, train_loop_config={"train": to_dict(cfg), "threads": threads, "timings": timings,
                                          "batch": per_worker_batch(cfg.optim.batch_size, workers)},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": threads}),
        datasets={"train": ds},
        run_config=ray.train.RunConfig(name=f"bench-raydata-{os.getpid()}-{workers}", storage_path=storage))
    trainer.fit()
    shutil.rmtree(storage, ignore_errors=True)
    total = time.perf_counter() - t0
    with open(timings) as f:
        epochs_s = [float(line) for line in f if line.strip()]
    os.remove(timings)
    return {"mode": "ray_data", "workers": workers, "epoch_train_seconds": epochs_s, "total_seconds": total}


def run_arrays(cfg, data, workers: int, epochs: int, use_gpu: bool = False) -> dict:
    from valor_core.config import replace
    from workflows.train_ray import train

    cfg = replace(cfg, **{"optim.epochs": epochs})
    storage = tempfile.mkdtemp(prefix="valor-bench-")
    t0 = time.perf_counter()
    out = train(cfg, data, workers=workers, use_gpu=use_gpu, track=False, make_figures=False, storage=storage,
                run_name=f"bench-{workers}w")
    total = time.perf_counter() - t0
    shutil.rmtree(storage, ignore_errors=True)
    hist = out.history
    return {"mode": "arrays", "workers": workers, "gpu": use_gpu,
            "epoch_train_seconds": [h["train_seconds"] for h in hist],
            "epoch_seconds": [h["seconds"] for h in hist], "total_seconds": total,
            "val_type": out.val["segment"]["type"] if out.val else None}


def summarize(r: dict, n_train: int, full_epochs: int) -> dict:
    import numpy as np

    tr = r["epoch_train_seconds"]
    # the first epoch includes warm-up (allocator, gloo buffers): report the steady state when there are >= 2 epochs
    steady = tr[1:] if len(tr) >= 2 else tr
    r["train_seconds_per_epoch"] = float(np.mean(steady)) if steady else float("nan")
    usable = (n_train // r["workers"]) * r["workers"]
    r["videos_per_s"] = usable / r["train_seconds_per_epoch"]
    if "epoch_seconds" in r:
        ep = r["epoch_seconds"]
        ep_steady = float(np.mean(ep[1:] if len(ep) >= 2 else ep))
        overhead = r["total_seconds"] - sum(ep)
        r["epoch_seconds_with_val"] = ep_steady
        r["fixed_overhead_seconds"] = overhead
        r["full_run_seconds_estimate"] = overhead + full_epochs * ep_steady
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=10000, help="LLP-sim train videos (all 10,000 by default)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--preset", default="valor")
    ap.add_argument("--no-ray-data", action="store_true", help="skip the Ray Data comparison runs")
    ap.add_argument("--feed-only", action="store_true", help="only the data-feeding comparison (no training runs)")
    ap.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto")
    ap.add_argument("--annotations", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from valor_core.presets import get_preset
    from workflows.trainset import load_training_data
    from workflows.runtime import start_ray

    cfg0 = get_preset(args.preset)
    full_epochs = cfg0.optim.epochs
    t0 = time.perf_counter()
    data, cfg, meta = load_training_data("sim:0", cfg0, annotations=args.annotations, max_train=args.videos)
    load_s = time.perf_counter() - t0
    n = len(data["train"])
    print(f"LLP-sim: {n} train videos, {len(data['val'])} val, {len(data['test'])} test, loaded + labels in "
          f"{load_s:.1f} s; preset {args.preset} (hidden {cfg.model.hidden} x {cfg.model.layers}, batch "
          f"{cfg.optim.batch_size}), inputs adapted {meta['adapted']}", flush=True)
    gpu = args.gpu == "yes" or (args.gpu == "auto" and torch.cuda.is_available())
    start_ray()
    results = []
    for w in ([] if args.feed_only else args.workers):
        results.append(summarize(run_arrays(cfg, data, w, args.epochs), n, full_epochs))
        print(json.dumps(results[-1]), flush=True)
    if not args.no_ray_data and not args.feed_only:
        w = max(args.workers)
        results.append(summarize(run_ray_data(cfg, data, w, args.epochs), n, full_epochs))
        print(json.dumps(results[-1]), flush=True)
    feed = []
    if not args.no_ray_data:  # what the data path alone costs per epoch (no model): arrays vs Ray Data
        w = max(args.workers)
        for mode in ("arrays", "ray_data"):
            feed.append(run_feed_only(cfg, data, w, mode))
            print(json.dumps(feed[-1]), flush=True)
    if gpu:
        results.append(summarize(run_arrays(cfg, data, 1, args.epochs, use_gpu=True), n, full_epochs))
        print(json.dumps(results[-1]), flush=True)

    print(f"\n{args.preset} preset on {n} LLP-sim train videos, {os.cpu_count()} CPUs"
          f"{', GPU ' + torch.cuda.get_device_name(0) if gpu else ''}; {args.epochs} measured epochs per run")
    print(f"{'run':24s} {'train s/epoch':>14s} {'videos/s':>10s} {'epoch+val s':>12s} {'overhead s':>11s} "
          f"{'60-epoch est.':>14s}")
    for r in results:
        name = f"{r['mode']} {r['workers']}x{'GPU' if r.get('gpu') else 'CPU'}"
        est = r.get("full_run_seconds_estimate")
        print(f"{name:24s} {r['train_seconds_per_epoch']:14.2f} {r['videos_per_s']:10.0f} "
              f"{r.get('epoch_seconds_with_val', float('nan')):12.2f} {r.get('fixed_overhead_seconds', float('nan')):11.1f} "
              f"{(f'{est / 60:.1f} min' if est else '-'):>14s}")
    for r in feed:
        print(f"{r['mode']:24s} {r['workers']} workers: seconds per epoch "
              f"{', '.join(f'{x:.2f}' for x in r['epoch_seconds'])} ({r['rows_per_rank']} videos per rank)")
    print(f"(60-epoch times are extrapolated: fixed overhead + {full_epochs} x the mean epoch after the first of "
          f"{args.epochs} measured; target <= 3 min CPU-only)")
    if args.json:
        print(json.dumps({"videos": n, "results": results, "feed_only": feed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
