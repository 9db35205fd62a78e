"""`valor run`: config loading and overrides, fingerprints and skipping (fast, fake stages), then the real thing: the
pipeline submitted as a Ray job to a head on 127.0.0.1 with its outputs on the SeaweedFS S3 server (slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO
from valor_core.config import ConfigError, PipelineConfig, build, load_config, redacted
from workflows import pipeline as pl

# --- config loading --------------------------------------------------------------------------------------------------


def test_shipped_configs_load():
    local = load_config(str(REPO / "configs" / "local.yaml"))
    llp = load_config(str(REPO / "configs" / "llp.yaml"))
    assert isinstance(local, PipelineConfig) and isinstance(llp, PipelineConfig)
    assert local.corpus.generate and local.teachers.clip == "tiny" and local.ray.address is None
    assert local.demo.enabled
    assert llp.paths.videos.startswith("s3://") and llp.teachers.clip == "ViT-L-14:openai"
    assert llp.teachers.clap.endswith("630k-fusion-best.pt") and llp.train.use_gpu
    assert not llp.corpus.generate


def test_overrides_are_dotted_and_yaml_typed():
    cfg = load_config(str(REPO / "configs" / "local.yaml"),
                      ["train.optim.epochs=2", "train.num_workers=2", "ray.address=auto",
                       "thresholds.clip_thresholds=[0.5, 0.25]", "thresholds.filter_by_weak=false",
                       "paths.output=s3://valor/x", "tracking.uri="])
    assert cfg.train.optim.epochs == 2 and cfg.train.num_workers == 2 and cfg.ray.address == "auto"
    assert cfg.thresholds.clip_thresholds == (0.5, 0.25) and cfg.thresholds.filter_by_weak is False
    assert cfg.paths.output == "s3://valor/x" and cfg.tracking.uri is None


def test_preset_is_the_base_of_the_train_section():
    cfg = load_config(None, ["train.preset=valor+", "train.optim.epochs=3"])
    assert cfg.train.preset == "valor+" and cfg.train.model.hidden == 256 and cfg.train.model.layers == 4
    assert cfg.train.optim.lr_max == 3e-4 and cfg.train.optim.epochs == 3


@pytest.mark.parametrize("overrides, message", [
    (["train.optim.lrr=1"], "unknown key 'train.optim.lrr'"),
    (["nosuch.key=1"], "unknown key 'nosuch'"),
    (["train.optim.epochs=two"], "train.optim.epochs: expected an integer"),
    (["train.loss=nope"], "train.loss: 'nope' is not one of"),
    (["train.preset=nope"], "unknown preset 'nope'"),
    (["corpus.generate=maybe"], "corpus.generate: expected true/false"),
    (["thresholds.clip_thresholds=0.3"], "thresholds.clip_thresholds: expected a list"),
    (["paths=3"], "paths: expected a mapping"),
    (["novalue"], "expected key=value"),
    (["train.optim.epochs.x=1"], "train.optim.epochs: expected an integer"),
])
def test_bad_keys_and_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, overrides)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("paths:\n  videos: /v\n  vidoes: /w\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'paths\.vidoes' \(PathsConfig has: videos"):
        load_config(str(f))
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(f))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_redacted_hides_credentials():
    cfg = load_config(None, ["storage.access_key=AKIA123", "storage.secret_key=s3cr3t"])
    text = json.dumps(redacted(cfg))
    assert "AKIA123" not in text and "s3cr3t" not in text and '"***"' in text


def test_build_round_trips_to_dict():
    cfg = load_config(str(REPO / "configs" / "local.yaml"), ["train.optim.epochs=7"])
    assert build(PipelineConfig, redacted(cfg)) == cfg


# --- fingerprints and skipping, with fake stages ---------------------------------------------------------------------


class FakeStages:
    """Runners that write each stage's declared outputs and record which stages ran."""

    def __init__(self):
        self.ran: list[str] = []

    def runners(self):
        def make(name):
            def run(ctx: pl.Context) -> dict:
                self.ran.append(name)
                stage = next(s for s in pl.STAGES if s.name == name)
                for key in stage.outputs:
                    uri = getattr(ctx.layout, key)
                    target = uri + "/part-0.parquet" if "." not in key and not uri.endswith(".json") else uri
                    ctx.store.write_text(target, f"{name} {ctx.cfg.thresholds}")
                return {"stage": name, "inputs": sorted(ctx.results)}
            return run
        return {s.name: make(s.name) for s in pl.STAGES}


def _cfg(tmp_path, *overrides):
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "manifest.csv").write_text("filename\tevent_labels\na_0_10\tDog\n")
    return pl.resolve(load_config(None, [f"paths.videos={corpus}", f"paths.annotations={corpus}",
                                         f"paths.output={tmp_path / 'out'}", f"paths.work={tmp_path / 'work'}",
                                         *overrides]))


def _run(cfg, fake, **kw):
    before = len(fake.ran)
    reports = pl.run_pipeline(cfg, runners=fake.runners(), prepare=lambda c, log: (c, {}),
                              init_ray=lambda c, env: (lambda: None), log=lambda m: None, **kw)
    return fake.ran[before:], {r.name: r.status for r in reports}


def test_second_run_does_nothing(tmp_path):
    fake = FakeStages()
    ran, status = _run(_cfg(tmp_path), fake)
    assert ran == ["extract", "tune", "harvest", "train", "evaluate"]
    assert status["demo"] == "disabled"
    ran, status = _run(_cfg(tmp_path), fake)
    assert ran == [] and set(status.values()) == {"skipped", "disabled"}
    out = tmp_path / "out"
    assert (out / "config.yaml").exists()
    done = json.loads((out / "_pipeline" / "harvest.json").read_text())
    assert set(done["inputs"]) == {"extract", "tune"} and done["result"]["inputs"] == ["extract", "tune"]


