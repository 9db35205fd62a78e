"""Chaos: two `valor run`s and a `valor parse` on overlapping outputs, a user file planted in every output folder, a
SIGKILL mid-train and an S3 restart; afterwards every planted file is byte-identical, every video is in the features
exactly once, and the killed run resumed from its checkpoint.

One integration test, real parts only: a private SeaweedFS S3 server (`valor storage up/down --dir`), `valor run
--config configs/local.yaml` as subprocesses (each its own session, its own local Ray on 127.0.0.1) with the S3 keys in
their environment as `eval "$(valor storage up --env)"` puts them, outputs on s3://<bucket>/chaos-<pid>, paths.work and
the MLflow sqlite (its default <paths.work>/mlflow.db) in a temp dir. Scale of the e2e test in test_pipeline.py (8
videos, demo off, a 1-layer 32-wide HAN, fixed actor pools), with EPOCHS epochs so that the kill lands mid-train.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO
from tests.loopback import VENV_BIN, kill_session, loopback_env, session_pids
from workflows import objstore, s3server
from workflows.features import read_features

VIDEOS = 8
EPOCHS = 6
PLANTED = "mine-not-valor.txt"  # the user's file, one in every output folder
REPORTED = re.compile(r"Reporting training result \d+: TrainingReport\(checkpoint=[^)]*/epoch_(\d{3})\)")  # Ray Train


def _storage(*args: str) -> str:
    """`valor storage ARGS` as a user runs it; its stdout."""
    r = subprocess.run([str(VENV_BIN / "valor"), "storage", *args], capture_output=True, text=True, timeout=120,
                       env=loopback_env())
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _exports(text: str) -> dict:
    """The variables of `valor storage up --env`'s `export K=V` lines."""
    return dict(shlex.split(line[len("export "):])[0].split("=", 1) for line in text.splitlines()
                if line.startswith("export "))


def _overrides(tmp: Path, prefix: str) -> list[str]:
    return [f"paths.videos={tmp / 'videos'}", f"paths.annotations={tmp / 'videos'}", f"paths.work={tmp / 'work'}",
            f"paths.output={prefix}", f"corpus.videos={VIDEOS}", "demo.enabled=false",
            f"train.optim.epochs={EPOCHS}", "train.optim.warmup_epochs=0", "train.num_workers=1",
            "train.optim.batch_size=4", "train.model.hidden=32", "train.model.ff=64", "train.model.heads=2",
            "train.model.layers=1", "tune.max_sweeps=2", "tune.grid_points=5",
            "extract.clip_actors=[1, 1]", "extract.clap_actors=[1, 1]"]


