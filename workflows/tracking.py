"""MLflow tracking: one owner for how valor talks to MLflow (runs, params, metrics, artifacts); the pictures logged with
a training run are workflows/figures.py.

Who logs what (Ray Train V2 accepts no Tune callbacks, so these are plain `MlflowClient` calls, addressed by run id):

    driver, before fit     create the run: params = the full resolved config flattened (`model.hidden`, `optim.lr_max`,
                           ...; credentials redacted), plus `data.features`, `data.labels`, `data.annotations`,
                           `train.workers`, ...; tags `valor.preset`, `valor.labels`, `valor.teachers`
    rank-0 worker, epoch   `train_loss`, `lr`, `epoch_seconds`, `train_seconds`, `videos_per_s`, `val.segment.audio`
                           ... `val.event.event` (step = epoch); other ranks never touch MLflow
    driver, after fit      `best_epoch`, `final.val.<level>.<key>` and `final.test.<level>.<key>` (all ten numbers
                           each); artifacts `checkpoint/` (best_model.pt + config.json + state.json), `labels/`
                           (thresholds and teacher ids actually used), `figures/*.png`, `scores/final.json`

Runs of killed processes: every run valor opens is recorded under ~/.cache/valor/mlflow (host, pid + its start time,
tracking URI, run id) until valor closes it. A process killed with SIGKILL cannot close its run, so the next tracked
command on that store (start_run: train, ave train, run, tune; `valor compare`) sets each recorded run whose process is
gone to KILLED, with the tag `valor.killed` saying why (checked by pid and start time on the recording host only).

Tracking URI: `--tracking-uri`, else $MLFLOW_TRACKING_URI, else a sqlite store in the project's run directory
(`sqlite:///<cwd>/runs/mlflow.db`, artifacts under `runs/mlartifacts/`); a server URI (`http://host:5000`) on clusters.
`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows the same runs that `valor compare` prints.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from workflows.config import is_secret

DEFAULT_EXPERIMENT = "valor"
RUN_DIR = "runs"
LEVELS = ("segment", "event")
KEYS = ("audio", "visual", "av", "type", "event")


# --- where ----------------------------------------------------------------------------------------------------------


def default_tracking_uri(run_dir: str = RUN_DIR) -> str:
    """$MLFLOW_TRACKING_URI, else `sqlite:///<abs run_dir>/mlflow.db`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + os.path.abspath(os.path.join(run_dir, "mlflow.db"))


def resolve_tracking_uri(uri: Optional[str]) -> str:
    """A bare path (`runs/x.db`) becomes a sqlite URI; None -> the default."""
    if not uri:
        return default_tracking_uri()
    if "://" not in uri and uri.endswith(".db"):
        return "sqlite:///" + os.path.abspath(uri)
    return uri


def _sqlite_dir(uri: str) -> Optional[str]:
    if uri.startswith("sqlite:///"):
        return os.path.dirname(uri[len("sqlite:///"):]) or "."
    return None


def store_exists(uri: str) -> bool:
    """False for a sqlite store whose file is not there (a server URI is assumed to exist)."""
    return not uri.startswith("sqlite:///") or os.path.exists(uri[len("sqlite:///"):])


