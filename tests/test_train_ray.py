"""End-to-end: `valor train` on real Ray Train V2 (2 CPU workers, gloo DDP) + real MLflow (sqlite), LLP-sim data.

Kept small for 2 shared cores: 1,024 sampled LLP-sim train videos with smaller simulated frame/clip features, a narrow
HAN (the `valor` preset with model.hidden=64, ff=128) and a 1-epoch warm-up at lr 1e-3 so the loss moves within two
epochs. Everything else -- the preset's loss, AdamW, batch 64 (32 per worker), val/test on the real LLP GT -- is as in
a real run. One Ray instance for the module.

The worker-kill test kills a worker process for real: VALOR_TEST_KILL_WORKER (test-only hook, see
workflows/train_ray.py) makes rank 1 SIGKILL itself after its first batch of epoch 2; FailureConfig restarts the worker
group, which resumes from the epoch-1 checkpoint and completes epoch 3.
"""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import LLP_DIR

pytestmark = pytest.mark.integration  # real Ray / S3 / MLflow or minutes of CPU training


FEATURES = "sim:0:frame_dim=128,clip_dim=64"
TRAIN_VIDEOS = 1024
OVERRIDES = {"model.hidden": 64, "model.heads": 4, "model.ff": 128, "optim.warmup_epochs": 1, "optim.lr_max": 1e-3,
             "optim.lr_min": 1e-4}



@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_ray")
    return {"dir": d, "uri": f"sqlite:///{d}/mlflow.db", "storage": str(d / "ray")}


