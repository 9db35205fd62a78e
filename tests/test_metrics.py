"""valor_core.metrics against a plain per-video re-implementation of the official AVVP evaluation.

The reference below follows the structure of YapengTian/AVVP-ECCV20 `utils/eval_metrics.py` (segment_level,
event_level, extract_event, event_wise_metric) and `main_avvp.py::eval` one video at a time, with (25, 10) class-major
matrices, Python loops and the same scoring rules (classes absent from both prediction and GT are skipped; 1.0 when
no class is scored). It is written independently, not copied.
"""
from __future__ import annotations

import numpy as np
import pytest

from valor_core import metrics as M

# --- reference (per video, class-major (C, T), loops) -----------------------------------------------------------------


def ref_runs(row):
    """Maximal runs of 1s of one class row as 0/1 vectors of length T (official extract_event)."""
    t = len(row)
    out, i = [], 0
    while i < t:
        if row[i] == 1:
            j = i
            while j < t and row[j] == 1:
                j += 1
            v = np.zeros(t)
            v[i:j] = 1
            out.append(v)
            i = j
        else:
            i += 1
    return out


def ref_event_wise(ev_p, ev_g):
    tp = fp = fn = 0
    for x1 in ev_p:
        if any(np.sum(x1 * x2) >= 0.5 * np.sum(x1 + x2 - x1 * x2) for x2 in ev_g):
            tp += 1
        else:
            fp += 1
    for x1 in ev_g:
        if not any(np.sum(x1 * x2) >= 0.5 * np.sum(x1 + x2 - x1 * x2) for x2 in ev_p):
            fn += 1
    return tp, fp, fn


def ref_f(tp, fp, fn):
    scores = [2 * tp[i] / (2 * tp[i] + fn[i] + fp[i]) for i in range(len(tp)) if tp[i] + fp[i] != 0 or tp[i] + fn[i] != 0]
    return 1.0 if not scores else sum(scores) / len(scores)


def ref_seg_counts(so, gt):
    return np.sum(so * gt, axis=1), np.sum(so * (1 - gt), axis=1), np.sum((1 - so) * gt, axis=1)


def ref_evt_counts(so, gt):
    c = so.shape[0]
    tp, fp, fn = np.zeros(c), np.zeros(c), np.zeros(c)
    for n in range(c):
        ev_p = ref_runs(so[n]) if np.sum(so[n]) != 0 else []
        ev_g = ref_runs(gt[n]) if np.sum(gt[n]) != 0 else []
        tp[n], fp[n], fn[n] = ref_event_wise(ev_p, ev_g)
    return tp, fp, fn


def ref_video(so_a, so_v, gt_a, gt_v):
    """(f_a, f_v, f_pooled, f_av) at segment and event level for one video; inputs class-major (C, T)."""
    so_av, gt_av = so_a * so_v, gt_a * gt_v
    out = {}
    for level, counter in (("segment", ref_seg_counts), ("event", ref_evt_counts)):
        ca, cv, cav = counter(so_a, gt_a), counter(so_v, gt_v), counter(so_av, gt_av)
        pooled = [x + y for x, y in zip(ca, cv)]
        out[level] = (ref_f(*ca), ref_f(*cv), ref_f(*pooled), ref_f(*cav))
    return out


def ref_evaluate(pa, pv, ga, gv):
    """Ten numbers in percent like main_avvp.eval, from (N, T, C) arrays."""
    per = {"segment": [], "event": []}
    for i in range(len(pa)):
        r = ref_video(pa[i].T.astype(float), pv[i].T.astype(float), ga[i].T.astype(float), gv[i].T.astype(float))
        for level in per:
            per[level].append(r[level])
    res = {}
    for level, rows in per.items():
        arr = 100 * np.mean(np.array(rows), axis=0)
        f_a, f_v, f, f_av = arr
        res[level] = {"audio": f_a, "visual": f_v, "av": f_av, "type": (f_av + f_a + f_v) / 3.0, "event": f}
    return res, per


def rand01(rng, shape, density):
    return (rng.random(shape) < density).astype(np.uint8)


