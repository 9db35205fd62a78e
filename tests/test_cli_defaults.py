"""Defaults follow the data, scores on a subset say so, workers stay quiet (issue 24, items 2, 4 and the rest of 8),
through `python -m workflows.cli` on a demo corpus as `valor run` makes it (workflows/pipeline/prepare.py: real mp4
files, LLP annotation files beside the manifest) extracted for real with the tiny teachers. One val video of the corpus
is broken, so its features hold 2 of the 3 val videos: what `valor train --features D` scored silently before."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli_day import ROOT, last_json, valor

FAST = ["--rows-per-file", "4", "--clip-actors", "1,1", "--clap-actors", "1,1", "--teacher-batch", "10",
        "--clip-batch", "8", "--clap-batch", "4"]
WORKER_LINES = ("(RayTrainWorker", "(TrainController", "(PlacementGroupCleaner", "[Gloo]")


def _ids(path: Path) -> list[str]:
    return [line.split("\t")[0] for line in path.read_text().splitlines()[1:] if line.strip()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_teachers):
    """The demo corpus (12 videos: 6 train, 3 val, 3 test; one val video broken) and its `valor extract` output."""
    from valor_core.media.synth import synth_corpus
    from workflows.pipeline.prepare import write_llp_annotations

    root = tmp_path_factory.mktemp("defaults")
    videos = root / "videos"
    synth_corpus(videos, 12, seed=0)
    write_llp_annotations(str(videos), seed=0)  # as prepare.ensure_corpus: the LLP files beside manifest.csv
    val, test = _ids(videos / "AVVP_val_pd.csv"), _ids(videos / "AVVP_test_pd.csv")
    (videos / f"{val[0]}.mp4").write_bytes(b"")  # its extraction fails: the features hold 2 of the 3 val videos
    out = root / "features"
    env = tiny_teachers["env"]
    res = valor("extract", "--manifest", str(videos / "manifest.csv"), "--videos", str(videos), "--clip",
                tiny_teachers["clip"], "--clap", tiny_teachers["clap"], "--out", str(out), "--json", *FAST, env=env,
                timeout=900)
    assert res.returncode == 0 and last_json(res.stdout)["failed"] == 1, res.stderr[-3000:]
    return {"root": root, "videos": videos, "features": out, "val": val, "test": test, "env": env}


def _train(demo: dict, name: str, *args: str) -> subprocess.CompletedProcess:
    root = demo["root"]
    return valor("train", "--features", str(demo["features"]), "--workers", "2", "--epochs", "1", "--no-figures",
                 "--tracking-uri", f"sqlite:///{root}/mlflow.db", "--storage", str(root / "ray"), "--run-name", name,
                 *args, env=demo["env"], timeout=900)


@pytest.fixture(scope="module")
def trained(demo):
    """The README's `valor train --preset valor++ --features <the extraction>` (one epoch), as a user runs it."""
    res = _train(demo, "readme-valorpp", "--preset", "valor++", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    return {"res": res, "out": last_json(res.stdout)}


# --- 2. defaults follow the data --------------------------------------------------------------------------------------


def test_extraction_records_the_corpus_annotations(demo):
    marker = json.loads((demo["features"] / "_valor.json").read_text())
    assert marker["annotations"] == str(demo["videos"])  # the demo corpus's GT, beside its manifest


def test_readme_valorpp_trains_on_the_datasets_kind_and_annotations(demo, trained):
    res, out = trained["res"], trained["out"]
    note = [ln for ln in res.stderr.splitlines() if ln.startswith("valor train: preset valor++ reads clip_clap_maps")]
    assert len(note) == 1 and "training valor++ on them (features=clip_clap" in note[0]
    assert "--set features=clip_clap_maps" in note[0]  # how to insist on the preset's inputs
    # scored against the corpus's own GT (the LLP files shipped with valor know none of these videos)
    assert out["test"]["videos_scored"] == out["test"]["videos_in_split"] == len(demo["test"])
    assert out["val"]["videos_in_split"] == len(demo["val"]) == 3
    from workflows.checkpoints import read_meta

    meta = read_meta(out["checkpoint"])
    assert meta["train"]["features"] == "clip_clap" and meta["data"]["annotations"] == str(demo["videos"])


def test_errors_name_the_fix(demo):
    told = _train(demo, "told", "--preset", "valor++", "--set", "features=clip_clap_maps")  # told otherwise: refused
    assert told.returncode == 1 and len(told.stderr.strip().splitlines()) == 1, told.stderr
    assert "needs column clap_maps (64, 768)" in told.stderr and "--set features=clip_clap" in told.stderr
    from valor_core.llp import DEFAULT_ANNOTATIONS

    llp = _train(demo, "llp", "--preset", "lsld", "--annotations", DEFAULT_ANNOTATIONS)  # GT that lacks these videos
    assert llp.returncode == 1 and len(llp.stderr.strip().splitlines()) == 1, llp.stderr
    assert "none of its 2 val videos is in the val annotations" in llp.stderr and "pass --annotations DIR" in llp.stderr


# --- 4. scores on a subset say so in every output ---------------------------------------------------------------------


def test_scores_on_a_subset_say_so_in_every_output(demo, trained):
    val = trained["out"]["val"]
    assert (val["videos_scored"], val["videos_in_split"], val["official_comparable"]) == (2, 3, False)
    assert trained["out"]["test"]["official_comparable"] is True
    from workflows import tracking

    run = tracking.client(f"sqlite:///{demo['root']}/mlflow.db", create=False).get_run(trained["out"]["run_id"])
    tags = run.data.tags
    assert tags["valor.final.val.videos_scored"] == "2" and tags["valor.final.val.videos_in_split"] == "3"
    assert tags["valor.final.official_comparable"] == "false"
    # `valor evaluate --checkpoint` scores the same run the same way (it refused it before), with the run's annotations
    ckpt = trained["out"]["checkpoint"]
    as_json = valor("evaluate", "--checkpoint", ckpt, "--split", "val", "--json", env=demo["env"], timeout=300)
    assert as_json.returncode == 0, as_json.stderr
    assert last_json(as_json.stdout) == val
    table = valor("evaluate", "--checkpoint", ckpt, "--split", "val", env=demo["env"], timeout=300)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == ("LLP val (2 of 3 videos: a subset, not comparable with the official "
                                            "numbers), F-score %")


# --- 2 (lsld) and 8: the README's lsld command; worker lines only with --debug ------------------------------------------


def test_worker_lines_reach_the_terminal_only_with_debug(trained):
    res = trained["res"]
    shown = [ln for ln in (res.stdout + res.stderr).splitlines() if any(w in ln for w in WORKER_LINES)]
    assert shown == []


def test_readme_lsld_trains_and_its_summary_names_the_subset(demo):
    res = valor("--debug", "train", "--preset", "lsld", "--features", str(demo["features"]), "--workers", "2",
                "--epochs", "1", "--no-figures", "--tracking-uri", f"sqlite:///{demo['root']}/mlflow.db", "--storage",
                str(demo["root"] / "ray"), env=demo["env"], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "  val  2 of 3 videos: a subset, not comparable with the official numbers" in res.stdout.splitlines()
    assert "  test 3 videos" in res.stdout.splitlines()
    assert any("(RayTrainWorker" in ln for ln in (res.stdout + res.stderr).splitlines())  # --debug shows them


# --- bench/train.py runs again ------------------------------------------------------------------------------------------


def test_bench_train_runs_its_smallest_setting():
    res = subprocess.run([sys.executable, "bench/train.py", "--videos", "64", "--epochs", "1", "--workers", "1",
                          "--feed-only", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"})
    assert res.returncode == 0, res.stderr[-3000:]
    feed = last_json(res.stdout)["feed_only"]
    assert [f["mode"] for f in feed] == ["feed-only arrays", "feed-only ray_data"]
    assert all(f["rows_per_rank"] == 64 for f in feed)
