"""Several features datasets as one training set (`valor train --features A --features B`): workflows.features.check_mix
decides what may be mixed, workflows.trainset concatenates by video id. Hand-written datasets (the schema of `valor
import llp` / `valor extract --features vggish,res152,r2plus1d`, each with its ownership marker); no Ray, no models.
The end-to-end mix of a real import and a real extraction is in tests/test_paper_parse.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from valor_core.presets import get_preset
from workflows.features import RELEASED, fixed_list

HAN_COLUMNS = ("vggish", "res152", "r2plus1d")
MEDIA = {"segments": 10, "segment_seconds": 1.0, "frame_size": 224, "sample_rate": 48000, "dense_frames": True,
         "decode_threads": 1}


def _write(uri, ids, *, seed=0, shapes=None, dtype=np.float32, made=None, split="train"):
    """A features dataset of `ids` with the han inputs; made=None: an import marker, else an extraction marker
    recording `made` (teachers, media, backbone weights). Returns {column: values}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workflows.outputs import claim, record

    rng = np.random.default_rng(seed)
    n = len(ids)
    weak = np.zeros((n, 25), np.uint8)
    weak[np.arange(n), np.arange(n) % 25] = 1
    values = {c: rng.normal(size=(n, *((shapes or {}).get(c, RELEASED[c][1])))).astype(dtype) for c in HAN_COLUMNS}
    meta = {"imported": ["feats/vggish", "feats/res152", "feats/r2plus1d_18"]} if made is None else {"teachers": made}
    claim(str(uri), "features", meta=meta)
    table = pa.table({"video_id": pa.array(list(ids)), "split": pa.array([split] * n),
                      "weak": pa.FixedSizeListArray.from_arrays(pa.array(weak.reshape(-1)), 25),
                      **{c: fixed_list(v, dtype=dtype) for c, v in values.items()},
                      "status": pa.array(["ok"] * n)})
    record(str(uri), ["part-0.parquet"])  # valor's manifest: what a reader of the dataset reads
    pq.write_table(table, str(uri / "part-0.parquet"))
    return {"weak": weak, **values}


def _made(**changes):
    made = {"clip": None, "clap": None, "media": dict(MEDIA),
            "features": {"vggish": "random", "res152": "random", "r2plus1d": "random"}}
    for k, v in changes.items():
        if k == "media":
            made["media"] = {**MEDIA, **v}
        else:
            made["features"] = {**made["features"], k: v}
    return made


@pytest.fixture
def pair(tmp_path):
    a, b = tmp_path / "imported", tmp_path / "extracted"
    va = _write(a, ["llp_a", "llp_b", "llp_c"], seed=1)
    vb = _write(b, ["mine_0", "mine_1"], seed=2, made=_made())
    return a, b, va, vb


def test_two_sources_concatenate_by_video_id(pair):
    from workflows.trainset import load_eval_split, load_training_data

    a, b, va, vb = pair
    cfg = get_preset("han")
    data, cfg2, meta = load_training_data([str(a), str(b)], cfg, splits=("train",))
    t = data["train"]
    assert t.video_ids.tolist() == ["llp_a", "llp_b", "llp_c", "mine_0", "mine_1"]
    for field, col in (("audio", "vggish"), ("frames", "res152"), ("clips", "r2plus1d")):
        np.testing.assert_array_equal(getattr(t, field), np.concatenate([va[col], vb[col]]))
    np.testing.assert_array_equal(t.weak, np.concatenate([va["weak"], vb["weak"]]))
    assert cfg2 == cfg and meta["adapted"] == {} and meta["features"] == [str(a), str(b)]
    assert meta["videos"] == {"train": 5} and set(meta["teachers"]["sources"]) == {str(a), str(b)}
    assert t.audio_labels is None and meta["labels"] == "on the fly"  # the han loss needs no segment labels
    # the same split for scoring a checkpoint trained on the mixture (its config.json records the list)
    ev = load_eval_split([str(a), str(b)], "train", cfg)
    np.testing.assert_array_equal(ev.frames, t.frames)
    # one source in a list is that source
    one, _, meta1 = load_training_data([str(b)], cfg, splits=("train",))
    assert one["train"].video_ids.tolist() == ["mine_0", "mine_1"] and meta1["features"] == str(b)


@pytest.mark.parametrize("case, match", [
    ("duplicate", r"both hold video 'llp_b' \(1 video id\(s\) in common\): a video may come from one source only"),
    ("shape", r"column res152 is .*\[80\] in the first and res152 is .*\[10\] in the second"),
    ("dtype", r"column vggish is .*float.* in the first and vggish is .*halffloat.* in the second"),
    ("media", r"extracted with different media settings"),
    ("weights", r"extracted with different res152 weights \('random' vs '/models/r.pth'\)"),
])
def test_mixing_refusals_are_one_line(tmp_path, pair, case, match):
    from workflows.trainset import DataError, load_training_data

    a, b, _, _ = pair
    c = tmp_path / "other"
    if case == "duplicate":
        _write(c, ["new_0", "llp_b"], made=_made())
        first, second = a, c
    elif case == "shape":  # res152 at one step per segment: another shape
        _write(c, ["new_0"], shapes={"res152": (10, 2048)}, made=_made())
        first, second = b, c
    elif case == "dtype":
        _write(c, ["new_0"], dtype=np.float16, made=_made())
        first, second = b, c
    elif case == "media":
        _write(c, ["new_0"], made=_made(media={"frame_size": 112}))
        first, second = b, c
    else:
        _write(c, ["new_0"], made=_made(res152="/models/r.pth"))
        first, second = b, c
    with pytest.raises(DataError, match=match) as err:
        load_training_data([str(first), str(second)], get_preset("han"), splits=("train",))
    assert "\n" not in str(err.value) and str(first) in str(err.value) and str(second) in str(err.value)