def rand_runs(rng, n, t=10, c=25, p_class=0.12, max_runs=3):
    """Event-like arrays: a few classes per video, each with 1..max_runs random runs."""
    x = np.zeros((n, t, c), np.uint8)
    for i in range(n):
        for k in np.flatnonzero(rng.random(c) < p_class):
            for _ in range(rng.integers(1, max_runs + 1)):
                s = rng.integers(0, t)
                e = rng.integers(s + 1, t + 1)
                x[i, s:e, k] = 1
    return x


# --- agreement on random inputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_evaluate_matches_reference_random(seed):
    rng = np.random.default_rng(seed)
    n = 60
    if seed % 2:
        ga, gv, pa, pv = (rand_runs(rng, n) for _ in range(4))
    else:
        dens = [0.02, 0.1, 0.3, 0.6][seed % 4]
        ga, gv, pa, pv = (rand01(rng, (n, 10, 25), dens) for _ in range(4))
    ref, per = ref_evaluate(pa, pv, ga, gv)
    got = M.evaluate(pa, pv, ga, gv, keep_per_video=True)
    for level in ("segment", "event"):
        for k in M.SCORE_KEYS:
            assert abs(getattr(got, level)[k] - ref[level][k]) < 1e-9, (level, k)
        rows = np.array(per[level])
        for j, k in enumerate(("audio", "visual", "event", "av")):
            np.testing.assert_allclose(got.per_video[f"{level}.{k}"], rows[:, j], atol=1e-12, rtol=0)


def test_per_video_functions_match_reference_many_small():
    """Every per-video function on many tiny vocabularies (C=3) where boundary cases are frequent."""
    rng = np.random.default_rng(123)
    n = 3000
    pa, pv, ga, gv = (rand01(rng, (n, 10, 3), d) for d in (0.3, 0.5, 0.4, 0.6))
    seg_a, evt_a = M.segment_f_score(pa, ga), M.event_f_score(pa, ga)
    seg_p, evt_p = M.segment_f_score_pooled(pa, pv, ga, gv), M.event_f_score_pooled(pa, pv, ga, gv)
    for i in range(n):
        r = ref_video(pa[i].T.astype(float), pv[i].T.astype(float), ga[i].T.astype(float), gv[i].T.astype(float))
        assert abs(seg_a[i] - r["segment"][0]) < 1e-12
        assert abs(evt_a[i] - r["event"][0]) < 1e-12
        assert abs(seg_p[i] - r["segment"][2]) < 1e-12
        assert abs(evt_p[i] - r["event"][2]) < 1e-12


def test_event_counts_exhaustive_short_rows():
    """All pairs of 6-segment rows: event TP/FP/FN equal the reference exactly (covers every run geometry)."""
    t = 6
    codes = np.arange(1 << t)
    bits = ((codes[:, None] >> np.arange(t)) & 1).astype(np.uint8)  # (64, 6)
    p = np.repeat(bits, len(codes), axis=0)[:, :, None]  # (4096, 6, 1)
    g = np.tile(bits, (len(codes), 1))[:, :, None]
    tp, fp, fn = M.event_counts(p, g)
    for i in range(len(p)):
        ref = ref_evt_counts(p[i].T.astype(float), g[i].T.astype(float))
        assert (tp[i, 0], fp[i, 0], fn[i, 0]) == tuple(int(v[0]) for v in ref), (p[i, :, 0], g[i, :, 0])


# --- edge cases the issue names ---------------------------------------------------------------------------------------


def one(t_on, c=0, t=10, ncls=25):
    """A (1, T, C) array with class c on at the listed segments."""
    x = np.zeros((1, t, ncls), np.uint8)
    x[0, list(t_on), c] = 1
    return x


