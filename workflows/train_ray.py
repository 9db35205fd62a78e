"""`valor train` on Ray Train: DDP HAN training (TorchTrainer, Train V2), per-epoch checkpoints, MLflow tracking.
The Ray Train set-up, resume, best-epoch tracking, checkpoints, MLflow run and completion record are
workflows.ray_train_harness's; this file gives it HAN on LLP: the model, the epoch step and the val metric.

    driver   load features+labels (workflows.trainset) -> the run's identity, MLflow params and tags -> the harness
             -> best-val weights of the last checkpoint -> final val/test scores, figures, artifacts (`finish`)
    worker   ray.get the arrays (zero-copy from the node's object store) -> build HAN (same seed on every rank),
             prepare_model (DDP: gloo on CPU, NCCL on GPU; with compile=cuda-graph no wrapper: the graphed step
             all-reduces the gradients itself, valor_core.graph_step) -> the harness resumes it if there is a checkpoint
             -> the train arrays resident on this worker's device when they fit (valor_core.fit.place_tensors)
             -> per epoch: disjoint shard of this rank, gathered on the device -> valor_core.fit.train_epoch (one
                host sync per epoch) -> all-reduce the loss -> rank 0: val scores (`select_metric`)

Data: the train split is a dict of NumPy arrays put into the object store once; every worker maps it read-only
(zero-copy on one node) and takes its shard by index. Chosen over Ray Data by measurement (bench/train.py
--feed-only, 10,000 LLP-sim videos of the `valor` preset, 2 workers, 2 shared cores): feeding one epoch's batches
took 0.6-2.1 s from the object-store arrays and 7-26 s through `get_dataset_shard().iter_torch_batches()` (streaming
split executor, block transfer, Arrow -> tensor conversion each epoch), with the full training epoch ~150 s either
way on that loaded machine -- and the arrays give an exact, seeded global reshuffle per epoch and the same shards when
an epoch is re-run after a failure (a streaming split with a local shuffle buffer gives neither). The whole train split
fits in memory (float16 sim features: ~0.5 GB for 10,000 videos at the paper's widths). Ray Data remains the tool for
extraction, where decoding dominates and the data does not fit.

Sharding (DistributedSampler semantics, drop-last): each epoch draws one permutation of the N train videos from
(seed, epoch), cuts it to floor(N / W) * W and gives rank r the positions r, r + W, r + 2W, ... -- disjoint shards of
equal length (every rank makes the same number of DDP steps), different videos dropped each epoch, and the same
shards again when an epoch is re-run after a failure. Per-worker batch = ceil(batch_size / W): the global batch stays
the preset's (64 for VALOR) with DDP's gradient averaging.

Checkpoints (workflows.checkpoints): every epoch rank 0 writes `model.pt`, `optimizer.pt`, `best_model.pt` (the best
val `select_metric` weights so far), `state.json` and `config.json` into the run's storage path (local dir or s3://);
the last two are kept. FailureConfig(max_failures): when a worker dies, Ray Train restarts the worker group, the loop
resumes from the last reported checkpoint (epoch e) and runs epochs e+1..E, so the run ends with the same number of
epochs; each epoch seeds its own dropout stream (seed, epoch, rank), so a re-run epoch computes what it did.

Run identity (workflows.ray_train_harness: a killed driver's run resumes): a SHA-256 of the resolved config, the
train/val arrays' contents, the data's provenance, workers, GPU use, tracking URI, experiment and run name.
`valor train --fresh` starts an interrupted run over; the pipeline's train stage reuses a completed one.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from valor_core.config import to_dict
from valor_core.fit import (build_model, build_optimizer, compile_model, eval_inputs, evaluate_model, graphed_step,
                            place_tensors, predict, to_tensors, train_epoch)
from valor_core.graph_step import average_gradients
from valor_core.llp import LLPSplit
from valor_core.metrics import score_split
from valor_core.schedule import lr_at_epoch
from workflows import figures, tracking
from workflows.checkpoints import config_from_dict, load_checkpoint_model, read_state
from workflows.ray_train_harness import (DEFAULT_STORAGE, Finished, Job, fit, kill_hook, mean_over_ranks,
                                         per_worker_batch, rank_batches, record_shard, run_epochs, run_identity,
                                         shard_of)
from workflows.runtime import start_ray


# --- the per-worker epochs (workflows.ray_train_harness runs them) ---------------------------------------------------


def shard_indices(n: int, world: int, rank: int, seed: int, epoch: int) -> np.ndarray:
    """This rank's disjoint, equal-length shard of range(n) for an epoch (see module doc)."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x5A11])
    return shard_of(rng.permutation(n), world, rank)


