"""`valor ave train --ray`: HAN / VALOR on AVE (appendix F) as a Ray Train job (TorchTrainer, DDP), tracked in MLflow.

    driver   train/val arrays -> ray.put once -> the MLflow run (start_tracking) -> TorchTrainer(ave_train_loop,
             ScalingConfig(num_workers, use_gpu), RunConfig(storage, FailureConfig, CheckpointConfig)).fit()
             -> best_model.pt of the last checkpoint -> test segment accuracy -> log_final (metrics + checkpoint/)
    worker   build_ave_model (same seed on every rank) -> prepare_model (DDP when > 1 worker: gloo on CPU, NCCL on GPU)
             -> per epoch: this rank's shard of the epoch's permutation -> valor_core.ave_fit.train_ave_epoch ->
             all-reduce the loss -> rank 0: val segment accuracy, best-val tracking, MLflow epoch metrics,
             checkpoint -> ray.train.report

The science is valor_core.ave_fit's (config, model, Eq. 11 / Eq. 13 losses, segment accuracy, best epoch = the first
with the highest val accuracy); this file only distributes and records it.

Shuffling (why not workflows.train_ray.shard_indices): fit_ave draws each epoch's order as torch.randperm(N) from one
torch.Generator seeded with cfg.seed and continued across epochs; shard_indices draws a NumPy permutation from
(seed, epoch), so even one worker would see other batches. Here every rank keeps that same torch generator (one draw per
epoch, identical on all ranks) and takes its DistributedSampler shard of it (the permutation cut to floor(N / W) * W,
rank r the positions r, r + W, ...; per-worker batch ceil(batch / W), workflows.train_ray.per_worker_batch). Dropout
draws from the global torch RNG seeded with cfg.seed after the model is built, as in fit_ave (rank r > 0: its own
seed). So with one worker the run IS fit_ave: the same batches, dropout masks and steps, hence the same per-epoch
losses, val accuracies, best epoch and test accuracy (tests/test_ave_ray.py checks it). Checkpoints keep both RNG
states (rng.pt), so an epoch re-run after a worker failure continues the same streams on rank 0.

MLflow (workflows.tracking): params = the resolved TrainConfig flattened + `data.source`, `data.videos.<split>`,
`train.workers`, `train.use_gpu`, `train.per_worker_batch`, `train.storage`; per epoch (step = epoch) `loss`,
`val_accuracy`, `lr`, `epoch_seconds`; at the end `best_epoch`, `final.val_accuracy`, `final.test_accuracy`,
`final.background_accuracy`, artifact `checkpoint/` (best_model.pt, config.json, state.json) and tag
`valor.checkpoint` (the Ray Train checkpoint). The in-process `valor ave train --tracking-uri` logs the same run
through start_tracking / epoch_metrics / log_final.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from valor_core.ave import AVEArrays
from valor_core.checkpoint_io import load_weights
from valor_core.ave_fit import accuracy, ave_tensors, build_ave_model, train_ave_epoch
from valor_core.ave_metrics import segment_accuracy
from valor_core.config import TrainConfig, to_dict
from valor_core.fit import build_optimizer
from valor_core.han import count_trainable
from valor_core.schedule import lr_at_epoch
from workflows import tracking
from workflows.checkpoints import save_checkpoint_dir
from workflows.outputs import record, record_listing
from workflows.runtime import start_ray
from workflows.train_ray import (DEFAULT_STORAGE, claim_storage, mean_over_ranks, per_worker_batch, rank_batches,
                                 shard_of)

__all__ = ["ave_train_loop", "train_ave_ray", "AVETrainOutcome", "epoch_metrics", "start_tracking",
           "log_final", "write_checkpoint", "background_accuracy", "storage_preflight"]

BACKGROUND = 28  # AVE's background class (C = 28 events)


# --- shared by the worker, the driver and the in-process run -------------------------------------------------------


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """What is logged per epoch (step = epoch) from an epoch record of fit_ave / the worker loop."""
    return {"loss": record["loss"], "val_accuracy": record["val_accuracy"], "lr": record["lr"],
            "epoch_seconds": record["seconds"]}


def background_accuracy(arrays: AVEArrays) -> float:
    """Segment accuracy of predicting background everywhere (the floor a trained model must beat)."""
    return segment_accuracy(np.full_like(arrays.segments, BACKGROUND), arrays.segments)


def start_tracking(cfg: TrainConfig, data_meta: dict, *, tracking_uri: Optional[str], experiment: str,
                   run_name: Optional[str], extra: Optional[dict] = None) -> tuple[str, str]:
    """Create the MLflow run with the flattened config, `data.*` and `extra` params; returns (tracking URI, run id)."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    params = tracking.flatten(to_dict(cfg))
    params.update(tracking.flatten({"data": data_meta}))
    params.update({k: str(v) for k, v in (extra or {}).items()})
    name = run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    return uri, tracking.start_run(uri, experiment, name, params, {"valor.preset": cfg.preset,
                                                                   "valor.dataset": "ave",
                                                                   "valor.source": str(data_meta.get("source"))})


