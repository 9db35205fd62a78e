"""Harvesting: (z > theta) AND y against an independent NumPy reference, subset-of-weak, the labels Parquet written beside
a features dataset (thresholds in its metadata), threshold sources (Table 6, tune JSON, unified), malformed tables."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.conftest import LLP_DIR
from valor_core.classes import CLAP_THRESHOLDS, CLIP_THRESHOLDS
from valor_core.tuning_objective import LogitsError
from workflows import harvest as H
from workflows.features import column_array, read_labels


def _reference(z, y, th, filt):
    """Loop-by-loop definition: label[n, t, c] = 1 iff z[n, t, c] > th[c] and (y[n, c] == 1 or no filter)."""
    n, t, c = z.shape
    out = np.zeros((n, t, c), np.uint8)
    for i in range(n):
        for s in range(t):
            for k in range(c):
                out[i, s, k] = int(z[i, s, k] > th[k] and (y[i, k] == 1 or not filt))
    return out


@pytest.mark.parametrize("filt", [True, False])
@pytest.mark.parametrize("unified", [False, True])
def test_harvest_equals_reference_and_is_subset_of_weak(filt, unified):
    from valor_core.labels import harvest_labels

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (40, 10, 25)).astype(np.float32)
    y = (rng.random((40, 25)) < 0.2).astype(np.uint8)
    th = np.full(25, 0.5) if unified else rng.normal(0, 2, 25)
    h = harvest_labels(z, y, th if not unified else 0.5, filter_by_weak=filt)
    assert h.dtype == np.uint8 and h.shape == z.shape
    np.testing.assert_array_equal(h, _reference(z, y, th, filt))
    if filt:
        assert not (h.astype(bool) & ~(y[:, None, :] > 0)).any()  # a subset of the weak labels
    else:
        assert (h.astype(bool) & ~(y[:, None, :] > 0)).any()  # the ablation really drops the filter
    table, na, nv = H.harvest_table([f"v{i}" for i in range(40)], ["train"] * 40, y, z, z + 1, {
        "audio": th, "visual": th}, filt, {"x": 1})
    got = np.asarray(table.column("audio_labels").to_pylist(), np.uint8)
    np.testing.assert_array_equal(got, _reference(z, y, th, filt))
    assert na == int(got.sum())


def _nested(x):
    inner = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[-1])
    return pa.FixedSizeListArray.from_arrays(inner, x.shape[1])


def _write_features(root, n=30, seed=0, nan_row=None, partial_row=None):
    """A features dataset in the extraction schema, two files, with a `_failures`-style sibling folder to ignore."""
    rng = np.random.default_rng(seed)
    ids = [f"vid{i:03d}_0_10" for i in range(n)]
    weak = (rng.random((n, 25)) < 0.15).astype(np.uint8)
    weak[np.arange(n), rng.integers(0, 25, n)] = 1
    clip = rng.normal(16, 3, (n, 10, 25)).astype(np.float32)
    clap = rng.normal(1, 2, (n, 10, 25)).astype(np.float32)
    clap_ok = np.ones(n, bool)
    status = ["ok"] * n
    if partial_row is not None:
        clap[partial_row] = np.nan
        clap_ok[partial_row] = False
        status[partial_row] = "partial"
    if nan_row is not None:
        clip[nan_row, 2, 3] = np.nan
    splits = ["train"] * (n - 10) + ["val"] * 5 + ["test"] * 5
    table = pa.table({"video_id": pa.array(ids), "split": pa.array(splits),
                      "weak": pa.FixedSizeListArray.from_arrays(pa.array(weak.reshape(-1)), 25),
                      "clip_ok": pa.array(np.ones(n, bool)), "clap_ok": pa.array(clap_ok),
                      "clip_logits": _nested(clip), "clap_logits": _nested(clap), "status": pa.array(status)})
    feats = os.path.join(root, "features")
    os.makedirs(os.path.join(feats, "_staging"), exist_ok=True)
    pq.write_table(table.slice(0, n // 2), os.path.join(feats, "part-a-0.parquet"))
    pq.write_table(table.slice(n // 2), os.path.join(feats, "part-a-1.parquet"))
    return feats, ids, weak, clip, clap, clap_ok


def test_harvest_dataset_beside_features(tmp_path):
    feats, ids, weak, clip, clap, _ = _write_features(str(tmp_path))
    th, where = H.resolve_thresholds("table6")
    summary = H.harvest(feats, thresholds=th, provenance=where, rows_per_file=8)
    out = str(tmp_path / "labels")
    assert summary["out"] == out and summary["videos"] == 30 and summary["files"] == 4
    assert summary["splits"] == {"train": 20, "val": 5, "test": 5}
    meta, table = read_labels(out)
    assert meta["thresholds"]["audio"] == [float(t) for t in CLAP_THRESHOLDS]
    file_meta = json.loads(ds.dataset(out).schema.metadata[H.HARVEST_META_KEY.encode()])
    assert file_meta["thresholds"]["visual"] == [float(t) for t in CLIP_THRESHOLDS] and file_meta["filter_by_weak"]
    order = np.argsort(table.column("video_id").to_pylist())
    a = np.asarray(table.column("audio_labels").to_pylist(), np.uint8)[order]
    v = np.asarray(table.column("visual_labels").to_pylist(), np.uint8)[order]
    np.testing.assert_array_equal(a, _reference(clap, weak, CLAP_THRESHOLDS, True))
    np.testing.assert_array_equal(v, _reference(clip, weak, CLIP_THRESHOLDS, True))
    # a re-run replaces the output (no stale parts), here with the ablation: no filter, unified thresholds
    th2, where2 = H.resolve_thresholds("table6", unified_audio=1.0, unified_visual=17.0)
    s2 = H.harvest(feats, thresholds=th2, provenance=where2, filter_by_weak=False, rows_per_file=100)
    meta2, t2 = read_labels(out)
    assert s2["files"] == 1 and t2.num_rows == 30 and not meta2["filter_by_weak"]
    assert len([f for f in os.listdir(out) if f.endswith(".parquet")]) == 1
    assert meta2["thresholds"]["audio"] == [1.0] * 25 and meta2["from"]["visual"] == "unified 17.0"
    a2 = np.asarray(t2.column("audio_labels").to_pylist(), np.uint8)[np.argsort(t2.column("video_id").to_pylist())]
    np.testing.assert_array_equal(a2, _reference(clap, weak, np.full(25, 1.0), False))


def test_partial_rows_and_nan_rows(tmp_path):
    feats, ids, weak, clip, clap, clap_ok = _write_features(str(tmp_path / "p"), partial_row=3)
    s = H.harvest(feats, str(tmp_path / "p" / "out"))
    _, t = read_labels(s["out"])
    row = t.column("video_id").to_pylist().index(ids[3])
    assert t.column("audio_ok")[row].as_py() is False and t.column("visual_ok")[row].as_py() is True
    assert np.asarray(t.column("audio_labels")[row].as_py()).sum() == 0
    feats, ids, *_ = _write_features(str(tmp_path / "n"), nan_row=7)
    with pytest.raises(LogitsError, match=f"NaN in {ids[7]}"):
        H.harvest(feats, str(tmp_path / "n" / "out"))


def test_thresholds_from_tune_json(tmp_path):
    tuned = {"audio": {"thresholds": list(np.linspace(-1, 1, 25))}, "visual": {"thresholds": [16.5] * 25},
             "unified": {"audio": {"threshold": 0.25}, "visual": {"threshold": 17.5}}}
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(tuned))
    th, where = H.resolve_thresholds(str(path))
    np.testing.assert_allclose(th["audio"], np.linspace(-1, 1, 25))
    assert where["visual"].startswith("tuned")
    th, where = H.resolve_thresholds(str(path), unified=True)
    assert (th["audio"] == 0.25).all() and (th["visual"] == 17.5).all()
    th, _ = H.resolve_thresholds(str(path), unified_visual=3.0)
    assert (th["visual"] == 3.0).all() and th["audio"][0] == -1
    with pytest.raises(ValueError, match="unified"):
        H.resolve_thresholds("table6", unified=True)


def test_column_array_encodings():
    x = np.arange(2 * 10 * 25, dtype=np.float32).reshape(2, 10, 25)
    nested = pa.table({"z": pa.array(x.tolist())})  # list<list<float>>
    flat = pa.table({"z": pa.array(x.reshape(2, -1).tolist())})  # list<float> of 250
    tensor_type = pa.fixed_shape_tensor(pa.float32(), (10, 25))
    tensor = pa.table({"z": pa.ExtensionArray.from_storage(
        tensor_type, pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 250))})
    for t in (nested, flat, tensor):
        np.testing.assert_array_equal(column_array(t, "z", (10, 25)), x)
    ragged = pa.table({"z": pa.array([x[0].tolist(), x[1].tolist()[:9]])})
    with pytest.raises(LogitsError, match="ragged"):
        column_array(ragged, "z", (10, 25))
    with pytest.raises(LogitsError, match="no value"):
        column_array(pa.table({"z": pa.array([x[0].tolist(), None])}), "z", (10, 25), ids=["a", "b"])


def test_cli_harvest_sim(tmp_path, capsys):
    from workflows.cli import main

    out = tmp_path / "labels"
    rc = main(["harvest", "--logits", "sim:0", "--annotations", str(LLP_DIR), "--split", "val", "--out", str(out),
               "--json"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["videos"] == 649 and last["splits"] == {"val": 649}
    from valor_core.sim import simulate

    val = simulate(LLP_DIR, seed=0, splits=("val",))["val"]
    _, t = read_labels(str(out))
    assert t.column("video_id").to_pylist() == list(val.video_ids)
    np.testing.assert_array_equal(np.asarray(t.column("visual_labels").to_pylist(), np.uint8),
                                  _reference(val.clip_logits, val.weak, CLIP_THRESHOLDS, True))
    rc = main(["harvest", "--logits", "sim:0", "--annotations", str(LLP_DIR), "--split", "val"])
    assert rc == 2 and "needs --out" in capsys.readouterr().err


@pytest.mark.integration
def test_tune_and_harvest_on_s3(tmp_path, monkeypatch, capsys):
    """Real S3 (SeaweedFS on loopback): features on s3://, `valor tune thresholds --searcher exact` reads the val logits
    from there, `valor harvest` writes the labels beside the features on the same store."""
    from valor_core.llp import load_split
    from workflows import objstore, s3server as storage
    from workflows.cli import main

    val = load_split(LLP_DIR, "val")
    n = len(val.video_ids)
    rng = np.random.default_rng(5)
    clip = (15 + 3 * rng.normal(size=(n, 10, 25)) + 8 * val.visual_gt).astype(np.float32)
    clap = (rng.normal(size=(n, 10, 25)) + 4 * val.audio_gt).astype(np.float32)
    table = pa.table({"video_id": pa.array(list(val.video_ids)), "split": pa.array(["val"] * n),
                      "weak": pa.FixedSizeListArray.from_arrays(pa.array(val.weak.reshape(-1)), 25),
                      "clip_logits": _nested(clip), "clap_logits": _nested(clap), "status": pa.array(["ok"] * n)})
    with storage.running(tmp_path / "s3") as s3:
        for k, v in s3.env().items():
            monkeypatch.setenv(k, v)
        feats = f"s3://{s3.bucket}/run1/features"
        fs, path = objstore.fs_for(feats)
        pq.write_table(table, f"{path}/part-0.parquet", filesystem=fs, row_group_size=100)
        rc = main(["tune", "thresholds", "--annotations", str(LLP_DIR), "--logits", feats, "--modality", "both",
                   "--searcher", "exact", "--json", "--no-mlflow", "--out", str(tmp_path / "th.json")])
        tuned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rc == 0 and tuned["audio"]["fidelity"] > tuned["paper"]["audio"]["fidelity"]
        rc = main(["harvest", "--logits", feats, "--thresholds", str(tmp_path / "th.json"), "--json"])
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rc == 0 and summary["out"] == f"s3://{s3.bucket}/run1/labels" and summary["videos"] == n
        meta, t = read_labels(summary["out"])
        assert meta["thresholds"]["audio"] == tuned["audio"]["thresholds"]
        a = np.asarray(t.column("audio_labels").to_pylist(), np.uint8)
        order = {v: i for i, v in enumerate(val.video_ids)}
        idx = np.array([order[v] for v in t.column("video_id").to_pylist()])
        np.testing.assert_array_equal(a, _reference(clap[idx], val.weak[idx], tuned["audio"]["thresholds"], True))


def test_modality_agnostic_labels(tmp_path, capsys):
    """VALOR Table 2, third row: `--modality-agnostic` gives both modalities a OR v of the modality-aware harvest."""
    from valor_core.sim import simulate
    from workflows.cli import main

    val = simulate(LLP_DIR, seed=0, splits=("val",))["val"]
    a = _reference(val.clap_logits, val.weak, CLAP_THRESHOLDS, True)
    v = _reference(val.clip_logits, val.weak, CLIP_THRESHOLDS, True)
    out = tmp_path / "agnostic"
    assert main(["harvest", "--logits", "sim:0", "--annotations", str(LLP_DIR), "--split", "val", "--out", str(out),
                 "--modality-agnostic", "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    meta, t = read_labels(str(out))
    both = (a | v).astype(np.uint8)
    assert last["modality_agnostic"] is True and meta["modality_agnostic"] is True
    for col in ("audio_labels", "visual_labels"):
        np.testing.assert_array_equal(np.asarray(t.column(col).to_pylist(), np.uint8), both)
    assert last["audio_labels"] == last["visual_labels"] == int(both.sum()) > int(max(a.sum(), v.sum()))
