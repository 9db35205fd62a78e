"""AVE (VALOR appendix F): the shipped annotations and splits, dense labels with background, the segment-accuracy
metric, the released-feature h5 layout (a generated fixture in exactly that layout), `valor data stats --dataset ave`,
and HAN / VALOR learning on AVE-sim (real annotations, simulated features; ~16 s on 2 shared cores, integration)."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from valor_core.ave import (DEFAULT_AVE, SPLITS, AVEError, check_from_order, load_splits, read_annotations,
                            read_features)
from valor_core.ave_metrics import combine, segment_accuracy

AVE_PAPER_SPLITS = {"train": 3339, "val": 402, "test": 402}  # Tian et al. 2018; VALOR appendix F: 4,143 videos


@pytest.fixture(scope="module")
def splits():
    return load_splits()


def _raw_rows():
    """Annotations.txt parsed independently of valor_core.ave: (category, id, start, end) per line."""
    rows = []
    for line in (DEFAULT_AVE / "Annotations.txt").read_text().splitlines():
        cat, vid, _, s, e = line.split("&")
        rows.append((cat, vid, int(s), int(e)))
    return rows


# --- annotations and splits ------------------------------------------------------------------------------------------


def test_splits_are_the_papers_and_the_from_order_files(splits):
    assert {s: len(splits[s]) for s in SPLITS} == AVE_PAPER_SPLITS
    assert len(splits["full"]) == 4143
    rows = np.concatenate([splits[s].rows for s in SPLITS])
    assert sorted(rows.tolist()) == list(range(4143))  # a partition of the Annotations.txt rows
    assert {s: check_from_order(None, s) for s in SPLITS} == AVE_PAPER_SPLITS
    for s in SPLITS:  # the derived text files name the same videos in the same order
        ids = [line.split("&")[2] for line in (DEFAULT_AVE / f"{s}_from_order.txt").read_text().splitlines()]
        assert ids == splits[s].video_ids.tolist()


def test_classes_are_28_events_in_first_appearance_order_plus_background(splits):
    classes = splits["full"].classes
    raw = _raw_rows()
    assert len(classes) == 29 and classes[-1] == "background"
    assert list(classes[:-1]) == list(dict.fromkeys(r[0] for r in raw))
    assert classes[0] == "Church bell" and classes[27] == "Mandolin"  # SOURCE.md's mil_labels.h5 order


def test_dense_labels_and_video_labels(splits):
    raw = _raw_rows()
    full = splits["full"]
    seg, dense, video = full.segments, full.dense, full.video
    assert dense.shape == (4143, 10, 29) and (dense.sum(axis=-1) == 1).all()
    for i, (cat, _, s, e) in enumerate(raw):
        c = full.classes.index(cat)
        expect = [c if s <= t < e else 28 for t in range(10)]
        assert seg[i].tolist() == expect
        assert video[i].nonzero()[0].tolist() == sorted({*expect})
    # line 27 holds an empty event [0, 0): background throughout
    assert raw[26][2:] == (0, 0) and (seg[26] == 28).all()
    # val rows are the full rows its order names
    np.testing.assert_array_equal(splits["val"].segments, seg[splits["val"].rows])
    assert np.count_nonzero(seg == 28) == sum(10 - (e - s) for _, _, s, e in raw)


def _copy_ave(tmp_path):
    for name in ("Annotations.txt", "train_order.h5", "val_order.h5", "test_order.h5"):
        shutil.copy(DEFAULT_AVE / name, tmp_path / name)
    return tmp_path


def test_bad_annotation_files_name_file_and_line(tmp_path):
    root = _copy_ave(tmp_path)
    lines = (root / "Annotations.txt").read_text().splitlines()
    lines[4] = "Church bell&abc&good&3&12"
    (root / "Annotations.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(AVEError, match=r"Annotations.txt:5: event \[3, 12\) is not a range"):
        read_annotations(root)
    lines[4] = "Church bell&abc&good&3"
    (root / "Annotations.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(AVEError, match=r"Annotations.txt:5: expected 5"):
        load_splits(root)
    shutil.copy(DEFAULT_AVE / "Annotations.txt", root / "Annotations.txt")
    with h5py.File(root / "val_order.h5", "w") as f:
        f["order"] = np.array([1, 2, 3], dtype=np.int64)
    with pytest.raises(AVEError, match="not a partition"):
        load_splits(root)


# --- metric ----------------------------------------------------------------------------------------------------------


def test_segment_accuracy_and_combine():
    gt = np.array([[0] * 10, [28] * 4 + [5] * 6])
    pred = gt.copy()
    pred[0, :3] = 28  # 3 wrong
    pred[1, 9] = 4  # 1 wrong
    assert segment_accuracy(pred, gt) == pytest.approx(80.0)
    with pytest.raises(ValueError, match="must both be"):
        segment_accuracy(pred[:, :5], gt)
    z = np.full((1, 2, 2, 3), -5.0)
    z[0, 0, 0, 1], z[0, 0, 1, 2] = 4.0, 1.0  # segment 0: audio says 1 strongly, visual says 2
    z[0, 1, 0, 0], z[0, 1, 1, 0] = 0.0, 0.0
    z[0, 1, 0, 2], z[0, 1, 1, 2] = 6.0, -4.0  # segment 1: mean prefers 2 (1.0 > 0.0), product prefers 0
    assert combine(z, "mean").tolist() == [[1, 2]] and combine(z, "product").tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="unknown combine rule"):
        combine(z, "max")


def test_naive_predictions_on_real_test_split(splits):
    """Scores computed from the real files: all-background = the background share; the video's event class on every
    segment = the event share (what a perfect classifier with no localisation gets)."""
    test = splits["test"]
    seg = test.segments
    share = np.count_nonzero(seg == 28) / seg.size
    assert segment_accuracy(np.full_like(seg, 28), seg) == pytest.approx(100 * share)
    assert segment_accuracy(np.repeat(test.category[:, None], 10, 1), seg) == pytest.approx(100 * (1 - share))


# --- released feature layout -----------------------------------------------------------------------------------------


def _write_release(root, full, rows, rng):
    """audio_feature.h5 / visual_feature.h5 / labels.h5 with dataset `avadataset` over all 4,143 rows (chunked per
    row: only `rows` are written, the rest stay unallocated)."""
    audio = rng.standard_normal((len(rows), 10, 128)).astype(np.float32)
    visual = rng.standard_normal((len(rows), 10, 7, 7, 512)).astype(np.float32)
    with h5py.File(root / "audio_feature.h5", "w") as f:
        ds = f.create_dataset("avadataset", (4143, 10, 128), dtype="float32", chunks=(1, 10, 128))
        for j, r in enumerate(rows):
            ds[r] = audio[j]
    with h5py.File(root / "visual_feature.h5", "w") as f:
        ds = f.create_dataset("avadataset", (4143, 10, 7, 7, 512), dtype="float32", chunks=(1, 10, 7, 7, 512))
        for j, r in enumerate(rows):
            ds[r] = visual[j]
    with h5py.File(root / "labels.h5", "w") as f:
        f["avadataset"] = full.dense.astype(np.float32)
    return audio, visual


def test_read_features_in_the_released_layout(tmp_path, splits):
    val = splits["val"]
    pick = np.array([5, 0, 401, 17])  # positions in the val split, deliberately unsorted
    audio, visual = _write_release(tmp_path, splits["full"], val.rows[pick], np.random.default_rng(0))
    got = read_features(tmp_path, val, rows=pick)
    np.testing.assert_allclose(got.audio, audio)
    np.testing.assert_allclose(got.visual, visual.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert got.visual.shape == (4, 10, 512)
    assert got.video_ids.tolist() == val.video_ids[pick].tolist()
    np.testing.assert_array_equal(got.segments, val.segments[pick])
    # labels.h5 that disagrees with the annotations is named, with the row
    with h5py.File(tmp_path / "labels.h5", "r+") as f:
        row = int(val.rows[0])
        f["avadataset"][row] = np.roll(f["avadataset"][row], 1, axis=-1)
    with pytest.raises(AVEError, match=rf"labels.h5: row {row} disagrees with Annotations.txt line {row + 1}"):
        read_features(tmp_path, val, rows=pick)
    with h5py.File(tmp_path / "audio_feature.h5", "w") as f:
        f["avadataset"] = np.zeros((10, 10, 128), np.float32)
    with pytest.raises(AVEError, match=r"audio_feature.h5: dataset 'avadataset' has shape \(10, 10, 128\)"):
        read_features(tmp_path, val, rows=pick)


# --- valor data stats --dataset ave ----------------------------------------------------------------------------------


def test_cli_data_stats_ave(capsys, splits):
    from workflows.cli import main

    assert main(["data", "stats", "--dataset", "ave", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    raw = _raw_rows()
    lengths = [e - s for _, _, s, e in raw]
    assert out["videos"] == 4143 and out["splits"] == AVE_PAPER_SPLITS and out["classes"] == 28
    assert sum(out["class_counts"].values()) == 4143
    assert out["class_counts"]["Church bell"] == sum(r[0] == "Church bell" for r in raw)
    assert out["event_segments"] == sum(lengths) and out["background_segments"] == 41430 - sum(lengths)
    assert out["event_length"]["full_length"] == lengths.count(10)
    assert out["event_length"]["mean"] == pytest.approx(np.mean(lengths), abs=1e-4)
    assert out["repeated_video_ids"] == 45  # SOURCE.md
    assert main(["data", "stats", "--dataset", "ave", "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert "AVE val: 402 videos" in text and "train 3339, val 402, test 402" in text


# --- training: HAN and VALOR on AVE-sim ------------------------------------------------------------------------------


def _small(loss):
    from valor_core.ave_fit import ave_train_config

    return ave_train_config(loss, **{"model.hidden": 64, "model.heads": 4, "model.ff": 128, "optim.epochs": 6,
                                     "optim.warmup_epochs": 1, "optim.lr_max": 2e-3, "optim.lr_min": 2e-5})


@pytest.fixture(scope="module")
def sim(splits):
    from valor_core.ave_fit import harvest_pair
    from valor_core.ave_sim import simulate_ave

    rows = np.sort(np.random.default_rng(0).choice(len(splits["train"]), 800, replace=False))
    train = simulate_ave(splits["train"], seed=0).take(rows)
    train.audio_labels, train.visual_labels = harvest_pair(train)
    return train, simulate_ave(splits["val"], seed=0)


def test_harvest_appends_background(sim):
    from valor_core.ave_fit import harvest_ave

    train, _ = sim
    logits = np.array([[[1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]]])  # (1, T=3, C=2)
    out = harvest_ave(logits, np.array([[1, 0, 1]]), 0.0)
    assert out.tolist() == [[[1, 0, 0], [0, 0, 1], [1, 0, 0]]]  # class 1 not in the video label: filtered (Eq. 12)
    assert (train.audio_labels.sum(-1) >= 1).all() and train.audio_labels.shape[-1] == 29
    # harvested targets never name a class outside the video label
    assert not (train.visual_labels[:, :, :28] & (1 - train.video[:, None, :28])).any()


@pytest.mark.integration  # ~16 s of CPU training
def test_valor_learns_and_beats_han_on_ave_sim(sim):
    import torch

    from valor_core.ave_fit import build_ave_model, fit_ave
    from valor_core.fit import configure_threads

    configure_threads(1)
    train, val = sim
    model = build_ave_model(_small("valor"))
    assert isinstance(model.fc_prob, torch.nn.Sequential) and model.fc_prob[-1].out_features == 29  # Eq. 10
    han = fit_ave(train, val, _small("han"))
    valor = fit_ave(train, val, _small("valor"))
    background = segment_accuracy(np.full_like(val.segments, 28), val.segments)
    print(f"AVE-sim val segment accuracy: HAN {han.val_accuracy:.2f}, VALOR {valor.val_accuracy:.2f}, "
          f"all-background {background:.2f}; {han.seconds:.0f} s + {valor.seconds:.0f} s")
    assert han.val_accuracy > background + 30 and valor.val_accuracy > han.val_accuracy + 2
    assert valor.val_accuracy == max(r["val_accuracy"] for r in valor.history)
    again = fit_ave(train, val, _small("valor"))
    assert [r["loss"] for r in again.history] == [r["loss"] for r in valor.history]


def test_ave_fit_takes_the_graphed_step(sim, monkeypatch):
    """fit_ave shares valor_core.fit's step: compile=cuda-graph replays it from static buffers (off CUDA a replay is a
    call) and trains as the eager loop with the same fused optimiser (float rounding apart: the capturable one)."""
    from valor_core import ave_fit
    from valor_core.config import replace
    from valor_core.fit import configure_threads

    configure_threads(1)
    train, val = sim
    cfg = replace(_small("valor"), **{"optim.epochs": 2})
    eager = ave_fit.fit_ave(train, val, replace(cfg, fused="always"))
    made = []
    real = ave_fit.graphed_step
    monkeypatch.setattr(ave_fit, "graphed_step", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    graphed = ave_fit.fit_ave(train, val, replace(cfg, compile="cuda-graph"))
    (step,) = made
    assert step.seen == 2 * (len(train.audio) // 16) and step.replays == step.seen - step.warmup
    # the capturable fused Adam rounds differently from the plain fused one: epoch 2's loss differs by 1.4e-4
    # (relative, the same on every run) on this project's 2-core Xeon machines, by < 1e-5 on the earlier ones
    assert [r["loss"] for r in graphed.history] == pytest.approx([r["loss"] for r in eager.history], rel=5e-4)


def test_cli_ave_train(capsys, tmp_path):
    from workflows.cli import main

    args = ["ave", "train", "--loss", "han", "--epochs", "2", "--train-videos", "200", "--hidden", "32", "--lr", "2e-3"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["videos"] == {"train": 200, "val": 402, "test": 402} and out["source"] == "sim:0"
    assert 1 <= out["best_epoch"] <= 2 and 0.0 <= out["test_accuracy"] <= 100.0
    test = load_splits()["test"].segments
    assert out["background_accuracy"] == round(100 * np.count_nonzero(test == 28) / test.size, 2)
    assert main(["ave", "train", "--loss", "valor", "--features", str(tmp_path)]) == 2
    assert "released AVE features" in capsys.readouterr().err
    assert main(["ave", "train", "--loss", "han", "--features", str(tmp_path)]) == 1
    assert "audio_feature.h5: cannot open as HDF5" in capsys.readouterr().err
