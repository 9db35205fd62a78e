"""The one Ray Train harness (workflows/ray_train_harness.py) and the one owner of checkpoint files
(workflows/checkpoints.py).

Quick tests (no Ray): a training checkpoint written by save_checkpoint_dir (rng.pt included) reads back through
read_resume into a fresh model and optimiser; importing workflows.checkpoints loads no training data code (prediction
lives in workflows/predict.py).

The integration test: `valor ave train --ray` (1 CPU worker, AVE-sim, sqlite MLflow) gains the driver-kill resume
`valor train` has (tests/test_safety_resume.py, whose helpers it reuses): its whole session is SIGKILLed once the first
checkpoint is registered; the same command again resumes in the same Ray Train directory and MLflow run, trains only the
epochs after that checkpoint, logs each epoch once, and ends with the numbers of the same command run undisturbed
(rank 0 continues the checkpoint's random streams, so with one worker they are equal to float tolerance).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.loopback import loopback_env
from tests.test_safety_resume import _checkpoints, _history, _kill_after_first_checkpoint, _store

EPOCHS = 3
TOLERANCE = 1e-6


def test_training_checkpoint_round_trip(tmp_path):
    """model.pt, optimizer.pt, best_model.pt, state.json and rng.pt go back where they came from."""
    import torch

    from workflows.checkpoints import read_resume, save_checkpoint_dir

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    best = {k: v.detach().clone() * 2 for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(7)
    torch.randperm(10, generator=generator)
    torch_rng = torch.get_rng_state()
    state = {"epoch": 4, "best_value": 81.5, "best_epoch": 3, "history": [{"epoch": 1, "loss": 0.5}]}
    save_checkpoint_dir(str(tmp_path), model_state=model.state_dict(), best_state=best,
                        optimizer_state=optimizer.state_dict(), state=state, config={"train": {}},
                        rng={"generator": generator.get_state(), "torch": torch_rng})

    fresh = torch.nn.Linear(4, 3)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    resumed = read_resume(str(tmp_path), fresh, fresh_opt, torch.device("cpu"))
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
        assert torch.equal(resumed.best_state[k], best[k]), k
    assert fresh_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"] == 1
    assert resumed.state == state
    again = torch.Generator()
    again.set_state(resumed.rng["generator"])
    assert torch.equal(torch.randperm(10, generator=again), torch.randperm(10, generator=generator))
    assert torch.equal(resumed.rng["torch"], torch_rng)


def test_checkpoints_load_no_training_data_code():
    """workflows.checkpoints only reads and writes checkpoints: prediction (and with it workflows.trainset) is
    workflows.predict's."""
    probe = ("import sys, workflows.checkpoints as c; "
             "print('workflows.trainset' in sys.modules, hasattr(c, 'predict_split'))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]
    from workflows import predict

    assert callable(predict.predict_split) and callable(predict.checkpoint_split)


def test_ave_fresh_needs_ray(capsys):
    """`valor ave train --fresh` restarts a --ray run: without --ray it is a one-line error (exit 2), nothing trained."""
    from workflows.cli import main

    capsys.readouterr()
    assert main(["ave", "train", "--epochs", "1", "--fresh"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["valor ave train: error: --fresh needs --ray"]


def _ave_cmd(store: dict) -> list[str]:
    return [sys.executable, "-m", "workflows.cli", "ave", "train", "--ray", "--loss", "valor", "--epochs", str(EPOCHS),
            "--train-videos", "1500", "--hidden", "32", "--lr", "5e-3", "--seed", "3", "--threads", "1",
            "--tracking-uri", store["uri"], "--storage", store["storage"], "--run-name", "resume", "--json"]


def _ave_train(store: dict, env: dict) -> dict:
    done = subprocess.run(_ave_cmd(store), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.integration  # real Ray Train, MLflow and CPU training; ~2 min on 2 shared cores
def test_killed_ave_train_resumes_in_the_same_run(tmp_path):
    from workflows import tracking

    store = _store(tmp_path / "store")
    env = loopback_env()
    _kill_after_first_checkpoint(store, env, _ave_cmd(store))
    trial, last = _checkpoints(store["storage"])
    assert 1 <= last < EPOCHS, f"killed after epoch {last} of {EPOCHS}: nothing left to resume"
    c = tracking.client(store["uri"])
    [killed] = c.search_runs([c.get_experiment_by_name("valor").experiment_id])
    killed_id = killed.info.run_id

    shards = tmp_path / "shards"
    out = _ave_train(store, {**env, "VALOR_TRAIN_RECORD_SHARDS": str(shards)})
    assert sorted(int(p.name.split("_")[0][5:]) for p in shards.glob("epoch*_rank0.json")) == \
        list(range(last + 1, EPOCHS + 1))  # epochs 1..last were not trained again
    assert out["run_id"] == killed_id
    run = c.get_run(killed_id)
    assert run.info.status == "FINISHED"
    assert Path(run.data.tags["valor.checkpoint"]) == trial / f"epoch_{EPOCHS:03d}"
    assert _history(c, killed_id, "resumed_from_epoch") == [(last, float(last))]
    loss, val = _history(c, killed_id, "loss"), _history(c, killed_id, "val_accuracy")
    assert [s for s, _ in loss] == [s for s, _ in val] == list(range(1, EPOCHS + 1))  # each epoch once
    assert json.loads((trial / "valor_completed.json").read_text())["outcome"]["run_id"] == killed_id

    # the same command once more: that run completed, so a new one trains from epoch 1 in `<name>-2`, undisturbed
    ref = _ave_train(store, env)
    assert ref["run_id"] != killed_id
    ref_run = c.get_run(ref["run_id"])
    assert Path(ref_run.data.tags["valor.checkpoint"]).parent.name == f"{trial.name}-2"
    assert _history(c, ref["run_id"], "resumed_from_epoch") == []
    assert [v for _, v in loss] == pytest.approx([v for _, v in _history(c, ref["run_id"], "loss")], abs=TOLERANCE)
    assert [v for _, v in val] == pytest.approx([v for _, v in _history(c, ref["run_id"], "val_accuracy")],
                                                abs=TOLERANCE)
    assert len({round(v, 6) for _, v in val}) > 1  # it learns: equal histories are not trivially equal
    for key in ("best_epoch", "val_accuracy", "test_accuracy", "background_accuracy"):
        assert out[key] == ref[key], key
    assert run.data.metrics["final.test_accuracy"] == pytest.approx(ref_run.data.metrics["final.test_accuracy"],
                                                                    abs=TOLERANCE)