class HANEpochs:
    """HAN on LLP as a harness task (workflows.ray_train_harness.EpochTask): one per rank."""

    label, loss_metric = "valor train", "train_loss"

    def __init__(self, config: dict):
        import ray
        import ray.train
        import ray.train.torch
        import torch

        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        ctx = ray.train.get_context()
        self.rank, self.world, self.config = ctx.get_world_rank(), ctx.get_world_size(), config
        torch.set_num_threads(int(config.get("threads") or 1))
        self.cfg = cfg = config_from_dict(config["train"])
        self.epochs = cfg.optim.epochs
        payload = ray.get(config["data_ref"])
        tensors = {name: torch.from_numpy(arr) for name, arr in payload["train"].items()}
        self.train_ids = payload["train_ids"]
        self.val = payload["val"] if self.rank == 0 else None

        model = build_model(cfg)  # the same initial weights on every rank (cfg.seed)
        graphed = cfg.compile == "cuda-graph"  # the step in one CUDA graph: no DDP wrapper, gradients averaged inside
        model = ray.train.torch.prepare_model(  # on this worker's device; DDP (gloo on CPU / NCCL on GPU), world > 1
            model, parallel_strategy=None if graphed else "ddp")
        self.core = core = model.module if hasattr(model, "module") else model
        self.optimizer = build_optimizer(core, cfg)  # fused on CUDA (cfg.fused)
        self.device = next(core.parameters()).device
        # once: the whole train split on the device when it fits
        self.tensors = place_tensors(tensors, self.device, cfg.resident)
        self.val_inputs = eval_inputs(core, self.val, cfg.resident) if self.val is not None else None
        self.train_model = compile_model(model, cfg)
        self.batch = per_worker_batch(cfg.optim.batch_size, self.world)
        self.step = graphed_step(model, self.optimizer, cfg, self.batch,  # cfg.compile cuda-graph, else None
                                 grad_sync=average_gradients(self.world) if self.world > 1 else None)

    def train_epoch(self, epoch: int) -> dict:
        import torch

        t0 = time.perf_counter()
        torch.manual_seed(self.cfg.seed * 100003 + epoch * 101 + self.rank)  # dropout: same stream when re-run
        index = shard_indices(len(self.train_ids), self.world, self.rank, self.cfg.seed, epoch)
        record_shard(self.config, epoch, self.rank, self.world, self.train_ids[index])
        batches = rank_batches(self.tensors, index, self.batch, kill_hook(self.config, epoch, self.rank))
        loss = train_epoch(self.train_model, self.optimizer, batches, self.cfg, epoch, self.step)
        loss = mean_over_ranks(loss, len(index), self.device)
        return {"train_loss": loss, "shard_videos": int(len(index)), "train_seconds": time.perf_counter() - t0}

    def evaluate(self, epoch: int, trained: dict, t0: float) -> tuple[float, dict]:
        """The val `select_metric` (no val split: minus the loss)."""
        scores = evaluate_model(self.core, self.val, inputs=self.val_inputs) if self.val is not None else None
        loss, seconds = trained["train_loss"], trained["train_seconds"]
        value = float(scores.get(self.cfg.select_metric)) if scores is not None else -loss
        return value, {"epoch": epoch, "lr": lr_at_epoch(epoch, self.cfg.optim), "loss": loss,
                       "seconds": time.perf_counter() - t0, "train_seconds": seconds,
                       "videos_per_s": trained["shard_videos"] * self.world / max(seconds, 1e-9),
                       "graph_replays": self.step.replays if self.step is not None else 0,  # steps replayed so far
                       "val": scores.as_dict() if scores is not None else None}

    def epoch_metrics(self, record: dict) -> dict:
        return tracking.epoch_metrics(record)

    def checkpoint_config(self) -> dict:
        return {"train": self.config["train"], "data": self.config.get("data_meta", {}),
                "run_id": self.config.get("run_id")}

    def state_extra(self) -> dict:
        return {"select_metric": self.cfg.select_metric}

    def rng_state(self) -> None:
        return None  # every epoch seeds its own streams

    def restore_rng(self, rng: Optional[dict], start_epoch: int) -> None:
        pass


