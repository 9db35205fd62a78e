"""`valor import llp`: the released per-video .npy features and pseudo-labels -> the features dataset -> training data.

Fixtures are written in exactly the released layouts (AVVP-ECCV20 `feats/{vggish,res152,r2plus1d_18}`, VALOR
`CLIP/{features,segment_pseudo_labels}`, `CLAP/{features,segment_pseudo_labels}`, files `<11-char id>.npy`) for real LLP
ids of every split, with broken files among them: a wrong shape, NaN, a truncated .npy, missing files, a string dtype,
a pseudo-label of 2. The import runs on real local Ray (2 CPUs, one instance for the module); the file checks and the
bad-input exits run without Ray.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import annotation_subset
from workflows.features import RELEASED

REPO = Path(__file__).resolve().parents[1]

PICKS = {"train": 24, "val": 12, "test": 12}
ROOT_OF = {"feats": "feats", "CLIP": "clip", "CLAP": "clap"}  # release folder -> the option that points at it


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Annotations (the first rows of each real split file) + the 7 released folders; returns what was written."""
    d = tmp_path_factory.mktemp("release")
    ann = d / "annotations"
    ids = annotation_subset(ann, PICKS)
    tr, va, te = ids["train"], ids["val"], ids["test"]
    broken = {  # (video, column) -> failure kind; None = the file is not written
        (tr[0], "res152"): ("shape", np.zeros((10, 2048), np.float32)),
        (tr[1], "clap_maps"): ("nonfinite", np.full((64, 768), np.nan, np.float32)),
        (tr[2], "vggish"): ("truncated", None),
        (tr[3], "r2plus1d"): ("missing", None),
        (tr[4], "vggish"): ("missing", None),
        (tr[4], "audio_pseudo"): ("shape", np.zeros((10, 24), np.float32)),
        (va[0], "visual_pseudo"): ("dtype", np.full((10, 25), 2, np.float32)),
        (te[0], "clip_feat"): ("dtype", np.full((10, 768), "a")),
    }
    rng = np.random.default_rng(0)
    values: dict[str, dict[str, np.ndarray]] = {col: {} for col in RELEASED}
    for vid in tr + va + te:
        for col, (folder, shape) in RELEASED.items():
            path = d / folder / f"{vid[:11]}.npy"
            if col.endswith("_pseudo"):
                arr = rng.integers(0, 2, shape).astype(np.float32)
            else:
                arr = rng.normal(size=shape).astype(np.float64 if (vid, col) == (tr[5], "vggish") else np.float32)
            kind, bad = broken.get((vid, col), (None, None))
            if kind == "missing":
                continue
            if kind == "truncated":
                _save(path, arr)
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                continue
            _save(path, arr if bad is None else bad)
            if bad is None:
                values[col][vid] = arr.astype(np.uint8 if col.endswith("_pseudo") else np.float32)
    failed = {vid for vid, _ in broken}
    return {"dir": d, "ann": ann, "ids": ids, "values": values, "broken": broken,
            "good": [v for v in tr + va + te if v not in failed], "failed": failed,
            "roots": {opt: str(d / folder) for folder, opt in ROOT_OF.items()}}


def _argv(release, out, *extra, roots=("feats", "clip", "clap")):
    argv = ["import", "llp", "--out", str(out), "--annotations", str(release["ann"]), "--json", "--rows-per-file", "8"]
    for opt in roots:
        argv += [f"--{opt}", release["roots"][opt]]
    return argv + list(extra)


def _main(argv, capsys) -> tuple[int, str, str]:
    from workflows.cli import main

    capsys.readouterr()
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


# --- without Ray -----------------------------------------------------------------------------------------------------


def test_check_array_kinds(tmp_path):
    """The per-file check: good arrays come back as float32 / uint8; every bad file is its kind, naming the file."""
    import io

    from workflows.released import ImportProblem, check_array, read_file

    def npy(arr) -> bytes:
        buf = io.BytesIO()
        np.save(buf, arr)
        return buf.getvalue()

    def kind(data, shape=(10, 128), labels=False) -> str:
        with pytest.raises(ImportProblem) as err:
            check_array(data, "x/abc.npy", shape, labels)
        assert "x/abc.npy" in err.value.reason
        return err.value.kind

    good = np.random.default_rng(1).normal(size=(10, 128))
    out = check_array(npy(good), "f", (10, 128))
    assert out.dtype == np.float32 and np.array_equal(out, good.astype(np.float32))
    assert check_array(npy(np.eye(10, 25, dtype=np.int64)), "f", (10, 25), labels=True).dtype == np.uint8
    assert kind(npy(good[:5])) == "shape"
    assert kind(npy(np.full((10, 128), np.inf))) == "nonfinite"
    assert kind(npy(np.full((10, 128), 1e39))) == "nonfinite"  # finite in float64, inf as float32
    assert kind(npy(good)[:-100]) == "truncated"
    assert kind(npy(good)[:20]) == "truncated"
    assert kind(b"not an npy file at all") == "truncated"
    assert kind(npy(np.full((10, 128), "s"))) == "dtype"
    assert kind(npy(np.full((10, 128), 1 + 1j))) == "dtype"
    assert kind(npy(np.full((10, 25), 0.5)), (10, 25), labels=True) == "dtype"
    with pytest.raises(ImportProblem) as err:
        read_file(str(tmp_path / "nope.npy"), None)
    assert err.value.kind == "missing" and "nope.npy" in err.value.reason


