"""The one Ray starter: a local Ray listens on 127.0.0.1 only, credentials stay out of runtime_env and Ray's logs, and
the Ray left behind by a driver killed with SIGKILL is stopped by the next start."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration  # starts real local Ray clusters

SECRET = "valor-test-secret-Zq81x"
PROBE = r'''
import json, os, sys, time
os.environ["AWS_SECRET_ACCESS_KEY"] = sys.argv[1]
import psutil, ray
from workflows.runtime import start_ray, worker_env
stop = start_ray(num_cpus=1, env={"VALOR_PROBE": "yes"})

@ray.remote
def probe():
    return os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("VALOR_PROBE")

seen = ray.get(probe.remote())
time.sleep(2)  # the agents are up and listening
me = psutil.Process()
pids = {c.pid for c in me.children(recursive=True)}
listen = sorted({c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.pid in pids})
session = ray._private.worker.global_worker.node.get_session_dir_path()
print(json.dumps({"seen": seen, "listen": listen, "pids": sorted(pids), "session": session,
                  "forwarded": sorted(worker_env())}), flush=True)
if sys.argv[2] == "hang":
    time.sleep(600)
stop()
'''


def _start(mode: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-c", PROBE, SECRET, mode], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)


def _alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def test_local_ray_loopback_only_no_secret_in_logs_and_orphans_reaped():
    driver = _start("hang")
    try:
        info = json.loads(driver.stdout.readline())
    except ValueError:
        driver.kill()
        raise
    try:
        assert info["seen"] == [SECRET, "yes"]  # workers inherit the driver's environment; valor's env is forwarded
        assert "AWS_SECRET_ACCESS_KEY" not in info["forwarded"]
        loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}  # IPv4, IPv4-mapped IPv6, IPv6 loopback
        assert info["listen"] and set(info["listen"]) <= loopback, info["listen"]
        logs = Path(info["session"]) / "logs"
        leaked = [str(p) for p in logs.rglob("*") if p.is_file() and SECRET in p.read_text(errors="replace")]
        assert leaked == [], f"the secret is in Ray's logs: {leaked}"
        os.kill(driver.pid, signal.SIGKILL)  # a driver that cannot shut its Ray down
        driver.wait(timeout=30)
        time.sleep(1)
        orphans = _alive(info["pids"])
        second = _start("stop")  # the next start reaps them
        out = json.loads(second.stdout.readline())
        second.wait(timeout=120)
        assert second.returncode == 0 and out["seen"] == [SECRET, "yes"]
        deadline = time.time() + 20
        while _alive(orphans) and time.time() < deadline:
            time.sleep(0.5)
        assert _alive(orphans) == [], f"left behind by the killed driver: {_alive(orphans)}"
        assert _alive(out["pids"]) == []  # a clean shutdown stops its own
    finally:
        for pid in _alive(info.get("pids", [])):
            psutil.Process(pid).kill()
