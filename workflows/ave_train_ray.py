"""`valor ave train --ray`: HAN / VALOR on AVE (appendix F) as a Ray Train job (TorchTrainer, DDP), tracked in MLflow.
The Ray Train set-up, resume (also after the driver was killed: the run's directory is named by its identity),
best-epoch tracking, checkpoints, MLflow run and completion record are workflows.ray_train_harness's; this file gives
it the AVE model, epoch step and metric.

    driver   the run's identity, MLflow params and tags -> the harness -> best_model.pt of the last checkpoint -> test
             segment accuracy -> log_scores (metrics + checkpoint/)
    worker   build_ave_model (same seed on every rank) -> prepare_model (DDP when > 1 worker: gloo on CPU, NCCL on GPU)
             -> per epoch: this rank's shard of the epoch's permutation -> valor_core.ave_fit.train_ave_epoch ->
             all-reduce the loss -> rank 0: val segment accuracy

The science is valor_core.ave_fit's (config, model, Eq. 11 / Eq. 13 losses, segment accuracy, best epoch = the first
with the highest val accuracy); this file only distributes and records it.

Shuffling (why not workflows.train_ray.shard_indices): fit_ave draws each epoch's order as torch.randperm(N) from one
torch.Generator seeded with cfg.seed and continued across epochs; shard_indices draws a NumPy permutation from
(seed, epoch), so even one worker would see other batches. Here every rank keeps that same torch generator (one draw per
epoch, identical on all ranks) and takes its DistributedSampler shard of it (the permutation cut to floor(N / W) * W,
rank r the positions r, r + W, ...; per-worker batch ceil(batch / W), workflows.ray_train_harness.per_worker_batch).
Dropout draws from the global torch RNG seeded with cfg.seed after the model is built, as in fit_ave (rank r > 0: its
own seed). So with one worker the run IS fit_ave: the same batches, dropout masks and steps, hence the same per-epoch
losses, val accuracies, best epoch and test accuracy (tests/test_ave_ray.py checks it). Checkpoints keep both RNG
states (rng.pt), so an epoch re-run after a failure (a worker's or the driver's) continues the same streams on rank 0:
with one worker a resumed run computes what an undisturbed one does.

MLflow (workflows.tracking): params = the resolved TrainConfig flattened + `data.source`, `data.videos.<split>`,
`train.workers`, `train.use_gpu`, `train.per_worker_batch`, `train.storage`; per epoch (step = epoch) `loss`,
`val_accuracy`, `lr`, `epoch_seconds`; at the end `best_epoch`, `final.val_accuracy`, `final.test_accuracy`,
`final.background_accuracy`, artifact `checkpoint/` (best_model.pt, config.json, state.json) and tag
`valor.checkpoint` (the Ray Train checkpoint). The in-process `valor ave train --tracking-uri` logs the same run
through start_tracking / epoch_metrics / log_final.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch

from valor_core.ave import AVEArrays
from valor_core.ave_fit import accuracy, ave_tensors, build_ave_model, train_ave_epoch
from valor_core.ave_metrics import segment_accuracy
from valor_core.config import TrainConfig, to_dict
from valor_core.fit import build_optimizer
from valor_core.han import count_trainable
from valor_core.schedule import lr_at_epoch
from workflows import tracking
from workflows.checkpoints import read_best_weights, read_state, save_checkpoint_dir
from workflows.ray_train_harness import (DEFAULT_STORAGE, Finished, Job, claim_storage, fit, kill_hook,
                                         mean_over_ranks, per_worker_batch, rank_batches, record_shard, run_epochs,
                                         run_identity, shard_of)
from workflows.runtime import start_ray

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


def run_params(cfg: TrainConfig, data_meta: dict, extra: Optional[dict] = None) -> dict:
    """The MLflow params of a run: the flattened config, `data.*` and `extra`."""
    params = tracking.flatten(to_dict(cfg))
    params.update(tracking.flatten({"data": data_meta}))
    params.update({k: str(v) for k, v in (extra or {}).items()})
    return params


def run_tags(cfg: TrainConfig, data_meta: dict) -> dict:
    return {"valor.preset": cfg.preset, "valor.dataset": "ave", "valor.source": str(data_meta.get("source"))}


def default_run_name(cfg: TrainConfig, run_name: Optional[str]) -> str:
    return run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_tracking(cfg: TrainConfig, data_meta: dict, *, tracking_uri: Optional[str], experiment: str,
                   run_name: Optional[str], extra: Optional[dict] = None) -> tuple[str, str]:
    """Create the MLflow run with the flattened config, `data.*` and `extra` params; returns (tracking URI, run id)."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    return uri, tracking.start_run(uri, experiment, default_run_name(cfg, run_name), run_params(cfg, data_meta, extra),
                                   run_tags(cfg, data_meta))


