"""Safety issue item 7: a local Ray started by valor listens on 127.0.0.1 only.

Ray is started exactly as a user starts it: the `valor` CLI in a subprocess, with none of the test environment's Ray
variables (the conftest sets one that alone keeps Ray on loopback). While it runs, every listening socket of every
process of that Ray session (the CLI's descendants, and whatever names the session's directory) is read with psutil.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}
SESSION = re.compile(r"/session_\d{4}-\d\d-\d\d_[\d_-]+")


def _clean_env() -> dict:
    """The user's environment: no RAY_* variable at all (valor must set what its local Ray needs itself)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


def _session_procs(root: psutil.Process) -> list[psutil.Process]:
    """`root`'s descendants, plus every process whose command line names the Ray session directory they use."""
    procs = {p.pid: p for p in root.children(recursive=True)}
    sessions = set()
    for p in list(procs.values()):
        try:
            sessions.update(SESSION.findall(" ".join(p.cmdline())))
        except psutil.Error:
            pass
    for p in psutil.process_iter(["cmdline"]):
        if any(s in " ".join(p.info["cmdline"] or ()) for s in sessions):
            procs.setdefault(p.pid, p)
    return [root, *procs.values()]


def _listening(procs: list[psutil.Process]) -> dict[str, set[str]]:
    """{"pid name": listening IPs} of the processes that listen on something."""
    out = {}
    for p in procs:
        try:
            ips = {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
            if ips:
                out[f"{p.pid} {p.name()}"] = ips
        except psutil.Error:
            pass
    return out


def _is_worker(p: psutil.Process) -> bool:
    try:
        name = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return name.startswith("ray::") and "Agent" not in name


def _stop(proc: subprocess.Popen, procs: list[psutil.Process]) -> None:
    """SIGINT (valor shuts its Ray down), then kill whatever of this session is left, by pid."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def test_local_ray_started_by_the_cli_listens_on_loopback_only(tmp_path):
    cmd = [sys.executable, "-m", "workflows.cli", "tune", "thresholds", "--logits", "sim:0", "--modality", "audio",
           "--searcher", "coord", "--max-sweeps", "50", "--num-cpus", "1", "--no-mlflow",
           "--out", str(tmp_path / "thresholds.json"), "--storage-dir", str(tmp_path / "tune")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    procs: list[psutil.Process] = []
    try:
        root = psutil.Process(proc.pid)
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:  # until a worker runs a trial: every node process is up
            procs = _session_procs(root)
            if any(_is_worker(p) for p in procs):
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"valor exited before Ray was up: {proc.stderr.read()[-2000:]}"
        time.sleep(2)  # the agents' late listeners
        procs = _session_procs(root)
        listening = _listening(procs)
    finally:
        _stop(proc, procs)
    names = " ".join(listening)
    assert "gcs_server" in names and "raylet" in names and len(listening) >= 4, listening
    exposed = {who: ips - LOOPBACK for who, ips in listening.items() if ips - LOOPBACK}
    assert not exposed, f"Ray processes listening beyond 127.0.0.1: {exposed}"
