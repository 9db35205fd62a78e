"""LSLD (valor_core.lsld, `valor refine lsld`, preset lsld): hand-made cases for the science, then one short run
refine -> train with the lsld preset on Ray Train + MLflow (tiny teachers, synthetic features in the extract schema)."""
from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest

from tests.conftest import LLP_DIR
from valor_core.config import LSLDConfig
from valor_core.lsld import (CLASS_TEXTS, OTHER, PHRASES, best_captions, caption, class_similarity, denoise, reweight,
                             subsets)


def _weak(*classes):
    w = np.zeros(25, np.uint8)
    w[list(classes)] = 1
    return w


def _fake_text(dim=16, seed=0):
    """encode_text stand-in: a fixed random unit vector per prompt (the same prompt, the same vector)."""
    table: dict = {}
    rng = np.random.default_rng(seed)

    def encode(prompts):
        for p in prompts:
            if p not in table:
                v = rng.normal(size=dim)
                table[p] = v / np.linalg.norm(v)
        return np.stack([table[p] for p in prompts]).astype(np.float32)
    return encode


# --- captions -------------------------------------------------------------------------------------------------------

def test_subsets_are_every_nonempty_subset_plus_other():
    assert subsets(_weak(2, 5)) == [(2, 5), (2,), (5,), ()]
    three = subsets(_weak(1, 4, 9))
    assert len(three) == 2 ** 3 and three[-1] == () and len(set(three)) == 8
    assert set(three[:-1]) == {c for k in (1, 2, 3) for c in combinations((1, 4, 9), k)}
    assert subsets(_weak(7)) == [(7,), ()]
    assert subsets(_weak()) == [] and subsets(_weak(0, 1, 2, 3)) == []  # nothing to caption / more than 3 labels
    assert len(subsets(_weak(0, 1, 2, 3), max_labels=4)) == 16


def test_caption_text():
    assert caption((0, 3)) == f"{PHRASES[0]} and {PHRASES[3]}" == "Speeching and Dog"
    assert caption((), "This is a sound of ") == "This is a sound of other" and caption(()) == OTHER


def test_best_caption_is_the_most_similar():
    texts = np.eye(4, dtype=np.float32)
    seg = np.array([[0.1, 0.9, 0, 0], [5, 0, 0, 1], [0, 0, 0, 2]], np.float32)  # norms do not matter (cosine)
    np.testing.assert_array_equal(best_captions(seg, texts), [1, 0, 3])


# --- label removal ----------------------------------------------------------------------------------------------------

def test_other_removes_all_labels_and_a_subset_keeps_its_labels():
    enc = _fake_text()
    weak = np.stack([_weak(2, 5), _weak(7), _weak(0, 1, 2, 3), _weak(4)])
    picks = [[(2, 5), (), (2,), (5,)] * 2 + [(), ()], [(7,), ()] * 5, None, [(4,)] * 10]
    emb = np.zeros((4, 10, 16), np.float32)
    rng = np.random.default_rng(1)
    for i, p in enumerate(picks):
        noise = rng.normal(size=(10, 16))
        emb[i] = noise if p is None else enc([caption(s) for s in p]) + 0.01 * noise
    ok = np.array([True, True, True, False])
    y = denoise(weak, emb, enc, "", 3, ok=ok)
    assert y.dtype == np.uint8 and y.shape == (4, 10, 25)
    for t, s in enumerate(picks[0]):
        assert set(np.flatnonzero(y[0, t])) == set(s), t  # "other" -> no label at all
    assert y[0, 1].sum() == 0 and y[0, 8].sum() == 0 and y[0, 9].sum() == 0
    assert [int(y[1, t, 7]) for t in range(10)] == [1, 0] * 5 and y[1].sum() == 5
    np.testing.assert_array_equal(y[2], np.repeat(weak[2][None], 10, 0))  # 4 labels: kept as they are
    np.testing.assert_array_equal(y[3], np.repeat(weak[3][None], 10, 0))  # no teacher output: kept
    # labels are only ever removed, never added
    assert (y <= weak[:, None, :]).all()


def test_denoise_refuses_another_teachers_width():
    with pytest.raises(ValueError, match="another teacher"):
        denoise(_weak(1)[None], np.ones((1, 10, 8), np.float32), _fake_text(16))


# --- dynamic re-weighting (Eq. 4) -------------------------------------------------------------------------------------

def _one_class(pos_sims, neg_sims):
    sims = np.array(pos_sims + neg_sims, np.float32).reshape(1, -1, 1)
    labels = np.array([1] * len(pos_sims) + [0] * len(neg_sims), np.uint8).reshape(1, -1, 1)
    return labels, sims


