"""`valor extract` end to end: 30 real mp4 files (every broken kind among them) -> Ray Data on real local Ray with the
tiny teachers -> Parquet on a real SeaweedFS S3 server (videos read from S3 too), killed with SIGKILL mid-run and re-run
(exactly once), then the same run into a local directory through an in-process `ray.init()`. No S3 mocks.

Every process started here is stopped here: SeaweedFS by `storage.down`, the module's Ray head and each `valor extract`
by their own session (started with start_new_session; leftovers found by session id, never by name).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests import loopback
from tests.conftest import REPO
from tests.loopback import kill_session, loopback_env
from workflows import objstore, s3server as storage

pytestmark = pytest.mark.integration  # real Ray / S3 / MLflow or minutes of CPU training

GOOD, SEED = 17, 5  # 17 good + 13 broken/awkward (valor_core.media.synth.BROKEN_KINDS) = 30 videos
FATAL = {"empty": "empty", "truncated": "truncated", "not_video": "not_video", "audio_only": "no_video_stream",
         "unknown_codec": "unknown_codec", "tiny": "too_short"}  # broken kind -> failure kind (stage decode)
CLIP_DIM, CLAP_DIM = 32, 512  # the tiny teachers
FAST = ["--rows-per-file", "4", "--clip-actors", "1,1", "--clap-actors", "1,1", "--teacher-batch", "10",
        "--clip-batch", "8", "--clap-batch", "4"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from valor_core.media.synth import synth_corpus

    d = tmp_path_factory.mktemp("corpus")
    manifest = synth_corpus(d, GOOD, broken=True, seed=SEED)
    kinds = json.loads((d / "broken.json").read_text())  # {video_id: kind}
    ids = [line.split("\t")[0] for line in manifest.read_text().splitlines()[1:]]
    assert len(ids) == 30
    return {"dir": d, "manifest": manifest, "kinds": kinds, "ids": ids}


@pytest.fixture(scope="module")
def s3():
    d = tempfile.mkdtemp(prefix="vxs3", dir="/tmp")
    info = storage.up(d)
    try:
        yield info
    finally:
        storage.down(d)


@pytest.fixture(scope="module")
def ray_head():
    """One Ray head per module on 127.0.0.1 (every port free-picked, 2 CPUs, no dashboard); yields its GCS address."""
    with loopback.ray_head(extra_args=("--object-store-memory=600000000",)) as address:
        yield address["gcs"]


def _extract_cmd(corpus_manifest: str, videos: str, out: str, specs: dict, *extra: str) -> list[str]:
    return [sys.executable, "-m", "workflows.cli", "extract", "--manifest", corpus_manifest, "--videos", videos,
            "--clip", specs["clip"], "--clap", specs["clap"], "--out", out, "--json", *FAST, *extra]


def _run(cmd: list[str], env: dict, timeout: float = 900) -> tuple[int, dict, str]:
    """Run `valor extract` in its own session; returns (rc, last JSON line, output). Leftovers of the session die."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        kill_session(proc.pid)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        result = json.loads(last)
    except ValueError:
        raise AssertionError(f"no JSON last line (rc {proc.returncode}):\n{out[-4000:]}") from None
    return proc.returncode, result, out