def test_bad_input_is_exit_2_before_ray(release, tmp_path, capsys):
    from workflows.outputs import claim, lock

    missing = ["import", "llp", "--feats", str(tmp_path / "nope"), "--out", str(tmp_path / "o1")]
    rc, _, err = _main(missing, capsys)
    assert rc == 2 and "--feats" in err and "no such directory" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty_feats"
    empty.mkdir()
    rc, _, err = _main(["import", "llp", "--feats", str(empty), "--out", str(tmp_path / "o2")], capsys)
    assert rc == 2 and "none of its folders" in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    rc, _, err = _main(_argv(release, foreign), capsys)
    assert rc == 2 and "notes.txt" in err and (foreign / "notes.txt").read_text() == "mine"
    extracted = tmp_path / "extracted"
    claim(str(extracted), "features", meta={"teachers": {"clip": "tiny", "clap": "tiny"}})
    rc, _, err = _main(_argv(release, extracted), capsys)
    assert rc == 2 and "valor extract" in err
    held = tmp_path / "held"
    with lock(str(held), "another run"):
        rc, _, err = _main(_argv(release, held), capsys)
    assert rc == 2 and "in use by another run" in err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


# --- on Ray -----------------------------------------------------------------------------------------------------------



def _check_values(arrays, release, cols: dict) -> None:
    """Every AVVPArrays field in `cols` equals the released files of its videos."""
    for field, col in cols.items():
        want = np.stack([release["values"][col][v] for v in arrays.video_ids])
        np.testing.assert_array_equal(getattr(arrays, field), want, err_msg=f"{field} <- {col}")