def test_reweight_matches_hand_computation_code_rule():
    labels, sims = _one_class([0.10, 0.20, 0.90], [0.05, 0.15, 0.60])
    # Min_w = 0.10, Max_w/o = 0.60: positives below 0.60 -> 4 s where 0 < 4 s < 1 (0.10 -> 0.40; 0.20 -> 0.80);
    # negatives above 0.10 -> 0.4 s (0.15 -> 0.06, 0.60 -> 0.24); 0.90 and 0.05 are reliable
    got = reweight(labels, sims, LSLDConfig())[0, :, 0]
    np.testing.assert_allclose(got, [0.40, 0.80, 1.0, 0.0, 0.06, 0.24], rtol=1e-6)
    labels, sims = _one_class([0.30, 0.90], [0.05, 0.60])  # 4 x 0.30 = 1.2 >= 1: the code keeps the label 1
    np.testing.assert_allclose(reweight(labels, sims)[0, :, 0], [1.0, 1.0, 0.0, 0.24], rtol=1e-6)


def test_reweight_paper_rule_and_no_overlap():
    labels, sims = _one_class([-0.10, 0.90], [0.60])
    code = reweight(labels, sims, LSLDConfig(rule="code"))[0, :, 0]
    paper = reweight(labels, sims, LSLDConfig(rule="paper"))[0, :, 0]
    np.testing.assert_allclose(code, [1.0, 1.0, 0.24], rtol=1e-6)  # 4 x -0.1 outside (0, 1): kept
    np.testing.assert_allclose(paper, [0.0, 1.0, 0.24], rtol=1e-6)  # Min(1, 4 s) clipped at 0
    labels, sims = _one_class([0.5, 0.7], [0.1, 0.4])  # the groups do not overlap: nothing is unreliable
    np.testing.assert_array_equal(reweight(labels, sims)[0, :, 0], [1, 1, 0, 0])


def test_reweight_groups_are_the_masked_videos():
    labels = np.array([[[1], [0]], [[0], [1]]], np.uint8)  # 2 videos x 2 segments x 1 class
    sims = np.array([[[0.2], [0.5]], [[0.9], [0.95]]], np.float32)
    got = reweight(labels, sims, mask=np.array([True, False]))
    np.testing.assert_allclose(got[0, :, 0], [0.8, 0.2], rtol=1e-6)  # video 0 alone: Min_w 0.2, Max_w/o 0.5
    np.testing.assert_array_equal(got[1], labels[1])  # outside the mask: untouched and not counted
    np.testing.assert_allclose(class_similarity(np.ones((1, 1, 3)), 2 * np.eye(3)), np.full((1, 1, 3), 3 ** -0.5),
                               rtol=1e-6)  # cosine, whatever the norms


# --- the loss and the preset ------------------------------------------------------------------------------------------

def test_lsld_loss_value_and_dispatch():
    import torch

    from valor_core.han import HANOutput
    from valor_core.losses import compute_loss
    from valor_core.lsld import lsld_loss

    g = torch.Generator().manual_seed(0)
    seg = torch.rand(2, 10, 2, 25, generator=g) * 0.98 + 0.01
    glob = torch.rand(2, 25, generator=g) * 0.98 + 0.01
    out = HANOutput(torch.logit(seg), seg, glob, glob, glob, seg, seg)
    weak = (torch.rand(2, 25, generator=g) > 0.8).float()
    ya = (torch.rand(2, 10, 25, generator=g) > 0.7).float()
    yv = torch.rand(2, 10, 25, generator=g)  # soft visual labels

    def bce(p, y):
        p, y = p.double().numpy(), y.double().numpy()
        return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    want = 3 * bce(seg[:, :, 0], ya) + 1 * bce(seg[:, :, 1], yv) + 1 * bce(glob, weak)
    got = lsld_loss(out, weak, ya, yv)
    assert float(got) == pytest.approx(want, rel=1e-5)
    batch = {"weak": weak, "audio_labels": ya, "visual_labels": yv}
    assert float(compute_loss("lsld", out, batch)) == pytest.approx(want, rel=1e-5)
    w = LSLDConfig(audio_weight=1.0)
    assert float(lsld_loss(out, weak, ya, yv, w)) == pytest.approx(want - 2 * bce(seg[:, :, 0], ya), rel=1e-5)


def test_lsld_preset():
    from valor_core.fit import TARGETS
    from valor_core.presets import get_preset

    c = get_preset("lsld")
    o = c.optim
    assert (c.loss, c.features, o.optimizer, o.lr_max, o.schedule, o.step_size, o.gamma, o.epochs, o.batch_size) == (
        "lsld", "clip_clap", "adam", 2e-4, "step", 6, 0.25, 20, 32)
    assert (c.model.layers, c.model.heads, c.model.ff, c.model.update) == (4, 1, 512, "parallel")
    assert TARGETS["lsld"] == ("audio_labels", "visual_labels")


# --- end to end: refine -> train (Ray Train + MLflow) -----------------------------------------------------------------

def _nested(x):
    import pyarrow as pa

    n, a, b = x.shape
    return pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), b), a)