def test_media_details_that_leave_features_alone_do_not_block(tmp_path, pair):
    from workflows.trainset import load_training_data

    _, b, _, _ = pair
    c = tmp_path / "other"
    _write(c, ["new_0"], made=_made(media={"decode_threads": 4}))
    data, _, _ = load_training_data([str(b), str(c)], get_preset("han"), splits=("train",))
    assert len(data["train"]) == 3


def test_source_lists_refused(pair):
    from workflows.trainset import DataError, load_training_data

    a, b, _, _ = pair
    with pytest.raises(DataError, match="LLP-sim cannot be mixed"):
        load_training_data([str(a), "sim:0"], get_preset("han"), splits=("train",))
    with pytest.raises(DataError, match=f"features {a} given twice"):
        load_training_data([str(a), str(a)], get_preset("han"), splits=("train",))
    with pytest.raises(FileNotFoundError, match=f"no features dataset at {b / 'nothing'}"):
        load_training_data([str(a), str(b / "nothing")], get_preset("han"), splits=("train",))


def test_labels_needed_by_the_loss_from_every_source(tmp_path, pair):
    """The valor loss trains on segment labels: imported pseudo-labels in one source and none in the other is an error
    naming the unlabelled source; --labels (a harvest of every video) serves the mixture."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workflows.features import finish_labels, write_labels_part
    from workflows.outputs import claim
    from workflows.trainset import DataError, load_training_data

    a, b, _, _ = pair
    part = a / "part-0.parquet"
    table = pq.read_table(str(part))
    ones = np.ones((3, 10, 25), np.uint8)
    for col in ("audio_pseudo", "visual_pseudo"):
        table = table.append_column(col, fixed_list(ones, dtype=np.uint8))
    pq.write_table(table, str(part))
    cfg = get_preset("valor")  # the same inputs as han, the valor loss
    with pytest.raises(DataError, match=f"features {b}: no segment labels .* valor needs them for every source"):
        load_training_data([str(a), str(b)], cfg, splits=("train",))
    labels = tmp_path / "labels"
    claim(str(labels), "labels")
    ids = ["llp_a", "llp_b", "llp_c", "mine_0", "mine_1"]
    lab = np.zeros((5, 10, 25), np.uint8)
    lab[:, :, 7] = 1
    write_labels_part(str(labels), 0, pa.table({"video_id": pa.array(ids),
                                                "audio_labels": fixed_list(lab, dtype=np.uint8),
                                                "visual_labels": fixed_list(lab, dtype=np.uint8)}))
    finish_labels(str(labels), {"thresholds": "test"})
    data, _, meta = load_training_data([str(a), str(b)], cfg, labels=str(labels), splits=("train",))
    np.testing.assert_array_equal(data["train"].audio_labels, lab)  # the harvest, not the imported pseudo-labels
    assert meta["labels"] == str(labels)


def test_cli_repeats_features_and_refuses_before_ray(pair, tmp_path, capsys, monkeypatch):
    from workflows import train
    from workflows.cli import main

    a, b, _, _ = pair
    c = tmp_path / "dup"
    _write(c, ["llp_a"], made=_made())
    monkeypatch.setattr(train, "start_ray", lambda *a, **k: pytest.fail("Ray started"))
    capsys.readouterr()
    assert main(["train", "--preset", "han", "--features", str(a), "--features", str(c), "--json"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "both hold video 'llp_a'" in err
    seen = {}

    def fake_train(cfg, data, **kw):  # what reaches Ray Train: the mixture
        seen.update(ids=data["train"].video_ids.tolist(), meta=kw["data_meta"])
        raise SystemExit(0)

    import workflows.train_ray as train_ray

    monkeypatch.setattr(train, "start_ray", lambda *a, **k: (lambda: None))
    monkeypatch.setattr(train_ray, "train", fake_train)
    with pytest.raises(SystemExit):
        main(["train", "--preset", "han", "--features", str(a), "--features", str(b), "--storage",
              str(tmp_path / "ray")])
    assert seen["ids"] == ["llp_a", "llp_b", "llp_c", "mine_0", "mine_1"]
    assert json.loads(json.dumps(seen["meta"]))["features"] == [str(a), str(b)]


def test_a_loss_without_its_targets_is_refused_before_training(pair):
    """One extraction of the paper backbones alone (no teacher logits, no harvest, no pseudo-labels): the han loss
    trains on it, the valor loss has no segment labels -- a one-line DataError, not a failure inside Ray Train."""
    from workflows.trainset import DataError, load_training_data

    _, b, _, _ = pair
    data, _, _ = load_training_data(str(b), get_preset("han"), splits=("train",))
    assert len(data["train"]) == 2
    with pytest.raises(DataError, match=r"preset valor's loss valor trains on audio_labels, visual_labels, which the "
                                        r"data do not give \(labels: on the fly;") as err:
        load_training_data(str(b), get_preset("valor"), splits=("train",))
    assert "\n" not in str(err.value)