def test_empty_gt_and_empty_prediction():
    z = np.zeros((1, 10, 25), np.uint8)
    # both empty: no class scored -> 1.0 ("all true negatives")
    assert M.segment_f_score(z, z)[0] == 1.0 and M.event_f_score(z, z)[0] == 1.0
    # empty GT, something predicted: the predicted class is scored with F = 0
    p = one(range(3), c=4)
    assert M.segment_f_score(p, z)[0] == 0.0 and M.event_f_score(p, z)[0] == 0.0
    # empty prediction, GT present: F = 0
    assert M.segment_f_score(z, p)[0] == 0.0 and M.event_f_score(z, p)[0] == 0.0
    # absent classes are not scored: one perfect class, one wrong class -> mean of 1 and 0
    g = one(range(3), c=4) | one([7], c=9)
    q = one(range(3), c=4) | one([7], c=11)
    assert M.segment_f_score(q, g)[0] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    s = M.evaluate(z, z, z, z)
    assert all(v == 100.0 for v in s.segment.values()) and all(v == 100.0 for v in s.event.values())


def test_iou_half_boundary_exact():
    # pred [0,2), gt [0,4): inter 2, union 4 -> IoU exactly 0.5 -> TP
    tp, fp, fn = M.event_counts(one(range(2)), one(range(4)))
    assert (tp[0, 0], fp[0, 0], fn[0, 0]) == (1, 0, 0)
    # pred [0,3), gt [1,4): inter 2, union 4 -> 0.5 -> TP
    tp, fp, fn = M.event_counts(one(range(3)), one(range(1, 4)))
    assert (tp[0, 0], fp[0, 0], fn[0, 0]) == (1, 0, 0)
    # pred [0,3), gt [1,5): inter 2, union 5 -> 0.4 -> FP + FN
    tp, fp, fn = M.event_counts(one(range(3)), one(range(1, 5)))
    assert (tp[0, 0], fp[0, 0], fn[0, 0]) == (0, 1, 1)
    # pred [0,1), gt [0,3): 1/3 -> miss
    tp, fp, fn = M.event_counts(one([0]), one(range(3)))
    assert (tp[0, 0], fp[0, 0], fn[0, 0]) == (0, 1, 1)
    # the segment level does not care about events: 1 TP segment of 3 GT segments
    assert M.segment_f_score(one([0]), one(range(3)))[0] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))


def test_matching_is_not_one_to_one():
    """The official rule: a predicted event is a TP if it reaches ANY GT event (IoU >= 0.5), a GT event is an FN if no
    predicted event reaches it; TPs are counted on the prediction side, FNs on the GT side, with no assignment.

    With maximal runs of 0/1 rows two events of one row can never both reach the same event of the other row (their
    intersections would have to cover it with no gap), so the any-match counts equal a one-to-one matching; the
    exhaustive test above checks every geometry against the reference. Here: a prediction touching two GT events.
    """
    p = one([0, 1, 2])  # [0,3)
    g = one([0, 1]) | one([3])  # [0,2): IoU 2/3 -> matched; [3,4): disjoint -> FN
    tp, fp, fn = M.event_counts(p, g)
    assert (tp[0, 0], fp[0, 0], fn[0, 0]) == (1, 0, 1)
    # two predictions near one GT [0,4): [0,1) reaches 1/4 (FP), [2,4) reaches 2/4 (TP); the GT is found
    tp, fp, fn = M.event_counts(one([0]) | one([2, 3]), one(range(4)))
    assert (tp[0, 0], fp[0, 0], fn[0, 0]) == (1, 1, 0)
    # a prediction side TP and a GT side FN on separate GT events: [0,2)~[0,3) TP, [3,5) FP, GT [7,8) FN
    tp, fp, fn = M.event_counts(one([0, 1]) | one([3, 4]), one([0, 1, 2]) | one([7]))
    assert (tp[0, 0], fp[0, 0], fn[0, 0]) == (1, 1, 1)
    # TP (prediction side) and found GT events (GT side) are counted independently: matched-GT = GT events - FN
    rng = np.random.default_rng(3)
    p, g = rand_runs(rng, 400, p_class=0.3, max_runs=4), rand_runs(rng, 400, p_class=0.3, max_runs=4)
    tp, fp, fn = M.event_counts(p, g)
    _, _, _, n_gt = M._run_table(10)
    gt_events = n_gt[M._row_codes(g.astype(bool))]
    assert np.array_equal(tp, gt_events - fn)  # no double matches exist with maximal runs