def train_loop(config: dict) -> None:
    """Ray Train worker function (one per rank)."""
    run_epochs(HANEpochs(config), config)


# --- the driver -----------------------------------------------------------------------------------------------------


@dataclass
class TrainOutcome:
    run_id: Optional[str]
    tracking_uri: Optional[str]
    val: dict  # best-val weights scored as `valor evaluate --json` does: split, videos, segment, event, fidelity
    test: Optional[dict]
    epochs: int
    best_epoch: int
    checkpoint: str  # the last Ray Train checkpoint (URI or local path)
    storage: str
    history: list = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri, "val": self.val, "test": self.test,
                "epochs": self.epochs, "best_epoch": self.best_epoch, "checkpoint": self.checkpoint,
                "seconds": round(self.seconds, 2)}

    @classmethod
    def from_json(cls, d: dict, storage: str) -> "TrainOutcome":
        return cls(run_id=d["run_id"], tracking_uri=d["tracking_uri"], val=d["val"], test=d["test"],
                   epochs=d["epochs"], best_epoch=d["best_epoch"], checkpoint=d["checkpoint"], storage=storage,
                   seconds=d.get("seconds", 0.0))


def _train_payload(data: dict, cfg) -> dict:
    train = data["train"]
    arrays = {name: np.ascontiguousarray(t.numpy()) for name, t in to_tensors(train, cfg).items()}
    return {"train": arrays, "train_ids": np.asarray(train.video_ids).astype(str), "val": data.get("val")}


