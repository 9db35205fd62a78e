"""The Ray runtime: the one place valor starts or joins Ray, and what the workers' environment carries.

    start_ray(address, ...) -> shutdown    `address` / $RAY_ADDRESS (a cluster, or the job's cluster under
                                           `ray job submit`), else a single-node Ray started in this process with
                                           every listener on 127.0.0.1; returns the function that undoes exactly what
                                           it did (a no-op when Ray was already up)
    code_version()                         git commit of the code ('+dirty'), else the package version

A local Ray is bound to 127.0.0.1 (GCS, raylet, object manager, dashboard, agents, workers: `_loopback_only`, before
Ray is imported) and never serves a dashboard unless asked (then on 127.0.0.1 too). Its node processes are recorded
under ~/.cache/valor/ray (pid + start time): a driver killed with SIGKILL cannot stop them, so the next start_ray stops
the ones whose driver is gone (by pid and start time, never by name).

What Ray's workers print (placement-group and health-check warnings, NumPy warnings, Ray Train's set-up lines, Gloo)
reaches the user's terminal only with `valor --debug` ($VALOR_DEBUG=1, set by the CLI); otherwise only the lines valor
itself prints in a worker (they start with "[valor") are shown (`_valor_lines_only`).

The environment a worker needs (offline HF caches of the tiny teachers, quiet-library switches, Ray Train's health-check
interval) travels in the driver's runtime_env `env_vars`: the variables whose names start with FORWARD_ENV_PREFIXES,
plus the caller's `env`. Credentials never do (`workflows.config.is_secret_env`): on a local Ray the workers inherit the
driver's environment, on a cluster they use the node's own (instance role, or the variables its image sets).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from valor_core import __version__
from workflows.config import is_secret_env

FORWARD_ENV_PREFIXES = ("HF_", "TRANSFORMERS_", "HUGGINGFACE_", "VALOR_", "TORCH_HOME", "OPEN_CLIP", "WANDB_MODE",
                        "TOKENIZERS_PARALLELISM", "MLFLOW_DISABLE_TELEMETRY", "RAY_TRAIN_", "OMP_NUM_THREADS")
RAY_DEFAULT_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}  # Train's report() blocks ~2 s per call otherwise
# Quiet, offline-friendly defaults for every library valor drives (set by the CLI; the user's environment wins).
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}
LOOPBACK = "127.0.0.1"
DEBUG_ENV = "VALOR_DEBUG"  # "1" (`valor --debug`): every line Ray's workers print reaches the terminal
VALOR_LINE = "[valor"  # how the lines valor prints in a worker start (e.g. "[valor train] rank 0: resumed ...")
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray binds its processes to 127.0.0.1 (read at import)


def job_env_vars() -> dict:
    """The env_vars of the job's runtime_env when this driver runs under `ray job submit` (Ray injects the job config)."""
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")  # ray._private.runtime_env.constants
        return dict((job.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def worker_env(extra: Optional[dict] = None) -> dict:
    """The env_vars the workers get: forwarded driver variables + `extra`, no credentials, none the job also sets."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIXES)}
    env.update(extra or {})
    for k in list(env):
        if is_secret_env(k):
            env.pop(k)
    for k in job_env_vars():  # under `ray job submit`: Ray refuses a driver env var the job's runtime_env also sets
        env.pop(k, None)
    return env


RECORDS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "valor" / "ray"


def _record_local_ray(session_dir: str) -> None:
    """Remember this driver's local Ray (its children, and the session dir its agents name) for `_reap_orphans`."""
    import psutil

    me = psutil.Process()
    procs = [{"pid": c.pid, "created": c.create_time()} for c in me.children(recursive=True)]
    RECORDS.mkdir(parents=True, exist_ok=True)
    (RECORDS / f"{me.pid}.json").write_text(json.dumps({"driver": me.pid, "driver_created": me.create_time(),
                                                        "session_dir": session_dir, "procs": procs}))


def _session_procs(session_dir: str, since: float) -> list:
    """Processes started after `since` whose command line names this Ray session's directory (its agents)."""
    import psutil

    found = []
    if not session_dir:
        return found
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if proc.info["create_time"] >= since and any(session_dir in a for a in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


def _reap_orphans() -> int:
    """Stop the local Ray processes of drivers that died without shutting Ray down; returns how many were stopped."""
    import psutil

    stopped = 0
    for path in RECORDS.glob("*.json") if RECORDS.is_dir() else ():
        try:
            rec = json.loads(path.read_text())
            driver_alive = psutil.pid_exists(rec["driver"]) and \
                abs(psutil.Process(rec["driver"]).create_time() - rec["driver_created"]) < 1e-3
        except (OSError, ValueError, KeyError, psutil.Error):
            driver_alive = False
            rec = {"procs": []}
        if driver_alive:
            continue
        for p in rec.get("procs", []):
            try:
                proc = psutil.Process(p["pid"])
                if abs(proc.create_time() - p["created"]) < 1e-3:  # the very process, not a reused pid
                    proc.kill()
                    stopped += 1
            except (psutil.Error, KeyError):
                pass
        for proc in _session_procs(rec.get("session_dir", ""), rec.get("driver_created", float("inf"))):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                stopped += 1
        path.unlink(missing_ok=True)
    return stopped


def _session_dir() -> str:
    with contextlib.suppress(Exception):  # private API: a missing session dir only weakens the clean-up
        import ray

        return str(ray._private.worker.global_worker.node.get_session_dir_path())
    return ""


def _forget_local_ray() -> None:
    (RECORDS / f"{os.getpid()}.json").unlink(missing_ok=True)


def _loopback_only() -> None:
    """Make the Ray this process starts single-node and loopback-only. Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    once, when `ray` is first imported (ray._private.ray_constants.ENABLE_RAY_CLUSTER): set, it keeps GCS, raylet,
    dashboard, agents and workers on 127.0.0.1; read unset, they listen on every interface. So it is set before the
    import (and for Ray's own processes, which inherit it), and the constant is set too when an earlier import of
    `ray` already read it. Never for a cluster: its driver needs its real address."""
    os.environ[LOCAL_ONLY_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def _valor_lines_only(handler: Callable[[dict], None]) -> Callable[[dict], None]:
    """Ray's worker-log printer, given only the lines valor printed in a worker."""
    def handle(batch: dict) -> None:
        lines = [ln for ln in batch.get("lines") or () if ln.lstrip().startswith(VALOR_LINE)]
        if lines:
            handler({**batch, "lines": lines})

    return handle


def _quiet_worker_logs() -> None:
    """Unless $VALOR_DEBUG=1: wrap the handler through which Ray prints its workers' output on this driver (Ray's
    `ray_print_logs` handler of the worker-stream dispatcher; left as it is if Ray's internals differ)."""
    if os.environ.get(DEBUG_ENV) == "1":
        return
    with contextlib.suppress(ImportError, AttributeError):
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        with dispatcher._lock:
            dispatcher.handlers = [(name, _valor_lines_only(h) if name == "ray_print_logs" else h)
                                   for name, h in dispatcher.handlers]


def start_ray(address: Optional[str] = None, *, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
              namespace: Optional[str] = None, object_store_memory: Optional[int] = None,
              include_dashboard: bool = False, env: Optional[dict] = None, log_to_driver: bool = True,
              log: Optional[Callable[[str], None]] = None) -> Callable[[], None]:
    """Join `address` / $RAY_ADDRESS or start single-node Ray on 127.0.0.1; returns the shutdown to call after."""
    already = sys.modules.get("ray")
    if already is not None and already.is_initialized():
        return lambda: None
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        _loopback_only()  # before `import ray`: Ray reads it then
    import ray

    for k, v in RAY_DEFAULT_ENV.items():
        os.environ.setdefault(k, v)
    env_vars = worker_env(env)
    kwargs: dict = {"namespace": namespace, "log_to_driver": log_to_driver,
                    "runtime_env": {"env_vars": env_vars} if env_vars else None}
    if address:
        kwargs["address"] = address
    else:
        _reap_orphans()
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_memory,
                      include_dashboard=include_dashboard, _node_ip_address=LOOPBACK)
        if include_dashboard:
            kwargs["dashboard_host"] = LOOPBACK
    ctx = ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    _quiet_worker_logs()
    url = getattr(ctx, "dashboard_url", None)
    if url and log is not None:
        log(f"Ray dashboard: {url if '://' in url else 'http://' + url}")
    if address:
        return ray.shutdown
    _record_local_ray(_session_dir())

    def shutdown() -> None:
        ray.shutdown()
        _forget_local_ray()

    return shutdown


def code_version() -> str:
    """git commit of the code (with '+dirty'), or the package version when not in a checkout (e.g. a Ray working_dir)."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"valor {__version__}"