def client(uri: str, create: bool = True):
    """An MlflowClient for `uri`; with create=False (read-only commands) a missing sqlite store is a
    FileNotFoundError instead of a new empty database."""
    from mlflow.tracking import MlflowClient

    if not create and not store_exists(uri):
        raise FileNotFoundError(f"no MLflow store at {uri}")
    d = _sqlite_dir(uri)
    if d:
        os.makedirs(d, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(c, name: str, uri: str) -> str:
    """Experiment id of `name`, created if missing; a sqlite store keeps artifacts beside it (`mlartifacts/`)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    d = _sqlite_dir(uri)
    location = "file://" + os.path.abspath(os.path.join(d, "mlartifacts")) if d else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# --- params ---------------------------------------------------------------------------------------------------------


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"model": {"hidden": 512}} -> {"model.hidden": "512"}; lists/tuples as JSON; credentials as '***'."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
            continue
        if is_secret(key) and value:
            value = "***"
        if isinstance(value, (list, tuple)):
            text = json.dumps(list(value))
        elif value is None:
            text = "None"
        else:
            text = str(value)
        out[name] = text[:6000]
    return out


# --- logging --------------------------------------------------------------------------------------------------------


def start_run(uri: str, experiment: str, run_name: str, params: Mapping[str, str],
              tags: Optional[Mapping[str, str]] = None) -> str:
    """Create the run (status RUNNING) with its params and tags; returns the run id."""
    from mlflow.entities import Param

    c = client(uri)
    close_dead_runs(uri, c)
    exp_id = ensure_experiment(c, experiment, uri)
    run = c.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
    record_run(uri, run.info.run_id)
    items = [Param(k, v) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def open_run_tagged(uri: str, experiment: str, tag: str, value: str) -> Optional[str]:
    """The newest run of `experiment` with tag `tag` = `value` that did not finish (RUNNING, FAILED, KILLED); None if
    there is none."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    quoted = value.replace("'", "\\'")
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{tag}` = '{quoted}'",
                         order_by=["attributes.start_time DESC"], max_results=50)
    return next((r.info.run_id for r in runs if r.info.status != "FINISHED"), None)


def logged_steps(c, run_id: str, key: str) -> set[int]:
    """The steps at which metric `key` of the run has a value (a resumed training logs each epoch once)."""
    return {int(m.step) for m in c.get_metric_history(run_id, key)}


def reopen_run(uri: str, run_id: str) -> None:
    """Continue an existing run in this process (a resumed training): RUNNING again, recorded as this process's."""
    c = client(uri)
    close_dead_runs(uri, c)
    c.update_run(run_id, status="RUNNING")
    record_run(uri, run_id)
    c.set_tag(run_id, "valor.resumed", f"pid {os.getpid()} on {socket.gethostname()} at {time.ctime()}")


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int = 0, c=None) -> None:
    from mlflow.entities import Metric

    c = c or client(uri)
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None and np.isfinite(v)]
    for i in range(0, len(items), 1000):
        c.log_batch(run_id, metrics=items[i:i + 1000])


def set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def subset_tags(results: Mapping[str, Mapping[str, Any]], prefix: str = "final") -> dict[str, str]:
    """The tags that say on how much of each split a run was scored: `valor.<prefix>.<split>.videos_scored`,
    `...videos_in_split`, and `valor.<prefix>.official_comparable` (false when any split was scored on a subset)."""
    tags = {}
    for split, scores in results.items():
        tags[f"valor.{prefix}.{split}.videos_scored"] = str(scores.get("videos_scored", scores.get("videos")))
        tags[f"valor.{prefix}.{split}.videos_in_split"] = str(scores.get("videos_in_split", scores.get("videos")))
    if results:
        comparable = all(s.get("official_comparable", True) for s in results.values())
        tags[f"valor.{prefix}.official_comparable"] = str(comparable).lower()
    return tags


def scores_flat(scores: Mapping[str, Mapping[str, float]], prefix: str) -> dict[str, float]:
    """{"segment": {...}, "event": {...}} -> {"<prefix>.segment.audio": ..., ...} (the ten numbers)."""
    return {f"{prefix}.{lvl}.{k}": float(scores[lvl][k]) for lvl in LEVELS for k in KEYS}


def epoch_metrics(epoch_record: Mapping[str, Any]) -> dict[str, float]:
    """What rank 0 logs per epoch (step = epoch)."""
    out = {"train_loss": epoch_record["loss"], "lr": epoch_record["lr"], "epoch_seconds": epoch_record["seconds"]}
    for key in ("train_seconds", "videos_per_s"):
        if epoch_record.get(key) is not None:
            out[key] = epoch_record[key]
    if epoch_record.get("val") is not None:
        out.update(scores_flat(epoch_record["val"], "val"))
    return out


def log_json(uri: str, run_id: str, obj: Any, artifact_path: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, name), "w") as f:
            json.dump(obj, f, indent=2, default=str)
        client(uri).log_artifact(run_id, os.path.join(d, name), artifact_path=artifact_path)


def log_dir(uri: str, run_id: str, local_dir: str, artifact_path: str) -> None:
    client(uri).log_artifacts(run_id, local_dir, artifact_path=artifact_path)


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)
    forget_run(run_id)


# --- runs whose process died ----------------------------------------------------------------------------------------


def records_dir() -> Path:
    """Where the open runs of this user's valor processes are recorded (one JSON file per run)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "valor" / "mlflow"


def record_run(uri: str, run_id: str) -> None:
    """Record that this process holds run `run_id` of store `uri` open (host, pid and the pid's start time)."""
    import psutil

    me = psutil.Process()
    rec = {"host": socket.gethostname(), "pid": me.pid, "pid_created": me.create_time(), "tracking_uri": uri,
           "run_id": run_id, "recorded_at": time.time()}
    records_dir().mkdir(parents=True, exist_ok=True)
    path = records_dir() / f"{run_id}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec))
    tmp.replace(path)


def forget_run(run_id: str) -> None:
    (records_dir() / f"{run_id}.json").unlink(missing_ok=True)


def _holder_alive(rec: Mapping[str, Any]) -> bool:
    """Whether the recorded process (this host) still runs: the same pid with the same start time."""
    import psutil

    try:
        return abs(psutil.Process(int(rec["pid"])).create_time() - float(rec["pid_created"])) < 1e-3
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _dead_records(uri: str) -> list[dict]:
    """The records of store `uri` made on this host by processes that are gone."""
    out = []
    for path in sorted(records_dir().glob("*.json")) if records_dir().is_dir() else ():
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("tracking_uri") == uri and rec.get("host") == socket.gethostname() and not _holder_alive(rec):
            out.append(rec)
    return out


def close_dead_runs(uri: str, c=None) -> list[str]:
    """Set the runs of `uri` whose recorded valor process died while they were RUNNING to KILLED (tag `valor.killed`
    says why); returns their ids. A run another process has reopened since (a resume) is left alone."""
    closed = []
    for rec in _dead_records(uri):
        c = c or client(uri)
        run_id = rec["run_id"]
        try:
            run = c.get_run(run_id)
        except Exception:  # deleted run, or a store that no longer has it: nothing to close
            forget_run(run_id)
            continue
        if run.info.status == "RUNNING":
            c.set_tag(run_id, "valor.killed", f"valor process {rec['pid']} on {rec['host']} ended without closing "
                                              f"the run (found by pid {os.getpid()} at {time.ctime()})")
            c.set_terminated(run_id, status="KILLED")
            closed.append(run_id)
        forget_run(run_id)
    return closed
