"""Safety issue items 1-4: only valor's marker makes a path valor's, and valor deletes exactly the files it wrote.

Each test is a reproduction from the issue, run through the real CLI or the real pipeline engine where it can be."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from workflows import outputs
from workflows.config import load_config
from workflows.features import features_dataset, read_labels

VALOR = [sys.executable, "-m", "workflows.cli"]


def _valor(*args, timeout=300):
    return subprocess.run([*VALOR, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- 1. ownership is the marker, never a guess from names ------------------------------------------------------------


def test_a_pyarrow_dataset_is_not_valors(tmp_path):
    d = tmp_path / "D"
    ds.write_dataset(pa.table({"x": [1, 2, 3]}), d, format="parquet")
    before = _snapshot(d)
    assert list(before) == ["part-0.parquet"]
    r = _valor("harvest", "--logits", "sim:0", "--split", "val", "--out", d)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "part-0.parquet" in line and "no valor marker" in line
    assert _snapshot(d) == before


def test_lookalike_pipeline_root_loses_nothing(tmp_path):
    d = tmp_path / "root"
    (d / "demo").mkdir(parents=True)
    (d / "config.yaml").write_text("mine: 1\n")
    (d / "demo" / "t.txt").write_text("notes")
    (d / "eval.json").write_text("{}")
    before = _snapshot(d)
    videos = tmp_path / "videos"
    videos.mkdir()
    from workflows.pipeline import layout, stages

    cfg = layout.resolve(load_config(None, [f"paths.output={d}", f"paths.work={tmp_path / 'w'}",
                                            f"paths.videos={videos}"]))
    with pytest.raises(outputs.OwnershipError, match="no valor marker.*config.yaml"):
        stages.run_pipeline(cfg, runners={}, prepare=lambda c, log, create=True: (c, {}),
                            init_ray=lambda c, env: (lambda: None), log=lambda m: None)
    assert _snapshot(d) == before


# --- 2. a re-run deletes exactly what valor wrote -------------------------------------------------------------------


def test_reharvest_keeps_foreign_files_and_a_foreign_folder(tmp_path):
    out = tmp_path / "labels"
    first = _valor("harvest", "--logits", "sim:0", "--split", "val", "--out", out, "--json")
    assert first.returncode == 0, first.stderr
    meta1, table1 = read_labels(str(out))
    (out / "notes.txt").write_text("my notes")
    (out / "mine").mkdir()
    (out / "mine" / "x.txt").write_text("x")
    (out / "part-99999.parquet").write_bytes(b"not valor's")  # a valor-like name valor did not write
    r = _valor("harvest", "--logits", "sim:0", "--split", "val", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    assert "kept 3 files valor did not write" in r.stderr and "notes.txt" in r.stderr
    assert (out / "notes.txt").read_text() == "my notes" and (out / "mine" / "x.txt").read_text() == "x"
    assert (out / "part-99999.parquet").read_bytes() == b"not valor's"
    meta2, table2 = read_labels(str(out))  # the stray files are not read as labels
    assert (out / "_harvest.json").is_file() and table2.num_rows == table1.num_rows
    assert table2.column("video_id").to_pylist() == table1.column("video_id").to_pylist()
    assert json.loads(r.stdout.strip().splitlines()[-1])["videos"] == meta2["videos"]


def test_clear_and_remove_delete_only_the_manifest(tmp_path):
    out = tmp_path / "o"
    outputs.claim(str(out), "labels")
    outputs.write_file(str(out / "a.json"), b"1")
    outputs.reserve(str(out / "sub" / "b.bin"))
    (out / "sub").mkdir()
    (out / "sub" / "b.bin").write_bytes(b"2")
    (out / "sub" / "mine.txt").write_text("keep")
    (out / "mine.txt").write_text("keep")
    with pytest.raises(outputs.OwnershipError, match="valor did not write"):
        outputs.write_file(str(out / "mine.txt"), b"over")  # never overwritten either
    kept = outputs.clear_owned(str(out), log=lambda m: None)
    assert sorted(kept) == ["mine.txt", "sub/mine.txt"]
    assert _snapshot(out).keys() == {"_valor.json", "mine.txt", "sub/mine.txt"}
    assert outputs.read_marker(str(out))["wrote"] == []
    outputs.write_file(str(out / "a.json"), b"again")
    assert outputs.remove_owned(str(out), log=lambda m: None) == ["mine.txt", "sub/mine.txt"]
    assert outputs.read_marker(str(out))["kind"] == "labels"  # still valor's: the next run may write there
    clean = tmp_path / "clean"
    outputs.claim(str(clean), "labels")
    outputs.write_file(str(clean / "a.json"), b"1")
    assert outputs.remove_owned(str(clean)) == [] and not clean.exists()


def test_a_run_dir_is_valors_whole_until_it_completes(tmp_path):
    storage = tmp_path / "train"
    outputs.claim(str(storage), "checkpoints")
    outputs.record(str(storage), ["run-a/"])
    (storage / "run-a" / "checkpoint_000000").mkdir(parents=True)
    (storage / "run-a" / "checkpoint_000000" / "model.pt").write_bytes(b"w")
    outputs.record_listing(str(storage), "run-a")  # completed: from now on only these files are valor's
    (storage / "run-a" / "notebook.ipynb").write_text("{}")
    outputs.record(str(storage), ["run-b/"])  # killed before it completed: the whole folder goes
    (storage / "run-b").mkdir()
    (storage / "run-b" / "events.out").write_bytes(b"e")
    (storage / "mine.txt").write_text("m")
    kept = outputs.remove_owned(str(storage), log=lambda m: None)
    assert sorted(kept) == ["mine.txt", "run-a/notebook.ipynb"]
    assert sorted(_snapshot(storage)) == ["_valor.json", "mine.txt", "run-a/notebook.ipynb"]


# --- 4. a foreign dataset is never appended to; a stray file is never read ---------------------------------------


def _valor_features(root: Path, n: int = 6) -> Path:
    """A features dataset as valor's extraction leaves it: marker, run patterns, parts named by the run."""
    feats = root / "features"
    outputs.claim(str(feats), "features")
    outputs.record_run(str(feats), "r1")
    rng = np.random.default_rng(0)
    ids = [f"v{i}" for i in range(n)]
    table = pa.table({"video_id": ids, "split": ["val"] * n, "x": rng.normal(size=n)})
    pq.write_table(table, feats / "part-r1-000.parquet")
    return feats


def test_extract_refuses_a_foreign_parquet_dataset(tmp_path, synth_corpus, tiny_teachers):
    d = tmp_path / "theirs"
    ds.write_dataset(pa.table({"video_id": ["a"], "x": [1.0]}), d, format="parquet")
    before = _snapshot(d)
    r = _valor("extract", "--manifest", synth_corpus, "--videos", synth_corpus.parent,
               "--clip", tiny_teachers["clip"], "--clap", tiny_teachers["clap"], "--out", d)
    assert r.returncode == 2 and "no valor marker" in r.stderr and "part-0.parquet" in r.stderr, r.stderr
    assert _snapshot(d) == before and not (tmp_path / "theirs_failures").exists()


def test_a_stray_file_in_a_dataset_is_never_read(tmp_path):
    feats = _valor_features(tmp_path)
    (feats / "notes.txt").write_text("not parquet")
    (feats / "part-0.parquet").write_bytes(pq.read_table(feats / "part-r1-000.parquet").to_pandas().to_parquet())
    table = features_dataset(str(feats)).to_table()
    assert table.num_rows == 6 and sorted(table.column("video_id").to_pylist()) == [f"v{i}" for i in range(6)]