def log_scores(uri: str, run_id: str, *, best_epoch: int, epochs: int, val_accuracy: float, test_accuracy: float,
               background: float, checkpoint_dir: str) -> None:
    """Final metrics and the `checkpoint/` artifact."""
    tracking.log_metrics(uri, run_id, {"best_epoch": best_epoch, "final.val_accuracy": val_accuracy,
                                       "final.test_accuracy": test_accuracy, "final.background_accuracy": background},
                         step=epochs)
    tracking.log_dir(uri, run_id, checkpoint_dir, "checkpoint")


def log_final(uri: str, run_id: str, **scores) -> None:
    """`log_scores` (its keyword arguments), then the run ends FINISHED (the in-process run)."""
    log_scores(uri, run_id, **scores)
    tracking.end_run(uri, run_id, "FINISHED")


def checkpoint_config(cfg: TrainConfig, data_meta: dict, run_id: Optional[str]) -> dict:
    """config.json of an AVE checkpoint."""
    return {"train": to_dict(cfg), "data": data_meta, "run_id": run_id, "dataset": "ave"}


def write_checkpoint(path: str, cfg: TrainConfig, *, model_state: dict, best_state: dict,
                     optimizer_state: Optional[dict], state: dict, data_meta: dict, run_id: Optional[str]) -> str:
    """workflows.checkpoints' layout (model.pt, best_model.pt, optimizer.pt, state.json, config.json)."""
    return save_checkpoint_dir(path, model_state=model_state, best_state=best_state, optimizer_state=optimizer_state,
                               state=state, config=checkpoint_config(cfg, data_meta, run_id))


# --- the per-worker epochs (workflows.ray_train_harness runs them) ---------------------------------------------------


class AVEEpochs:
    """HAN / VALOR on AVE as a harness task (workflows.ray_train_harness.EpochTask): one per rank."""

    label, loss_metric = "valor ave train", "loss"

    def __init__(self, config: dict):
        import ray
        import ray.train
        import ray.train.torch

        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # val, read from the store
        ctx = ray.train.get_context()
        self.rank, self.world, self.config = ctx.get_world_rank(), ctx.get_world_size(), config
        torch.set_num_threads(int(config.get("threads") or 1))
        self.cfg = cfg = config["cfg"]
        self.epochs = cfg.optim.epochs
        payload = ray.get(config["data_ref"])
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in payload["train"].items()}  # writable copies
        self.train_ids = payload["train_ids"]
        self.val = payload["val"] if self.rank == 0 else None

        core = build_ave_model(cfg)
        # DDP only when world > 1 (moved to this worker's device); HAN's MMIL attention heads take no part in the AVE
        # losses (appendix F pools by averaging), so DDP must expect parameters without gradients
        self.model = ray.train.torch.prepare_model(core, parallel_strategy_kwargs={"find_unused_parameters": True})
        self.core = self.model.module if hasattr(self.model, "module") else self.model
        self.device = next(self.core.parameters()).device
        self.optimizer = build_optimizer(self.core, cfg)
        self.tensors = {k: t.to(self.device) for k, t in tensors.items()}
        self.batch = per_worker_batch(cfg.optim.batch_size, self.world)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # the epoch permutations: the same on every rank
        torch.manual_seed(cfg.seed if self.rank == 0 else cfg.seed * 100003 + self.rank)  # dropout (rank 0: fit_ave)

    def train_epoch(self, epoch: int) -> dict:
        order = torch.randperm(len(self.train_ids), generator=self.generator)
        index = shard_of(order, self.world, self.rank).numpy()  # see module doc
        record_shard(self.config, epoch, self.rank, self.world, self.train_ids[index])
        batches = rank_batches(self.tensors, index, self.batch, kill_hook(self.config, epoch, self.rank))
        loss = train_ave_epoch(self.model, self.optimizer, batches, self.cfg, epoch)
        return {"loss": mean_over_ranks(loss, len(index), self.device)}

    def evaluate(self, epoch: int, trained: dict, t0: float) -> tuple[float, dict]:
        """Val segment accuracy."""
        value = accuracy(self.core, self.val)
        return value, {"epoch": epoch, "lr": lr_at_epoch(epoch, self.cfg.optim), "loss": trained["loss"],
                       "val_accuracy": value, "seconds": time.perf_counter() - t0}

    def epoch_metrics(self, record: dict) -> dict:
        return epoch_metrics(record)

    def checkpoint_config(self) -> dict:
        return checkpoint_config(self.cfg, self.config.get("data_meta", {}), self.config.get("run_id"))

    def state_extra(self) -> dict:
        return {}

    def rng_state(self) -> dict:
        return {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}

    def restore_rng(self, rng: Optional[dict], start_epoch: int) -> None:
        """The permutation stream on every rank; the dropout stream on rank 0 (rank r > 0: reseeded)."""
        if rng is None:
            return
        self.generator.set_state(rng["generator"])
        if self.rank == 0:
            torch.set_rng_state(rng["torch"])
        else:
            torch.manual_seed(self.cfg.seed * 100003 + self.rank * 101 + start_epoch)


