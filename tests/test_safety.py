"""Nothing lost, nothing leaked: each numbered case of the safety issue reproduced and now refused or contained."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import LLP_DIR, REPO
from workflows import outputs
from workflows.config import ConfigError, load_config

VALOR = [sys.executable, "-m", "workflows.cli"]


def _valor(*args, cwd=None, env=None, timeout=300):
    return subprocess.run([*VALOR, *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout)


# --- 1. harvest --out never deletes what valor did not make -------------------------------------------------------


def _foreign_dir(tmp_path) -> Path:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.txt").write_text("x")
    return d


def test_harvest_out_refuses_foreign_files(tmp_path):
    d = _foreign_dir(tmp_path)
    r = _valor("harvest", "--logits", "sim:0", "--split", "val", "--out", d)
    assert r.returncode == 2
    assert "thesis.txt" in r.stderr and "has no valor marker" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (d / "thesis.txt").read_text() == "x" and (d / "sub").is_dir()


def test_harvest_out_replaces_its_own_output_only(tmp_path):
    out = tmp_path / "labels"
    assert _valor("harvest", "--logits", "sim:0", "--split", "val", "--out", out).returncode == 0
    assert outputs.read_marker(str(out))["kind"] == "labels"
    r = _valor("harvest", "--logits", "sim:0", "--split", "val", "--out", out, "--no-filter", "--json")
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["filter_by_weak"] is False
    feats = tmp_path / "features"
    outputs.claim(str(feats), "features")
    r = _valor("harvest", "--logits", "sim:0", "--split", "val", "--out", feats)
    assert r.returncode == 2 and "is a features output of valor, not a labels output" in r.stderr


def test_claim_and_remove_owned(tmp_path):
    d = _foreign_dir(tmp_path)
    with pytest.raises(outputs.OwnershipError, match="thesis.txt"):
        outputs.claim(str(d), "features")
    with pytest.raises(outputs.OwnershipError, match="has no valor marker"):
        outputs.remove_owned(str(d))
    assert (d / "thesis.txt").exists()
    lookalike = tmp_path / "lookalike"  # only valor's names, but no marker: not valor's (nothing is adopted)
    (lookalike / "_runs").mkdir(parents=True)
    (lookalike / "part-a-0.parquet").write_bytes(b"PAR1")
    with pytest.raises(outputs.OwnershipError, match="part-a-0.parquet"):
        outputs.claim(str(lookalike), "features")
    assert (lookalike / "part-a-0.parquet").read_bytes() == b"PAR1"


# --- 2. valor run: output roots and config values checked before any work -----------------------------------------


@pytest.mark.parametrize("override, message", [
    ("paths.output=/", "refusing to use / as an output root"),
    ("paths.output=s3://", "name a bucket and a prefix"),
    ("paths.output=s3://valor", "name a bucket and a prefix"),
    ("train.optim.epochs=0", "train.optim.epochs: must be >= 1, got 0"),
    ("train.num_workers=0", "train.num_workers: must be >= 1, got 0"),
    ("train.optim.batch_size=0", "train.optim.batch_size: must be >= 1"),
    ("media.segments=0", "media.segments: must be >= 1"),
    ("train.optim.lr_max=-1", "train.optim.lr_max: must be > 0"),
    ("extract.clip_actors=[0, 2]", "extract.clip_actors: must be >= 1"),
])
def test_bad_outputs_and_values_fail_fast(override, message, tmp_path):
    r = _valor("run", "--config", REPO / "configs" / "local.yaml", override, f"paths.work={tmp_path / 'w'}",
               "--plan", timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_run_refuses_an_output_it_does_not_own(tmp_path):
    d = _foreign_dir(tmp_path)
    (d / "features").mkdir()
    (d / "features" / "mine.csv").write_text("keep")
    from workflows.pipeline import layout, stages

    cfg = layout.resolve(load_config(None, [f"paths.output={d}", f"paths.work={tmp_path / 'w'}",
                                            f"paths.videos={tmp_path}"]))
    with pytest.raises(outputs.OwnershipError, match="thesis.txt"):
        stages.run_pipeline(cfg, runners={}, prepare=lambda c, log, create=True: (c, {}),
                            init_ray=lambda c, env: (lambda: None), log=lambda m: None)
    assert (d / "features" / "mine.csv").read_text() == "keep" and (d / "thesis.txt").exists()


# --- 5. a lock per output root ------------------------------------------------------------------------------------


def test_second_holder_of_a_local_lock_fails_naming_the_first(tmp_path):
    code = ("import sys, time; from workflows import outputs\n"
            "with outputs.lock(sys.argv[1], 'valor run (test)'):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(outputs.LockedError, match=rf"valor run \(test\) \(pid {holder.pid}"):
            with outputs.lock(str(tmp_path), "second"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with outputs.lock(str(tmp_path), "after the holder died") as h:  # the kernel released the dead holder's lock
        assert h["pid"] == os.getpid()


# --- 9. evaluate refuses what it cannot score -----------------------------------------------------------------------


def _npz(path, ids, n=None):
    n = len(ids) if n is None else n
    z = np.zeros((n, 10, 25), np.uint8)
    np.savez(path, video_ids=np.asarray(ids), audio=z, visual=z)
    return path


@pytest.mark.parametrize("case, message", [
    ("duplicate", "listed more than once"),
    ("2d", "video_ids must be a 1-D array"),
    ("truncated", "truncated"),
    ("text", "not an .npz file"),
])
def test_evaluate_bad_predictions(case, message, tmp_path):
    from valor_core.llp import load_split

    ids = list(load_split(LLP_DIR, "val").video_ids)
    path = tmp_path / "p.npz"
    if case == "duplicate":
        _npz(path, ids + ids[:2])
    elif case == "2d":
        _npz(path, np.asarray(ids[:648]).reshape(2, 324), n=2)
    elif case == "truncated":
        _npz(path, ids)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_text("video,audio\n")
    r = _valor("evaluate", "--split", "val", "--predictions", path)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr


# --- 12. read-only commands write nothing ---------------------------------------------------------------------------


def test_read_only_commands_create_nothing(tmp_path):
    r = _valor("compare", "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout) == [] and list(tmp_path.iterdir()) == []
    r = _valor("evaluate", "--split", "val", "--checkpoint", "0123abcd", "--tracking-uri",
               f"sqlite:///{tmp_path}/none.db", cwd=tmp_path)
    assert r.returncode == 1 and "neither a checkpoint path nor a run id" in r.stderr and list(tmp_path.iterdir()) == []
    r = _valor("run", "--config", REPO / "configs" / "local.yaml", f"paths.videos={tmp_path / 'v'}",
               f"paths.annotations={tmp_path / 'v'}", f"paths.output={tmp_path / 'o'}", f"paths.work={tmp_path / 'w'}",
               "--plan", cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "would run extract" in r.stdout, r.stderr
    assert not (tmp_path / "v").exists() and not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


# --- 6, 8, 10. extract: same teachers, fast one-line failures, nothing read outside --videos ----------------------


def _extract(manifest, videos, out, clip, clap, *extra, timeout=120):
    return _valor("extract", "--manifest", manifest, "--videos", videos, "--clip", clip, "--clap", clap, "--out", out,
                  "--json", *extra, timeout=timeout)


@pytest.fixture
def one_video(tmp_path):
    from valor_core.media.synth import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a_0_10.mp4", duration=2.0, fps=10, size=(64, 48))
    manifest = videos / "manifest.csv"
    manifest.write_text("filename\tevent_labels\na_0_10\tSpeech\n")
    return videos, manifest


def test_extract_refuses_other_teachers_on_a_dataset(tmp_path, one_video):
    videos, manifest = one_video
    clip, clap = tmp_path / "clip.json", tmp_path / "clap.json"  # cheap stand-ins: only their files are checked
    clip.write_text("{}")
    clap.write_text(json.dumps({"checkpoint": None}))
    out = tmp_path / "features"
    outputs.claim(str(out), "features", meta={"teachers": {"clip": "ViT-L-14:openai", "clap": "630k-fusion-best.pt"}})
    r = _extract(manifest, videos, out, f"{clip}:random", clap)
    assert r.returncode == 2 and "was made with teachers clip='ViT-L-14:openai'" in r.stderr
    assert "--mixed-teachers" in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Ray" not in r.stderr


@pytest.mark.parametrize("case, message", [
    ("checkpoint", "CLAP checkpoint '/nonexistent/630k-fusion-best.pt' not found"),
    ("manifest", "manifest not found"),
    ("utf8", "not a UTF-8 text file"),
    ("duplicate", "listed twice (first on line 2)"),
    ("s3", "does not answer"),
])
def test_extract_bad_input_fails_fast_in_one_line(case, message, tmp_path, one_video):
    import time

    videos, manifest = one_video
    clip = tmp_path / "clip.json"
    clip.write_text("{}")
    clap, out, extra, env = "/nonexistent/630k-fusion-best.pt", tmp_path / "features", [], None
    if case != "checkpoint":
        clap = tmp_path / "clap.json"
        clap.write_text(json.dumps({"checkpoint": None}))
    if case == "manifest":
        manifest = tmp_path / "nope.csv"
    elif case == "utf8":
        manifest = tmp_path / "bin.csv"
        manifest.write_bytes(b"filename\tevent_labels\n\xff\xfe\x00\n")
    elif case == "duplicate":
        manifest.write_text("filename\tevent_labels\na_0_10\tSpeech\na_0_10\tDog\n")
    elif case == "s3":
        out, extra = "s3://valor/x/features", ["--endpoint", "http://127.0.0.1:9", "--access-key", "k",
                                              "--secret-key", "s"]
    t0 = time.time()
    r = _extract(manifest, videos, out, f"{clip}:random", clap, *extra)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert time.time() - t0 < 30  # before Ray, decoding or inference
    assert not (tmp_path / "features").exists() or case != "s3"


def test_manifest_names_may_not_leave_the_video_root(tmp_path):
    from workflows.manifest import read_manifest

    (tmp_path / "videos").mkdir()
    m = tmp_path / "m.csv"
    m.write_text("filename\tevent_labels\tpath\nok_0_10\tDog\t\nup_0_10\tDog\t../secret.mp4\n"
                 "abs_0_10\tDog\t/etc/passwd\nbucket_0_10\tDog\ts3://other/x.mp4\n")
    entries = {e.video_id: e for e in read_manifest(str(m), str(tmp_path / "videos"))}
    assert entries["ok_0_10"].error == "" and entries["ok_0_10"].source == str(tmp_path / "videos" / "ok_0_10.mp4")
    for vid in ("up_0_10", "abs_0_10", "bucket_0_10"):
        assert entries[vid].error, vid
    s3 = {e.video_id: e for e in read_manifest(str(m), "s3://b/videos")}
    assert s3["ok_0_10"].error == "" and s3["ok_0_10"].source == "s3://b/videos/ok_0_10.mp4"
    assert s3["up_0_10"].error and "outside the video root" in s3["up_0_10"].error


def test_decode_stage_turns_an_outside_entry_into_a_read_failure(tmp_path):
    """The Ray Data decode stage never opens a refused entry: it becomes a `read` failure (`outside_root`)."""
    from valor_core.config import MediaConfig
    from workflows.extract import Decode

    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not yours")
    batch = {"video_id": np.array(["up_0_10"], object), "source": np.array([str(secret)], object),
             "split": np.array([""], object), "labels": np.array(["Dog"], object),
             "weak": np.zeros((1, 25), np.uint8), "refused": np.array(["'../secret.mp4' resolves outside"], object)}
    out = Decode(MediaConfig(), None)(batch)
    assert not out["ok"][0] and out["fail_stage"][0] == "read" and out["fail_kind"][0] == "outside_root"
