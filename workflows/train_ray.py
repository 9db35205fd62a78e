"""`valor train` on Ray Train: DDP HAN training (TorchTrainer, Train V2), per-epoch checkpoints, MLflow tracking.

    driver   load features+labels (workflows.trainset) -> ray.put the arrays once -> create the MLflow run
             -> TorchTrainer(train_loop, ScalingConfig(num_workers, use_gpu), RunConfig(storage, FailureConfig,
                CheckpointConfig)).fit()
             -> load the best-val weights from the last checkpoint -> final val/test scores, figures, artifacts
    worker   ray.get the arrays (zero-copy from the node's object store) -> build HAN (same seed on every rank),
             prepare_model (DDP: gloo on CPU, NCCL on GPU; with compile=cuda-graph no wrapper: the graphed step
             all-reduces the gradients itself, valor_core.graph_step) -> resume from ray.train.get_checkpoint() if any
             -> the train arrays resident on this worker's device when they fit (valor_core.fit.place_tensors)
             -> per epoch: disjoint shard of this rank, gathered on the device -> valor_core.fit.train_epoch (one
                host sync per epoch) -> all-reduce the loss
             -> rank 0: val scores, best-val tracking, checkpoint dir, MLflow epoch metrics -> ray.train.report

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

Checkpoints: every epoch rank 0 writes `model.pt`, `optimizer.pt`, `best_model.pt` (the best val `select_metric`
weights so far), `state.json` and `config.json` and reports them with `ray.train.Checkpoint` into the run's storage
path (local dir or s3://, through a pyarrow filesystem); the last two are kept. FailureConfig(max_failures): when a
worker dies, Ray Train restarts the worker group, the loop resumes from the last reported checkpoint (epoch e) and runs
epochs e+1..E, so the run ends with the same number of epochs.

Resume after the driver died (SIGKILL, a lost head node): the run's Ray Train directory is named by its identity,
`<run name or preset>-<first 12 hex of run_identity>` -- a SHA-256 of the resolved config, the train/val arrays'
contents, the data's provenance, workers, GPU use, tracking URI and experiment. Run again with the same arguments, the
Ray Train controller finds that directory's checkpoint_manager_snapshot.json and the workers resume from its latest
checkpoint (`ray.train.get_checkpoint()`); the MLflow run tagged with that directory (`valor.trial`) is reopened and each
epoch's metrics are logged once. A directory whose run completed holds `valor_completed.json` (the outcome and the files
Ray Train wrote): running the same command again then trains a new run in `<name>-2`, `-3`, ... `fresh=True`
(`valor train --fresh`) removes an incomplete directory of this identity and starts at epoch 1.

Test-only hooks (environment of the driver, passed to the workers through the loop config; never set in normal use):
    VALOR_TEST_KILL_WORKER="epoch=2,rank=1,marker=/tmp/x"   the worker of that rank SIGKILLs itself after its first
                                                            batch of that epoch, once (the marker file remembers),
                                                            after the controller has registered the previous
                                                            epoch's checkpoint (local storage)
    VALOR_TRAIN_RECORD_SHARDS=DIR                          every rank writes DIR/epoch<E>_rank<R>.json (its video ids)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import posixpath
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from valor_core.checkpoint_io import load_weights
from valor_core.config import to_dict
from valor_core.fit import (build_model, build_optimizer, compile_model, eval_inputs, evaluate_model, graphed_step,
                            place_tensors, predict, to_tensors, train_epoch)
from valor_core.graph_step import average_gradients
from valor_core.llp import LLPSplit
from valor_core.metrics import score_split
from valor_core.schedule import lr_at_epoch
from workflows import figures, objstore, tracking
from workflows.checkpoints import config_from_dict, load_checkpoint_model, save_checkpoint_dir
from workflows.outputs import OwnershipError, claim, read_marker, record, record_listing
from workflows.runtime import start_ray


DEFAULT_STORAGE = os.path.join("runs", "ray")  # Ray Train storage of `valor train` without --storage


# --- pieces shared by the worker loop and the driver ---------------------------------------------------------------


def shard_indices(n: int, world: int, rank: int, seed: int, epoch: int) -> np.ndarray:
    """This rank's disjoint, equal-length shard of range(n) for an epoch (see module doc)."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x5A11])
    return shard_of(rng.permutation(n), world, rank)