def log_final(uri: str, run_id: str, *, best_epoch: int, epochs: int, val_accuracy: float, test_accuracy: float,
              background: float, checkpoint_dir: str, checkpoint: Optional[str] = None) -> None:
    """Final metrics, the `checkpoint/` artifact and the tag naming the Ray Train checkpoint; ends the run."""
    tracking.log_metrics(uri, run_id, {"best_epoch": best_epoch, "final.val_accuracy": val_accuracy,
                                       "final.test_accuracy": test_accuracy, "final.background_accuracy": background},
                         step=epochs)
    tracking.log_dir(uri, run_id, checkpoint_dir, "checkpoint")
    if checkpoint:
        tracking.set_tags(uri, run_id, {"valor.checkpoint": checkpoint})
    tracking.end_run(uri, run_id, "FINISHED")


def write_checkpoint(path: str, cfg: TrainConfig, *, model_state: dict, best_state: dict,
                     optimizer_state: Optional[dict], state: dict, data_meta: dict, run_id: Optional[str]) -> str:
    """workflows.checkpoints' layout (model.pt, best_model.pt, optimizer.pt, state.json, config.json)."""
    return save_checkpoint_dir(path, model_state=model_state, best_state=best_state, optimizer_state=optimizer_state,
                               state=state, config={"train": to_dict(cfg), "data": data_meta, "run_id": run_id,
                                                    "dataset": "ave"})


# --- the per-worker loop --------------------------------------------------------------------------------------------


def ave_train_loop(config: dict) -> None:
    """Ray Train worker function (one per rank)."""
    import ray
    import ray.train
    import ray.train.torch

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # val, read from the store
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config.get("threads") or 1))
    cfg: TrainConfig = config["cfg"]
    payload = ray.get(config["data_ref"])
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in payload["train"].items()}  # writable copies
    val = payload["val"] if rank == 0 else None
    n = len(tensors["audio"])

    core = build_ave_model(cfg)
    # DDP only when world > 1 (moved to this worker's device); HAN's MMIL attention heads take no part in the AVE
    # losses (appendix F pools by averaging), so DDP must expect parameters without gradients
    model = ray.train.torch.prepare_model(core, parallel_strategy_kwargs={"find_unused_parameters": True})
    core = model.module if hasattr(model, "module") else model
    device = next(core.parameters()).device
    optimizer = build_optimizer(core, cfg)
    tensors = {k: t.to(device) for k, t in tensors.items()}
    generator = torch.Generator().manual_seed(cfg.seed)  # the epoch permutations: the same stream on every rank
    torch.manual_seed(cfg.seed if rank == 0 else cfg.seed * 100003 + rank)  # dropout (rank 0: as fit_ave)

    start_epoch, best, best_epoch, best_state, history = 1, -1.0, 0, None, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            core.load_state_dict(load_weights(os.path.join(d, "model.pt"), map_location=device))
            optimizer.load_state_dict(load_weights(os.path.join(d, "optimizer.pt"), map_location=device))
            best_state = load_weights(os.path.join(d, "best_model.pt"))
            rng = load_weights(os.path.join(d, "rng.pt"), map_location=None)
            with open(os.path.join(d, "state.json")) as f:
                state = json.load(f)
        start_epoch, best, best_epoch, history = state["epoch"] + 1, state["best_value"], state["best_epoch"], \
            state["history"]
        generator.set_state(rng["generator"])
        if rank == 0:
            torch.set_rng_state(rng["torch"])
        else:
            torch.manual_seed(cfg.seed * 100003 + rank * 101 + start_epoch)

    tracked = rank == 0 and bool(config.get("tracking_uri") and config.get("run_id"))
    client = tracking.client(config["tracking_uri"]) if tracked else None
    bs = per_worker_batch(cfg.optim.batch_size, world)
    for epoch in range(start_epoch, cfg.optim.epochs + 1):
        t0 = time.perf_counter()
        index = shard_of(torch.randperm(n, generator=generator), world, rank).numpy()  # see module doc
        loss = train_ave_epoch(model, optimizer, rank_batches(tensors, index, bs), cfg, epoch)
        loss = mean_over_ranks(loss, len(index), device)
        metrics: dict[str, Any] = {"epoch": epoch, "loss": loss}
        checkpoint = None
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                value = accuracy(core, val)
                record = {"epoch": epoch, "lr": lr_at_epoch(epoch, cfg.optim), "loss": loss, "val_accuracy": value,
                          "seconds": time.perf_counter() - t0}
                history.append(record)
                if value > best:  # ties keep the earlier epoch, as fit_ave
                    best, best_epoch = value, epoch
                    best_state = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
                metrics.update({"val_accuracy": value, "best_epoch": best_epoch})
                if tracked:
                    tracking.log_metrics(config["tracking_uri"], config["run_id"], epoch_metrics(record), step=epoch,
                                         c=client)
                write_checkpoint(tmp, cfg, model_state={k: v.detach().cpu() for k, v in core.state_dict().items()},
                                 best_state=best_state, optimizer_state=optimizer.state_dict(),
                                 state={"epoch": epoch, "epochs": cfg.optim.epochs, "best_value": best,
                                        "best_epoch": best_epoch, "history": history, "world_size": world},
                                 data_meta=config.get("data_meta", {}), run_id=config.get("run_id"))
                torch.save({"generator": generator.get_state(), "torch": torch.get_rng_state()},
                           os.path.join(tmp, "rng.pt"))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint,
                             checkpoint_dir_name=f"epoch_{epoch:03d}" if checkpoint is not None else None)