def _valor(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`python -m workflows.cli ARGS` in a session of its own, stdout and stderr into `log` (.out / .err)."""
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen([sys.executable, "-m", "workflows.cli", *args], cwd=REPO, env=env, stdout=out,
                                stderr=err, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> tuple[int, str, str]:
    """Wait for a valor command; (rc, stdout, stderr) once nothing of its session (its Ray) is left."""
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid, grace=1.0)
    _gone(proc.pid)
    return rc, log.with_suffix(".out").read_text(), log.with_suffix(".err").read_text()


def _gone(sid: int, within: float = 20.0) -> None:
    """Nothing of session `sid` is alive (Ray's processes take a moment to exit after ray.shutdown)."""
    deadline = time.time() + within
    while session_pids(sid) and time.time() < deadline:
        time.sleep(0.2)
    assert session_pids(sid) == [], f"processes of valor's session {sid} still alive: {session_pids(sid)}"


def _descendants(pid: int, seen: dict) -> None:
    """Remember every process below `pid` (pid -> create time), to check after a kill that none survived."""
    with contextlib.suppress(psutil.Error):
        for c in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                seen[c.pid] = c.create_time()


def _kill_all(sid: int, seen: dict) -> None:
    """SIGKILL the process group of a valor command and, at once, everything else of its session (its Ray)."""
    os.killpg(sid, signal.SIGKILL)
    for pid in set(session_pids(sid)) | set(_alive(seen)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(seen: dict) -> list[int]:
    out = []
    for pid, created in seen.items():
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
    return out


def _files(prefix: str, opts: dict) -> list[str]:
    """Every object under the prefix, relative to it."""
    _, root = objstore.fs_for(prefix, opts)
    return [posixpath.relpath(p, root) for p in objstore.list_files(prefix, opts, recursive=True)]


def _snapshot(prefix: str, opts: dict) -> tuple[str, int]:
    """(the train run's folder under train/, the epoch of its latest checkpoint Ray Train registered; 0 when none)."""
    for rel in _files(f"{prefix}/train", opts):
        if rel.endswith("/checkpoint_manager_snapshot.json"):
            text = objstore.read_bytes(f"{prefix}/train/{rel}", opts).decode(errors="replace")
            return posixpath.dirname(rel), max((int(e) for e in re.findall(r"epoch_(\d{3})", text)), default=0)
    return "", 0


def _tree(root: Path) -> dict:
    """A local folder's files: relative path -> (size, mtime_ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.integration  # SeaweedFS, Ray, MLflow, CPU training, several `valor run`s
def test_chaos_kill_restart_overlaps_keep_user_files_and_resume(tmp_path):
    import mlflow
    import pyarrow.dataset as pads

    sdir = tempfile.mkdtemp(prefix="vs3", dir="/tmp")
    info = s3server.up(sdir)
    try:
        _chaos(tmp_path, sdir, info, mlflow, pads)
    finally:
        try:
            _storage("down", "--dir", sdir, "--json")
        finally:
            stopped_late = s3server.down(sdir)  # only when `valor storage down` itself failed
        assert not stopped_late and not s3server.status(sdir)["running"], f"SeaweedFS (pid {info.pid}) was running"
        shutil.rmtree(sdir, ignore_errors=True)


def _chaos(tmp: Path, sdir: str, info, mlflow, pads) -> None:
    user_env = _exports(_storage("up", "--dir", sdir, "--env"))  # eval "$(valor storage up --env)"
    assert user_env["AWS_ENDPOINT_URL"] == info.endpoint
    env = loopback_env(user_env)
    opts = objstore.s3_options(info.config())
    prefix = f"s3://{info.bucket}/chaos-{os.getpid()}"
    work = tmp / "work"
    args = ["run", "--config", "configs/local.yaml", *_overrides(tmp, prefix), "--json"]
    uri = f"sqlite:///{work / 'mlflow.db'}"

    # 1. the first run; 2. while it holds the output's lock, a second run on the same output is refused at once
    first = _valor(args, env, tmp / "first")
    seen: dict = {}
    deadline = time.time() + 240
    while not objstore.exists(f"{prefix}/_valor.lock", opts) or not objstore.exists(f"{prefix}/config.yaml", opts):
        assert first.poll() is None, (tmp / "first.err").read_text()[-3000:]
        assert time.time() < deadline, "the first run took no lock within 240 s"
        time.sleep(0.2)
    holder = json.loads(objstore.read_bytes(f"{prefix}/_valor.lock", opts))
    config_before = objstore.read_bytes(f"{prefix}/config.yaml", opts)
    local_before = {d: _tree(tmp / d) for d in ("videos", "work/teachers-tiny")}
    rc, out, err = _finish(_valor(args, env, tmp / "second"), tmp / "second", timeout=120)
    assert rc == 2, out + err
    assert len(err.strip().splitlines()) == 1 and f"pid {first.pid} " in err and "is in use by valor run" in err, err
    assert json.loads(objstore.read_bytes(f"{prefix}/_valor.lock", opts))["token"] == holder["token"]
    assert objstore.read_bytes(f"{prefix}/config.yaml", opts) == config_before  # it wrote nothing there ...
    assert {d: _tree(tmp / d) for d in local_before} == local_before  # ... nor here

    # 3. SIGKILL the first run's whole session once train registered its first checkpoint, before it completes
    while _snapshot(prefix, opts)[1] < 1:
        assert first.poll() is None, "the first run ended before its first checkpoint: " + \
            (tmp / "first.out").read_text()[-2000:] + (tmp / "first.err").read_text()[-3000:]
        assert time.time() < deadline + 240, "no train checkpoint within 480 s"
        _descendants(first.pid, seen)
        time.sleep(0.1)
    _descendants(first.pid, seen)
    _kill_all(first.pid, seen)
    killed_at = time.time()
    first.wait(timeout=30)
    _gone(first.pid)
    assert _alive(seen) == [], f"processes of the killed run still alive: {_alive(seen)}"
    trial, last = _snapshot(prefix, opts)
    assert 1 <= last < EPOCHS, f"killed after epoch {last} of {EPOCHS}: nothing left to resume"
    c = mlflow.MlflowClient(uri)
    exp = c.get_experiment_by_name("valor-local").experiment_id
    train_id = next(r.info.run_id for r in c.search_runs([exp]) if r.data.tags.get("valor.trial", "").endswith(trial))

    # the S3 server restarts (same dir: same endpoint and keys)
    _storage("down", "--dir", sdir, "--json")
    assert _exports(_storage("up", "--dir", sdir, "--env")) == user_env

    # a user file in every output folder of the pipeline, and in paths.work
    folders = ["", "features/", "labels/", "train/", f"train/{trial}/", "_pipeline/"]
    folders += ["failures/"] if any(f.startswith("failures/") for f in _files(prefix, opts)) else []
    planted = {}
    for i, folder in enumerate(folders):
        data = f"the user's own file {i} in {folder or 'the root'}\n".encode() + os.urandom(64)
        objstore.write_bytes(f"{prefix}/{folder}{PLANTED}", data, opts)
        planted[f"{prefix}/{folder}{PLANTED}"] = data
    (work / PLANTED).write_bytes(b"the user's notes beside valor's work\n")

    # 4. the same `valor run` again: it completes, the train stage resumes the killed run from its checkpoint
    restarted_at = time.time()
    # --debug only lets Ray Train's own worker lines through (valor hides them otherwise): its "Reporting training
    # result" lines are the evidence of which epochs ran; what resumes does not depend on it
    rc, out, err = _finish(_valor(["--debug", *args], env, tmp / "resume"), tmp / "resume")
    assert rc == 0, out[-3000:] + err[-3000:]
    s = _last_json(out)
    assert s["ran"] == ["train", "evaluate"], s  # extract, tune and harvest had completed before the kill
    assert f"resumed from the epoch-{last} checkpoint" in out + err
    assert s["results"]["train"]["run_id"] == train_id
    assert c.get_run(train_id).info.status == "FINISHED"
    assert [(m.step, m.value) for m in c.get_metric_history(train_id, "resumed_from_epoch")] == [(last, float(last))]
    loss = sorted((m.step, m.timestamp / 1000) for m in c.get_metric_history(train_id, "train_loss"))
    assert [step for step, _ in loss] == list(range(1, EPOCHS + 1))  # each epoch's metric exactly once
    assert all(t < killed_at for step, t in loss if step <= last) and loss[-1][1] > restarted_at
    trained = [int(e) for e in REPORTED.findall(err)]
    assert trained == list(range(last + 1, EPOCHS + 1))  # Ray Train's reports: epochs up to the checkpoint not again
    assert [r.info.run_id for r in c.search_runs([exp]) if r.info.status == "RUNNING"] == []  # the killed attempt's

    # a `valor parse` whose --out is paths.work (MLflow's store, the teachers) is refused and touches nothing
    work_before = {**_tree(work), PLANTED: (work / PLANTED).read_bytes()}
    rc, out, err = _finish(_valor(["parse", str(tmp / "videos"), "--checkpoint", s["results"]["train"]["checkpoint"],
                                   "--out", str(work), "--no-ray"], env, tmp / "parse"), tmp / "parse", timeout=180)
    assert rc == 2, out + err
    assert err.strip().splitlines() == [err.strip()] and str(work) in err and "no valor marker" in err, err
    assert {**_tree(work), PLANTED: (work / PLANTED).read_bytes()} == work_before

    # 5. a thresholds change re-runs harvest, train and evaluate: valor removes its old outputs, keeps the user's
    rc, out, err = _finish(_valor(args[:-1] + ["thresholds.unified_clip=0.0", "--json"], env, tmp / "rerun"),
                           tmp / "rerun")
    assert rc == 0, out[-3000:] + err[-3000:]
    s = _last_json(out)
    assert s["ran"] == ["harvest", "train", "evaluate"], s
    said = out + err
    assert f"{prefix}/labels: kept 1 file valor did not write: {PLANTED}" in said, said[-4000:]
    assert f"{prefix}/train: kept 2 files valor did not write: " in said, said[-4000:]
    assert s["results"]["train"]["run_id"] != train_id
    assert not any(f.startswith(f"train/{trial}/epoch_") for f in _files(prefix, opts))  # the old run: removed

    # 6. every planted file byte-identical; every video in the features exactly once; nothing left staged
    for where, data in planted.items():
        assert objstore.read_bytes(where, opts) == data, where
    assert (work / PLANTED).read_bytes() == work_before[PLANTED]
    table = read_features(f"{prefix}/features", opts, columns=["video_id"])
    assert table.num_rows == VIDEOS and len(set(table.column("video_id").to_pylist())) == VIDEOS
    fs, root = objstore.fs_for(f"{prefix}/features", opts)
    parts = [p for p in objstore.list_files(f"{prefix}/features", opts) if posixpath.basename(p).startswith("part-")
             and p.endswith(".parquet")]
    raw = pads.dataset(parts, filesystem=fs, format="parquet").to_table(columns=["video_id"])
    assert raw.num_rows == VIDEOS and sorted(raw.column("video_id").to_pylist()) == \
        sorted(table.column("video_id").to_pylist())
    assert [f for f in _files(prefix, opts) if "_staging/" in f] == []
