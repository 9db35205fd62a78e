"""Safety issue items 11, 12, 14: what a dataset says it was made with is what made it; corrupt features are an error
naming the video, never a silent drop; nothing is read outside --videos / --feats.

Fixtures are real: a dataset made by `valor extract` (real local Ray, the tiny teachers) from real mp4 files named by
LLP ids (2 train, 2 val), then corrupted with pyarrow; real symlinks; a real released-features layout for
`valor import llp`'s batch function.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import LLP_DIR, REPO, annotation_subset
from tests.loopback import kill_session, loopback_env

VALOR = [sys.executable, "-m", "workflows.cli"]
FAST = ["--rows-per-file", "4", "--clip-actors", "1,1", "--clap-actors", "1,1", "--teacher-batch", "10",
        "--clip-batch", "4", "--clap-batch", "4", "--num-cpus", "2", "--object-store-mb", "300"]


def _llp_ids(name: str, n: int) -> list[str]:
    return [ln.split("\t")[0] for ln in (LLP_DIR / name).read_text().splitlines()[1:1 + n]]


def _valor(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`valor ...` in its own session (its Ray workers die with it)."""
    proc = subprocess.Popen([*VALOR, *map(str, args)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_session(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _extract(manifest, videos, out, clip, clap, env, *extra):
    return _valor("extract", "--manifest", manifest, "--videos", videos, "--clip", clip, "--clap", clap, "--out", out,
                  "--json", *FAST, *extra, env=env)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_teachers):
    """A features dataset made by `valor extract` from 2 train + 2 val LLP videos with a private copy of the tiny CLIP
    (so a test may copy other weights over it) and the tiny CLAP."""
    from valor_core.media.synth import write_video

    d = tmp_path_factory.mktemp("extracted")
    clip_dir = d / "clip"
    shutil.copytree(Path(tiny_teachers["clip"].split(":")[0]).parent, clip_dir)
    clip = f"{clip_dir / 'tiny-clip.json'}:{clip_dir / 'tiny-clip.pt'}"
    ids = {"train": _llp_ids("AVVP_train.csv", 3), "val": _llp_ids("AVVP_val_pd.csv", 2)}
    videos = d / "videos"
    videos.mkdir()
    for i, vid in enumerate(v for vs in ids.values() for v in vs):
        write_video(videos / f"{vid}.mp4", duration=10.0, fps=5, size=(64, 48), seed=i)
    manifest = d / "manifest.csv"
    manifest.write_text("filename\tevent_labels\tsplit\n" + "".join(
        f"{v}\tSpeech\t{split}\n" for split, vs in ids.items() for v in (vs[:2] if split == "train" else vs)))
    env = loopback_env(tiny_teachers["env"])
    out = d / "features"
    r = _extract(manifest, videos, out, clip, tiny_teachers["clap"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["done"] == 4, r.stdout
    return {"dir": d, "out": out, "clip": clip, "clip_ckpt": clip_dir / "tiny-clip.pt", "clap": tiny_teachers["clap"],
            "videos": videos, "manifest": manifest, "ids": ids, "env": env}


# --- 11. the same spec path with other weights copied over the file -------------------------------------------------


@pytest.mark.integration  # real local Ray (the fixture's extraction and one more)
def test_other_weights_under_the_same_spec_are_refused(extracted, tmp_path):
    from valor_core.teachers.tiny import write_tiny_clip
    from workflows.features import MixError, check_mix
    from workflows.outputs import read_marker

    e = extracted
    before = hashlib.sha256(e["clip_ckpt"].read_bytes()).hexdigest()
    other = Path(write_tiny_clip(tmp_path / "other", seed=1).split(":")[1])
    shutil.copyfile(other, e["clip_ckpt"])  # other weights, same path, same size
    after = hashlib.sha256(e["clip_ckpt"].read_bytes()).hexdigest()
    assert after != before and other.stat().st_size == e["clip_ckpt"].stat().st_size

    # adding videos to the dataset with the swapped file: one line, exit 2, before Ray; nothing written
    (e["dir"] / "more.csv").write_text(f"filename\tevent_labels\tsplit\n{e['ids']['train'][2]}\tSpeech\ttrain\n")
    parts = sorted(p.name for p in e["out"].glob("part-*.parquet"))
    r = _extract(e["dir"] / "more.csv", e["videos"], e["out"], e["clip"], e["clap"], e["env"])
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "Ray" not in line and str(e["clip_ckpt"]) in line
    assert f"sha256 {before[:12]}" in line and f"sha256 {after[:12]}" in line and "--mixed-teachers" in line
    assert sorted(p.name for p in e["out"].glob("part-*.parquet")) == parts
    recorded = read_marker(str(e["out"]))["teachers"]["weights"]["clip"]
    assert [(Path(x["file"]).name, x["sha256"]) for x in recorded] == [
        ("tiny-clip.json", hashlib.sha256((e["clip_ckpt"].parent / "tiny-clip.json").read_bytes()).hexdigest()),
        ("tiny-clip.pt", before)]

    # a new dataset with the swapped file is made (its marker records the new content) ...
    second = e["dir"] / "second" / "features"
    r = _extract(e["dir"] / "more.csv", e["videos"], second, e["clip"], e["clap"], e["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_marker(str(second))["teachers"]["weights"]["clip"][1] == {"file": str(e["clip_ckpt"]), "sha256": after}
    # ... and cannot be trained together with the first: the same specs, other weights
    with pytest.raises(MixError, match=rf"clip_emb weights have the same spec but other content \(sha256 "
                                       rf"{before[:12]} vs {after[:12]}"):
        check_mix([str(e["out"]), str(second)], [["clap_emb", "clip_emb"]] * 2)
    check_mix([str(e["out"]), str(second)], [["clap_emb"]] * 2)  # the CLAP columns: same file, same content


# --- 12. corrupt features: an error naming the video, never a silent drop -------------------------------------------


def _corrupt(out: Path, video_id: str, column: str, value: float) -> None:
    """Rewrite the Parquet part holding `video_id` with one value of its `column` replaced (the corrupt read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part in out.glob("part-*.parquet"):
        table = pq.read_table(part)
        ids = table.column("video_id").to_pylist()
        if video_id not in ids:
            continue
        col = table.column(column).combine_chunks()
        inner = col.values
        flat = inner.values.to_numpy(zero_copy_only=False).copy()
        row = ids.index(video_id)
        flat[row * col.type.list_size * inner.type.list_size + 7] = value
        new = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(flat), inner.type.list_size),
                                                col.type.list_size)
        table = table.set_column(table.column_names.index(column), column, new)
        pq.write_table(table, part)
        return
    raise AssertionError(f"{video_id} not in {out}")


@pytest.mark.integration  # the fixture's extraction runs on real local Ray
@pytest.mark.parametrize("column, value", [("clap_emb", np.nan), ("clip_emb", 2.5e38), ("clip_logits", np.inf)])
def test_corrupt_features_name_the_video(extracted, tmp_path, column, value):
    from valor_core.config import replace
    from valor_core.presets import get_preset
    from workflows.trainset import DataError, load_training_data

    cfg = replace(get_preset("valor"), features="clip_clap")
    data, _, meta = load_training_data(str(extracted["out"]), cfg)
    assert meta["videos"] == {"train": 2, "val": 2}  # the intact dataset: every video
    copy = tmp_path / "features"
    shutil.copytree(extracted["out"], copy)
    victim = extracted["ids"]["val"][1]
    _corrupt(copy, victim, column, value)
    with pytest.raises(DataError) as err:
        load_training_data(str(copy), cfg)
    msg = str(err.value)
    assert str(copy) in msg and victim in msg and column in msg and "corrupt" in msg and "\n" not in msg


class _Overflowing:
    """A teacher whose output overflows for the videos whose first frame value is in `corrupt` (value -> what it gives);
    the stage under test is real."""

    name, checkpoint, dim = "overflowing", "none", 4

    def __init__(self, corrupt: dict):
        self.corrupt = corrupt

    def segment_logits(self, batch):
        items = [np.asarray(v, np.float32) for v in batch]
        emb = np.full((len(items), items[0].shape[0], self.dim), 0.5, np.float32)
        for i, v in enumerate(items):
            emb[i, 3, 1] = self.corrupt.get(int(v.reshape(-1)[0]), 0.5)
        return np.zeros((len(items), items[0].shape[0], 25), np.float32), emb


def test_extraction_turns_corrupt_model_outputs_into_failure_rows(tmp_path):
    """A teacher output with NaN or 2.5e38 (an fp16 overflow, a broken kernel) is a `nonfinite` failure of that stage
    for that video, its row "partial" without that teacher; the other videos keep theirs."""
    from valor_core.config import TeacherConfig
    from workflows.extract import ClapStage, ClipStage, Write, WriteSpec
    from workflows.features import read_failures, read_features

    n, T = 3, 10
    frames = np.zeros((n, T, 8, 8, 3), np.uint8)
    frames[:, 0, 0, 0, 0] = [0, 1, 2]  # which video is which, for the teacher
    batch = {"video_id": np.array(["a_0_10", "b_0_10", "c_0_10"], object), "source": np.array(["x"] * n, object),
             "split": np.array(["train"] * n, object), "labels": np.array(["Dog"] * n, object),
             "weak": np.zeros((n, 25), np.uint8), "ok": np.ones(n, bool), "frames": frames,
             "audio": np.array([np.zeros((T, 16), np.float32).tobytes()] * n, object),
             "audio_len": np.full(n, 16), "audio_ok": np.ones(n, bool),
             **{k: np.full(n, "", dtype=object) for k in ("fail_stage", "fail_kind", "fail_reason", "issues",
                                                          "notes")}, "duration": np.full(n, 10.0, np.float32)}
    clip = ClipStage("s", TeacherConfig(), 1, loader=lambda spec, cfg: _Overflowing({1: np.nan, 2: 2.5e38}))
    clap = ClapStage("s", TeacherConfig(), 1, segments=T, loader=lambda spec, cfg: _Overflowing({}))
    out = str(tmp_path / "features")
    Write(WriteSpec(out=out, failures=out + "_failures", opts=None, run_id="r1", segments=T, dense=False))(
        clap(clip(batch)))
    rows = {r["video_id"]: r for r in read_features(out, columns=["video_id", "status", "clip_ok"]).to_pylist()}
    assert {v: (r["status"], r["clip_ok"]) for v, r in rows.items()} == {
        "a_0_10": ("ok", True), "b_0_10": ("partial", False), "c_0_10": ("partial", False)}
    fails = {(r["video_id"], r["stage"], r["kind"], r["fatal"])
             for r in read_failures(out, failures=out + "_failures").to_pylist()}
    assert fails == {("b_0_10", "clip", "nonfinite", False), ("c_0_10", "clip", "nonfinite", False)}


def test_corrupt_rows_bound():
    from workflows.features import VALUE_BOUND, corrupt_rows

    x = np.zeros((5, 10, 3), np.float32)
    x[1, 2, 0], x[2, 9, 2], x[3, 0, 1], x[4, 5, 1] = np.nan, -np.inf, 2.5e38, VALUE_BOUND  # the bound itself is fine
    assert corrupt_rows(x).tolist() == [False, True, True, True, False]
    assert corrupt_rows(x, chunk=2).tolist() == [False, True, True, True, False]


# --- 14. nothing read outside the roots --------------------------------------------------------------------------------


def test_symlink_out_of_the_video_root_is_an_outside_root_failure(tmp_path):
    from valor_core.config import MediaConfig
    from valor_core.media.synth import write_video
    from workflows.extract import Decode
    from workflows.manifest import read_manifest

    videos, secret = tmp_path / "videos", tmp_path / "private"
    videos.mkdir()
    secret.mkdir()
    write_video(secret / "secret.mp4", duration=10.0, fps=5, size=(64, 48))
    write_video(videos / "real_0_10.mp4", duration=10.0, fps=5, size=(64, 48))
    os.symlink(secret / "secret.mp4", videos / "out_0_10.mp4")  # inside --videos, pointing out
    os.symlink(videos / "real_0_10.mp4", videos / "in_0_10.mp4")  # inside, pointing inside: fine
    os.symlink(secret, videos / "sub")  # a directory symlink leading out
    m = tmp_path / "m.csv"
    m.write_text("filename\tevent_labels\tpath\nout_0_10\tDog\t\nin_0_10\tDog\t\nsub_0_10\tDog\tsub/secret.mp4\n")
    entries = {e.video_id: e for e in read_manifest(str(m), str(videos))}
    assert entries["in_0_10"].error == ""
    for vid in ("out_0_10", "sub_0_10"):
        assert "outside the video root" in entries[vid].error
        assert os.path.realpath(secret / "secret.mp4") in entries[vid].error
    batch = {"video_id": np.array(list(entries), object),
             "source": np.array([e.source for e in entries.values()], object),
             "split": np.array([""] * 3, object), "labels": np.array(["Dog"] * 3, object),
             "weak": np.zeros((3, 25), np.uint8), "refused": np.array([e.error for e in entries.values()], object)}
    out = Decode(MediaConfig(), None)(batch)
    assert out["ok"].tolist() == [False, True, False]
    assert [out["fail_kind"][i] for i in (0, 2)] == ["outside_root"] * 2
    assert out["frames"][0].max() == 0 and out["frames"][2].max() == 0  # never decoded


def test_import_reads_nothing_outside_its_folders(tmp_path):
    import pyarrow.dataset as pads

    from workflows.features import RELEASED, read_failures
    from workflows.importer import ImportSpec, import_batch, llp_entries

    ann = tmp_path / "annotations"
    ids = annotation_subset(ann, {"train": 2, "val": 1, "test": 1})
    with (ann / "AVVP_train.csv").open("a") as f:
        f.write("../../secret\tSpeech\n")  # an annotation filename leaving --feats
    feats = tmp_path / "release" / "feats"
    rng = np.random.default_rng(0)
    folder = feats / "vggish"
    folder.mkdir(parents=True)
    for vid in [v for vs in ids.values() for v in vs]:
        np.save(folder / f"{vid[:11]}.npy", rng.normal(size=RELEASED["vggish"][1]).astype(np.float32))
    np.save(tmp_path / "release" / "secre.npy", np.ones(RELEASED["vggish"][1], np.float32))  # ../../secre.npy
    outside = tmp_path / "elsewhere.npy"
    np.save(outside, np.ones(RELEASED["vggish"][1], np.float32))
    linked = ids["test"][0]
    os.remove(folder / f"{linked[:11]}.npy")
    os.symlink(outside, folder / f"{linked[:11]}.npy")  # a file of the folder that is a symlink out of it
    entries = llp_entries(str(ann), log=lambda m: None)
    assert "../../secret" in [e.video_id for e in entries]
    batch = {"video_id": np.array([e.video_id for e in entries], object),
             "split": np.array([e.split for e in entries], object),
             "labels": np.array([e.labels for e in entries], object),
             "weak": np.stack([np.asarray(e.weak, np.uint8) for e in entries])}
    out = str(tmp_path / "imported")
    spec = ImportSpec(out=out, failures=out + "_failures", opts=None, run_id="r1", folders={"vggish": str(folder)})
    res = import_batch(batch, spec)
    outcome = dict(zip(res["video_id"].tolist(), zip(res["outcome"].tolist(), res["kind"].tolist())))
    assert outcome["../../secret"] == ("failed", "outside_root") and outcome[linked] == ("failed", "outside_root")
    assert [o for v, o in outcome.items() if v not in ("../../secret", linked)] == [("ok", "")] * 3
    imported = pads.dataset(out, format="parquet").to_table(columns=["video_id"]).column("video_id").to_pylist()
    assert sorted(imported) == sorted(v for v in outcome if v not in ("../../secret", linked))
    fails = {r["video_id"]: r for r in read_failures(out, failures=out + "_failures").to_pylist()}
    assert fails["../../secret"]["kind"] == "outside_root" and "../../secre.npy" in fails["../../secret"]["reason"]
    assert fails[linked]["kind"] == "outside_root" and os.path.realpath(outside) in fails[linked]["reason"]
    assert all(r["fatal"] and r["stage"] == "import" for r in fails.values())