def train(cfg, data: dict, *, workers: int = 2, use_gpu: bool = False, tracking_uri: Optional[str] = None,
          experiment: str = "valor", storage: Optional[str] = None, run_name: Optional[str] = None,
          data_meta: Optional[dict] = None, max_failures: int = 3, keep_checkpoints: int = 2,
          ray_address: Optional[str] = None, track: bool = True, make_figures: bool = True, fresh: bool = False,
          reuse_completed: bool = False) -> TrainOutcome:
    """Train `cfg` (a TrainConfig) on `data` ({"train", "val", "test"} -> AVVPArrays) with Ray Train DDP.

    An interrupted run of the same identity resumes from its last checkpoint into its MLflow run (module doc);
    `fresh` starts it over at epoch 1; `reuse_completed` returns the outcome of a completed run of this identity
    instead of training another (the pipeline's resumable train stage)."""
    import ray

    t_start = time.perf_counter()
    start_ray(ray_address)  # joins a running Ray (the caller's), else starts one that lives as long as this process
    data_meta = dict(data_meta or {})
    cfg_dict = to_dict(cfg)
    cpus = ray.available_resources().get("CPU", 1.0)
    node_cpus = max([n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")] or [cpus])
    # CPU workers: an equal share of the cluster's CPUs, at most one node's worth (a worker lives on one node)
    threads = max(1, int(min(cpus // max(workers, 1), node_cpus))) if not use_gpu else 1
    tracking_uri = tracking.resolve_tracking_uri(tracking_uri) if track else None
    job = Job(loop=train_loop, payload=lambda: _train_payload(data, cfg),
              loop_config={"train": cfg_dict, "data_meta": data_meta},
              base=run_name or cfg.preset, run_name=run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}",
              identity=run_identity(cfg_dict, data, data_meta, workers=workers, use_gpu=use_gpu,
                                    tracking_uri=tracking_uri, experiment=experiment if track else None,
                                    run_name=run_name),
              workers=workers, use_gpu=use_gpu, threads=threads, storage=storage, tracking_uri=tracking_uri,
              experiment=experiment, params=_run_params(cfg, cfg_dict, data_meta, workers, use_gpu, max_failures,
                                                        storage),
              tags=_run_tags(cfg, data_meta), max_failures=max_failures, keep_checkpoints=keep_checkpoints,
              fresh=fresh)

    def score(done: Finished) -> TrainOutcome:
        outcome = finish(done.local, data, cfg, tracking_uri=done.tracking_uri, run_id=done.run_id,
                         make_figures=make_figures)
        outcome.checkpoint, outcome.storage = done.checkpoint, done.storage
        return outcome

    return fit(job, score, started=t_start, reuse=TrainOutcome.from_json if reuse_completed else None)


def _run_params(cfg, cfg_dict: dict, data_meta: dict, workers: int, use_gpu: bool, max_failures: int,
                storage: Optional[str]) -> dict:
    params = tracking.flatten(cfg_dict)
    params.update(tracking.flatten({"data": data_meta}))
    params.update({"train.workers": str(workers), "train.use_gpu": str(use_gpu),
                   "train.per_worker_batch": str(per_worker_batch(cfg.optim.batch_size, workers)),
                   "train.max_failures": str(max_failures), "train.storage": str(storage or DEFAULT_STORAGE)})
    return params


def _run_tags(cfg, data_meta: dict) -> dict:
    return {"valor.preset": cfg.preset, "valor.features": str(data_meta.get("features")),
            "valor.labels": str(data_meta.get("labels")), "valor.teachers": json.dumps(data_meta.get("teachers"))}


def finish(ckpt_dir: str, data: dict, cfg, *, tracking_uri: Optional[str], run_id: Optional[str],
           make_figures: bool = True) -> TrainOutcome:
    """Best-val weights -> final val/test scores (on a subset of a split: said in the scores and the run's tags);
    with a run: final metrics, subset tags, checkpoint, labels, figures."""
    model, cfg_loaded, meta = load_checkpoint_model(ckpt_dir)
    state = read_state(ckpt_dir)
    in_split = meta.get("data", {}).get("videos_in_split", {})  # the whole split's size (trainset.split_sizes)
    results: dict[str, Any] = {}
    preds: dict[str, tuple] = {}
    for split in ("val", "test"):
        arrays = data.get(split)
        if arrays is None or arrays.audio_gt is None:
            continue
        pa, pv = predict(model, arrays)
        preds[split] = (pa, pv)
        results[split] = score_split(LLPSplit(name=split, video_ids=arrays.video_ids, weak=arrays.weak,
                                        audio_gt=arrays.audio_gt, visual_gt=arrays.visual_gt), pa, pv,
                                     videos_in_split=in_split.get(split))
    outcome = TrainOutcome(run_id=run_id, tracking_uri=tracking_uri, val=results.get("val"), test=results.get("test"),
                           epochs=int(state["epoch"]), best_epoch=int(state["best_epoch"]), checkpoint=ckpt_dir,
                           storage="", history=state.get("history", []))
    if run_id:
        metrics = {"best_epoch": state["best_epoch"], "epochs_completed": state["epoch"]}
        for split, scores in results.items():
            metrics.update(tracking.scores_flat(scores, f"final.{split}"))
            metrics.update({f"final.{split}.fidelity.{k}": v for k, v in scores.get("fidelity", {}).items()})
        tracking.log_metrics(tracking_uri, run_id, metrics, step=int(state["epoch"]))
        tracking.set_tags(tracking_uri, run_id, tracking.subset_tags(results))
        tracking.log_dir(tracking_uri, run_id, ckpt_dir, "checkpoint")
        data_meta = meta.get("data", {})
        tracking.log_json(tracking_uri, run_id, {"labels": data_meta.get("labels"),
                                                 "thresholds": data_meta.get("thresholds"),
                                                 "teachers": data_meta.get("teachers")}, "labels", "labels.json")
        tracking.log_json(tracking_uri, run_id, {"best_epoch": state["best_epoch"], **results}, "scores", "final.json")
        if make_figures and preds:
            with tempfile.TemporaryDirectory() as d:
                for split, (pa, pv) in preds.items():
                    arrays = data[split]
                    figures.plot_classwise(pa, pv, arrays.audio_gt, arrays.visual_gt,
                                            os.path.join(d, f"classwise_f_{split}.png"),
                                            title=f"{cfg.preset} - {split} (best epoch {state['best_epoch']})")
                    figures.plot_timelines(arrays.video_ids, pa, pv, arrays.audio_gt, arrays.visual_gt,
                                            os.path.join(d, f"timelines_{split}.png"),
                                            title=f"{cfg.preset} - {split}: parsing timelines")
                tracking.log_dir(tracking_uri, run_id, d, "figures")
    return outcome
