"""Safety issue items 8, 9, 10: every place valor writes into goes through one check, optimiser values are
range-checked, and a missing video folder is reported at once - each a one-line error (exit code 2) before anything
is created."""
from __future__ import annotations

import time

import pytest

from tests.conftest import REPO
from workflows import cli
from workflows.config import load_config
from workflows.pipeline.layout import resolve

LOCAL = str(REPO / "configs" / "local.yaml")


def _run_cli(capsys, *argv) -> tuple[int, str, float]:
    """The real `valor` entry point in this process: (exit code, stderr, seconds)."""
    t0 = time.perf_counter()
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err, time.perf_counter() - t0


# --- 8. one path validator for every output-like key ---------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("paths.output=//", "paths.output '//': refusing to use / as an output root"),
    ("paths.output=file:///", "paths.output 'file:///': refusing to use / as an output root"),
    ("paths.output=file://", "paths.output 'file://': names no directory"),
    ("paths.output=s3://bucket/./", "paths.output 's3://bucket/./': name a bucket and a prefix"),
    ("paths.output=s3://bucket/a/../", "name a bucket and a prefix"),
    ("paths.work=/", "paths.work '/': refusing to use / as an output root"),
    ("paths.work=s3://bucket/cache", "paths.work 's3://bucket/cache': must be a local directory"),
    ("demo.out=/", "demo.out '/': refusing to use / as an output root"),
    ("demo.out=//", "demo.out '//': refusing to use / as an output root"),
    ("tracking.uri=file:///", "tracking.uri 'file:///': refusing to use / as an output root"),
    ("tracking.uri=/", "tracking.uri '/': refusing to use / as an output root"),
    ("tracking.uri=sqlite:///", "tracking.uri 'sqlite:///': name the database file"),
])
def test_plan_refuses_a_place_valor_must_not_write_into(override, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    work = [] if override.startswith("paths.work") else [f"paths.work={tmp_path / 'w'}"]
    code, err, _ = _run_cli(capsys, "run", "--config", LOCAL, override, *work, "--plan")
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing made: not ./file:, not the work dir


def test_output_locations_are_normalised_before_the_stages_see_them(tmp_path):
    cfg = resolve(load_config(None, [f"paths.output=file://{tmp_path}/out/", f"paths.work={tmp_path}/w//",
                                     f"demo.out={tmp_path}/pics/", f"tracking.uri=file://{tmp_path}/mlruns"]))
    assert cfg.paths.output == f"{tmp_path}/out"  # a local path: not './file:' under the working directory
    assert cfg.paths.work == f"{tmp_path}/w" and cfg.demo.out == f"{tmp_path}/pics"
    assert cfg.tracking.uri == f"file://{tmp_path}/mlruns"
    s3 = load_config(None, ["paths.output=s3://bucket/runs/a/"])
    assert s3.paths.output == "s3://bucket/runs/a"


# --- 9. optimiser values range-checked ------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("train.optim.betas=[2, -1]", "train.optim.betas: must be >= 0.0 and < 1.0, got (2.0, -1.0)"),
    ("train.optim.betas=[0.9, 1.0]", "train.optim.betas: must be >= 0.0 and < 1.0, got (0.9, 1.0)"),
    ("train.optim.lr_max=.inf", "train.optim.lr_max: must be a finite number > 0, got inf"),
    ("train.optim.lr_min=.inf", "train.optim.lr_min: must be a finite number >= 0.0, got inf"),
    ("runs=[{optim: {betas: [0.5, -0.1]}}]", "runs[0].optim.betas: must be >= 0.0 and < 1.0"),
])
def test_plan_refuses_optimiser_values_torch_would_reject(override, message, tmp_path, capsys):
    code, err, _ = _run_cli(capsys, "run", "--config", LOCAL, override, f"paths.work={tmp_path / 'w'}", "--plan")
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "w").exists()


def test_valor_train_refuses_betas_out_of_range(capsys):
    code, err, seconds = _run_cli(capsys, "train", "--set", "optim.betas=[2,-1]", "--dry-run")
    assert code == 2 and "optim.betas: must be >= 0.0 and < 1.0, got (2.0, -1.0)" in err, err
    assert seconds < 2


# --- 10. a missing video folder: a one-line error in < 2 s, nothing created -----------------------------------------


def test_extract_with_missing_videos_fails_at_once_creating_nothing(tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("filename\tevent_labels\na_0_10\tDog\n")
    out = tmp_path / "features"
    code, err, seconds = _run_cli(capsys, "extract", "--manifest", manifest, "--videos", tmp_path / "nonexistent",
                                  "--clip", "random", "--clap", "random", "--out", out)
    assert code == 2 and seconds < 2
    assert err.strip() == f"valor extract: error: --videos '{tmp_path / 'nonexistent'}': does not exist " \
                          f"({tmp_path / 'nonexistent'})"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


@pytest.mark.parametrize("out, message", [("/", "--out '/': refusing to use / as an output root"),
                                          ("s3://bucket/./", "--out 's3://bucket/./': name a bucket and a prefix")])
def test_extract_refuses_an_output_valor_must_not_write_into(out, message, tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("filename\tevent_labels\na_0_10\tDog\n")
    code, err, seconds = _run_cli(capsys, "extract", "--manifest", manifest, "--videos", tmp_path, "--clip", "random",
                                  "--clap", "random", "--out", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and seconds < 2, err


def test_run_with_missing_videos_fails_at_once_creating_nothing(tmp_path, capsys):
    missing = tmp_path / "videos"
    code, err, seconds = _run_cli(capsys, "run", "--config", LOCAL, f"paths.videos={missing}",
                                  f"paths.annotations={REPO / 'valor_core' / 'data' / 'llp'}", "corpus.generate=false",
                                  f"paths.output={tmp_path / 'out'}", f"paths.work={tmp_path / 'w'}")
    assert code == 2 and seconds < 2
    assert err.strip() == f"valor run: paths.videos '{missing}': does not exist ({missing})"
    assert list(tmp_path.iterdir()) == []  # no output root, no work dir (tiny teachers), no corpus