def test_event_av_pools_counts_not_scores():
    # audio: class 0 perfect (1 TP); visual: class 0 predicted in the wrong place (1 FP, 1 FN), class 1 absent
    pa, ga = one(range(2)), one(range(2))
    pv, gv = one([8]), one([5])
    # pooled class 0: TP 1, FP 1, FN 1 -> 2/(2+2) = 0.5; mean of per-modality F would be (1 + 0)/2 = 0.5 too,
    # so add a visual-only class to separate them: class 3 visual GT missed -> pooled: class 0 0.5, class 3 0 -> 0.25
    gv = gv | one([1], c=3)
    s = M.segment_f_score_pooled(pa, pv, ga, gv)[0]
    assert s == pytest.approx((2 * 2 / (2 * 2 + 1 + 1) + 0.0) / 2)  # segments: class 0 TP 2 FP 1 FN 1
    e = M.event_f_score_pooled(pa, pv, ga, gv)[0]
    assert e == pytest.approx((2 * 1 / (2 * 1 + 1 + 1) + 0.0) / 2)
    sc = M.evaluate(pa, pv, ga, gv)
    assert sc.segment["event"] == pytest.approx(100 * s)
    assert sc.event["event"] == pytest.approx(100 * e)
    # Type@AV is the mean of the three modality scores
    assert sc.segment["type"] == pytest.approx((sc.segment["audio"] + sc.segment["visual"] + sc.segment["av"]) / 3)


def test_av_is_product_of_modalities():
    pa, pv = one(range(4)), one(range(2, 6))
    ga, gv = one(range(4)), one(range(2, 6))
    s = M.evaluate(pa, pv, ga, gv, keep_per_video=True)
    assert s.segment["av"] == 100.0  # both products are [2,4)
    assert s.per_video["event.av"][0] == 1.0


def test_input_validation():
    with pytest.raises(ValueError, match="shapes differ"):
        M.segment_f_score(np.zeros((2, 10, 25)), np.zeros((3, 10, 25)))
    with pytest.raises(ValueError, match="0 or 1"):
        M.segment_f_score(np.full((1, 10, 25), 0.7), np.zeros((1, 10, 25)))
    # a single video (T, C) is accepted
    assert M.segment_f_score(np.zeros((10, 25)), np.zeros((10, 25))).shape == (1,)
    # bool and float 0/1 give the same as uint8
    rng = np.random.default_rng(0)
    p, g = rand01(rng, (20, 10, 25), 0.3), rand01(rng, (20, 10, 25), 0.3)
    np.testing.assert_array_equal(M.event_f_score(p, g), M.event_f_score(p.astype(bool), g.astype(np.float32)))


def test_scores_accessors():
    z = np.zeros((2, 10, 25), np.uint8)
    s = M.evaluate(z, z, z, z)
    assert s.get("segment.type") == 100.0 and s.videos == 2
    assert set(s.flat()) == {f"{l}.{k}" for l in ("segment", "event") for k in M.SCORE_KEYS}
    with pytest.raises(KeyError):
        s.get("segment.nope")


# --- label fidelity ---------------------------------------------------------------------------------------------------


def test_label_fidelity_is_global_micro_f():
    rng = np.random.default_rng(7)
    p, g = rand01(rng, (30, 10, 25), 0.1), rand01(rng, (30, 10, 25), 0.1)
    tp = fp = fn = 0
    for i in range(30):  # reference: plain loops
        for t in range(10):
            for c in range(25):
                pi, gi = bool(p[i, t, c]), bool(g[i, t, c])
                tp += int(pi and gi)
                fp += int(pi and not gi)
                fn += int(gi and not pi)
    assert M.label_fidelity(p, g) == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn), abs=1e-12)
    z = np.zeros((3, 10, 25), np.uint8)
    assert M.label_fidelity(z, z) == 100.0
    assert M.label_fidelity(z, g[:3]) == 0.0
    # micro, not per-video mean: one big correct video dominates a small wrong one
    a = np.zeros((2, 10, 25), np.uint8)
    b = a.copy()
    a[0, :, :5] = b[0, :, :5] = 1  # 50 TPs
    a[1, 0, 9] = 1  # 1 FP
    assert M.label_fidelity(a, b) == pytest.approx(100 * 100 / 101)