@pytest.mark.integration
def test_refine_then_train_lsld(tiny_teachers, clip_teacher, clap_teacher, tmp_path, capsys):
    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq

    from valor_core.llp import load_split
    from workflows.cli import main
    from workflows.features import read_labels

    splits = {s: load_split(LLP_DIR, s) for s in ("train", "val", "test")}
    picks = {"train": 24, "val": 6, "test": 6}
    ids = np.concatenate([splits[s].video_ids[:k] for s, k in picks.items()])
    names = sum(([s] * k for s, k in picks.items()), [])
    weak = np.concatenate([splits[s].weak[:k] for s, k in picks.items()]).astype(np.uint8)
    n, rng = len(ids), np.random.default_rng(0)
    embs, expected = {}, {}
    for col, teacher, prefix in (("clip_emb", clip_teacher, ""), ("clap_emb", clap_teacher, "This is a sound of ")):
        caps = [subsets(w) for w in weak]
        choice = [rng.integers(0, len(c), 10) if c else None for c in caps]
        prompts = sorted({caption(s, prefix) for c in caps for s in c})
        text = dict(zip(prompts, teacher.encode_text(prompts)))  # one forward per teacher
        e = rng.normal(size=(n, 10, teacher.dim)).astype(np.float32)  # videos without captions: random segments
        want = np.repeat(weak[:, None, :], 10, axis=1)
        for i in range(n):  # each segment is its chosen caption's text embedding (+ noise): the best caption is known
            if caps[i]:
                e[i] = np.stack([text[caption(caps[i][j], prefix)] for j in choice[i]]) + 1e-3 * e[i]
                want[i] = [_weak(*caps[i][j]) for j in choice[i]]
        embs[col], expected[col] = e / np.linalg.norm(e, axis=-1, keepdims=True), want
    table = pa.table({
        "video_id": pa.array(ids.tolist()), "split": pa.array(names),
        "weak": pa.FixedSizeListArray.from_arrays(pa.array(weak.reshape(-1)), 25),
        "clip_ok": pa.array(np.ones(n, bool)), "clap_ok": pa.array(np.ones(n, bool)),
        "clip_emb": _nested(embs["clip_emb"]), "clap_emb": _nested(embs["clap_emb"]),
        "status": pa.array(["ok"] * n), "clip_teacher": pa.array(["tiny-clip"] * n),
        "clap_teacher": pa.array(["tiny-clap"] * n)})
    feats = tmp_path / "out" / "features"
    feats.mkdir(parents=True)
    pq.write_table(table, str(feats / "part-0.parquet"))

    capsys.readouterr()
    assert main(["refine", "lsld", "--features", str(feats), "--clip", tiny_teachers["clip"], "--clap",
                 tiny_teachers["clap"], "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = tmp_path / "out" / "lsld_labels"
    assert summary["out"] == str(out) and summary["videos"] == n and summary["method"] == "lsld"
    assert summary["config"]["alpha"] == 4.0 and summary["teachers"]["clip"] == tiny_teachers["clip"]
    meta, labels = read_labels(str(out))
    assert {"video_id", "split", "weak", "audio_labels", "visual_labels", "audio_ok", "visual_ok",
            "visual_soft"} <= set(labels.column_names) and meta["source"] == str(feats)
    assert json.loads(labels.schema.metadata[b"valor.harvest"])["method"] == "lsld"
    order = {v: i for i, v in enumerate(labels.column("video_id").to_pylist())}
    rows = np.array([order[v] for v in ids])
    got_a = np.asarray(labels.column("audio_labels").to_pylist(), np.uint8)[rows]
    got_v = np.asarray(labels.column("visual_labels").to_pylist(), np.uint8)[rows]
    np.testing.assert_array_equal(got_a, expected["clap_emb"])  # the best caption of every segment, both teachers
    np.testing.assert_array_equal(got_v, expected["clip_emb"])
    soft = np.asarray(labels.column("visual_soft").to_pylist(), np.float32)[rows]
    train = np.array(names) == "train"
    sims = class_similarity(embs["clip_emb"], clip_teacher.encode_text(list(CLASS_TEXTS)))
    np.testing.assert_allclose(soft, reweight(got_v, sims, mask=train), atol=1e-6)
    np.testing.assert_array_equal(soft[~train], got_v[~train])  # only the train split is re-weighted
    assert summary["soft_labels"] == int(((soft > 0) & (soft < 1)).sum()) > 0  # Eq. 4 did re-weight some

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["train", "--preset", "lsld", "--features", str(feats), "--labels", str(out), "--workers", "1",
            "--epochs", "1", "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--annotations",
            str(LLP_DIR), "--no-figures", "--json", "--set", "model.hidden=32", "--set", "model.ff=64",
            "--set", "model.layers=1", "--set", "optim.batch_size=8"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["epochs"] == 1 and res["run_id"] and res["val"]["videos"] == 6 and res["test"]["videos"] == 6
    run = mlflow.tracking.MlflowClient(uri).get_run(res["run_id"])
    p = run.data.params
    assert run.info.status == "FINISHED"
    assert p["preset"] == "lsld" and p["loss"] == "lsld" and p["optim.optimizer"] == "adam"
    assert p["optim.step_size"] == "6" and p["optim.gamma"] == "0.25" and p["data.labels"] == str(out)
    assert np.isfinite(run.data.metrics["train_loss"]) and "final.test.segment.type" in run.data.metrics