def _check_dataset(out: str, opts: dict | None, corpus: dict, missing: tuple[str, ...] = ()) -> None:
    """Every decodable video exactly once with the right shapes; every fatal broken kind in failures with its reason."""
    import pyarrow.dataset as pads

    from workflows.features import column_array, failures_uri, read_failures

    fs, path = objstore.fs_for(out, opts)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table()  # plain pyarrow, as a user reads it
    ids = table.column("video_id").to_pylist()
    fatal_ids = {v for v, k in corpus["kinds"].items() if k in FATAL}
    expected = set(corpus["ids"]) - fatal_ids
    assert len(ids) == len(set(ids)), "a video was written twice"
    assert set(ids) == expected
    n = len(ids)
    assert column_array(table, "clip_logits", (10, 25)).shape == (n, 10, 25)
    assert column_array(table, "clip_emb", (10, CLIP_DIM)).shape == (n, 10, CLIP_DIM)
    clap = column_array(table, "clap_logits", (10, 25))
    assert clap.shape == (n, 10, 25) and column_array(table, "clap_emb", (10, CLAP_DIM)).shape == (n, 10, CLAP_DIM)
    emb = column_array(table, "clip_emb", (10, CLIP_DIM))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-4)
    assert column_array(table, "weak", (25,), np.uint8).shape == (n, 25)
    rows = {r["video_id"]: r for r in table.select(["video_id", "status", "error", "issues", "clap_ok", "clip_ok",
                                                    "schema_version", "clip_teacher", "clap_checkpoint"]).to_pylist()}
    for vid, row in rows.items():
        kind = corpus["kinds"].get(vid)
        assert row["clip_ok"] and row["schema_version"] == 1 and row["clip_teacher"] and row["clap_checkpoint"]
        if kind == "no_audio":
            assert row["status"] == "partial" and not row["clap_ok"] and "no_audio" in row["error"]
            assert np.isnan(clap[ids.index(vid)]).all()
        else:
            assert row["status"] == "ok" and row["clap_ok"], (vid, row)
            assert np.isfinite(clap[ids.index(vid)]).all()
    # the awkward-but-decodable kinds say what happened to them
    issues = {corpus["kinds"][v]: rows[v]["issues"] for v in rows if v in corpus["kinds"]}
    for kind, word in (("silent", "silent_audio"), ("short", "short_clip"), ("long", "long_clip"),
                       ("vfr", "variable_frame_rate"), ("portrait", "unusual_geometry")):
        assert word in issues[kind], (kind, issues[kind])

    fails = read_failures(out, opts).to_pylist()
    fatal_rows = [f for f in fails if f["fatal"]]
    assert sorted(f["video_id"] for f in fatal_rows) == sorted(fatal_ids | set(missing)), "each broken one once"
    for f in fatal_rows:
        if f["video_id"] in missing:
            assert f["stage"] == "read" and f["kind"] == "FileNotFoundError" and "no such file" in f["reason"], f
        else:
            assert f["stage"] == "decode" and f["kind"] == FATAL[corpus["kinds"][f["video_id"]]] and f["reason"], f
    partial = [f for f in fails if not f["fatal"]]
    assert [(f["stage"], f["kind"]) for f in partial] == [("clap", "no_audio")]
    # the raw failures table is a plain Parquet dataset beside the features
    ffs, fpath = objstore.fs_for(failures_uri(out), opts)
    assert pads.dataset(fpath, filesystem=ffs, format="parquet").count_rows() == len(fails)


def _visible_parts(out: str, opts: dict | None) -> list[str]:
    return [p for p in objstore.list_files(out, opts, suffix=".parquet")]


def _wait_first_part(proc: subprocess.Popen, out: str, opts: dict | None, timeout: float = 600) -> None:
    """Until a running extraction has published its first part (mid-run); fails if it ends first."""
    deadline = time.time() + timeout
    while not _visible_parts(out, opts):
        assert proc.poll() is None, proc.stdout.read().decode()[-4000:]
        assert time.time() < deadline, "no part published in time"
        time.sleep(0.3)


