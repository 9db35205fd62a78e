"""LLP annotation loading: real files (shipped in valor_core/data/llp), the official quirks, and errors naming file and line."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from valor_core.classes import CLASSES
from valor_core.llp import AnnotationError, load_dense_gt, load_split, load_weak_csv, read_eval_csv

from valor_core.llp import DEFAULT_ANNOTATIONS  # noqa: E402

LLP = Path(DEFAULT_ANNOTATIONS)  # the LLP files shipped with valor


def official_gt(eval_csv: Path, video_ids) -> np.ndarray:
    """Reference: per video, select rows whose filename equals the id and set GT[class, onset:offset] = 1 (class-major,
    as main_avvp.eval does), returned segment-major for comparison."""
    lines = eval_csv.read_text().splitlines()[1:]
    rows = [ln.split("\t") for ln in lines if ln]
    out = np.zeros((len(video_ids), 10, 25), np.uint8)
    for i, vid in enumerate(video_ids):
        g = np.zeros((25, 10))
        for fname, on, off, ev in rows:
            if fname == vid:
                g[CLASSES.index(ev), int(on):int(off)] = 1
        out[i] = g.T
    return out


# --- the real files -----------------------------------------------------------------------------------------------


def test_split_sizes_and_label_counts():
    sizes = {"train": 10000, "val": 649, "test": 1200, "full": 11849}
    for split, n in sizes.items():
        s = load_split(LLP, split)
        assert len(s) == n and s.video_ids.shape == (n,) and s.weak.shape == (n, 25) and s.weak.dtype == np.uint8
        assert (s.audio_gt is None) == (split in ("train", "full"))
    train, val = load_split(LLP, "train"), load_split(LLP, "val")
    assert np.bincount(train.weak.sum(1).astype(int))[1:].tolist() == [4032, 5879, 89]
    assert np.bincount(val.weak.sum(1).astype(int))[1:].tolist() == [212, 367, 56, 14]
    full = load_split(LLP, "full")
    assert set(full.video_ids) == set(train.video_ids) | set(val.video_ids) | set(load_split(LLP, "test").video_ids)


@pytest.mark.parametrize("split", ["val", "test"])
def test_dense_gt_matches_official_construction(split):
    s = load_split(LLP, split)
    assert s.audio_gt.shape == (len(s), 10, 25) and s.audio_gt.dtype == np.uint8
    np.testing.assert_array_equal(s.audio_gt, official_gt(LLP / "AVVP_eval_audio.csv", s.video_ids))
    np.testing.assert_array_equal(s.visual_gt, official_gt(LLP / "AVVP_eval_visual.csv", s.video_ids))
    np.testing.assert_array_equal(s.av_gt, s.audio_gt * s.visual_gt)


def test_gt_quirks_kept():
    val, test = load_split(LLP, "val"), load_split(LLP, "test")
    rows = read_eval_csv(LLP / "AVVP_eval_audio.csv")
    ids = set(val.video_ids) | set(test.video_ids)
    # rows that match no video are ignored (14 rows, e.g. the truncated id VMTJRpjbE_150_160)
    unmatched = [r for r in rows if r.filename not in ids]
    assert len(unmatched) == 14 and any(r.filename == "VMTJRpjbE_150_160" for r in unmatched)
    # onset >= offset adds nothing: 8DF2PxdT5tE_390_400 9 0 Cheering is a val video
    i = val.index()["8DF2PxdT5tE_390_400"]
    assert any(r.filename == "8DF2PxdT5tE_390_400" and (r.onset, r.offset) == (9, 0) for r in rows)
    assert val.audio_gt[i, :, CLASSES.index("Cheering")].sum() == 0
    # videos without rows: all-zero GT (4 val and 5 test without audio rows, 1 test with only an empty row)
    assert (val.audio_gt.reshape(len(val), -1).sum(1) == 0).sum() == 4
    assert (test.audio_gt.reshape(len(test), -1).sum(1) == 0).sum() == 6
    assert (val.visual_gt.reshape(len(val), -1).sum(1) == 0).sum() == 70
    assert (test.visual_gt.reshape(len(test), -1).sum(1) == 0).sum() == 121
    # GT classes outside the weak label are kept
    outside = (val.audio_gt.max(1) > val.weak).sum() + (val.visual_gt.max(1) > val.weak).sum()
    assert outside > 0


def test_2020_audio_file_differs_in_test_only():
    new_v, old_v = load_split(LLP, "val"), load_split(LLP, "val", audio_file="orig_2020/AVVP_eval_audio.csv")
    np.testing.assert_array_equal(new_v.audio_gt, old_v.audio_gt)
    new_t, old_t = load_split(LLP, "test"), load_split(LLP, "test", audio_file="orig_2020/AVVP_eval_audio.csv")
    changed = np.flatnonzero((new_t.audio_gt != old_t.audio_gt).any(axis=(1, 2)))
    assert set(new_t.video_ids[changed]) == {"JfZEqeLZqWk_30_40", "KvIjsmANkxI_10_20"}
    # the backtick typo row just matches no video in the 2020 file
    typo = [r for r in read_eval_csv(LLP / "orig_2020" / "AVVP_eval_audio.csv") if r.filename.endswith("`")]
    assert len(typo) == 1 and typo[0].filename == "KvIjsmANkxI_10_20`"


# --- synthetic files: quirks and errors -----------------------------------------------------------------------------


def write(tmp_path, name, text):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def make_dir(tmp_path, weak_rows, audio_rows, visual_rows=""):
    write(tmp_path, "AVVP_val_pd.csv", "filename\tevent_labels\n" + weak_rows)
    write(tmp_path, "AVVP_eval_audio.csv", "filename\tonset\toffset\tevent_labels\n" + audio_rows)
    write(tmp_path, "AVVP_eval_visual.csv", "filename\tonset\toffset\tevent_labels\n" + visual_rows)
    return tmp_path


def test_synthetic_quirks(tmp_path):
    d = make_dir(tmp_path,
                 "vidA_0_10\tSpeech,Dog\nvidB_0_10\tCat,Cat\n\n",  # repeated class in a weak label; blank line
                 "vidA_0_10\t0\t3\tSpeech\n"
                 "vidA_0_10\t2\t5\tSpeech\n"  # overlapping rows OR together
                 "vidA_0_10\t7\t7\tDog\n"  # onset == offset: nothing
                 "vidA_0_10\t9\t0\tDog\n"  # onset > offset: nothing
                 "vidA_0_1\t0\t10\tCar\n"  # no exact match: ignored
                 "vidB_0_10`\t0\t10\tCat\n"  # typo'd filename: ignored
                 "vidB_0_10\t8\t10\tBlender\n",  # class outside the weak label: kept
                 "vidA_0_10\t0\t10\tDog\n")
    s = load_split(d, "val")
    assert s.video_ids.tolist() == ["vidA_0_10", "vidB_0_10"]
    assert s.weak[1].sum() == 1 and s.weak[1, CLASSES.index("Cat")] == 1
    a = s.audio_gt
    assert a[0, :, 0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert a[0, :, CLASSES.index("Dog")].sum() == 0 and a[0, :, CLASSES.index("Car")].sum() == 0
    assert a[1, :, CLASSES.index("Cat")].sum() == 0 and a[1, 8:, CLASSES.index("Blender")].tolist() == [1, 1]
    assert s.visual_gt[0, :, CLASSES.index("Dog")].sum() == 10 and s.visual_gt[1].sum() == 0
    assert s.av_gt.sum() == 0  # audio Dog is empty, so A*V is empty


@pytest.mark.parametrize("audio_row,line,problem", [
    ("vidA_0_10\t0\t3\n", 3, "malformed row: 3 tab-separated field"),
    ("vidA_0_10\t0\t3\tSpeech\textra\n", 3, "malformed row: 5"),
    ("vidA_0_10 0 3 Speech\n", 3, "malformed row: 1"),
    ("vidA_0_10\t0\t3\tSpeach\n", 3, "unknown class name 'Speach'"),
    ("nomatch_0_10\t0\t3\tspeech\n", 3, "unknown class name 'speech'"),  # even on a row matching no video
    ("vidA_0_10\t0.5\t3\tSpeech\n", 3, "onset '0.5' is not a whole number"),
    ("vidA_0_10\t0\tx\tSpeech\n", 3, "offset 'x' is not a whole number"),
    ("vidA_0_10\t-1\t3\tSpeech\n", 3, "onset '-1' is not a whole number"),
    ("vidA_0_10\t0\t11\tSpeech\n", 3, "offset 11 is outside 0..10"),
    ("\t0\t3\tSpeech\n", 3, "empty filename"),
])
def test_eval_csv_errors_name_file_line_problem(tmp_path, audio_row, line, problem):
    d = make_dir(tmp_path, "vidA_0_10\tSpeech\n", "vidA_0_10\t1\t2\tSpeech\n" + audio_row)
    with pytest.raises(AnnotationError) as err:
        load_split(d, "val")
    msg = str(err.value)
    assert msg.startswith(f"{d / 'AVVP_eval_audio.csv'}:{line}: ") and problem in msg, msg
    assert err.value.line == line and isinstance(err.value, ValueError)


@pytest.mark.parametrize("weak_text,line,problem", [
    ("filename\tevent_labels\nvidA_0_10\tSpeech\nvidB_0_10\tDgo\n", 3, "unknown class name 'Dgo'"),
    ("filename\tevent_labels\nvidA_0_10\tSpeech\nvidA_0_10\tDog\n", 3, "listed twice (first on line 2)"),
    ("filename\tevent_labels\nvidA_0_10\t\n", 2, "has no event labels"),
    ("filename\tevent_labels\nvidA_0_10\tSpeech,\n", 2, "unknown class name ''"),
    ("filename\tevent_labels\nvidA_0_10,Speech\n", 2, "malformed row: 1"),
    ("filename,event_labels\nvidA_0_10,Speech\n", 1, "lacks column(s) filename, event_labels"),
    ("", 1, "missing header"),
])
def test_weak_csv_errors(tmp_path, weak_text, line, problem):
    p = write(tmp_path, "weak.csv", weak_text)
    with pytest.raises(AnnotationError) as err:
        load_weak_csv(p)
    assert str(err.value).startswith(f"{p}:{line}: ") and problem in str(err.value), str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(AnnotationError, match=r"AVVP_val_pd\.csv:0: file not found"):
        load_split(tmp_path, "val")
    write(tmp_path, "AVVP_val_pd.csv", "filename\tevent_labels\nv\tDog\n")
    with pytest.raises(AnnotationError, match=r"AVVP_eval_audio\.csv:0: file not found"):
        load_split(tmp_path, "val")
    with pytest.raises(ValueError, match="unknown LLP split"):
        load_split(tmp_path, "dev")


def test_load_dense_gt_accepts_rows_and_paths(tmp_path):
    p = write(tmp_path, "a.csv", "filename\tonset\toffset\tevent_labels\nv1\t0\t2\tCat\nv2\t5\t10\tDog\n")
    by_path = load_dense_gt(p, ["v2", "v1", "v3"])
    by_rows = load_dense_gt(read_eval_csv(p), ["v2", "v1", "v3"])
    np.testing.assert_array_equal(by_path, by_rows)
    assert by_path[0, 5:, CLASSES.index("Dog")].all() and by_path[1, :2, CLASSES.index("Cat")].all()
    assert by_path[2].sum() == 0


# --- valor data stats ------------------------------------------------------------------------------------------------


def test_cli_data_stats_json(capsys):
    import json

    from workflows.cli import main

    assert main(["data", "stats", "--annotations", str(LLP), "--split", "val", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    val = load_split(LLP, "val")
    a, v = val.audio_gt.astype(bool), val.visual_gt.astype(bool)
    # independent count: loop over (video, segment, class) cells
    either = only_one = 0
    for i in range(len(val)):
        for t in range(10):
            for c in range(25):
                either += bool(a[i, t, c] or v[i, t, c])
                only_one += bool(a[i, t, c] != v[i, t, c])
    assert out["videos"] == 649 and out["label_count_histogram"] == {"1": 212, "2": 367, "3": 56, "4": 14}
    assert out["segment_events"] == either and out["non_aligned"] == only_one
    assert out["class_counts"]["Speech"] == int(val.weak[:, 0].sum()) and len(out["class_counts"]) == 25
    assert main(["data", "stats", "--annotations", str(LLP), "--split", "train", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["videos"] == 10000 and out["segment_events"] is None and out["non_aligned"] is None
    assert main(["data", "stats", "--annotations", str(LLP), "--split", "test"]) == 0
    assert "1200 videos" in capsys.readouterr().out


def test_cli_data_stats_bad_file(tmp_path, capsys):
    from workflows.cli import main

    make_dir(tmp_path, "vidA_0_10\tSpeech\n", "vidA_0_10\t0\t3\tNope\n")
    assert main(["data", "stats", "--annotations", str(tmp_path), "--split", "val"]) == 1
    err = capsys.readouterr().err
    assert "AVVP_eval_audio.csv:2: unknown class name 'Nope'" in err
