"""`valor run`: config loading and overrides, fingerprints and skipping (fast, fake stages), then the real thing: the
pipeline submitted as a Ray job to a head on 127.0.0.1 with its outputs on the SeaweedFS S3 server (slow)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests import loopback
from tests.conftest import REPO
from tests.loopback import VENV_BIN, loopback_env
from valor_core.configio import build
from workflows.config import ConfigError, PipelineConfig, load_config, redacted
from workflows import outputs
from workflows.pipeline import engine, layout, stages

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
    """Runners that write each stage's outputs (declared, and produced outside the layout's keys) and record which
    stages ran."""

    def __init__(self):
        self.ran: list[str] = []

    def runners(self):
        def make(name):
            def run(ctx: engine.Context) -> dict:
                self.ran.append(name)
                stage = next(s for s in stages.STAGES if s.name == name)
                written = [(key, getattr(ctx.layout, key)) for key in stage.outputs]
                written += [("labels", uri) for uri in stage.produced(ctx.cfg)]
                for kind, uri in written:
                    is_dir = not os.path.splitext(uri)[1]
                    if is_dir:  # as the real stages do: a dir output carries valor's ownership marker
                        outputs.claim(uri, kind)
                    ctx.store.write_text(uri + "/part-0.parquet" if is_dir else uri, f"{name} {ctx.cfg.thresholds}")
                return {"stage": name, "inputs": sorted(ctx.results)}
            return run
        return {s.name: make(s.name) for s in stages.STAGES}


def _cfg(tmp_path, *overrides):
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "manifest.csv").write_text("filename\tevent_labels\na_0_10\tDog\n")
    return layout.resolve(load_config(None, [f"paths.videos={corpus}", f"paths.annotations={corpus}",
                                         f"paths.output={tmp_path / 'out'}", f"paths.work={tmp_path / 'work'}",
                                         *overrides]))


def _run(cfg, fake, **kw):
    before = len(fake.ran)
    reports = stages.run_pipeline(cfg, runners=fake.runners(), prepare=lambda c, log, create=True: (c, {}),
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
    assert set(done["inputs"]) == {"extract", "tune", "labeler"} and done["result"]["inputs"] == ["extract", "tune"]


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
    outputs.write_file(str(stale), b"old")  # valor wrote it: a changed config removes it
    mine = tmp_path / "out" / "labels" / "mine.txt"
    mine.write_text("user's")  # valor did not write it: kept
    _run(_cfg(tmp_path, "thresholds.filter_by_weak=false"), fake)
    assert not stale.exists() and mine.read_text() == "user's"
    assert "filter_by_weak=False" in (tmp_path / "out" / "labels" / "part-0.parquet").read_text()
    # an interrupted stage (started, never finished) with the same fingerprint keeps its partial outputs
    cfg = _cfg(tmp_path, "teachers.clip=new")
    fp = engine.fingerprints(cfg, engine.Store(cfg), stages.STAGES)["extract"]
    (tmp_path / "out" / "_pipeline" / "extract.started.json").write_text(json.dumps({"fingerprint": fp}))
    partial = tmp_path / "out" / "features" / "partial.parquet"
    outputs.write_file(str(partial), b"half")
    _run(cfg, fake, only="extract")
    assert partial.exists()


def test_only_one_stage_and_stale_inputs(tmp_path):
    fake = FakeStages()
    with pytest.raises(engine.PipelineError, match="--stage harvest: its input stage\\(s\\) extract, tune"):
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
        stages.run_pipeline(_cfg(tmp_path), runners=runners, prepare=lambda c, log, create=True: (c, {}),
                        init_ray=lambda c, env: (lambda: None), log=lambda m: None)
    assert (tmp_path / "out" / "_pipeline" / "harvest.json").exists()
    assert not (tmp_path / "out" / "_pipeline" / "train.json").exists()
    ran, _ = _run(_cfg(tmp_path), fake)
    assert ran == ["train", "evaluate"]


def test_cli_reports_nothing_to_do(tmp_path, monkeypatch, capsys):
    fake = FakeStages()
    cfg = _cfg(tmp_path)
    _run(cfg, fake)
    monkeypatch.setattr(stages, "prepare_inputs", lambda c, log, create=True: (c, {}))
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


def _fake_demo_out(args) -> dict:
    scores = {lvl: {k: 50.0 + i for i, k in enumerate(("audio", "visual", "av", "type", "event"))}
              for lvl in ("segment", "event")}
    model = {"val": scores, "test": scores, "best_epoch": 1, "seconds": 0.1}
    return {"train_videos": args.train_videos, "epochs": args.epochs, "hidden": args.hidden, "lr_scale": args.lr_scale,
            "fidelity": {"audio": 1.0}, "seconds": 0.2, "han": model, "valor": model}


def test_demo_stage_calls_valor_demo_and_is_skipped_after(tmp_path, monkeypatch):
    """The demo stage runs workflows.demo in-process with `valor demo`'s defaults + demo.args, writes demo.json/png/txt
    to demo.out, is fingerprinted on the demo section, and re-runs alone when its pictures are gone."""
    from workflows import demo as D

    calls = []

    def fake_run_demo(args, log=print):
        calls.append(args)
        return _fake_demo_out(args)

    monkeypatch.setattr(D, "run_demo", fake_run_demo)
    fake = FakeStages()
    runners = {**fake.runners(), "demo": stages.run_demo}

    def run(*overrides):
        cfg = _cfg(tmp_path, "demo.enabled=true", *overrides)
        reports = stages.run_pipeline(cfg, runners=runners, prepare=lambda c, log, create=True: (c, {}),
                                  init_ray=lambda c, env: (lambda: None), log=lambda m: None)
        return cfg, {r.name: r.status for r in reports}

    cfg, status = run("demo.args=['--epochs', '2']")
    assert status["demo"] == "ran" and len(calls) == 1
    assert calls[0].epochs == 2 and calls[0].train_videos == 3000 and calls[0].out == str(tmp_path / "out" / "demo")
    for f in ("demo.json", "demo.png", "demo.txt"):
        assert (tmp_path / "out" / "demo" / f).stat().st_size > 0
    assert "Type@AV" in (tmp_path / "out" / "demo" / "demo.txt").read_text()
    _, status = run("demo.args=['--epochs', '2']")
    assert status["demo"] == "skipped" and len(calls) == 1
    (tmp_path / "out" / "demo" / "demo.png").unlink()
    _, status = run("demo.args=['--epochs', '2']")
    assert status["demo"] == "ran" and status["train"] == "skipped" and len(calls) == 2
    _, status = run("demo.args=['--epochs', '3']")  # its own section only: nothing else re-runs
    assert status["demo"] == "ran" and all(status.pop(k) == "disabled" for k in ("import", "labeler", "refine", "ave"))
    assert set(status.values()) == {"ran", "skipped"}
    assert calls[-1].epochs == 3
    assert [k for k, v in status.items() if v == "ran"] == ["demo"]
    with pytest.raises(engine.PipelineError, match=r"demo.args \['--nope'\]: not valid `valor demo` arguments"):
        run("demo.args=['--nope']")


# --- the real thing: `ray job submit` to a Ray head on 127.0.0.1, outputs on the SeaweedFS S3 server -----------------
# Teardown stops exactly the head this test started (its process group) instead of `ray stop`, which would kill every
# Ray process on the machine, including other test sessions' clusters.

E2E_VIDEOS = 8


@pytest.fixture(scope="module")
def ray_head(s3):
    """`ray start --head --block` on 127.0.0.1 (every port free-picked, 2 CPUs) whose environment holds this S3
    server's keys, as a node's would: the job never carries them (its runtime_env has none)."""
    with loopback.ray_head(dashboard=True, env={k: v for k, v in s3.env().items()}) as address:
        yield address


@pytest.fixture(scope="module")
def s3():
    """A SeaweedFS S3 server of its own (state in a temp dir), stopped with `valor storage down --dir`."""
    from workflows import s3server as storage

    d = tempfile.mkdtemp(prefix="vs3", dir="/tmp")
    info = storage.up(d)
    try:
        yield info
    finally:
        r = subprocess.run([str(VENV_BIN / "valor"), "storage", "down", "--dir", d, "--json"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not storage.status(d)["running"], f"SeaweedFS (pid {info.pid}) still running"


def _runtime_env(tmp: Path, extra_env: dict) -> Path:
    """cluster/runtime_env.yaml as the loopback job uses it: same working_dir and excludes; no pip (the head runs from
    this venv, which has everything); env vars for this S3 server, offline HF and quick Ray Train reports."""
    import yaml

    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    env.pop("pip", None)
    env["working_dir"] = str(REPO)
    env["env_vars"] = {k: v for k, v in env["env_vars"].items() if not k.startswith(("AWS_", "MLFLOW_TRACKING"))}
    env["env_vars"].update(extra_env)
    path = tmp / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(env))
    return path


def _submit(address: str, runtime_env: Path, args: list[str], timeout: float = 420) -> tuple[str, str]:
    """`ray job submit --working-dir . --runtime-env F -- python -m workflows.cli run ...`: (status, logs)."""
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env", str(runtime_env), "--", "python", "-m", "workflows.cli", "run", *args]
    r = subprocess.run(cmd, env=loopback_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    out = r.stdout + r.stderr
    m = re.findall(r"Job '([^']+)' (succeeded|failed|stopped)", out)
    status = m[-1][1].upper() if m else f"UNKNOWN (rc {r.returncode})"
    return status, out


def _last_json(logs: str) -> dict:
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            with contextlib.suppress(ValueError):
                return json.loads(line)
    raise AssertionError(f"no JSON summary in the job logs:\n{logs[-4000:]}")


@pytest.mark.integration
def test_job_submit_on_loopback_with_s3(ray_head, s3, tmp_path_factory):
    """The cluster path on one machine: a job runs `valor run --config configs/local.yaml` against a Ray head on
    127.0.0.1 with its outputs on the S3 server; a re-run does nothing; a thresholds change re-runs only harvest,
    train and evaluate. Scale: 8 videos, 1 epoch of a 1-layer 32-wide HAN on 1 worker, 2 tune sweeps."""
    import pyarrow.dataset as pads

    from workflows import objstore

    tmp = tmp_path_factory.mktemp("e2e")
    prefix = f"s3://{s3.bucket}/e2e-{os.getpid()}"
    work = tmp / "work"
    overrides = [
        f"paths.videos={tmp / 'videos'}", f"paths.annotations={tmp / 'videos'}", f"paths.work={work}",
        f"paths.output={prefix}", f"corpus.videos={E2E_VIDEOS}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        f"storage.endpoint={s3.endpoint}", "demo.enabled=false",
        "train.optim.epochs=1", "train.optim.warmup_epochs=0", "train.num_workers=1", "train.optim.batch_size=4",
        "train.model.hidden=32", "train.model.ff=64", "train.model.heads=2", "train.model.layers=1",
        "tune.max_sweeps=2", "tune.grid_points=5",
        "extract.clip_actors=[1, 1]", "extract.clap_actors=[1, 1]",  # fixed pools: no second model load
    ]
    extra_env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    renv = _runtime_env(tmp, extra_env)
    args = ["--config", "configs/local.yaml", *overrides, "--json"]

    status, logs = _submit(ray_head["dashboard"], renv, args)
    assert status == "SUCCEEDED", logs[-6000:]
    s = _last_json(logs)
    assert s["ran"] == ["extract", "tune", "harvest", "train", "evaluate"], s
    assert s["stages"]["demo"]["status"] == "disabled"
    assert "RANDOM-INIT" in logs  # the tiny teachers say what they are

    # Parquet on the S3 server: one features row and one labels row per video, val/test split as the corpus has them
    opts = objstore.s3_options(s3.config())
    fs, path = objstore.fs_for(f"{prefix}/features", opts)
    feats = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    assert feats.num_rows == E2E_VIDEOS and len(set(feats.column("video_id").to_pylist())) == E2E_VIDEOS
    fs, path = objstore.fs_for(f"{prefix}/labels", opts)
    labels = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    assert labels.num_rows == E2E_VIDEOS
    assert sorted(set(labels.column("video_id").to_pylist())) == sorted(set(feats.column("video_id").to_pylist()))
    n_split = {name: len((tmp / "videos" / f).read_text().strip().splitlines()) - 1
               for name, f in (("val", "AVVP_val_pd.csv"), ("test", "AVVP_test_pd.csv"))}
    assert n_split["val"] == n_split["test"] == E2E_VIDEOS // 4

    th = json.loads(objstore.read_bytes(f"{prefix}/thresholds.json", opts))
    for m in ("audio", "visual"):
        assert len(th[m]["thresholds"]) == 25 and all(isinstance(x, float) for x in th[m]["thresholds"])
        assert 0.0 <= th[m]["fidelity"] <= 100.0

    ev = json.loads(objstore.read_bytes(f"{prefix}/eval.json", opts))
    for split in ("val", "test"):
        assert set(ev[split]) >= {"segment", "event"}
        assert all(0.0 <= v <= 100.0 for lvl in ("segment", "event") for v in ev[split][lvl].values())
    ckpt = objstore.list_files(f"{prefix}/train", opts, recursive=True)
    assert ckpt, "no checkpoint files under train/"
    assert any("epoch_001" in f for f in ckpt), ckpt[:5]
    config_text = objstore.read_bytes(f"{prefix}/config.yaml", opts).decode()
    assert s3.access_key not in config_text and s3.secret_key not in config_text

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("valor-local")
    runs = client.search_runs([exp.experiment_id])
    train_runs = [r for r in runs if any(k.startswith("final.") for k in r.data.metrics)]
    assert len(train_runs) == 1, [r.info.run_name for r in runs]
    run = train_runs[0]
    assert run.info.status == "FINISHED" and run.info.run_id == s["results"]["train"]["run_id"]
    metrics = run.data.metrics
    assert {"eval.test.segment.type", "eval.val.event.av", "train_loss"} <= set(metrics), sorted(metrics)
    assert metrics["eval.test.segment.type"] == pytest.approx(ev["test"]["segment"]["type"], abs=1e-6)
    assert any("pipeline.paths.videos" in k for k in run.data.params) or "paths.videos" in json.dumps(run.data.params)
    tune_runs = [r for r in runs if r.info.run_id == s["results"]["tune"]["mlflow_run"]]
    assert tune_runs and tune_runs[0].info.status == "FINISHED"

    # nothing changed: nothing runs, and it says so
    status, logs = _submit(ray_head["dashboard"], renv, args)
    assert status == "SUCCEEDED", logs[-6000:]
    s2 = _last_json(logs)
    assert "nothing to do" in logs and s2["ran"] == []
    assert {k: v["status"] for k, v in s2["stages"].items()} == {
        "extract": "skipped", "import": "disabled", "tune": "skipped", "labeler": "disabled", "harvest": "skipped",
        "refine": "disabled", "train": "skipped", "evaluate": "skipped", "ave": "disabled", "demo": "disabled"}

    # only the thresholds changed: harvest, train and evaluate re-run; extract and tune do not
    status, logs = _submit(ray_head["dashboard"], renv, ["--config", "configs/local.yaml", *overrides,
                                            "thresholds.unified_clip=0.0", "--json"])
    assert status == "SUCCEEDED", logs[-6000:]
    s3_ = _last_json(logs)
    assert s3_["ran"] == ["harvest", "train", "evaluate"]
    assert s3_["stages"]["extract"]["status"] == s3_["stages"]["tune"]["status"] == "skipped"
    fs, path = objstore.fs_for(f"{prefix}/labels", opts)
    assert pads.dataset(path, filesystem=fs, format="parquet").to_table().num_rows == E2E_VIDEOS

    # the keys never reached Ray's logs (runtime_env agent, job driver, workers) nor valor's own records
    temp = Path(ray_head["temp"])
    leaked = [str(p) for p in temp.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size < 50_000_000
              and s3.secret_key.encode() in p.read_bytes()]
    assert leaked == [], f"the S3 secret is in: {leaked[:5]}"
    for key in ("config.yaml", "_pipeline/train.json", "_pipeline/extract.json", "features/_valor.json"):
        assert s3.secret_key not in objstore.read_bytes(f"{prefix}/{key}", opts).decode()