def test_extract_s3_killed_and_rerun_exactly_once(corpus, s3, ray_head, tiny_teachers):
    import pyarrow.parquet as pq

    opts = objstore.s3_options(s3.config())
    # the videos and the manifest live on the S3 server too: workers read bytes over S3
    for p in sorted(corpus["dir"].glob("*.mp4")) + [corpus["manifest"]]:
        objstore.write_bytes(f"s3://{s3.bucket}/videos/{p.name}", p.read_bytes(), opts)
    out = f"s3://{s3.bucket}/run/features"
    env = loopback_env({**tiny_teachers["env"], **s3.env()})
    cmd = _extract_cmd(f"s3://{s3.bucket}/videos/manifest.csv", f"s3://{s3.bucket}/videos", out, tiny_teachers,
                       "--address", ray_head)

    # 1. start, wait for the first published part, SIGKILL the driver mid-run
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_first_part(proc, out, opts)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_session(proc.pid)
        proc.stdout.close()
    first = _visible_parts(out, opts)
    fs, _ = objstore.fs_for(out, opts)
    for part in first:  # whatever is visible is a complete Parquet file
        with fs.open_input_file(part) as f:
            assert pq.read_metadata(f).num_rows > 0
    from workflows.features import read_features

    written = read_features(out, opts, columns=["video_id"]).num_rows
    assert 0 < written < 30 - len(FATAL), "the kill was not mid-run"

    # 2. re-run: finishes the rest, skips what was written
    rc, res, log = _run(cmd, env)
    assert rc == 0, log[-4000:]
    assert res["out"] == out and res["done"] + res["failed"] + res["skipped"] == 30, res
    assert res["skipped"] >= written and res["seconds"] > 0
    _check_dataset(out, opts, corpus)

    # 3. a third run has nothing to do and writes nothing
    before = _visible_parts(out, opts)
    rc, res, log = _run(cmd, env)
    assert rc == 0 and res["done"] == 0 and res["failed"] == 0 and res["skipped"] == 30, (res, log[-2000:])
    assert _visible_parts(out, opts) == before
    assert not objstore.list_files(objstore.join(out, "_staging"), opts, recursive=True)