def ave_train_loop(config: dict) -> None:
    """Ray Train worker function (one per rank)."""
    run_epochs(AVEEpochs(config), config)


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

    def as_json(self) -> dict:
        """What valor_completed.json records (the history is in the checkpoint's state.json)."""
        return {k: v for k, v in asdict(self).items() if k != "history"}


def _payload(data: dict[str, AVEArrays], cfg: TrainConfig) -> dict:
    arrays = {k: np.ascontiguousarray(t.numpy()) for k, t in ave_tensors(data["train"], cfg.loss).items()}
    return {"train": arrays, "train_ids": np.asarray(data["train"].video_ids).astype(str), "val": data["val"]}


def _score(done: Finished, cfg: TrainConfig, test: AVEArrays) -> AVETrainOutcome:
    """Test segment accuracy of the best-val weights; with a run: final metrics and the checkpoint/ artifact."""
    state = read_state(done.local)
    model = build_ave_model(cfg)
    model.load_state_dict(read_best_weights(done.local))
    outcome = AVETrainOutcome(
        run_id=done.run_id, tracking_uri=done.tracking_uri, best_epoch=int(state["best_epoch"]),
        val_accuracy=float(state["best_value"]), test_accuracy=accuracy(model, test),
        background_accuracy=background_accuracy(test), epochs=int(state["epoch"]), history=state["history"],
        checkpoint=done.checkpoint, seconds=0.0, trainable_params=count_trainable(model))
    if done.run_id:
        log_scores(done.tracking_uri, done.run_id, best_epoch=outcome.best_epoch, epochs=outcome.epochs,
                   val_accuracy=outcome.val_accuracy, test_accuracy=outcome.test_accuracy,
                   background=outcome.background_accuracy, checkpoint_dir=done.local)
    return outcome


def train_ave_ray(cfg: TrainConfig, data: dict[str, AVEArrays], *, data_meta: dict, workers: int = 1,
                  use_gpu: bool = False, threads: Optional[int] = None, tracking_uri: Optional[str] = None,
                  experiment: str = "valor", storage: Optional[str] = None, run_name: Optional[str] = None,
                  max_failures: int = 3, keep_checkpoints: int = 2, track: bool = True,
                  fresh: bool = False) -> AVETrainOutcome:
    """Train `cfg` (ave_train_config) on data {"train", "val", "test"} with Ray Train DDP over `workers`. An
    interrupted run of the same identity resumes from its last checkpoint into its MLflow run; `fresh` starts it over
    (workflows.ray_train_harness)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    t_start = time.perf_counter()
    start_ray()  # joins the caller's Ray (or $RAY_ADDRESS), else starts one for this process
    threads = max(1, int(threads or os.environ.get("VALOR_THREADS") or 1))  # as fit.configure_threads
    uri = tracking.resolve_tracking_uri(tracking_uri) if track else None
    extra = {"train.workers": workers, "train.use_gpu": use_gpu,
             "train.per_worker_batch": per_worker_batch(cfg.optim.batch_size, workers), "train.threads": threads,
             "train.max_failures": max_failures, "train.storage": storage or DEFAULT_STORAGE}
    job = Job(loop=ave_train_loop, payload=lambda: _payload(data, cfg),
              loop_config={"cfg": cfg, "data_meta": data_meta},
              base=run_name or cfg.preset, run_name=default_run_name(cfg, run_name),
              identity=run_identity(to_dict(cfg), data, data_meta, workers=workers, use_gpu=use_gpu,
                                    tracking_uri=uri, experiment=experiment if track else None, run_name=run_name),
              workers=workers, use_gpu=use_gpu, threads=threads, storage=storage, tracking_uri=uri,
              experiment=experiment, params=run_params(cfg, data_meta, extra), tags=run_tags(cfg, data_meta),
              max_failures=max_failures, keep_checkpoints=keep_checkpoints, fresh=fresh)
    return fit(job, lambda done: _score(done, cfg, data["test"]), started=t_start)


def storage_preflight(storage: Optional[str]) -> str:
    """Claim the Ray Train storage before any heavy work (workflows.outputs); returns it. OwnershipError /
    PermissionError / OSError name what is wrong."""
    return claim_storage(storage)[2]
