"""`valor train` on Ray Train: DDP HAN training (TorchTrainer, Train V2), per-epoch checkpoints, MLflow tracking.

    driver   load features+labels (workflows.datasets) -> ray.put the arrays once -> create the MLflow run
             -> TorchTrainer(train_loop, ScalingConfig(num_workers, use_gpu), RunConfig(storage, FailureConfig,
                CheckpointConfig)).fit()
             -> load the best-val weights from the last checkpoint -> final val/test scores, figures, artifacts
    worker   ray.get the arrays (zero-copy from the node's object store) -> build HAN (same seed on every rank),
             prepare_model (DDP: gloo on CPU, NCCL on GPU) -> resume from ray.train.get_checkpoint() if any
             -> per epoch: disjoint shard of this rank -> valor_core.fit.train_epoch -> all-reduce the loss
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

Test-only hooks (environment of the driver, passed to the workers through the loop config; never set in normal use):
    VALOR_TEST_KILL_WORKER="epoch=2,rank=1,marker=/tmp/x"   the worker of that rank SIGKILLs itself after its first
                                                            batch of that epoch, once (the marker file remembers),
                                                            after the controller has registered the previous
                                                            epoch's checkpoint (local storage)
    VALOR_TRAIN_RECORD_SHARDS=DIR                          every rank writes DIR/epoch<E>_rank<R>.json (its video ids)
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

HEALTH_CHECK_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}  # report() blocked ~2 s per call with the default


# --- pieces shared by the worker loop, the driver and `valor evaluate --checkpoint` ------------------------------------


def shard_indices(n: int, world: int, rank: int, seed: int, epoch: int) -> np.ndarray:
    """This rank's disjoint, equal-length shard of range(n) for an epoch (see module doc)."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x5A11])
    order = rng.permutation(n)
    usable = (n // world) * world
    return order[:usable][rank::world]


def per_worker_batch(batch_size: int, world: int) -> int:
    return max(1, math.ceil(batch_size / world))


def save_checkpoint_dir(path: str, *, model_state: dict, best_state: dict, optimizer_state: Optional[dict],
                        state: dict, config: dict) -> str:
    import torch

    os.makedirs(path, exist_ok=True)
    torch.save(model_state, os.path.join(path, "model.pt"))
    torch.save(best_state, os.path.join(path, "best_model.pt"))
    if optimizer_state is not None:
        torch.save(optimizer_state, os.path.join(path, "optimizer.pt"))
    with open(os.path.join(path, "state.json"), "w") as f:
        json.dump(state, f, indent=1, default=float)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return path


def config_from_dict(data: dict):
    """TrainConfig from its `to_dict` form (the `train` section of a checkpoint's config.json)."""
    from valor_core.config import TrainConfig, build

    return build(TrainConfig, data)


def load_checkpoint_model(path: str, which: str = "best_model.pt"):
    """(HAN with the checkpoint's weights in eval mode, TrainConfig, config.json dict) from a checkpoint directory
    (a Ray Train checkpoint of `valor train`, or the `checkpoint/` artifact of its MLflow run)."""
    import torch

    from valor_core.fit import build_model

    with open(os.path.join(path, "config.json")) as f:
        meta = json.load(f)
    cfg = config_from_dict(meta["train"])
    model = build_model(cfg)
    state = torch.load(os.path.join(path, which), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, cfg, meta


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


def _batches(tensors: dict, index: np.ndarray, batch_size: int, kill: Optional[dict] = None):
    import torch

    idx = torch.from_numpy(np.ascontiguousarray(index))
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
    import torch.distributed as dist

    from valor_core.fit import build_model, build_optimizer, evaluate_model, train_epoch
    from valor_core.schedule import lr_at_epoch

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

    model = build_model(cfg)
    model = ray.train.torch.prepare_model(model)  # DDP (gloo on CPU / NCCL on GPU), moved to this worker's device
    core = model.module if hasattr(model, "module") else model
    optimizer = build_optimizer(core, cfg)
    device = next(core.parameters()).device

    start_epoch, best_value, best_epoch, history = 1, -math.inf, 0, []
    best_state = None
    resumed_from = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            core.load_state_dict(torch.load(os.path.join(d, "model.pt"), map_location=device, weights_only=True))
            optimizer.load_state_dict(torch.load(os.path.join(d, "optimizer.pt"), map_location=device,
                                                 weights_only=True))
            best_state = torch.load(os.path.join(d, "best_model.pt"), map_location="cpu", weights_only=True)
            with open(os.path.join(d, "state.json")) as f:
                state = json.load(f)
        start_epoch = state["epoch"] + 1
        best_value, best_epoch, history = state["best_value"], state["best_epoch"], state["history"]
        resumed_from = state["epoch"]
        print(f"[valor train] rank {rank}: resumed from the epoch-{resumed_from} checkpoint", file=sys.stderr,
              flush=True)

    tracking = None
    if rank == 0 and config.get("tracking_uri") and config.get("run_id"):
        from workflows import tracking as tracking_mod

        tracking = tracking_mod
        mlflow_client = tracking.client(config["tracking_uri"])
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
        loss = train_epoch(model, optimizer, _batches(tensors, index, bs, hook), cfg, epoch)
        total = torch.tensor([loss * len(index), float(len(index))], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        loss = float(total[0] / total[1])
        train_seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": loss, "shard_videos": int(len(index)),
                                   "train_seconds": train_seconds, "resumed_from_epoch": resumed_from}
        checkpoint = None
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                val_scores = evaluate_model(core, val) if val is not None else None
                value = float(val_scores.get(cfg.select_metric)) if val_scores is not None else -loss
                if value > best_value or best_state is None:  # ties keep the earlier epoch (as valor_core.fit)
                    best_value, best_epoch = value, epoch
                    best_state = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
                record_e = {"epoch": epoch, "lr": lr_at_epoch(epoch, cfg.optim), "loss": loss,
                            "seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
                            "videos_per_s": len(index) * world / max(train_seconds, 1e-9),
                            "val": val_scores.as_dict() if val_scores is not None else None}
                history.append(record_e)
                metrics.update({"val_select": value, "best_value": best_value, "best_epoch": best_epoch})
                if tracking is not None:
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


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Connect to / start Ray (in-process when no address); True when this call started or connected it."""
    import ray

    for k, v in HEALTH_CHECK_ENV.items():
        os.environ.setdefault(k, v)
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kw: dict[str, Any] = {"runtime_env": {"env_vars": {k: os.environ[k] for k in HEALTH_CHECK_ENV}},
                          "log_to_driver": True}
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kw)
    return True


def _train_payload(data: dict, cfg) -> dict:
    from valor_core.fit import to_tensors

    train = data["train"]
    arrays = {name: np.ascontiguousarray(t.numpy()) for name, t in to_tensors(train, cfg).items()}
    return {"train": arrays, "train_ids": np.asarray(train.video_ids).astype(str), "val": data.get("val")}


def _storage(storage: Optional[str]):
    """(storage_path for RunConfig, pyarrow filesystem or None, display URI)."""
    from workflows import objstore

    storage = storage or os.path.join("runs", "ray")
    if objstore.is_s3(storage):
        fs, path = objstore.fs_for(storage)
        return path, fs, storage
    path = os.path.abspath(storage)
    os.makedirs(path, exist_ok=True)
    return path, None, path


def train(cfg, data: dict, *, workers: int = 2, use_gpu: bool = False, tracking_uri: Optional[str] = None,
          experiment: str = "valor", storage: Optional[str] = None, run_name: Optional[str] = None,
          data_meta: Optional[dict] = None, max_failures: int = 3, keep_checkpoints: int = 2,
          ray_address: Optional[str] = None, track: bool = True, figures: bool = True) -> TrainOutcome:
    """Train `cfg` (a TrainConfig) on `data` ({"train", "val", "test"} -> AVVPArrays) with Ray Train DDP."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from valor_core.config import to_dict
    from workflows import tracking

    t_start = time.perf_counter()
    init_ray(ray_address)
    data_meta = dict(data_meta or {})
    cfg_dict = to_dict(cfg)
    cpus = ray.available_resources().get("CPU", 1.0)
    node_cpus = max([n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")] or [cpus])
    # CPU workers: an equal share of the cluster's CPUs, at most one node's worth (a worker lives on one node)
    threads = max(1, int(min(cpus // max(workers, 1), node_cpus))) if not use_gpu else 1
    run_name = run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"

    run_id = None
    if track:
        tracking_uri = tracking.resolve_tracking_uri(tracking_uri)
        params = tracking.flatten(cfg_dict)
        params.update(tracking.flatten({"data": data_meta}))
        params.update({"train.workers": str(workers), "train.use_gpu": str(use_gpu),
                       "train.per_worker_batch": str(per_worker_batch(cfg.optim.batch_size, workers)),
                       "train.max_failures": str(max_failures), "train.storage": str(storage or "runs/ray")})
        tags = {"valor.preset": cfg.preset, "valor.features": str(data_meta.get("features")),
                "valor.labels": str(data_meta.get("labels")), "valor.teachers": json.dumps(data_meta.get("teachers"))}
        run_id = tracking.start_run(tracking_uri, experiment, run_name, params, tags)
    else:
        tracking_uri = None

    storage_path, storage_fs, storage_uri = _storage(storage)
    trial_name = f"{run_name}-{run_id[:8]}" if run_id else f"{run_name}-{os.getpid()}"
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
        outcome = finish(local, data, cfg, tracking_uri=tracking_uri, run_id=run_id, figures=figures)
        outcome.checkpoint = result.checkpoint.path if storage_fs is None else f"s3://{result.checkpoint.path}"
        outcome.storage = storage_uri
        outcome.seconds = time.perf_counter() - t_start
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


def finish(ckpt_dir: str, data: dict, cfg, *, tracking_uri: Optional[str], run_id: Optional[str],
           figures: bool = True) -> TrainOutcome:
    """Best-val weights -> final val/test scores; with a run: final metrics, checkpoint, labels, figures."""
    from valor_core.fit import predict
    from valor_core.llp import LLPSplit
    from workflows import tracking
    from workflows.evaluate import score

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
        results[split] = score(LLPSplit(name=split, video_ids=arrays.video_ids, weak=arrays.weak,
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
        if figures and preds:
            with tempfile.TemporaryDirectory() as d:
                for split, (pa, pv) in preds.items():
                    arrays = data[split]
                    tracking.plot_classwise(pa, pv, arrays.audio_gt, arrays.visual_gt,
                                            os.path.join(d, f"classwise_f_{split}.png"),
                                            title=f"{cfg.preset} - {split} (best epoch {state['best_epoch']})")
                    tracking.plot_timelines(arrays.video_ids, pa, pv, arrays.audio_gt, arrays.visual_gt,
                                            os.path.join(d, f"timelines_{split}.png"),
                                            title=f"{cfg.preset} - {split}: parsing timelines")
                tracking.log_dir(tracking_uri, run_id, d, "figures")
    return outcome


# --- CLI glue (`valor train` without --dry-run; the parser lives in workflows/train.py) -----------------------------------


def add_arguments(parser) -> None:
    """The Ray Train / data / tracking options of `valor train` (model and optimiser overrides are train.py's)."""
    g = parser.add_argument_group("data, Ray Train and MLflow")
    g.add_argument("--features", default=None, metavar="SOURCE",
                   help="sim[:SEED[:k=v,...]] (LLP-sim) or a `valor extract` features URI (dir or s3://)")
    g.add_argument("--labels", default=None, metavar="SOURCE",
                   help="a `valor harvest` output URI (default: the harvest beside the features, else harvested on "
                        "the fly with the run's thresholds)")
    g.add_argument("--annotations", default=None, metavar="DIR",
                   help="LLP annotation CSVs (default: $VALOR_ANNOTATIONS or ../shared/data/llp)")
    g.add_argument("--workers", type=int, default=None, metavar="N", help="Ray Train DDP workers (default 2)")  # default applied in run_cli
    g.add_argument("--epochs", type=int, default=None, metavar="E", help="epochs (default: the preset's; same as "
                   "--set optim.epochs=E)")
    g.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL); default CPU (gloo)")
    g.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)")
    g.add_argument("--experiment", default="valor", metavar="E", help="MLflow experiment (default: %(default)s)")
    g.add_argument("--run-name", default=None, metavar="NAME")
    g.add_argument("--storage", default=None, metavar="URI",
                   help="Ray Train storage for checkpoints: dir or s3://bucket/prefix (default: runs/ray)")
    g.add_argument("--max-failures", type=int, default=3, metavar="K",
                   help="worker-group restarts from the last checkpoint (FailureConfig; default %(default)s)")
    g.add_argument("--max-train-videos", type=int, default=None, metavar="N",
                   help="train on a seeded random subset of N train videos (quick runs)")
    g.add_argument("--ray-address", default=None, metavar="ADDR", help="existing Ray cluster (default: in-process)")
    g.add_argument("--no-figures", action="store_true", help="skip the PNG artifacts")


def run_cli(args, cfg) -> int:
    """Train `cfg` as the parsed `args` say; prints the summary (or with --json one JSON line, last)."""

    from workflows.datasets import DataError, load_training_data

    from valor_core.config import replace

    features = getattr(args, "features", None) or "sim"
    if getattr(args, "epochs", None):
        cfg = replace(cfg, **{"optim.epochs": int(args.epochs)})
    workers = int(getattr(args, "workers", None) or 2)
    use_gpu = bool(getattr(args, "gpu", False) or cfg.use_gpu)
    try:
        data, cfg, meta = load_training_data(features, cfg, labels=getattr(args, "labels", None),
                                             annotations=getattr(args, "annotations", None),
                                             max_train=getattr(args, "max_train_videos", None))
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"valor train: error: {err}", file=sys.stderr)
        return 1
    started = init_ray(getattr(args, "ray_address", None))
    try:
        outcome = train(cfg, data, workers=workers, use_gpu=use_gpu, tracking_uri=getattr(args, "tracking_uri", None),
                        experiment=getattr(args, "experiment", "valor"), storage=getattr(args, "storage", None),
                        run_name=getattr(args, "run_name", None), data_meta=meta,
                        max_failures=getattr(args, "max_failures", 3), figures=not getattr(args, "no_figures", False))
    finally:
        if started:  # also stops the forwarding of worker logs, so the JSON below stays the last stdout line
            import ray

            ray.shutdown()
    if getattr(args, "json", False):
        print(json.dumps(outcome.as_json()))
    else:
        print(f"run {outcome.run_id} ({outcome.tracking_uri}): {outcome.epochs} epochs, best epoch "
              f"{outcome.best_epoch}, {outcome.seconds:.1f} s; checkpoint {outcome.checkpoint}")
        for split in ("val", "test"):
            s = getattr(outcome, split)
            if s:
                print(f"  {split:4s} segment " + " ".join(f"{k}={v:.2f}" for k, v in s["segment"].items()))
                print(f"  {split:4s} event   " + " ".join(f"{k}={v:.2f}" for k, v in s["event"].items()))
    return 0


# --- `valor evaluate --checkpoint RUN_OR_PATH` ---------------------------------------------------------------------------


def resolve_checkpoint(ref: str, tracking_uri: Optional[str] = None) -> str:
    """A local checkpoint directory (best_model.pt + config.json) for RUN_OR_PATH:
    a checkpoint dir; a best_model.pt / model.pt file; a Ray Train run dir (its newest epoch_* checkpoint);
    an s3:// checkpoint prefix (downloaded); or an MLflow run id (its `checkpoint/` artifact)."""
    from workflows import objstore, tracking

    def ray_run_dir(d: str) -> Optional[str]:
        epochs = sorted(x for x in os.listdir(d) if x.startswith("epoch_") and
                        os.path.exists(os.path.join(d, x, "config.json")))
        return os.path.join(d, epochs[-1]) if epochs else None

    if objstore.is_s3(ref):
        import pyarrow.fs as pafs

        fs, path = objstore.fs_for(ref)
        local = tempfile.mkdtemp(prefix="valor-ckpt-")
        pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        ref = local
    if os.path.isfile(ref):
        return os.path.dirname(os.path.abspath(ref))
    if os.path.isdir(ref):
        if os.path.exists(os.path.join(ref, "config.json")):
            return ref
        found = ray_run_dir(ref)
        if found:
            return found
        raise FileNotFoundError(f"{ref}: no valor checkpoint (config.json + best_model.pt) there")
    import mlflow

    uri = tracking.resolve_tracking_uri(tracking_uri)
    try:
        return mlflow.artifacts.download_artifacts(run_id=ref, artifact_path="checkpoint", tracking_uri=uri)
    except Exception as err:
        raise FileNotFoundError(f"{ref!r} is neither a checkpoint path nor a run id with a checkpoint in {uri} "
                                f"({type(err).__name__}: {err})") from None


def checkpoint_predictions(args, split) -> tuple[np.ndarray, np.ndarray]:
    """`valor evaluate --checkpoint`: predict_split with the CLI's arguments."""
    return predict_split(args.checkpoint, split, features=getattr(args, "features", None),
                         annotations=args.annotations, tracking_uri=getattr(args, "tracking_uri", None))


def predict_split(checkpoint: str, split, *, features: str | None = None, annotations: str | None = None,
                  tracking_uri: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(audio, visual) 0/1 predictions of a trained HAN (a checkpoint path or an MLflow run id) for the LLP split
    `split` (official rule), aligned to its ids. Features: `features`, else the source recorded with the checkpoint."""
    from valor_core.fit import predict
    from workflows.datasets import load_eval_split
    from workflows.evaluate import EvaluateError, align_predictions

    try:
        ckpt = resolve_checkpoint(checkpoint, tracking_uri)
        model, cfg, meta = load_checkpoint_model(ckpt)
        features = features or meta.get("data", {}).get("features")
        if not features:
            raise EvaluateError(f"{checkpoint}: the checkpoint records no features source; pass --features")
        arrays = load_eval_split(features, split.name, cfg, annotations=annotations)
    except (FileNotFoundError, ValueError) as err:
        raise EvaluateError(str(err)) from None
    pa, pv = predict(model, arrays)
    audio, visual, extra = align_predictions(split.video_ids, arrays.video_ids, pa, pv,
                                             source=f"checkpoint {checkpoint} on {features}")
    return audio.astype(np.uint8), visual.astype(np.uint8)