def test_extract_local_dir_with_local_ray(corpus, tmp_path, tiny_teachers):
    out = str(tmp_path / "out" / "features")
    env = loopback_env(tiny_teachers["env"])
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(k, None)
    manifest = tmp_path / "manifest.csv"  # the corpus plus one video whose file does not exist
    manifest.write_text(corpus["manifest"].read_text() + "missing-video_0_10\tSpeech,Dog\n")
    cmd = _extract_cmd(str(manifest), str(corpus["dir"]), out, tiny_teachers, "--num-cpus", "2",
                       "--no-dashboard", "--object-store-mb", "600")
    rc, res, log = _run(cmd, env)
    assert rc == 0, log[-4000:]
    assert "Ray dashboard" not in log and "extract: done 24 (partial 1), failed 7" in log, log[-3000:]
    assert res == {"done": 30 - len(FATAL), "failed": len(FATAL) + 1, "skipped": 0, "seconds": res["seconds"],
                   "out": out}, res
    _check_dataset(out, None, corpus, missing=("missing-video_0_10",))
    files = sorted(Path(out).glob("part-*.parquet"))
    assert 1 < len(files) <= 30 // 4 + 2 and not list(Path(out).glob("_staging/*"))
    runs = list((Path(out) / "_runs").glob("*.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["summary"]["done"] == res["done"]


def test_exit_code_only_when_nothing_succeeded(monkeypatch, capsys):
    """Non-zero exit only when nothing succeeded; a no-op re-run (all skipped) is a success."""
    from workflows import cli, extract

    for (done, failed, skipped), rc in (((0, 3, 0), 1), ((1, 3, 0), 0), ((0, 0, 5), 0), ((0, 2, 5), 1)):
        monkeypatch.setattr(extract, "run_extract", lambda *a, _r=(done, failed, skipped), **k: extract.Summary(
            done=_r[0], failed=_r[1], skipped=_r[2], seconds=1.0, out="o", failures="f"))
        assert cli.main(["extract", "--manifest", "m", "--videos", ".", "--clip", "c", "--clap", "a", "--out", "o",
                         "--json"]) == rc
        last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert last == {"done": done, "failed": failed, "skipped": skipped, "seconds": 1.0, "out": "o"}


def test_failures_uri_and_manifest(tmp_path):
    from workflows.features import failures_uri
    from workflows.manifest import ManifestError, read_manifest

    assert failures_uri("s3://b/run/features") == "s3://b/run/failures"
    assert failures_uri("/x/feats/") == "/x/feats_failures"
    m = tmp_path / "AVVP_val_pd.csv"
    m.write_text("filename\tevent_labels\na_0_10\tSpeech,Dog\nb.mkv\t\n")
    e = read_manifest(str(m), "s3://bkt/videos")
    assert [(x.video_id, x.source, x.split, sum(x.weak)) for x in e] == [
        ("a_0_10", "s3://bkt/videos/a_0_10.mp4", "val", 2), ("b", "s3://bkt/videos/b.mkv", "val", 0)]
    m.write_text("video_id,labels,split,path\nx,Cat,train,/abs/x.mp4\n")
    assert read_manifest(str(m), str(tmp_path))[0].source == "/abs/x.mp4"
    m.write_text("filename\tevent_labels\na\tSpeech\na\tDog\n")
    with pytest.raises(ManifestError, match="listed twice"):
        read_manifest(str(m), str(tmp_path))
    m.write_text("filename\tevent_labels\na\tNotAClass\n")
    with pytest.raises(ManifestError, match="unknown class"):
        read_manifest(str(m), str(tmp_path))


class _StubTeacher:
    """Teacher interface stand-in for the Ray-free stage test; raises on frames whose mean is `poison`."""

    def __init__(self, dim: int, poison: float | None = None):
        self.name, self.checkpoint, self.dim, self.poison = "stub", "none", dim, poison

    def segment_logits(self, batch):
        items = [np.asarray(v, np.float32) for v in batch]
        if self.poison is not None and any(abs(float(v.mean()) - self.poison) < 1e-6 for v in items):
            raise ValueError("poisoned video")
        T = items[0].shape[0]
        emb = np.ones((len(items), T, self.dim), np.float32) / np.sqrt(self.dim)
        return np.zeros((len(items), T, 25), np.float32), emb


def test_stages_in_process_dense_and_teacher_failure_isolated(synth_corpus, tmp_path):
    """Decode -> ClipStage -> ClapStage -> Write called directly (no Ray): dense stack, a teacher that fails on one
    video (the others of its batch still get outputs; the bad one becomes a `clip` failure, partial row)."""
    import pyarrow.dataset as pads

    from valor_core.config import MediaConfig, TeacherConfig
    from workflows.extract import ClapStage, ClipStage, Decode, Write, WriteSpec
    from workflows.features import column_array, read_failures
    from workflows.manifest import read_manifest

    entries = read_manifest(str(synth_corpus), str(Path(synth_corpus).parent))
    batch = {"video_id": np.array([e.video_id for e in entries], object),
             "source": np.array([e.source for e in entries], object),
             "split": np.array([e.split for e in entries], object),
             "labels": np.array([e.labels for e in entries], object),
             "weak": np.stack([np.asarray(e.weak, np.uint8) for e in entries])}
    dec = Decode(MediaConfig(dense_frames=True), None)(batch)
    assert dec["frames"].shape[1:] == (10, 224, 224, 3) and dec["dense"].shape[1:] == (80, 224, 224, 3)
    good = [i for i, v in enumerate(dec["video_id"]) if not str(v).startswith("broken-") and dec["ok"][i]]
    victim = good[0]
    poison = float(dec["frames"][victim].astype(np.float32).mean())
    clip = ClipStage("s", TeacherConfig(), 1, dense=True, loader=lambda spec, cfg: _StubTeacher(8, poison))
    clap = ClapStage("s", TeacherConfig(), 1, segments=10, loader=lambda spec, cfg: _StubTeacher(6))
    out = str(tmp_path / "features")
    res = Write(WriteSpec(out=out, failures=out + "_failures", opts=None, run_id="r1", segments=10, dense=True))(
        clap(clip(dec)))
    table = pads.dataset(out, format="parquet").to_table()
    rows = {r["video_id"]: r for r in table.select(["video_id", "status", "error", "clip_ok"]).to_pylist()}
    vid = str(dec["video_id"][victim])
    assert rows[vid]["status"] == "partial" and not rows[vid]["clip_ok"] and "poisoned" in rows[vid]["error"]
    assert all(rows[str(dec["video_id"][i])]["clip_ok"] for i in good[1:])
    assert column_array(table, "clip_dense_emb", (80, 8)).shape == (table.num_rows, 80, 8)
    fails = {(f["video_id"], f["stage"]) for f in read_failures(out, failures=out + "_failures").to_pylist()}
    assert (vid, "clip") in fails
    assert sorted(set(res["outcome"])) == ["failed", "ok", "partial"]


def test_chaos_two_runs_one_output_kill_and_storage_restart(corpus, s3, ray_head, tiny_teachers, tmp_path):
    """Two extractions on one S3 output at once: the second fails at once naming the first. The S3 server restarts
    mid-run (same --dir: same endpoint and keys), the first is then SIGKILLed; once its lease expires a third run
    finishes the job: every decodable video exactly once, and a foreign object beside the output untouched."""
    opts = objstore.s3_options(s3.config())
    for p in sorted(corpus["dir"].glob("*.mp4")) + [corpus["manifest"]]:
        objstore.write_bytes(f"s3://{s3.bucket}/chaos-videos/{p.name}", p.read_bytes(), opts)
    foreign = f"s3://{s3.bucket}/chaos/notes.txt"
    objstore.write_bytes(foreign, b"someone else's", opts)
    out = f"s3://{s3.bucket}/chaos/features"
    env = loopback_env({**tiny_teachers["env"], **s3.env(), "VALOR_LOCK_LEASE_S": "6"})
    cmd = _extract_cmd(f"s3://{s3.bucket}/chaos-videos/manifest.csv", f"s3://{s3.bucket}/chaos-videos", out,
                       tiny_teachers, "--address", ray_head)
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        _wait_first_part(first, out, opts)
        rc, res, log = _run_any(cmd, env)
        assert rc == 2 and "is in use by valor extract" in log and f"pid {first.pid}" in log, log[-2000:]
        endpoint = s3.endpoint
        storage.down(s3.dir)  # the store goes away mid-run ...
        time.sleep(2)
        again = storage.up(s3.dir)  # ... and comes back where it was
        assert again.endpoint == endpoint
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        kill_session(first.pid)
        first.stdout.close()
    time.sleep(7)  # the killed holder's lease expires
    rc, res, log = _run(cmd, env)
    assert rc == 0, log[-4000:]
    _check_dataset(out, opts, corpus)
    assert objstore.read_bytes(foreign, opts) == b"someone else's"


def _run_any(cmd: list[str], env: dict, timeout: float = 300) -> tuple[int, dict, str]:
    """Like _run, for a run that may end without a JSON line (a refused one)."""
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return r.returncode, {}, r.stdout + r.stderr


def test_actor_on_a_gpu_share_caps_its_memory(monkeypatch):
    """An extraction actor given a fraction of a GPU caps its CUDA allocator at it (auto batch sizes then size from
    the cap: tests/test_teachers_fast.py::test_auto_batch_size); a whole GPU, or no Ray worker, leaves it uncapped."""
    from types import SimpleNamespace

    import ray
    import torch

    from workflows import extract

    capped = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU here: the CUDA calls are recorded
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: capped.append(f))
    started = ray.is_initialized()
    extract._cap_gpu_memory()  # in-process, Ray not started (as in these tests): nothing to ask, nothing started
    assert ray.is_initialized() == started

    def driver():
        raise AssertionError("This method is only available when the process is a worker.")  # Ray's own check

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    for assigned in (driver, lambda: {"GPU": 0.25}, lambda: {"GPU": 1.0}, lambda: {}):
        monkeypatch.setattr(ray, "get_runtime_context", lambda a=assigned: SimpleNamespace(get_assigned_resources=a))
        extract._cap_gpu_memory()
    assert capped == [0.25]
