"""Loopback helpers for the tests that start real servers: free ports, a loopback-only environment, a Ray head of the
test's own (`ray start --head --block` on 127.0.0.1, every port free-picked), and session-scoped process cleanup.

Every process is started in a new session (`start_new_session=True`) and stopped by that session id, never by name and
never with `ray stop`, which would kill every Ray process on the machine.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

VENV_BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (outside the ephemeral range Ray's workers use)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in ports and 20000 < port < 55000:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def loopback_env(extra: Optional[dict] = None) -> dict:
    """This environment with Ray bound to loopback, auth off (loopback test only), the venv first on PATH."""
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1", PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    return env


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
    return pids


def kill_session(sid: int, grace: float = 5.0) -> None:
    """Stop every process of a session we created: SIGTERM, `grace` seconds, then SIGKILL what is left."""
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while session_pids(sid) and time.time() < deadline:
        time.sleep(0.2)
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def ray_head(dashboard: bool = False, extra_args: tuple[str, ...] = (), timeout: float = 180,
             env: Optional[dict] = None) -> Iterator[dict]:
    """A Ray head on 127.0.0.1 with 2 CPUs (`env`: extra variables of its environment, which its workers inherit);
    yields {"gcs": "127.0.0.1:PORT", "dashboard": "http://127.0.0.1:PORT", "temp": its --temp-dir}.

    Ready when the job API answers (with a dashboard) or when `ray start` says the runtime started. Teardown: SIGTERM to
    `ray start --block` alone (it drains the node for 2 s and stops GCS/raylet/workers), then whatever is left of its
    session; asserts nothing of it survives."""
    while True:  # the worker port range [wmin, wmin + 200] must not hold any of the other ports
        gcs, dash, client, nm, om, agent, agent_grpc, metrics, rtenv, wmin = free_ports(10)
        if not any(wmin <= p <= wmin + 200 for p in (gcs, dash, client, nm, om, agent, agent_grpc, metrics, rtenv)):
            break
    temp = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))  # short: Ray's unix sockets live under it
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           f"--dashboard-port={dash}", f"--ray-client-server-port={client}", f"--node-manager-port={nm}",
           f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={rtenv}", f"--min-worker-port={wmin}", f"--max-worker-port={wmin + 200}",
           "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp}",
           "--dashboard-host=127.0.0.1" if dashboard else "--include-dashboard=false", *extra_args]
    log_path = temp / "ray-start.log"
    log = open(log_path, "w")
    env = loopback_env({"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2", **(env or {})})
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "temp": str(temp)}
    try:
        deadline = time.time() + timeout
        while not _head_ready(address["dashboard"] if dashboard else None, log_path):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray head did not start: {log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        kill_session(proc.pid, grace=2.0)
        log.close()
        left = session_pids(proc.pid)
        assert not left, f"processes of the Ray head's session still alive: {left}"


def _head_ready(dashboard: Optional[str], log_path: Path) -> bool:
    if dashboard is None:
        return "Ray runtime started" in log_path.read_text()
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(f"{dashboard}/api/version", timeout=2) as r:
            return r.status == 200
    return False
