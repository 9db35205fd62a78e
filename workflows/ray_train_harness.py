"""The one Ray Train harness of valor's trainings (`valor train`: workflows.train_ray; `valor ave train --ray`:
workflows.ave_train_ray). A task gives its model, its epoch step and its metric; the harness does the rest.

    driver   run identity -> the run's Ray Train directory in the claimed storage (trial_dir) -> the MLflow run
             (opened, or reopened: a resume) -> ray.put the task's arrays once -> TorchTrainer(task loop,
             ScalingConfig, RunConfig(storage, FailureConfig, CheckpointConfig)).fit() -> the best-val files of the
             last checkpoint copied back -> the task scores them -> valor_completed.json + the storage's manifest ->
             the MLflow run FINISHED (FAILED on any error)
    worker   the task builds its model and optimiser -> `run_epochs`: resume from ray.train.get_checkpoint()
             (workflows.checkpoints.read_resume) -> per epoch the task's step -> rank 0: the task's val metric,
             best-epoch tracking (ties keep the earlier epoch), MLflow epoch metrics (each epoch once, also across
             resumes), the checkpoint (workflows.checkpoints.save_checkpoint_dir) -> ray.train.report

Resume after the driver died (SIGKILL, a lost head node): the run's Ray Train directory is named by its identity,
`<run name or preset>-<first 12 hex of the task's run identity>`. Run again with the same arguments, the Ray Train
controller finds that directory's checkpoint_manager_snapshot.json and the workers resume from its latest checkpoint;
the MLflow run tagged with that directory (`valor.trial`) is reopened and each epoch's metrics are logged once. A
directory whose run completed holds `valor_completed.json` (the outcome and the files Ray Train wrote): the same
command again then trains a new run in `<name>-2`, `-3`, ... `fresh` removes an incomplete directory of this
identity and starts at epoch 1; `reuse` returns a completed run's outcome instead of training another.

The storage is valor's (workflows.outputs): the run directory is recorded whole in its manifest while the run goes on,
and once it completed only the files it holds (record_listing).

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
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import numpy as np

from workflows import objstore, tracking
from workflows.checkpoints import copy_result, read_resume, save_checkpoint_dir
from workflows.outputs import OwnershipError, claim, read_marker, record, record_listing


DEFAULT_STORAGE = os.path.join("runs", "ray")  # Ray Train storage without --storage
COMPLETED = "valor_completed.json"  # in a run's Ray Train directory: it completed (outcome + the files listed)
RAY_TRAIN_FILES = ("checkpoint_manager_snapshot.json", ".validate_storage_marker")  # Ray Train's own, in a run dir


# --- the worker side: pieces of an epoch step -------------------------------------------------------------------------


def shard_of(order, world: int, rank: int):
    """Rank `rank`'s DistributedSampler shard of an epoch's order: cut to a multiple of `world` (drop last), strided."""
    usable = (len(order) // world) * world
    return order[:usable][rank::world]


def per_worker_batch(batch_size: int, world: int) -> int:
    return max(1, math.ceil(batch_size / world))


def mean_over_ranks(loss: float, videos: int, device) -> float:
    """The epoch's mean loss per video over all ranks (each rank's mean weighted by its shard; one all-reduce on
    `device`, CUDA for NCCL); the rank's own mean when not distributed."""
    import torch
    import torch.distributed as dist

    total = torch.tensor([loss * videos, float(videos)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return float(total[0] / total[1])


def _parse_kill_hook(text: Optional[str]) -> Optional[dict]:
    if not text:
        return None
    hook = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    return {"epoch": int(hook.get("epoch", 2)), "rank": int(hook.get("rank", 1)),
            "marker": hook.get("marker") or os.path.join(tempfile.gettempdir(), "valor-kill-marker"),
            "after_batches": int(hook.get("after_batches", 1))}


def kill_hook(config: dict, epoch: int, rank: int) -> Optional[dict]:
    """The test kill hook (module doc) when it is set for this epoch and rank, else None."""
    kill = config.get("kill")
    return kill if (kill and kill["epoch"] == epoch and kill["rank"] == rank) else None


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


def record_shard(config: dict, epoch: int, rank: int, world: int, ids) -> None:
    """The VALOR_TRAIN_RECORD_SHARDS test hook: this rank's video ids of this epoch, when it is set."""
    where = config.get("record_shards")
    if where:
        os.makedirs(where, exist_ok=True)
        with open(os.path.join(where, f"epoch{epoch}_rank{rank}.json"), "w") as f:
            json.dump({"epoch": epoch, "rank": rank, "world": world, "ids": [str(i) for i in ids]}, f)


# --- the worker side: the epochs --------------------------------------------------------------------------------------


class EpochTask(Protocol):
    """What a training gives `run_epochs` (one per rank, built in its Ray Train worker function)."""

    label: str  # the command, for messages ("valor train")
    loss_metric: str  # the MLflow key of the epoch loss (which epochs an earlier attempt logged)
    epochs: int
    core: Any  # the model (unwrapped from DDP) on this worker's device
    optimizer: Any

    def train_epoch(self, epoch: int) -> dict:
        """Train one epoch on this rank's shard; {"loss": the mean over all ranks, ...} (reported to Ray Train)."""

    def evaluate(self, epoch: int, trained: dict, t0: float) -> tuple[float, dict]:
        """Rank 0, after the epoch: (the value the best epoch maximises, the epoch's record for the history)."""

    def epoch_metrics(self, record: dict) -> dict:
        """What MLflow logs for the epoch (step = epoch) from its record."""

    def checkpoint_config(self) -> dict:
        """config.json of every checkpoint ({"train", "data", "run_id", ...})."""

    def state_extra(self) -> dict:
        """More keys for state.json."""

    def rng_state(self) -> Optional[dict]:
        """The random streams a resumed epoch continues (rng.pt), or None."""

    def restore_rng(self, rng: Optional[dict], start_epoch: int) -> None:
        """Continue the streams of `rng_state` (None: the checkpoint holds none) before epoch `start_epoch`."""


@dataclass
class Progress:
    """The run's best-epoch tracking as state.json keeps it."""

    epoch: int = 0
    best_value: float = -math.inf
    best_epoch: int = 0
    history: list = field(default_factory=list)
    best_state: Optional[dict] = None

    def update(self, epoch: int, value: float, record: dict, model) -> None:
        self.epoch = epoch
        self.history.append(record)
        if self.best_state is None or value > self.best_value:  # ties keep the earlier epoch (as valor_core's fits)
            self.best_value, self.best_epoch = value, epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def state(self) -> dict:
        return {"epoch": self.epoch, "best_value": self.best_value, "best_epoch": self.best_epoch,
                "history": self.history}


class EpochLog:
    """Rank 0's MLflow epoch metrics: each epoch once, also when an attempt re-runs epochs an earlier one logged."""

    def __init__(self, config: dict, rank: int, loss_metric: str, resumed_from: int):
        self.uri, self.run_id = config.get("tracking_uri"), config.get("run_id")
        self.client, self.logged = None, set()
        if rank != 0 or not (self.uri and self.run_id):
            self.uri = None
            return
        self.client = tracking.client(self.uri)
        self.logged = tracking.logged_steps(self.client, self.run_id, loss_metric)  # epochs of an earlier attempt
        if resumed_from:
            tracking.log_metrics(self.uri, self.run_id, {"resumed_from_epoch": resumed_from}, step=resumed_from,
                                 c=self.client)

    def epoch(self, epoch: int, metrics: dict) -> None:
        if self.uri and epoch not in self.logged:
            tracking.log_metrics(self.uri, self.run_id, metrics, step=epoch, c=self.client)


def _resume(task: EpochTask, rank: int) -> Progress:
    """The progress of the run's last checkpoint, its weights, optimiser and random streams loaded into `task`."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return Progress()
    device = next(task.core.parameters()).device
    with ckpt.as_directory() as d:
        resumed = read_resume(d, task.core, task.optimizer, device)
    s = resumed.state
    task.restore_rng(resumed.rng, s["epoch"] + 1)
    print(f"[{task.label}] rank {rank}: resumed from the epoch-{s['epoch']} checkpoint", file=sys.stderr, flush=True)
    return Progress(epoch=s["epoch"], best_value=s["best_value"], best_epoch=s["best_epoch"], history=s["history"],
                    best_state=resumed.best_state)


def run_epochs(task: EpochTask, config: dict) -> None:
    """The epochs of a Ray Train worker (module doc), from the last checkpoint on."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    progress = _resume(task, rank)
    resumed_from = progress.epoch
    log = EpochLog(config, rank, task.loss_metric, resumed_from)
    for epoch in range(resumed_from + 1, task.epochs + 1):
        t0 = time.perf_counter()
        trained = task.train_epoch(epoch)
        metrics: dict[str, Any] = {"epoch": epoch, **trained, "resumed_from_epoch": resumed_from}
        checkpoint = None
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                value, record_e = task.evaluate(epoch, trained, t0)
                progress.update(epoch, value, record_e, task.core)
                metrics.update({"select": value, "best_value": progress.best_value,
                                "best_epoch": progress.best_epoch})
                log.epoch(epoch, task.epoch_metrics(record_e))
                save_checkpoint_dir(
                    tmp, model_state={k: v.detach().cpu() for k, v in task.core.state_dict().items()},
                    best_state=progress.best_state, optimizer_state=task.optimizer.state_dict(),
                    state={**progress.state(), "epochs": task.epochs, "world_size": world, **task.state_extra()},
                    config=task.checkpoint_config(), rng=task.rng_state())
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint,
                             checkpoint_dir_name=f"epoch_{epoch:03d}" if checkpoint is not None else None)


# --- the driver side --------------------------------------------------------------------------------------------------


def run_identity(cfg_dict: dict, data: dict, data_meta: dict, **setup) -> str:
    """What makes two trainings the same run: SHA-256 of the resolved config, the data's provenance (the pipeline's
    own config aside), `setup` and the contents of every train and val array (dataclass fields)."""
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


def claim_storage(storage: Optional[str]):
    """(storage_path for RunConfig, pyarrow filesystem or None, display URI); the storage is claimed as valor's
    checkpoints output (workflows.outputs: new, empty or made by valor)."""
    storage = storage or DEFAULT_STORAGE
    claim(storage, "checkpoints")
    if objstore.is_s3(storage):
        fs, path = objstore.fs_for(storage)
        return path, fs, storage
    path = os.path.abspath(storage)
    os.makedirs(path, exist_ok=True)
    return path, None, path


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


def _written_by_the_run(rel: str) -> bool:
    """Whether Ray Train or valor wrote the file `rel` of a run directory: Ray Train's own files, the checkpoints'
    folders (named in run_epochs) and the completion record; anything else there is the user's."""
    return rel in RAY_TRAIN_FILES + (COMPLETED,) or re.match(r"epoch_\d{3,}/", rel) is not None


def _mark_completed(storage_uri: str, name: str, outcome_json: dict) -> None:
    """The run completed: its record (the outcome and the files Ray Train wrote) in its directory, and from now on
    only those files are valor's in the storage's manifest (workflows.outputs.record_listing)."""
    where = objstore.join(storage_uri, name)
    _, root = objstore.fs_for(where)
    files = sorted(rel for rel in (posixpath.relpath(f, root) for f in objstore.list_files(where, recursive=True))
                   if _written_by_the_run(rel))
    objstore.write_bytes(objstore.join(where, COMPLETED),
                         json.dumps({"outcome": outcome_json, "files": files}, indent=1).encode())
    record_listing(storage_uri, name, written=_written_by_the_run)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


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


@dataclass
class Job:
    """One Ray Train run of a task, as the driver sets it up."""

    loop: Callable[[dict], None]  # the task's worker function: builds its EpochTask, then run_epochs
    payload: Callable[[], Any]  # builds what is put into the object store once: the loop's config["data_ref"]
    loop_config: dict  # the task's own keys of the loop config
    base: str  # the run directory's name before the identity: run name or preset
    identity: str  # run_identity
    run_name: str  # the MLflow run's name when a new one is created
    workers: int = 1
    use_gpu: bool = False
    threads: int = 1  # CPU per worker (CPU training)
    storage: Optional[str] = None
    tracking_uri: Optional[str] = None  # resolved; None: not tracked
    experiment: str = "valor"
    params: dict = field(default_factory=dict)  # MLflow params of a new run
    tags: dict = field(default_factory=dict)  # MLflow tags of a new run
    max_failures: int = 3
    keep_checkpoints: int = 2
    fresh: bool = False


@dataclass
class Finished:
    """What the task scores once training ended: the last checkpoint's RESULT_FILES copied to `local`."""

    local: str
    run_id: Optional[str]
    tracking_uri: Optional[str]
    checkpoint: str  # the last Ray Train checkpoint (path or s3:// URI)
    storage: str  # the storage's display URI


def fit(job: Job, score: Callable[[Finished], Any], *, started: float,
        reuse: Optional[Callable[[dict, str], Any]] = None):
    """Run `job` (module doc) and return `score`'s outcome of it (its `seconds` set from `started`, a perf_counter
    value); with `reuse`, a completed run of this identity is not trained again: `reuse(its outcome JSON, storage)`.
    The outcome has `as_json()` (what valor_completed.json records) and `seconds`."""
    storage_path, storage_fs, storage_uri = claim_storage(job.storage)
    trial_name, completed = trial_dir(storage_uri, f"{_slug(job.base)}-{job.identity[:12]}")
    if reuse is not None and completed is not None:
        return reuse(completed["outcome"], storage_uri)
    if job.fresh:
        _remove_incomplete(storage_uri, trial_name)
    record(storage_uri, [f"{trial_name}/"])  # Ray Train names the files in it: the whole directory is valor's
    run_id = None
    if job.tracking_uri:
        run_id = _open_run(job.tracking_uri, job.experiment, job.run_name, objstore.join(storage_uri, trial_name),
                           job.identity, job.fresh, job.params, job.tags)
    try:
        result = _fit_trainer(job, run_id, trial_name, storage_path, storage_fs)
        local = tempfile.mkdtemp(prefix="valor-ckpt-")
        try:
            with result.checkpoint.as_directory() as ckdir:
                copy_result(ckdir, local)
            checkpoint = result.checkpoint.path if storage_fs is None else f"s3://{result.checkpoint.path}"
            outcome = score(Finished(local, run_id, job.tracking_uri, checkpoint, storage_uri))
            outcome.seconds = time.perf_counter() - started
            _mark_completed(storage_uri, trial_name, outcome.as_json())
            if run_id:
                tracking.log_metrics(job.tracking_uri, run_id, {"train_seconds_total": outcome.seconds})
                tracking.set_tags(job.tracking_uri, run_id, {"valor.checkpoint": checkpoint})
                tracking.end_run(job.tracking_uri, run_id, "FINISHED")
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return outcome
    except BaseException:
        if run_id:
            try:
                tracking.end_run(job.tracking_uri, run_id, "FAILED")
            except Exception:
                pass
        raise


def _fit_trainer(job: Job, run_id: Optional[str], trial_name: str, storage_path: str, storage_fs):
    """TorchTrainer(job.loop).fit() in the run's directory; its result, which holds a checkpoint."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    kill = _parse_kill_hook(os.environ.get("VALOR_TEST_KILL_WORKER"))
    if kill is not None and storage_fs is None:
        kill["snapshot"] = os.path.join(storage_path, trial_name, "checkpoint_manager_snapshot.json")
    loop_config = {**job.loop_config, "data_ref": ray.put(job.payload()), "threads": job.threads,
                   "tracking_uri": job.tracking_uri, "run_id": run_id, "kill": kill,
                   "record_shards": os.environ.get("VALOR_TRAIN_RECORD_SHARDS")}
    scaling = ray.train.ScalingConfig(num_workers=job.workers, use_gpu=job.use_gpu,
                                      resources_per_worker=None if job.use_gpu else {"CPU": job.threads})
    run_config = ray.train.RunConfig(
        name=trial_name, storage_path=storage_path, storage_filesystem=storage_fs,
        failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.keep_checkpoints))
    result = TorchTrainer(job.loop, train_loop_config=loop_config, scaling_config=scaling,
                          run_config=run_config).fit()
    if getattr(result, "error", None):
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training reported no checkpoint")
    return result