@pytest.mark.integration  # real local Ray
def test_import_resume_and_train_data(release, ray_local, tmp_path, capsys):
    import pyarrow as pa

    from valor_core.config import replace
    from valor_core.presets import get_preset
    from workflows.features import column_array, failures_uri, read_failures, read_features
    from workflows.trainset import DataError, load_training_data

    out = tmp_path / "imported"
    rc, stdout, err = _main(_argv(release, out), capsys)
    assert rc == 0, err[-3000:]
    n_good, n_failed = len(release["good"]), len(release["failed"])
    assert json.loads(stdout.strip().splitlines()[-1]) == {"videos": n_good, "failed": n_failed, "out": str(out)}

    # every good video once, with the files' values; columns as workflows.features.fixed_list builds them
    table = read_features(str(out))
    ids = table.column("video_id").to_pylist()
    assert sorted(ids) == sorted(release["good"])
    assert set(table.column("status").to_pylist()) == {"ok"}
    for col, (_, shape) in RELEASED.items():
        dtype = np.uint8 if col.endswith("_pseudo") else np.float32
        assert table.schema.field(col).type == pa.list_(pa.list_(pa.from_numpy_dtype(dtype), shape[1]), shape[0])
        got = column_array(table, col, shape, dtype, ids)
        np.testing.assert_array_equal(got, np.stack([release["values"][col][v] for v in ids]), err_msg=col)
    split_of = {v: s for s, vs in release["ids"].items() for v in vs}
    assert table.column("split").to_pylist() == [split_of[v] for v in ids]

    # every broken file a fatal failure row of its kind naming the file; nothing else lost
    fails = read_failures(str(out)).to_pylist()
    assert {(r["video_id"], r["kind"]) for r in fails} == {(v, k) for (v, _), (k, _) in release["broken"].items()}
    assert len(fails) == len(release["broken"]) and {r["stage"] for r in fails} == {"import"}
    assert all(r["fatal"] and f"{r['video_id'][:11]}.npy" in r["reason"] for r in fails)
    assert set(ids) | {r["video_id"] for r in fails} == {v for vs in release["ids"].values() for v in vs}
    assert Path(failures_uri(str(out))).is_dir()
    runs = list((out / "_runs").glob("*.json"))
    record = json.loads(runs[0].read_text())
    assert len(runs) == 1 and sorted(record["imported"]) == sorted(RELEASED) and record["code_version"]
    assert record["summary"]["videos"] == n_good and not list((out / "_staging").rglob("*.parquet"))

    # a re-run skips everything; another set of folders into the same output is refused
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    rc, stdout, err = _main(_argv(release, out), capsys)
    assert rc == 0 and json.loads(stdout.strip().splitlines()[-1]) == {"videos": 0, "failed": 0, "out": str(out)}
    assert f"{n_good + n_failed} already done/failed, 0 to do" in err
    assert sorted(p.name for p in out.glob("part-*.parquet")) == parts
    rc, _, err = _main(_argv(release, out, roots=("feats",)), capsys)
    assert rc == 2 and "imported columns" in err

    # training data straight from the dataset: the paper's inputs, the imported pseudo-labels, no re-shaping
    data, cfg, meta = load_training_data(str(out), get_preset("valor"), annotations=str(release["ann"]))
    assert meta["labels"] == "imported pseudo-labels" and meta["adapted"] == {}
    assert cfg.model == get_preset("valor").model
    for split, arrays in data.items():
        assert sorted(arrays.video_ids) == sorted(v for v in release["good"] if split_of[v] == split)
        _check_values(arrays, release, {"audio": "vggish", "frames": "res152", "clips": "r2plus1d",
                                        "audio_labels": "audio_pseudo", "visual_labels": "visual_pseudo"})
    assert data["val"].audio_gt is not None and data["test"].visual_gt is not None
    data, _, meta = load_training_data(str(out), get_preset("valor++"), annotations=str(release["ann"]))
    assert meta["adapted"] == {}
    _check_values(data["train"], release, {"audio": "clap_maps", "frames": "clip_feat", "clips": "r2plus1d"})
    with pytest.raises(DataError, match=r"preset valor needs column res152 \(10, 2048\); the dataset has \(80, 2048\)"):
        load_training_data(str(out), replace(get_preset("valor"), **{"model.frame_steps": 1}),
                           annotations=str(release["ann"]))
    with pytest.raises(DataError, match="clip_emb.*imported features"):
        load_training_data(str(out), replace(get_preset("valor"), features="clip_clap"),
                           annotations=str(release["ann"]))

    # a dataset without the preset's columns: only r2plus1d_18 and CLIP imported
    feats2 = tmp_path / "feats2"
    shutil.copytree(Path(release["roots"]["feats"]) / "r2plus1d_18", feats2 / "r2plus1d_18")
    out2 = tmp_path / "imported2"
    argv = ["import", "llp", "--feats", str(feats2), "--clip", release["roots"]["clip"], "--out", str(out2),
            "--annotations", str(release["ann"]), "--json"]
    rc, stdout, err = _main(argv, capsys)
    assert rc == 0, err[-3000:]
    assert set(read_features(str(out2)).column_names) >= {"r2plus1d", "clip_feat", "visual_pseudo"}
    with pytest.raises(DataError, match=r"preset valor needs column vggish \(10, 128\); the dataset has none"):
        load_training_data(str(out2), get_preset("valor"), annotations=str(release["ann"]))


@pytest.mark.integration  # real local Ray: Ray Train runs, then predict and evaluate
def test_released_files_to_numbers_for_every_preset(release, ray_local, tmp_path, capsys):
    """The issue's acceptance chain: released files -> `valor import llp` -> `valor train` (one epoch of each paper
    preset, a narrow HAN: the inputs are the paper's) -> `valor predict` -> `valor evaluate --predictions`."""
    out = tmp_path / "imported"
    rc, _, err = _main(_argv(release, out), capsys)
    assert rc == 0, err[-3000:]
    # the val split as the dataset has it: the videos whose files were all good
    ann = tmp_path / "ann"
    shutil.copytree(release["ann"], ann)
    lines = (ann / "AVVP_val_pd.csv").read_text().splitlines()
    good = set(release["good"])
    ann_ids = [ln.split("\t")[0] for ln in lines[1:] if ln.split("\t")[0] in good]
    (ann / "AVVP_val_pd.csv").write_text("\n".join([lines[0]] + [ln for ln in lines[1:]
                                                                 if ln.split("\t")[0] in good]) + "\n")
    narrow = ["--set", "model.hidden=32", "--set", "model.ff=64", "--set", "model.heads=1",
              "--set", "optim.batch_size=8", "--set", "optim.warmup_epochs=0", "--set", "optim.step_size=1"]
    for preset in ("han", "valor", "valor+", "valor++"):
        rc, stdout, err = _main(["train", "--preset", preset, "--features", str(out), "--annotations", str(ann),
                                 "--workers", "1", "--epochs", "1", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                                 "--storage", str(tmp_path / "ray"), "--no-figures", "--json", *narrow], capsys)
        assert rc == 0, (preset, err[-3000:])
        trained = json.loads(stdout.strip().splitlines()[-1])
        assert trained["epochs"] == 1 and trained["val"]["videos"] == len(ann_ids)
        npz = tmp_path / f"{preset}.npz"
        rc, stdout, err = _main(["predict", "--checkpoint", trained["checkpoint"], "--features", str(out),
                                 "--annotations", str(ann), "--split", "val", "--out", str(npz), "--json"], capsys)
        assert rc == 0, (preset, err[-3000:])
        assert json.loads(stdout.strip().splitlines()[-1])["videos"] == len(ann_ids)
        z = np.load(npz)
        assert z["segment_prob"].shape == (len(ann_ids), 10, 2, 25) and z["global_prob"].shape == (len(ann_ids), 25)
        rc, stdout, err = _main(["evaluate", "--annotations", str(ann), "--split", "val", "--predictions", str(npz),
                                 "--json"], capsys)
        assert rc == 0, (preset, err[-3000:])
        scores = json.loads(stdout.strip().splitlines()[-1])
        assert scores["videos"] == len(ann_ids)
        # the numbers are the training run's own val numbers of its best (= only) epoch
        assert scores["segment"] == trained["val"]["segment"] and scores["event"] == trained["val"]["event"], preset