# --- valor evaluate (CLI) against the reference -------------------------------------------------------------------------

from pathlib import Path  # noqa: E402

from valor_core.llp import DEFAULT_ANNOTATIONS  # noqa: E402

LLP = Path(DEFAULT_ANNOTATIONS)  # the LLP files shipped with valor


def ref_micro(p, g):
    tp, fp, fn = int((p * g).sum()), int((p * (1 - g)).sum()), int(((1 - p) * g).sum())
    return 100 * 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("split", ["val", "test"])
def test_cli_naive_matches_reference(split, capsys):
    import json

    from tests.test_llp import official_gt
    from valor_core.llp import load_weak_csv
    from workflows.cli import main

    assert main(["evaluate", "--annotations", str(LLP), "--split", split, "--predictions", "naive", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ids, weak = load_weak_csv(LLP / {"val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}[split])
    ga, gv = official_gt(LLP / "AVVP_eval_audio.csv", ids), official_gt(LLP / "AVVP_eval_visual.csv", ids)
    naive = np.repeat(weak[:, None, :], 10, axis=1)
    ref, _ = ref_evaluate(naive, naive, ga, gv)
    assert out["split"] == split and out["videos"] == len(ids)
    assert set(out) == {"split", "videos", "videos_scored", "videos_in_split", "official_comparable", "segment",
                        "event", "fidelity"}
    assert out["videos_scored"] == out["videos_in_split"] == len(ids) and out["official_comparable"] is True
    for level in ("segment", "event"):
        assert list(out[level]) == list(M.SCORE_KEYS)
        for k in M.SCORE_KEYS:
            assert out[level][k] == round(ref[level][k], 2), (level, k)
    assert out["fidelity"] == {"audio": round(ref_micro(naive, ga), 2), "visual": round(ref_micro(naive, gv), 2),
                               "av": round(ref_micro(naive, ga * gv), 2)}


def test_cli_npz_predictions(tmp_path, capsys):
    import json

    from valor_core.llp import load_split
    from workflows.cli import main

    val = load_split(LLP, "val")
    rng = np.random.default_rng(0)
    a = (rng.random((len(val), 10, 25)) < 0.05).astype(np.uint8)
    v = (rng.random((len(val), 10, 25)) < 0.05).astype(np.uint8)
    order = rng.permutation(len(val))  # any order, plus extra ids
    f = tmp_path / "pred.npz"
    np.savez(f, video_ids=np.concatenate([val.video_ids[order], ["extra_1", "extra_2"]]),
             audio=np.concatenate([a[order], np.zeros((2, 10, 25), np.uint8)]),
             visual=np.concatenate([v[order], np.zeros((2, 10, 25), np.uint8)]))
    assert main(["evaluate", "--annotations", str(LLP), "--split", "val", "--predictions", str(f), "--json"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert "warning" in cap.err and "extra_1" in cap.err and "2 video id(s)" in cap.err
    ref, _ = ref_evaluate(a, v, val.audio_gt, val.visual_gt)
    for level in ("segment", "event"):
        for k in M.SCORE_KEYS:
            assert out[level][k] == round(ref[level][k], 2)
    # missing split videos: an error naming them
    np.savez(f, video_ids=val.video_ids[2:], audio=a[2:], visual=v[2:])
    assert main(["evaluate", "--annotations", str(LLP), "--split", "val", "--predictions", str(f)]) == 1
    err = capsys.readouterr().err
    assert "2 video(s) of the split missing" in err and val.video_ids[0] in err and val.video_ids[1] in err
    # a malformed file
    np.savez(f, video_ids=val.video_ids, audio=a)
    assert main(["evaluate", "--annotations", str(LLP), "--split", "val", "--predictions", str(f)]) == 1
    assert "missing array(s) visual" in capsys.readouterr().err
    # human-readable table without --json
    assert main(["evaluate", "--annotations", str(LLP), "--split", "val", "--predictions", "naive"]) == 0
    assert "Type@AV" in capsys.readouterr().out
