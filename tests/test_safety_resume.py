"""A `valor train` whose driver is SIGKILLed mid-training: its MLflow run is closed as KILLED by the next command, and
the same command again resumes from the last checkpoint in the same MLflow run (workflows/train_ray, tracking).

The quick test needs no Ray: a process killed while its MLflow run is open, then `valor compare`. The integration test:
real `valor train` subprocesses (each its own local Ray on 127.0.0.1, 2 CPU workers, gloo DDP), a sqlite
MLflow store, LLP-sim data as tests/test_train_ray.py (512 train videos, a narrow `valor` preset), 3 epochs.
The killed attempt's whole session (driver, its Ray, the workers) gets SIGKILL once its first checkpoint is
registered; the epoch it resumes from is read from Ray Train's checkpoint_manager_snapshot.json after the kill. The
undisturbed run to compare with is the same command once more: the first run completed, so it trains a new run from
epoch 1 in the next directory (`<name>-2`).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from tests.conftest import LLP_DIR, REPO
from tests.loopback import kill_session, loopback_env


EPOCHS = 3
OVERRIDES = ("model.hidden=64", "model.heads=4", "model.ff=128", "optim.warmup_epochs=1", "optim.lr_max=0.001",
             "optim.lr_min=0.0001")
TOLERANCE = 1e-6  # seeded, one thread per worker: the resumed run computes what the undisturbed one does


DIES_HOLDING_A_RUN = """
import os, signal, sys
from workflows import tracking
print(tracking.start_run(sys.argv[1], "valor", "dies", {}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_compare_closes_the_run_of_a_killed_process_only(tmp_path, capsys):
    """No Ray: a process SIGKILLs itself while its MLflow run is open; `valor compare` shows that run KILLED (tag
    naming the process) and leaves the run of a live process (this one) RUNNING."""
    from workflows import tracking
    from workflows.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    dead = subprocess.run([sys.executable, "-c", DIES_HOLDING_A_RUN, uri], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert dead.returncode == -signal.SIGKILL, dead.stderr[-2000:]
    dead_id = dead.stdout.strip().splitlines()[-1]
    live_id = tracking.start_run(uri, "valor", "alive", {})
    try:
        assert main(["compare", "--tracking-uri", uri, "--json"]) == 0
        runs = {r["run_id"]: r["status"] for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])}
        assert runs == {dead_id: "KILLED", live_id: "RUNNING"}
        tag = tracking.client(uri).get_run(dead_id).data.tags["valor.killed"]
        assert tag.startswith("valor process ") and "ended without closing the run" in tag
    finally:
        tracking.end_run(uri, live_id, "FINISHED")


def _store(root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    return {"uri": f"sqlite:///{root}/mlflow.db", "storage": str(root / "ray")}


def _cmd(store: dict) -> list[str]:
    cmd = [sys.executable, "-m", "workflows.cli", "train", "--preset", "valor", "--features",
           "sim:0:frame_dim=128,clip_dim=64", "--workers", "2", "--epochs", str(EPOCHS), "--tracking-uri",
           store["uri"], "--storage", store["storage"], "--annotations", str(LLP_DIR), "--max-train-videos", "512",
           "--run-name", "resume", "--no-figures", "--json"]
    for o in OVERRIDES:
        cmd += ["--set", o]
    return cmd


def _train(store: dict, env: dict) -> dict:
    done = subprocess.run(_cmd(store), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _checkpoints(storage: str) -> tuple[Path, int]:
    """(the run's Ray Train directory, the epoch of its latest registered checkpoint; 0 when none yet)."""
    for snap in Path(storage).glob("*/checkpoint_manager_snapshot.json"):
        epochs = [int(e) for e in re.findall(r'"epoch_(\d{3})"', snap.read_text(errors="replace"))]
        return snap.parent, max(epochs, default=0)
    return Path(storage), 0


def _kill_after_first_checkpoint(store: dict, env: dict, cmd: Optional[list[str]] = None) -> None:
    """Run `cmd` (default: this file's `valor train`) and SIGKILL its whole session once its first checkpoint is
    registered."""
    log = Path(store["storage"]).parent / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd or _cmd(store), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 240
        while _checkpoints(store["storage"])[1] < 1:
            assert proc.poll() is None, f"valor train ended before its first checkpoint: {log.read_text()[-3000:]}"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything of its session, at once
        proc.wait(timeout=30)
    finally:
        kill_session(proc.pid, grace=1.0)


def _history(c, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))


@pytest.mark.integration  # real Ray, MLflow and CPU training
def test_killed_train_is_closed_and_resumes_from_its_last_checkpoint(tmp_path, capsys):
    from workflows import tracking
    from workflows.cli import main
    from workflows.outputs import read_marker

    killed = _store(tmp_path / "store")
    env = loopback_env()
    _kill_after_first_checkpoint(killed, env)
    trial, last = _checkpoints(killed["storage"])
    assert 1 <= last < EPOCHS, f"killed after epoch {last} of {EPOCHS}: nothing left to resume"

    # the next tracked command (here `valor compare`) closes the killed attempt's run: not RUNNING
    assert main(["compare", "--tracking-uri", killed["uri"], "--experiment", "valor", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["run_name"], r["status"]) for r in runs] == [("resume", "KILLED")]
    c = tracking.client(killed["uri"])
    killed_id = runs[0]["run_id"]
    assert c.get_run(killed_id).data.tags["valor.killed"].startswith("valor process ")

    # the same command again: resumes at epoch last + 1 in the same Ray Train directory and the same MLflow run
    shards = tmp_path / "shards"
    out = _train(killed, {**env, "VALOR_TRAIN_RECORD_SHARDS": str(shards)})
    assert sorted(int(p.name.split("_")[0][5:]) for p in shards.glob("epoch*_rank0.json")) == \
        list(range(last + 1, EPOCHS + 1))  # epochs 1..last were not trained again
    assert out["run_id"] == killed_id and out["epochs"] == EPOCHS
    assert Path(out["checkpoint"]).parent == trial and Path(out["checkpoint"]).name == f"epoch_{EPOCHS:03d}"
    run = c.get_run(killed_id)
    assert run.info.status == "FINISHED"
    assert _history(c, killed_id, "resumed_from_epoch") == [(last, float(last))]
    loss = _history(c, killed_id, "train_loss")
    assert [s for s, _ in loss] == list(range(1, EPOCHS + 1))  # one value per epoch, none duplicated
    assert [s for s, _ in _history(c, killed_id, "val.segment.type")] == list(range(1, EPOCHS + 1))
    assert json.loads((trial / "valor_completed.json").read_text())["outcome"]["run_id"] == killed_id
    wrote = read_marker(killed["storage"])["wrote"]  # the storage's manifest: the completed run's files, listed
    assert f"{trial.name}/" not in wrote and f"{trial.name}/valor_completed.json" in wrote
    assert f"{trial.name}/epoch_{EPOCHS:03d}/best_model.pt" in wrote

    # the same numbers as a run that was never interrupted: the same command once more, now a new run from epoch 1
    ref = _train(killed, env)
    assert ref["run_id"] != killed_id and Path(ref["checkpoint"]).parent.name == f"{trial.name}-2"
    assert _history(c, ref["run_id"], "resumed_from_epoch") == []
    ref_loss = _history(c, ref["run_id"], "train_loss")
    assert [v for _, v in loss] == pytest.approx([v for _, v in ref_loss], abs=TOLERANCE)
    assert out["best_epoch"] == ref["best_epoch"]
    for split in ("val", "test"):
        for lvl in ("segment", "event"):
            assert out[split][lvl] == pytest.approx(ref[split][lvl], abs=TOLERANCE), (split, lvl)