@pytest.mark.integration  # real local Ray: `valor run` imports, trains two runs, evaluates them
def good_annotations(release: dict, ann: Path) -> Path:
    """A copy of the release's annotations whose val/test GT keeps only the videos whose files were all good
    (evaluate scores every GT video)."""
    shutil.copytree(release["ann"], ann)
    for name in ("AVVP_val_pd.csv", "AVVP_test_pd.csv"):
        lines = (ann / name).read_text().splitlines()
        (ann / name).write_text("\n".join([lines[0]] + [ln for ln in lines[1:]
                                                         if ln.split("\t")[0] in set(release["good"])]) + "\n")
    return ann


def test_paper_config_one_command(release, ray_local, tmp_path, capsys):
    """configs/paper.yaml from the released files: import -> a run per preset/seed -> evaluate, all in MLflow, the
    Table 1 layout printed; a second `valor run` does nothing."""
    from workflows import tracking

    out = tmp_path / "paper"
    db = f"sqlite:///{tmp_path}/mlflow.db"
    ann = good_annotations(release, tmp_path / "ann")
    argv = ["run", "--config", str(REPO / "configs" / "paper.yaml"), f"paths.output={out}",
            f"paths.annotations={ann}", f"tracking.uri={db}", "released.rows_per_file=16",
            *[f"released.{opt}={release['roots'][opt]}" for opt in ("feats", "clip", "clap")],
            "runs=[{preset: han, seed: 1}, {preset: valor++, seed: 87}]",
            "train.model.hidden=32", "train.model.ff=64", "train.model.heads=1", "train.optim.epochs=1",
            "train.optim.batch_size=8", "train.optim.warmup_epochs=0", "train.optim.step_size=1", "--json"]
    rc, stdout, err = _main(argv, capsys)
    assert rc == 0, err[-3000:]
    s = json.loads(stdout.strip().splitlines()[-1])
    assert s["ran"] == ["import", "train", "evaluate"]
    assert {k: s["stages"][k]["status"] for k in ("extract", "tune", "harvest")} == dict.fromkeys(
        ("extract", "tune", "harvest"), "disabled")
    assert s["results"]["import"]["videos"] == len(release["good"])
    runs = s["results"]["train"]["runs"]
    assert sorted(runs) == ["han-seed1", "valor++-seed87"]
    for name, trained in runs.items():
        assert Path(trained["checkpoint"]).is_relative_to(out / "train" / name)
    ev = json.loads((out / "eval.json").read_text())["runs"]
    assert sorted(ev) == sorted(runs) and all(ev[n]["test"]["videos"] > 0 for n in ev)
    # the printed table is the eval.json numbers, one row per run
    rows = {ln.split()[0]: ln.split()[1:] for ln in stdout.splitlines() if ln.split()[:1] and ln.split()[0] in runs}
    for name in runs:
        seg = ev[name]["test"]["segment"]
        assert rows[name][:5] == [f"{seg[k]:.2f}" for k in ("audio", "visual", "av", "type", "event")]
    # every run its own MLflow run, with its seed, labels from the released pseudo-labels
    c = tracking.client(db)
    exp = c.get_experiment_by_name("valor-paper")
    found = {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}
    assert set(found) == {"valor-paper-han-seed1", "valor-paper-valor++-seed87"}
    assert found["valor-paper-valor++-seed87"].data.params["seed"] == "87"
    assert found["valor-paper-han-seed1"].data.params["data.labels"] == "imported pseudo-labels"
    rc, stdout, err = _main(argv, capsys)
    assert rc == 0 and json.loads(stdout.strip().splitlines()[-1])["ran"] == []