def shard_of(order, world: int, rank: int):
    """Rank `rank`'s DistributedSampler shard of an epoch's order: cut to a multiple of `world` (drop last), strided."""
    usable = (len(order) // world) * world
    return order[:usable][rank::world]


def mean_over_ranks(loss: float, videos: int, device) -> float:
    """The epoch's mean loss per video over all ranks (each rank's mean weighted by its shard; one all-reduce on
    `device`, CUDA for NCCL); the rank's own mean when not distributed."""
    import torch
    import torch.distributed as dist

    total = torch.tensor([loss * videos, float(videos)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return float(total[0] / total[1])


def per_worker_batch(batch_size: int, world: int) -> int:
    return max(1, math.ceil(batch_size / world))


# --- the per-worker loop ------------------------------------------------------------------------------------------------


def _parse_kill_hook(text: Optional[str]) -> Optional[dict]:
    if not text:
        return None
    hook = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    return {"epoch": int(hook.get("epoch", 2)), "rank": int(hook.get("rank", 1)),
            "marker": hook.get("marker") or os.path.join(tempfile.gettempdir(), "valor-kill-marker"),
            "after_batches": int(hook.get("after_batches", 1))}


def _wait_committed(snapshot: Optional[str], name: str, timeout: float = 60.0) -> None:
    """Test hook helper: wait until the Ray Train controller has registered checkpoint `name` (it appears in the run's
    checkpoint_manager_snapshot.json). A worker group that dies between `ray.train.report` and the controller's next
    poll loses that report, and the restart would resume from the checkpoint before it."""
    if not snapshot:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(snapshot) as f:
                if f'"{name}"' in f.read():
                    return
        except OSError:
            pass
        time.sleep(0.1)


def rank_batches(tensors: dict, index: np.ndarray, batch_size: int, kill: Optional[dict] = None):
    """This rank's batches of its shard `index`, gathered where `tensors` live (the shard's index moves there once)."""
    import torch

    device = next(iter(tensors.values())).device
    idx = torch.from_numpy(np.ascontiguousarray(index).astype(np.int64)).to(device)
    for b, start in enumerate(range(0, len(idx), batch_size)):
        if kill is not None and b == kill["after_batches"] and not os.path.exists(kill["marker"]):
            _wait_committed(kill.get("snapshot"), f"epoch_{kill['epoch'] - 1:03d}")
            with open(kill["marker"], "w") as f:
                f.write(f"killed pid {os.getpid()} at {time.time()}\n")
            os.kill(os.getpid(), signal.SIGKILL)  # a real, unclean worker death
        sel = idx[start:start + batch_size]
        yield {name: t.index_select(0, sel) for name, t in tensors.items()}


def train_loop(config: dict) -> None:
    """Ray Train worker function (one per rank)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config.get("threads") or 1))
    cfg = config_from_dict(config["train"])
    epochs = cfg.optim.epochs

    payload = ray.get(config["data_ref"])
    tensors = {name: torch.from_numpy(arr) for name, arr in payload["train"].items()}
    train_ids = payload["train_ids"]
    val = payload["val"] if rank == 0 else None
    n = len(train_ids)

    model = build_model(cfg)  # the same initial weights on every rank (cfg.seed)
    graphed = cfg.compile == "cuda-graph"  # the step in one CUDA graph: no DDP wrapper, the gradients averaged inside
    model = ray.train.torch.prepare_model(  # on this worker's device; DDP (gloo on CPU / NCCL on GPU) when world > 1
        model, parallel_strategy=None if graphed else "ddp")
    core = model.module if hasattr(model, "module") else model
    optimizer = build_optimizer(core, cfg)  # fused on CUDA (cfg.fused)
    device = next(core.parameters()).device
    tensors = place_tensors(tensors, device, cfg.resident)  # once: the whole train split on the device when it fits
    val_inputs = eval_inputs(core, val, cfg.resident) if val is not None else None
    train_model = compile_model(model, cfg)
    step = graphed_step(model, optimizer, cfg, per_worker_batch(cfg.optim.batch_size, world),
                        grad_sync=average_gradients(world) if world > 1 else None)  # cfg.compile cuda-graph, else None

    start_epoch, best_value, best_epoch, history = 1, -math.inf, 0, []
    best_state = None
    resumed_from = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            core.load_state_dict(load_weights(os.path.join(d, "model.pt"), map_location=device))
            optimizer.load_state_dict(load_weights(os.path.join(d, "optimizer.pt"), map_location=device))
            best_state = load_weights(os.path.join(d, "best_model.pt"))
            with open(os.path.join(d, "state.json")) as f:
                state = json.load(f)
        start_epoch = state["epoch"] + 1
        best_value, best_epoch, history = state["best_value"], state["best_epoch"], state["history"]
        resumed_from = state["epoch"]
        print(f"[valor train] rank {rank}: resumed from the epoch-{resumed_from} checkpoint", file=sys.stderr,
              flush=True)

    tracked = rank == 0 and bool(config.get("tracking_uri") and config.get("run_id"))
    logged: set[int] = set()
    if tracked:
        mlflow_client = tracking.client(config["tracking_uri"])
        logged = tracking.logged_steps(mlflow_client, config["run_id"], "train_loss")  # epochs of an earlier attempt
        if resumed_from:
            tracking.log_metrics(config["tracking_uri"], config["run_id"], {"resumed_from_epoch": resumed_from},
                                 step=resumed_from, c=mlflow_client)

    kill = config.get("kill")
    record = config.get("record_shards")
    bs = per_worker_batch(cfg.optim.batch_size, world)
    for epoch in range(start_epoch, epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 100003 + epoch * 101 + rank)  # dropout: same stream when an epoch is re-run
        index = shard_indices(n, world, rank, cfg.seed, epoch)
        if record:
            os.makedirs(record, exist_ok=True)
            with open(os.path.join(record, f"epoch{epoch}_rank{rank}.json"), "w") as f:
                json.dump({"epoch": epoch, "rank": rank, "world": world, "ids": train_ids[index].tolist()}, f)
        hook = kill if (kill and kill["epoch"] == epoch and kill["rank"] == rank) else None
        loss = train_epoch(train_model, optimizer, rank_batches(tensors, index, bs, hook), cfg, epoch, step)
        loss = mean_over_ranks(loss, len(index), device)
        train_seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": loss, "shard_videos": int(len(index)),
                                   "train_seconds": train_seconds, "resumed_from_epoch": resumed_from}
        checkpoint = None
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                val_scores = evaluate_model(core, val, inputs=val_inputs) if val is not None else None
                value = float(val_scores.get(cfg.select_metric)) if val_scores is not None else -loss
                if value > best_value or best_state is None:  # ties keep the earlier epoch (as valor_core.fit)
                    best_value, best_epoch = value, epoch
                    best_state = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
                record_e = {"epoch": epoch, "lr": lr_at_epoch(epoch, cfg.optim), "loss": loss,
                            "seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
                            "videos_per_s": len(index) * world / max(train_seconds, 1e-9),
                            "graph_replays": step.replays if step is not None else 0,  # steps replayed so far
                            "val": val_scores.as_dict() if val_scores is not None else None}
                history.append(record_e)
                metrics.update({"val_select": value, "best_value": best_value, "best_epoch": best_epoch})
                if tracked and epoch not in logged:
                    tracking.log_metrics(config["tracking_uri"], config["run_id"], tracking.epoch_metrics(record_e),
                                         step=epoch, c=mlflow_client)
                save_checkpoint_dir(
                    tmp, model_state={k: v.detach().cpu() for k, v in core.state_dict().items()},
                    best_state=best_state, optimizer_state=optimizer.state_dict(),
                    state={"epoch": epoch, "epochs": epochs, "best_value": best_value, "best_epoch": best_epoch,
                           "select_metric": cfg.select_metric, "history": history, "world_size": world},
                    config={"train": config["train"], "data": config.get("data_meta", {}),
                            "run_id": config.get("run_id")})
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint,
                             checkpoint_dir_name=f"epoch_{epoch:03d}" if checkpoint is not None else None)


# --- the driver -----------------------------------------------------------------------------------------------------


COMPLETED = "valor_completed.json"  # in a run's Ray Train directory: it completed (outcome + the files listed)


def run_identity(cfg_dict: dict, data: dict, data_meta: dict, **setup) -> str:
    """What makes two trainings the same run (module doc): SHA-256 of the resolved config, the data's provenance (the
    pipeline's own config aside), `setup` and the contents of every train and val array."""
    h = hashlib.sha256(json.dumps({"train": cfg_dict, "setup": setup,
                                   "data": {k: v for k, v in data_meta.items() if k != "pipeline"}},
                                  sort_keys=True, default=str).encode())
    for split in ("train", "val"):
        arrays = data.get(split)
        for f in dataclasses.fields(arrays) if arrays is not None else ():
            a = getattr(arrays, f.name)
            if a is not None:
                a = np.ascontiguousarray(a.astype(str) if a.dtype == object else a)
                h.update(f"{split}.{f.name}:{a.dtype.str}:{a.shape}".encode())
                h.update(a.data)
    return h.hexdigest()


def trial_dir(storage_uri: str, base: str, opts: Optional[dict] = None) -> tuple[str, Optional[dict]]:
    """(name, completion record of the attempt before it or None): the identity's first Ray Train directory of base,
    base-2, ... that has not completed."""
    done = None
    for k in range(1, 10_000):
        name = base if k == 1 else f"{base}-{k}"
        completed = objstore.join(storage_uri, name, COMPLETED)
        if not objstore.exists(completed, opts):
            return name, done
        done = json.loads(objstore.read_bytes(completed, opts))
    raise RuntimeError(f"{storage_uri}: 10,000 completed runs named {base}")


def _remove_incomplete(storage_uri: str, name: str) -> None:
    """Remove a run directory valor created (its storage's manifest lists it whole) that never completed (`fresh`)."""
    where = objstore.join(storage_uri, name)
    if not objstore.exists(where):
        return
    if f"{name}/" not in (read_marker(storage_uri) or {}).get("wrote", []):
        raise OwnershipError(f"{where} is not a run directory valor created: not removed (choose another --storage)")
    fs, path = objstore.fs_for(where)
    fs.delete_dir(path)


def _mark_completed(storage_uri: str, name: str, outcome: "TrainOutcome") -> None:
    """The run completed: its record (the outcome and the files Ray Train wrote) in its directory, and from now on
    only those files are valor's in the storage's manifest (workflows.outputs.record_listing)."""
    where = objstore.join(storage_uri, name)
    _, root = objstore.fs_for(where)
    files = sorted(posixpath.relpath(f, root) for f in objstore.list_files(where, recursive=True))
    objstore.write_bytes(objstore.join(where, COMPLETED),
                         json.dumps({"outcome": outcome.as_json(), "files": files}, indent=1).encode())
    record_listing(storage_uri, name)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


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


def claim_storage(storage: Optional[str]):
    """(storage_path for RunConfig, pyarrow filesystem or None, display URI); the storage is claimed as valor's
    checkpoints output (workflows.outputs: new, empty or made by valor train)."""
    storage = storage or DEFAULT_STORAGE
    claim(storage, "checkpoints")
    if objstore.is_s3(storage):
        fs, path = objstore.fs_for(storage)
        return path, fs, storage
    path = os.path.abspath(storage)
    os.makedirs(path, exist_ok=True)
    return path, None, path


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
    import ray.train
    from ray.train.torch import TorchTrainer

    t_start = time.perf_counter()
    start_ray(ray_address)  # joins a running Ray (the caller's), else starts one that lives as long as this process
    data_meta = dict(data_meta or {})
    cfg_dict = to_dict(cfg)
    cpus = ray.available_resources().get("CPU", 1.0)
    node_cpus = max([n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")] or [cpus])
    # CPU workers: an equal share of the cluster's CPUs, at most one node's worth (a worker lives on one node)
    threads = max(1, int(min(cpus // max(workers, 1), node_cpus))) if not use_gpu else 1
    tracking_uri = tracking.resolve_tracking_uri(tracking_uri) if track else None
    identity = run_identity(cfg_dict, data, data_meta, workers=workers, use_gpu=use_gpu, tracking_uri=tracking_uri,
                            experiment=experiment if track else None, run_name=run_name)
    storage_path, storage_fs, storage_uri = claim_storage(storage)
    trial_name, completed = trial_dir(storage_uri, f"{_slug(run_name or cfg.preset)}-{identity[:12]}")
    if reuse_completed and completed is not None:
        return TrainOutcome.from_json(completed["outcome"], storage_uri)
    if fresh:
        _remove_incomplete(storage_uri, trial_name)
    record(storage_uri, [f"{trial_name}/"])  # Ray Train names the files in it: the whole directory is valor's
    run_id = None
    if track:
        run_id = _open_run(tracking_uri, experiment, run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}",
                           objstore.join(storage_uri, trial_name), identity, fresh,
                           _run_params(cfg, cfg_dict, data_meta, workers, use_gpu, max_failures, storage),
                           _run_tags(cfg, data_meta))

    data_ref = ray.put(_train_payload(data, cfg))
    kill = _parse_kill_hook(os.environ.get("VALOR_TEST_KILL_WORKER"))
    if kill is not None and storage_fs is None:
        kill["snapshot"] = os.path.join(storage_path, trial_name, "checkpoint_manager_snapshot.json")
    loop_config = {
        "train": cfg_dict, "data_ref": data_ref, "threads": threads, "tracking_uri": tracking_uri, "run_id": run_id,
        "data_meta": data_meta, "kill": kill,
        "record_shards": os.environ.get("VALOR_TRAIN_RECORD_SHARDS"),
    }
    scaling = ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                      resources_per_worker=None if use_gpu else {"CPU": threads})
    run_config = ray.train.RunConfig(
        name=trial_name, storage_path=storage_path, storage_filesystem=storage_fs,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints))
    trainer = TorchTrainer(train_loop, train_loop_config=loop_config, scaling_config=scaling, run_config=run_config)
    try:
        result = trainer.fit()
        if getattr(result, "error", None):
            raise result.error
        if result.checkpoint is None:
            raise RuntimeError("training reported no checkpoint")
        with result.checkpoint.as_directory() as ckdir:
            local = tempfile.mkdtemp(prefix="valor-ckpt-")
            for name in ("best_model.pt", "config.json", "state.json"):
                shutil.copy(os.path.join(ckdir, name), os.path.join(local, name))
        outcome = finish(local, data, cfg, tracking_uri=tracking_uri, run_id=run_id, make_figures=make_figures)
        outcome.checkpoint = result.checkpoint.path if storage_fs is None else f"s3://{result.checkpoint.path}"
        outcome.storage = storage_uri
        outcome.seconds = time.perf_counter() - t_start
        _mark_completed(storage_uri, trial_name, outcome)
        if run_id:
            tracking.log_metrics(tracking_uri, run_id, {"train_seconds_total": outcome.seconds})
            tracking.set_tags(tracking_uri, run_id, {"valor.checkpoint": outcome.checkpoint})
            tracking.end_run(tracking_uri, run_id, "FINISHED")
        shutil.rmtree(local, ignore_errors=True)
        return outcome
    except BaseException:
        if run_id:
            try:
                tracking.end_run(tracking_uri, run_id, "FAILED")
            except Exception:
                pass
        raise


def _run_params(cfg, cfg_dict: dict, data_meta: dict, workers: int, use_gpu: bool, max_failures: int,
                storage: Optional[str]) -> dict:
    params = tracking.flatten(cfg_dict)
    params.update(tracking.flatten({"data": data_meta}))
    params.update({"train.workers": str(workers), "train.use_gpu": str(use_gpu),
                   "train.per_worker_batch": str(per_worker_batch(cfg.optim.batch_size, workers)),
                   "train.max_failures": str(max_failures), "train.storage": str(storage or "runs/ray")})
    return params


def _run_tags(cfg, data_meta: dict) -> dict:
    return {"valor.preset": cfg.preset, "valor.features": str(data_meta.get("features")),
            "valor.labels": str(data_meta.get("labels")), "valor.teachers": json.dumps(data_meta.get("teachers"))}


def _open_run(uri: str, experiment: str, run_name: str, trial_uri: str, identity: str, fresh: bool, params: dict,
              tags: dict) -> str:
    """The MLflow run of this Ray Train directory: the unfinished one tagged with it (reopened: a resume), else a new
    one (`fresh`: always new)."""
    run_id = None if fresh else tracking.open_run_tagged(uri, experiment, "valor.trial", trial_uri)
    if run_id is not None:
        tracking.reopen_run(uri, run_id)
        return run_id
    return tracking.start_run(uri, experiment, run_name, params,
                              {**tags, "valor.trial": trial_uri, "valor.identity": identity})


def finish(ckpt_dir: str, data: dict, cfg, *, tracking_uri: Optional[str], run_id: Optional[str],
           make_figures: bool = True) -> TrainOutcome:
    """Best-val weights -> final val/test scores; with a run: final metrics, checkpoint, labels, figures."""
    model, cfg_loaded, meta = load_checkpoint_model(ckpt_dir)
    with open(os.path.join(ckpt_dir, "state.json")) as f:
        state = json.load(f)
    results: dict[str, Any] = {}
    preds: dict[str, tuple] = {}
    for split in ("val", "test"):
        arrays = data.get(split)
        if arrays is None or arrays.audio_gt is None:
            continue
        pa, pv = predict(model, arrays)
        preds[split] = (pa, pv)
        results[split] = score_split(LLPSplit(name=split, video_ids=arrays.video_ids, weak=arrays.weak,
                                        audio_gt=arrays.audio_gt, visual_gt=arrays.visual_gt), pa, pv)
    outcome = TrainOutcome(run_id=run_id, tracking_uri=tracking_uri, val=results.get("val"), test=results.get("test"),
                           epochs=int(state["epoch"]), best_epoch=int(state["best_epoch"]), checkpoint=ckpt_dir,
                           storage="", history=state.get("history", []))
    if run_id:
        metrics = {"best_epoch": state["best_epoch"], "epochs_completed": state["epoch"]}
        for split, scores in results.items():
            metrics.update(tracking.scores_flat(scores, f"final.{split}"))
            metrics.update({f"final.{split}.fidelity.{k}": v for k, v in scores.get("fidelity", {}).items()})
        tracking.log_metrics(tracking_uri, run_id, metrics, step=int(state["epoch"]))
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