# --- the driver -----------------------------------------------------------------------------------------------------


@dataclass
class AVETrainOutcome:
    run_id: Optional[str]
    tracking_uri: Optional[str]
    best_epoch: int
    val_accuracy: float
    test_accuracy: float
    background_accuracy: float
    epochs: int
    history: list
    checkpoint: str  # the last Ray Train checkpoint (path or s3:// URI)
    seconds: float
    trainable_params: int


def train_ave_ray(cfg: TrainConfig, data: dict[str, AVEArrays], *, data_meta: dict, workers: int = 1,
                  use_gpu: bool = False, threads: Optional[int] = None, tracking_uri: Optional[str] = None,
                  experiment: str = "valor", storage: Optional[str] = None, run_name: Optional[str] = None,
                  max_failures: int = 3, keep_checkpoints: int = 2, track: bool = True) -> AVETrainOutcome:
    """Train `cfg` (ave_train_config) on data {"train", "val", "test"} with Ray Train DDP over `workers`."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    t_start = time.perf_counter()
    start_ray()  # joins the caller's Ray (or $RAY_ADDRESS), else starts one for this process
    threads = max(1, int(threads or os.environ.get("VALOR_THREADS") or 1))  # as fit.configure_threads
    storage_path, storage_fs, storage_uri = claim_storage(storage)
    run_id, uri = None, None
    if track:
        uri, run_id = start_tracking(cfg, data_meta, tracking_uri=tracking_uri, experiment=experiment,
                                     run_name=run_name, extra={
                                         "train.workers": workers, "train.use_gpu": use_gpu,
                                         "train.per_worker_batch": per_worker_batch(cfg.optim.batch_size, workers),
                                         "train.threads": threads, "train.max_failures": max_failures,
                                         "train.storage": storage or DEFAULT_STORAGE})
    try:
        arrays = {k: np.ascontiguousarray(t.numpy()) for k, t in ave_tensors(data["train"], cfg.loss).items()}
        loop_config = {"cfg": cfg, "data_ref": ray.put({"train": arrays, "val": data["val"]}), "threads": threads,
                       "tracking_uri": uri, "run_id": run_id, "data_meta": data_meta}
        name = f"{run_name or cfg.preset}-{run_id[:8] if run_id else os.getpid()}"
        record(storage_uri, [f"{name}/"])  # Ray Train names the files in it: the whole directory is valor's
        trainer = TorchTrainer(
            ave_train_loop, train_loop_config=loop_config,
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                   resources_per_worker=None if use_gpu else {"CPU": threads}),
            run_config=ray.train.RunConfig(
                name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                failure_config=ray.train.FailureConfig(max_failures=max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints)))
        result = trainer.fit()
        if getattr(result, "error", None):
            raise result.error
        if result.checkpoint is None:
            raise RuntimeError("AVE training reported no checkpoint")
        local = tempfile.mkdtemp(prefix="valor-ave-ckpt-")
        try:
            with result.checkpoint.as_directory() as d:
                for f in ("best_model.pt", "config.json", "state.json"):
                    shutil.copy(os.path.join(d, f), os.path.join(local, f))
            with open(os.path.join(local, "state.json")) as f:
                state = json.load(f)
            model = build_ave_model(cfg)
            model.load_state_dict(load_weights(os.path.join(local, "best_model.pt")))
            test = accuracy(model, data["test"])
            background = background_accuracy(data["test"])
            checkpoint = result.checkpoint.path if storage_fs is None else f"s3://{result.checkpoint.path}"
            record_listing(storage_uri, name)  # completed: from now on only the files it holds are valor's
            if run_id:
                log_final(uri, run_id, best_epoch=int(state["best_epoch"]), epochs=int(state["epoch"]),
                          val_accuracy=float(state["best_value"]), test_accuracy=test, background=background,
                          checkpoint_dir=local, checkpoint=checkpoint)
        finally:
            shutil.rmtree(local, ignore_errors=True)
    except BaseException:
        if run_id:
            try:
                tracking.end_run(uri, run_id, "FAILED")
            except Exception:
                pass
        raise
    return AVETrainOutcome(run_id=run_id, tracking_uri=uri, best_epoch=int(state["best_epoch"]),
                           val_accuracy=float(state["best_value"]), test_accuracy=test,
                           background_accuracy=background, epochs=int(state["epoch"]), history=state["history"],
                           checkpoint=checkpoint, seconds=time.perf_counter() - t_start,
                           trainable_params=count_trainable(model))


def storage_preflight(storage: Optional[str]) -> str:
    """Claim the Ray Train storage before any heavy work (workflows.outputs); returns it. OwnershipError /
    PermissionError / OSError name what is wrong."""
    return claim_storage(storage)[2]