def test_threshold_change_reruns_only_downstream(tmp_path):
    fake = FakeStages()
    _run(_cfg(tmp_path), fake)
    ran, _ = _run(_cfg(tmp_path, "thresholds.unified_clip=0.3"), fake)
    assert ran == ["harvest", "train", "evaluate"]
    ran, _ = _run(_cfg(tmp_path, "thresholds.unified_clip=0.3"), fake)
    assert ran == []
    ran, _ = _run(_cfg(tmp_path, "thresholds.unified_clip=0.3", "train.optim.epochs=3"), fake)
    assert ran == ["train", "evaluate"]
    ran, _ = _run(_cfg(tmp_path, "thresholds.unified_clip=0.3", "train.optim.epochs=3", "teachers.clip=other"), fake)
    assert ran == ["extract", "tune", "harvest", "train", "evaluate"]


def test_input_file_change_reruns_its_consumers(tmp_path):
    fake = FakeStages()
    cfg = _cfg(tmp_path)
    _run(cfg, fake)
    (tmp_path / "corpus" / "AVVP_eval_visual.csv").write_text("filename\tonset\toffset\tevent_labels\n")
    ran, _ = _run(cfg, fake)
    assert ran == ["tune", "harvest", "train", "evaluate"]  # val GT feeds tune (and evaluate)
    (tmp_path / "corpus" / "manifest.csv").write_text("filename\tevent_labels\nb_0_10\tCat\n")
    ran, _ = _run(cfg, fake)
    assert ran[0] == "extract" and len(ran) == 5


def test_missing_outputs_rerun_the_stage(tmp_path):
    fake = FakeStages()
    _run(_cfg(tmp_path), fake)
    (tmp_path / "out" / "thresholds.json").unlink()
    ran, _ = _run(_cfg(tmp_path), fake)
    assert ran == ["tune", "harvest", "train", "evaluate"]  # a re-run upstream may differ: downstream follows
    (tmp_path / "out" / "eval.json").unlink()
    ran, _ = _run(_cfg(tmp_path), fake)
    assert ran == ["evaluate"]


def test_changed_stage_clears_old_outputs_interrupted_one_resumes(tmp_path):
    fake = FakeStages()
    _run(_cfg(tmp_path), fake)
    stale = tmp_path / "out" / "labels" / "stale-from-old-config.parquet"
    stale.write_text("old")
    _run(_cfg(tmp_path, "thresholds.filter_by_weak=false"), fake)
    assert not stale.exists()
    # an interrupted stage (started, never finished) with the same fingerprint keeps its partial outputs
    cfg = _cfg(tmp_path, "teachers.clip=new")
    fp = pl.fingerprints(cfg, pl.Store(cfg))["extract"]
    (tmp_path / "out" / "_pipeline" / "extract.started.json").write_text(json.dumps({"fingerprint": fp}))
    partial = tmp_path / "out" / "features" / "partial.parquet"
    partial.write_text("half")
    _run(cfg, fake, only="extract")
    assert partial.exists()


def test_only_one_stage_and_stale_inputs(tmp_path):
    fake = FakeStages()
    with pytest.raises(pl.PipelineError, match="--stage harvest: its input stage\\(s\\) extract, tune"):
        _run(_cfg(tmp_path), fake, only="harvest")
    ran, status = _run(_cfg(tmp_path), fake, only="extract")
    assert ran == ["extract"] and list(status) == ["extract"]
    ran, _ = _run(_cfg(tmp_path), fake, only="extract")
    assert ran == []
    ran, _ = _run(_cfg(tmp_path), fake, only="extract", force=True)
    assert ran == ["extract"]
    ran, _ = _run(_cfg(tmp_path), fake, only="tune")
    assert ran == ["tune"]


def test_plan_runs_nothing(tmp_path):
    fake = FakeStages()
    ran, status = _run(_cfg(tmp_path), fake, plan=True)
    assert ran == [] and status["extract"] == "todo" and not (tmp_path / "out" / "config.yaml").exists()


def test_failed_stage_leaves_no_marker(tmp_path):
    fake = FakeStages()
    runners = fake.runners()

    def boom(ctx):
        raise RuntimeError("train crashed")

    runners["train"] = boom
    with pytest.raises(RuntimeError, match="train crashed"):
        pl.run_pipeline(_cfg(tmp_path), runners=runners, prepare=lambda c, log: (c, {}),
                        init_ray=lambda c, env: (lambda: None), log=lambda m: None)
    assert (tmp_path / "out" / "_pipeline" / "harvest.json").exists()
    assert not (tmp_path / "out" / "_pipeline" / "train.json").exists()
    ran, _ = _run(_cfg(tmp_path), fake)
    assert ran == ["train", "evaluate"]


def test_cli_reports_nothing_to_do(tmp_path, monkeypatch, capsys):
    fake = FakeStages()
    cfg = _cfg(tmp_path)
    _run(cfg, fake)
    monkeypatch.setattr(pl, "prepare_inputs", lambda c, log: (c, {}))
    from workflows.cli import main

    args = ["run", f"paths.videos={cfg.paths.videos}", f"paths.annotations={cfg.paths.annotations}",
            f"paths.output={cfg.paths.output}", f"paths.work={cfg.paths.work}", "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ran"] == [] and summary["stages"]["train"]["status"] == "skipped"
    assert main(["run", "train.optim.epochs=x"]) == 2
    assert "expected an integer" in capsys.readouterr().err
