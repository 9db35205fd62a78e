"""`valor ave train --ray`: the AVE training of valor_core.ave_fit as a Ray Train job (1 CPU worker) tracked in MLflow
(sqlite in tmp_path), on AVE-sim with 1,000 train videos, HAN width 32, 2 epochs (enough to learn: val ~81 -> ~85,
test ~84 against 17.8 all-background); then the in-process run tracked with --tracking-uri, and 2 DDP
workers. With one worker the Ray path is the
in-process fit_ave (same batches, dropout masks and steps), so its per-epoch losses, val accuracies, best epoch and test
accuracy equal fit_ave's for the same arguments. Plus the one-line errors of bad --ray flags (no Ray started)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from valor_core.config import to_dict

RAY_LOG = re.compile(r"^(\x1b\[[0-9;]*m)?\(\w+ pid=\d+")  # a line Ray forwards from a worker of the module's Ray
ARGS = ["ave", "train", "--loss", "valor", "--epochs", "2", "--train-videos", "1000", "--hidden", "32", "--lr", "5e-3",
        "--seed", "3", "--threads", "1"]


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _in_process_fit():
    """fit_ave on exactly what `valor ave train` builds from ARGS (AVE-sim seed 0, 1,000 seeded train videos)."""
    from valor_core.ave import load_splits
    from valor_core.ave_fit import ave_train_config, fit_ave, harvest_pair
    from valor_core.ave_sim import simulate_ave
    from valor_core.fit import configure_threads

    splits = load_splits()
    data = {s: simulate_ave(splits[s], seed=0) for s in ("train", "val", "test")}
    rows = np.random.default_rng(3).choice(len(data["train"]), 1000, replace=False)
    data["train"] = data["train"].take(np.sort(rows))
    data["train"].audio_labels, data["train"].visual_labels = harvest_pair(data["train"])
    configure_threads(1)
    cfg = ave_train_config("valor", **{"model.hidden": 32, "model.heads": 8, "model.ff": 64, "seed": 3,
                                       "optim.epochs": 2, "optim.warmup_epochs": 1, "optim.lr_max": 5e-3,
                                       "optim.lr_min": 5e-5})
    return cfg, fit_ave(data["train"], data["val"], cfg, test=data["test"])


def test_bad_ray_flags_are_one_line_errors(tmp_path, capsys):
    """Before any Ray starts in this module (no worker log lines forwarded to stderr)."""
    from workflows.cli import main

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not valor's\n")
    cases = [(["--ray", "--workers", "0"], "--workers must be >= 1, got 0"),
             (["--workers", "2"], "--workers needs --ray"),
             (["--use-gpu", "--storage", str(tmp_path)], "--gpu, --storage need --ray"),
             (["--ray", "--storage", str(foreign)], f"--storage {foreign}:")]
    for extra, message in cases:
        capsys.readouterr()
        assert main(ARGS + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("valor ave train: error: ") and message in err[0], err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]  # untouched


@pytest.mark.integration  # real Ray Train + MLflow; ~50 s on 2 shared cores
def test_ray_run_matches_in_process_and_is_tracked(ray_local, tmp_path, capsys):
    from workflows import tracking
    from workflows.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    capsys.readouterr()
    assert main(ARGS + ["--json"]) == 0
    plain = _last_json(capsys)
    assert "run_id" not in plain
    assert main(ARGS + ["--json", "--ray", "--workers", "1", "--tracking-uri", uri, "--experiment", "ave-test",
                        "--storage", str(tmp_path / "ray"), "--run-name", "ave-ray-test"]) == 0
    out = _last_json(capsys)
    assert set(out) == set(plain) | {"run_id"}
    for key in ("videos", "epochs", "best_epoch", "val_accuracy", "test_accuracy", "background_accuracy",
                "trainable_params", "loss", "source"):
        assert out[key] == plain[key], key

    cfg, fit = _in_process_fit()
    c = tracking.client(uri, create=False)
    run = c.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "ave-ray-test"
    assert c.get_experiment(run.info.experiment_id).name == "ave-test"
    params = run.data.params
    expected = tracking.flatten(to_dict(cfg))
    assert {k: params[k] for k in expected} == expected  # the resolved TrainConfig, flattened
    assert params["data.source"] == "sim:0" and params["data.videos.train"] == "1000"
    assert params["data.videos.val"] == "402" and params["train.workers"] == "1"
    val = sorted((m.step, m.value) for m in c.get_metric_history(out["run_id"], "val_accuracy"))
    loss = sorted((m.step, m.value) for m in c.get_metric_history(out["run_id"], "loss"))
    assert [s for s, _ in val] == [1, 2] and [s for s, _ in loss] == [1, 2]
    # one worker = fit_ave: the same epochs to float tolerance, the same best epoch and test accuracy
    np.testing.assert_allclose([v for _, v in val], [r["val_accuracy"] for r in fit.history], atol=1e-6)
    np.testing.assert_allclose([v for _, v in loss], [r["loss"] for r in fit.history], rtol=1e-6)
    final = run.data.metrics
    assert fit.history[0]["val_accuracy"] != fit.history[1]["val_accuracy"]  # it learns: equality is not trivial
    assert fit.test_accuracy > out["background_accuracy"] + 30
    assert final["best_epoch"] == fit.best_epoch == out["best_epoch"]
    assert final["final.test_accuracy"] == pytest.approx(fit.test_accuracy, abs=1e-6)
    assert final["final.val_accuracy"] == pytest.approx(fit.val_accuracy, abs=1e-6)
    assert final["final.background_accuracy"] == pytest.approx(out["background_accuracy"], abs=0.005)
    artifacts = {f.path for f in c.list_artifacts(out["run_id"], "checkpoint")}
    assert {"checkpoint/best_model.pt", "checkpoint/config.json", "checkpoint/state.json"} <= artifacts
    assert run.data.tags["valor.checkpoint"].startswith(str(tmp_path / "ray"))

    # without --ray, --tracking-uri logs the in-process run the same way
    assert main(ARGS + ["--json", "--tracking-uri", uri, "--experiment", "ave-test"]) == 0
    local = _last_json(capsys)
    assert set(local) == set(out) and local["run_id"] != out["run_id"]
    local_val = sorted((m.step, m.value) for m in c.get_metric_history(local["run_id"], "val_accuracy"))
    assert local_val == val and c.get_run(local["run_id"]).data.params["train.ray"] == "False"

    # two DDP workers (gloo): 8 videos each per step (global batch 16), the same science, learns as well
    assert main(ARGS + ["--json", "--ray", "--workers", "2", "--tracking-uri", uri, "--experiment", "ave-test",
                        "--storage", str(tmp_path / "ray")]) == 0
    ddp = _last_json(capsys)
    params = c.get_run(ddp["run_id"]).data.params
    assert params["train.workers"] == "2" and params["train.per_worker_batch"] == "8"
    assert min(ddp["val_accuracy"], ddp["test_accuracy"]) > ddp["background_accuracy"] + 30


@pytest.mark.integration  # `valor run` with the ave stage: two Ray Train jobs (han, valor) + MLflow; ~60 s
def test_valor_run_ave_stage(tmp_path, capsys):
    """`ave.enabled: true` in a `valor run` config: stage ave trains each loss as `valor ave train --ray` does, one
    MLflow run each in the pipeline's experiment, checkpoints in <output>/ave/<loss>, accuracies in ave/eval.json; the
    valor run equals the in-process fit_ave of the same settings; a second run does nothing; bad settings are named."""
    import yaml

    from workflows import tracking
    from workflows.cli import main

    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    config = tmp_path / "ave.yaml"
    config.write_text(yaml.safe_dump({
        "name": "ave-run", "paths": {"output": str(out), "videos": str(tmp_path / "videos")},
        "tracking": {"uri": uri, "experiment": "ave-pipeline"}, "ray": {"num_cpus": 2},
        "ave": {"enabled": True, "losses": ["han", "valor"], "epochs": 2, "train_videos": 1000, "hidden": 32,
                "lr": 5e-3, "seed": 3}}))
    capsys.readouterr()
    assert main(["run", "--config", str(config), "--stage", "ave", "--json"]) == 0
    s = _last_json(capsys)
    assert s["ran"] == ["ave"] and s["ave"] == str(out / "ave" / "eval.json")
    scores = json.loads((out / "ave" / "eval.json").read_text())
    assert sorted(scores) == ["han", "valor"] and scores == s["results"]["ave"]
    _, fit = _in_process_fit()
    assert scores["valor"]["test_accuracy"] == round(fit.test_accuracy, 2)
    assert scores["valor"]["best_epoch"] == fit.best_epoch
    c = tracking.client(uri, create=False)
    for loss in ("han", "valor"):
        r = scores[loss]
        assert r["test_accuracy"] > r["background_accuracy"] + 30 and r["videos"]["train"] == 1000
        run = c.get_run(r["run_id"])
        assert run.info.run_name == f"ave-run-ave-{loss}" and run.info.status == "FINISHED"
        assert c.get_experiment(run.info.experiment_id).name == "ave-pipeline"
        assert run.data.params["loss"] == loss and run.data.params["data.source"] == "sim:0"
        assert [m.step for m in c.get_metric_history(r["run_id"], "val_accuracy")] == [1, 2]
        assert r["checkpoint"].startswith(str(out / "ave" / loss))
    assert main(["run", "--config", str(config), "--stage", "ave", "--json"]) == 0  # up to date: nothing runs
    assert _last_json(capsys)["ran"] == []
    for override, message in (("ave.epochs=0", "ave.epochs must be >= 1, got 0"),
                              ("ave.features=/nowhere", "ave.losses valor needs CLAP/CLIP logits")):
        assert main(["run", "--config", str(config), override]) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines() if not RAY_LOG.match(line)]
        assert len(err) == 1 and err[0].startswith("valor run: ") and message in err[0], err