def _train_cli(store, epochs, run_name, capsys, **extra):
    """`valor train ... --json` in-process (the module's Ray instance); returns the last stdout line as JSON."""
    from workflows.cli import main

    argv = ["train", "--preset", "valor", "--features", FEATURES, "--workers", "2", "--epochs", str(epochs),
            "--tracking-uri", store["uri"], "--storage", store["storage"], "--annotations", str(LLP_DIR),
            "--max-train-videos", str(TRAIN_VIDEOS), "--run-name", run_name, "--json"]
    for key, value in {**OVERRIDES, **extra}.items():
        argv += ["--set", f"{key}={value}"]
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_ddp_training_tracks_everything(ray_local, store, tmp_path, monkeypatch, capsys):
    from valor_core.llp import load_weak_csv
    from workflows import tracking

    shards = tmp_path / "shards"
    monkeypatch.setenv("VALOR_TRAIN_RECORD_SHARDS", str(shards))
    out = _train_cli(store, 2, "valor-2ep", capsys)
    assert out["epochs"] == 2 and out["tracking_uri"] == store["uri"] and out["run_id"]
    for split, videos in (("val", 649), ("test", 1200)):
        scores = out[split]
        assert scores["split"] == split and scores["videos"] == videos
        assert all(set(scores[lvl]) == {"audio", "visual", "av", "type", "event"} for lvl in ("segment", "event"))

    # the two workers saw disjoint, equal shards covering the (even part of the) train subset, reshuffled per epoch
    train_ids = set(load_weak_csv(LLP_DIR / "AVVP_train.csv")[0].tolist())
    per_epoch = []
    for epoch in (1, 2):
        r0 = json.loads((shards / f"epoch{epoch}_rank0.json").read_text())["ids"]
        r1 = json.loads((shards / f"epoch{epoch}_rank1.json").read_text())["ids"]
        assert len(r0) == len(r1) == TRAIN_VIDEOS // 2
        assert not set(r0) & set(r1)
        assert set(r0) | set(r1) <= train_ids and len(set(r0) | set(r1)) == TRAIN_VIDEOS
        per_epoch.append(r0)
    assert per_epoch[0] != per_epoch[1]

    c = tracking.client(store["uri"])
    run = c.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["preset"] == "valor" and p["model.hidden"] == "64" and p["optim.lr_max"] == "0.001"
    assert p["optim.epochs"] == "2" and p["optim.batch_size"] == "64" and p["loss"] == "valor"
    assert p["model.frame_dim"] == "128" and p["model.frame_steps"] == "1"  # input sizes follow the data
    assert p["data.features"] == FEATURES and p["train.workers"] == "2" and p["train.per_worker_batch"] == "32"
    assert json.loads(p["data.thresholds.visual"])[0] == 20.0  # Table 6 theta^CLIP of Speech
    assert not any("secret" in k or "access_key" in k for k in p)
    # per-epoch metrics from rank 0: train loss decreases
    loss = _history(c, out["run_id"], "train_loss")
    assert [s for s, _ in loss] == [1, 2]
    assert loss[1][1] < loss[0][1], loss
    assert [s for s, _ in _history(c, out["run_id"], "val.segment.type")] == [1, 2]
    # final metrics: all ten numbers for val and test, equal to what was printed
    m = run.data.metrics
    for split in ("val", "test"):
        for lvl in ("segment", "event"):
            for k in ("audio", "visual", "av", "type", "event"):
                assert m[f"final.{split}.{lvl}.{k}"] == pytest.approx(out[split][lvl][k], abs=0.006)
    arts = {a.path for a in c.list_artifacts(out["run_id"], "figures")}
    assert {"figures/classwise_f_val.png", "figures/classwise_f_test.png", "figures/timelines_val.png",
            "figures/timelines_test.png"} <= arts
    assert {a.path for a in c.list_artifacts(out["run_id"], "checkpoint")} >= {"checkpoint/best_model.pt",
                                                                                "checkpoint/config.json"}
    png = c.download_artifacts(out["run_id"], "figures/classwise_f_test.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # Ray Train checkpoints, one per epoch, in the run's storage path
    assert out["checkpoint"].endswith("epoch_002") and os.path.exists(os.path.join(out["checkpoint"], "best_model.pt"))


def test_worker_killed_in_epoch_2_resumes_from_epoch_1(ray_local, store, tmp_path, monkeypatch, capsys):
    from workflows import tracking

    marker = tmp_path / "killed"
    monkeypatch.setenv("VALOR_TEST_KILL_WORKER", f"epoch=2,rank=1,marker={marker}")
    out = _train_cli(store, 3, "valor-kill", capsys)
    assert marker.exists(), "the kill hook never fired"
    assert out["epochs"] == 3
    c = tracking.client(store["uri"])
    resumed = _history(c, out["run_id"], "resumed_from_epoch")
    assert resumed == [(1, 1.0)], resumed  # restarted once, from the epoch-1 checkpoint
    assert [s for s, _ in _history(c, out["run_id"], "train_loss")] == [1, 2, 3]
    assert c.get_run(out["run_id"]).data.metrics["epochs_completed"] == 3
    assert out["checkpoint"].endswith("epoch_003")


def test_compare_and_evaluate_checkpoint(ray_local, store, capsys):
    from workflows.cli import main

    assert main(["compare", "--tracking-uri", store["uri"], "--json"]) == 0
    runs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["run_name"] for r in runs] == ["valor-kill", "valor-2ep"]
    for r in runs:
        assert r["preset"] == "valor" and r["features"] == FEATURES and r["labels"] == "on the fly"
        assert r["val"]["segment"]["type"] is not None and r["test"]["event"]["event"] is not None
        assert r["params"]["model.hidden"] == "64"
    assert runs[0]["epochs"] == 3 and runs[1]["epochs"] == 2

    # valor evaluate --checkpoint RUN: the official metric on the val split, same JSON as the foundation
    run_id = runs[1]["run_id"]
    assert main(["evaluate", "--annotations", str(LLP_DIR), "--split", "val", "--checkpoint", run_id,
                 "--tracking-uri", store["uri"], "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["split"] == "val" and result["videos"] == 649 and set(result["fidelity"]) == {"audio", "visual", "av"}
    assert result["segment"] == runs[1]["val"]["segment"] and result["event"] == runs[1]["val"]["event"]


def test_cuda_graph_step_with_two_workers(ray_local, tmp_path, capsys):
    """compile=cuda-graph on 2 workers: the graphed step (no DDP wrapper; valor_core.graph_step.average_gradients,
    bit-identical to DDP in tests/test_fit_fast.py) replays every full batch after the warm-up, and trains as DDP's
    eager step with the same fused optimiser does (float rounding apart: the capturable optimiser)."""
    runs = {}
    for mode, extra in (("graph", {"compile": "cuda-graph"}), ("eager", {"fused": "always"})):
        store = {"uri": f"sqlite:///{tmp_path}/mlflow.db", "storage": str(tmp_path / "ray")}
        out = _train_cli(store, 1, f"valor-{mode}", capsys, **extra)
        with open(os.path.join(out["checkpoint"], "state.json")) as f:
            runs[mode] = json.load(f)["history"]
    batches = TRAIN_VIDEOS // 2 // 32  # each worker's full batches of 32 in the epoch
    assert runs["graph"][0]["graph_replays"] == batches - 3 and runs["eager"][0]["graph_replays"] == 0
    assert runs["graph"][0]["loss"] == pytest.approx(runs["eager"][0]["loss"], rel=1e-5)


def _nested(x):
    import pyarrow as pa

    inner = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[-1])
    return pa.FixedSizeListArray.from_arrays(inner, x.shape[1])


def test_extraction_dataset_with_harvest_beside_it(tmp_path):
    """workflows.trainset on the extraction schema (features/ + harvest labels/ beside it), no Ray: VALOR++-style inputs
    (clap_emb, clip_emb), harvested labels joined by id, partial rows dropped, real val/test GT attached."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from valor_core.classes import CLAP_THRESHOLDS, CLIP_THRESHOLDS
    from valor_core.labels import harvest_labels
    from valor_core.llp import load_split
    from valor_core.config import replace
    from valor_core.presets import get_preset
    from workflows.trainset import load_training_data
    from workflows.harvest import harvest

    splits = {s: load_split(LLP_DIR, s) for s in ("train", "val", "test")}
    picks = {"train": 40, "val": 8, "test": 8}
    ids = np.concatenate([splits[s].video_ids[:k] for s, k in picks.items()])
    split_names = sum(([s] * k for s, k in picks.items()), [])
    weak = np.concatenate([splits[s].weak[:k] for s, k in picks.items()])
    n = len(ids)
    rng = np.random.default_rng(0)
    clip_emb = rng.normal(size=(n, 10, 32)).astype(np.float32)
    clap_emb = rng.normal(size=(n, 10, 16)).astype(np.float32)
    clip_logits = rng.normal(16, 3, (n, 10, 25)).astype(np.float32)
    clap_logits = rng.normal(1, 2, (n, 10, 25)).astype(np.float32)
    status = ["ok"] * n
    status[3] = "partial"  # no audio track: CLAP columns NaN
    clap_emb[3] = np.nan
    clap_logits[3] = np.nan
    table = pa.table({
        "video_id": pa.array(ids.tolist()), "split": pa.array(split_names),
        "weak": pa.FixedSizeListArray.from_arrays(pa.array(weak.reshape(-1)), 25),
        "clip_ok": pa.array(np.ones(n, bool)), "clap_ok": pa.array([s == "ok" for s in status]),
        "clip_logits": _nested(clip_logits), "clap_logits": _nested(clap_logits),
        "clip_emb": _nested(clip_emb), "clap_emb": _nested(clap_emb), "status": pa.array(status),
        "clip_teacher": pa.array(["tiny-clip"] * n), "clap_teacher": pa.array(["tiny-clap"] * n)})
    feats = tmp_path / "out" / "features"
    feats.mkdir(parents=True)
    pq.write_table(table.slice(0, 30), str(feats / "part-a-0.parquet"))
    pq.write_table(table.slice(30), str(feats / "part-a-1.parquet"))
    harvest(str(feats), annotations=str(LLP_DIR))

    emb_cfg = replace(get_preset("valor++"), features="clip_clap")  # valor++ on extraction embeddings
    data, cfg, meta = load_training_data(str(feats), emb_cfg, annotations=str(LLP_DIR))
    assert meta["labels"].endswith("labels") and meta["teachers"]["clip"] == "tiny-clip"
    assert (cfg.model.audio_dim, cfg.model.frame_dim, cfg.model.frame_steps, cfg.model.clip_dim) == (16, 32, 1, 0)
    assert cfg.model.audio_steps == 0
    tr = data["train"]
    assert len(tr) == 39 and ids[3] not in set(tr.video_ids.tolist())  # the partial row is not trained on
    rows = np.array([np.flatnonzero(ids == v)[0] for v in tr.video_ids])
    np.testing.assert_array_equal(tr.frames, clip_emb[rows])
    np.testing.assert_array_equal(tr.audio, clap_emb[rows])
    np.testing.assert_array_equal(tr.audio_labels, harvest_labels(clap_logits[rows], weak[rows], CLAP_THRESHOLDS))
    np.testing.assert_array_equal(tr.visual_labels, harvest_labels(clip_logits[rows], weak[rows], CLIP_THRESHOLDS))
    for s in ("val", "test"):
        assert len(data[s]) == 8
        np.testing.assert_array_equal(data[s].audio_gt, splits[s].audio_gt[:8])
        np.testing.assert_array_equal(data[s].visual_gt, splits[s].visual_gt[:8])
