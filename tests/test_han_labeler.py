"""VALOR Table 2, "HAN as dense labeler": `valor harvest --labeler han:SPEC` keeps a HAN's segment predictions (official
rule AND the weak label) as the segment labels. The rule on a hand-made case; the command on LLP-sim with a random-init
HAN checkpoint (no Ray). The pipeline path (labeler stage -> harvest -> valor) is tests/test_methods_pipeline.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import LLP_DIR
from valor_core.config import to_dict
from valor_core.presets import get_preset
from workflows.harvest import labeler_labels, parse_labeler


def test_labeler_rule_on_a_hand_made_case():
    seg = np.zeros((1, 10, 2, 25), np.float32)
    glob = np.zeros((1, 25), np.float32)
    weak = np.zeros((1, 25), np.uint8)
    seg[0, :3, 0, 0], glob[0, 0], weak[0, 0] = 0.7, 0.8, 1  # class 0: audio on segments 0-2
    seg[0, :, 0, 1], glob[0, 1], weak[0, 1] = 0.9, 0.4, 1  # class 1: the video-level prob vetoes it
    seg[0, 5, 1, 2], glob[0, 2] = 0.6, 0.9  # class 2: predicted but not in the weak labels
    seg[0, 9, 1, 3], glob[0, 3], weak[0, 3] = 0.5, 0.5, 1  # class 3: exactly at the threshold counts (>=)
    a, v = labeler_labels(seg, glob, weak)
    assert a.dtype == v.dtype == np.uint8 and a.shape == v.shape == (1, 10, 25)
    assert sorted(zip(*np.nonzero(a[0]))) == [(0, 0), (1, 0), (2, 0)]
    assert sorted(zip(*np.nonzero(v[0]))) == [(9, 3)]
    a, v = labeler_labels(seg, glob, weak, filter_by_weak=False)  # the no-filter ablation keeps class 2
    assert sorted(zip(*np.nonzero(v[0]))) == [(5, 2), (9, 3)] and a[0].sum() == 3
    a, v = labeler_labels(seg, glob, weak, threshold=0.65)
    assert a[0].sum() == 3 and v[0].sum() == 0


def test_labeler_spec_is_checked():
    assert parse_labeler("han:runs/x") == ("han", "runs/x")
    assert parse_labeler("han:s3://b/p:1") == ("han", "s3://b/p:1")
    for bad in ("clip:x", "han", "han:", "x"):
        with pytest.raises(ValueError, match="expected han:CHECKPOINT"):
            parse_labeler(bad)


def test_labeler_source_is_the_one_recorded_dataset():
    from workflows.checkpoints import CheckpointError
    from workflows.harvest import recorded_source

    assert recorded_source("han:r", "s3://b/f") == "s3://b/f"
    assert recorded_source("han:r", ["s3://b/f"]) == "s3://b/f"
    for recorded, message in ((None, "records no features source"), ([], "records no features source"),
                              (["a", "b"], "trained on 2 features datasets (a, b)")):
        with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
            recorded_source("han:r", recorded)


def test_recorded_precision_is_the_latest_run_that_recorded_one(tmp_path):
    from workflows.features import RUNS, recorded_precision

    assert recorded_precision(str(tmp_path / "none")) is None
    runs = tmp_path / "f" / RUNS
    runs.mkdir(parents=True)
    (runs / "20260101T000000-a.json").write_text(json.dumps({"precision": "bf16"}))
    (runs / "20260102T000000-b.json").write_text(json.dumps({"precision": "fp32"}))
    (runs / "20260103T000000-c.json").write_text(json.dumps({"summary": {}}))  # a run that extracted nothing
    (runs / "20260104T000000-d.json").write_text("{broken")
    assert recorded_precision(str(tmp_path / "f")) == "fp32"


FEATURES = "sim:0:frame_dim=32,clip_dim=16"


def test_harvest_labeler_on_llp_sim(tmp_path, capsys):
    import torch

    from valor_core.fit import build_model, predict_probs
    from valor_core.config import replace
    from workflows.checkpoints import save_checkpoint_dir
    from workflows.cli import main
    from workflows.features import read_labels
    from workflows.trainset import load_eval_split

    cfg = replace(get_preset("han"), **{"model.hidden": 32, "model.ff": 64, "model.frame_dim": 32,
                                        "model.clip_dim": 16})
    model = build_model(cfg)
    with torch.no_grad():  # a labeler that says something: the head's bias near 0 so probabilities straddle 0.5
        for p in model.parameters():
            p.mul_(3.0)
    ckpt = tmp_path / "han"
    state = model.state_dict()
    save_checkpoint_dir(str(ckpt), model_state=state, best_state=state, optimizer_state=None, state={"epoch": 1},
                        config={"train": to_dict(cfg), "data": {"features": FEATURES}})
    out = tmp_path / "labels"
    capsys.readouterr()
    rc = main(["harvest", "--labeler", f"han:{ckpt}", "--out", str(out), "--annotations", str(LLP_DIR),
               "--split", "val", "--json"])  # SOURCE: the one the checkpoint records
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    meta, table = read_labels(str(out))
    arrays = load_eval_split(FEATURES, "val", cfg, annotations=str(LLP_DIR))
    seg, glob = predict_probs(model, arrays)
    want_a, want_v = labeler_labels(seg, glob, arrays.weak)
    order = {v: i for i, v in enumerate(table.column("video_id").to_pylist())}
    rows = np.array([order[str(v)] for v in arrays.video_ids])
    got_a = np.asarray(table.column("audio_labels").to_pylist(), np.uint8)[rows]
    got_v = np.asarray(table.column("visual_labels").to_pylist(), np.uint8)[rows]
    np.testing.assert_array_equal(got_a, want_a)
    np.testing.assert_array_equal(got_v, want_v)
    assert 0 < int(got_a.sum()) < int(arrays.weak.sum()) * 10  # some, and never more than the weak labels allow
    assert summary["videos"] == table.num_rows == len(arrays.video_ids) and summary["splits"] == {"val": table.num_rows}
    assert summary["audio_labels"] == int(got_a.sum()) and summary["visual_labels"] == int(got_v.sum())
    assert meta["labeler"] == "han" and meta["checkpoint"] == str(ckpt) and meta["threshold"] == 0.5
    assert meta["source"] == FEATURES and meta["filter_by_weak"] and meta["code_version"]
    assert json.loads(table.schema.metadata[b"valor.harvest"])["labeler"] == "han"

    # bad input: one line naming it, nothing written
    for argv, message in ((["--labeler", "clip:x"], "expected han:CHECKPOINT"),
                          (["--labeler", f"han:{ckpt}", "--unified"], "--labeler takes no thresholds"),
                          (["--labeler", f"han:{ckpt}", "--labeler-threshold", "1.5"], "expected a probability"),
                          (["--labeler", f"han:{tmp_path / 'nope'}"], "nope")):
        assert main(["harvest", "--out", str(tmp_path / "bad"), *argv]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
