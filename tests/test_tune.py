"""Threshold search: the NumPy objective against brute force and the official metric, the Ray Tune searchers on LLP-sim
with planted thresholds, and the CLI contract (JSON line, malformed logits rejected before any trial starts)."""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import LLP_DIR
from valor_core.classes import CLAP_THRESHOLDS, CLIP_THRESHOLDS
from tuning.config import TuneConfig, TuneResources
from valor_core.metrics import label_fidelity, segment_f_score
from valor_core.tuning_objective import LogitsError, ThresholdProblem, coordinate_ascent, harvest_reference

PAPER = {"audio": CLAP_THRESHOLDS.astype(np.float64), "visual": CLIP_THRESHOLDS.astype(np.float64)}


# --- the objective, no Ray --------------------------------------------------------------------------------------------


def _tiny(rng, filt):
    n, t, c = 6, 3, 2
    z = rng.integers(0, 6, (n, t, c)).astype(np.float32)  # many ties on purpose
    y = rng.integers(0, 2, (n, c))
    g = rng.integers(0, 2, (n, t, c)) * (rng.random((n, 1, c)) < 0.8)
    return ThresholdProblem.build(z, y, g, filt), z, y, g


@pytest.mark.parametrize("filt", [True, False])
def test_objective_matches_metrics_and_brute_force(filt):
    rng = np.random.default_rng(1)
    grid = np.arange(-1, 7) + 0.5  # every distinct choice of the integer logits
    for _ in range(20):
        p, z, y, g = _tiny(rng, filt)
        best = -1.0
        for a, b in itertools.product(grid, grid):
            th = np.array([a, b])
            h = harvest_reference(z, y, th, filt)
            f = label_fidelity(h, g)
            assert p.fidelity(th) == pytest.approx(f, abs=1e-9)
            assert p.official(th) == pytest.approx(100 * segment_f_score(h, g).mean(), abs=1e-9)
            best = max(best, f)
        th, f = p.exact_optimum()
        assert f == pytest.approx(best, abs=1e-9)
        assert label_fidelity(harvest_reference(z, y, th, filt), g) == pytest.approx(best, abs=1e-9)
        assert coordinate_ascent(p, [9.0, 9.0]).score == pytest.approx(best, abs=1e-9)
        u, fu = p.exact_unified()
        assert fu == pytest.approx(max(label_fidelity(harvest_reference(z, y, np.full(2, t), filt), g)
                                       for t in grid), abs=1e-9)


def test_line_search_is_exact_and_thresholds_survive_float32():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, (80, 10, 4)).astype(np.float32)
    y = (rng.random((80, 4)) < 0.4).astype(np.uint8)
    g = ((z + rng.normal(0, 2, z.shape) > 1) & (y[:, None, :] > 0)).astype(np.uint8)
    p = ThresholdProblem.build(z, y, g)
    th = np.zeros(4)
    for c in range(4):
        best_t, best_f = p.line_search(th, c)
        cands = np.r_[np.unique(z[:, :, c]) - 1e-4, z.max() + 1]
        brute = max(p.fidelity(np.r_[th[:c], t, th[c + 1:]]) for t in cands)
        assert best_f == pytest.approx(brute, abs=1e-9)
        # a float32 copy of the chosen threshold harvests exactly the same labels
        th32 = np.r_[th[:c], np.float32(best_t), th[c + 1:]].astype(np.float32)
        assert p.fidelity(th32) == pytest.approx(best_f, abs=1e-9)


def test_official_line_search_never_decreases():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, (60, 10, 5)).astype(np.float32)
    y = (rng.random((60, 5)) < 0.5).astype(np.uint8)
    g = ((z + rng.normal(0, 2, z.shape) > 1) & (y[:, None, :] > 0)).astype(np.uint8)
    p = ThresholdProblem.build(z, y, g)
    r = coordinate_ascent(p, np.zeros(5), "official")
    assert all(b >= a - 1e-9 for a, b in zip(r.history, r.history[1:]))
    assert r.score == pytest.approx(p.official(r.thresholds))
    assert r.score >= p.official(np.zeros(5))


# --- LLP-sim with planted thresholds ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    """LLP-sim val logits, each class shifted by a known offset: the planted thresholds are Table 6 + offset, so the
    paper's thresholds are off on purpose and the search has to find the shift."""
    from valor_core.sim import simulate

    val = simulate(LLP_DIR, seed=0, splits=("val",))["val"]
    rng = np.random.default_rng(7)
    shift = {"audio": rng.uniform(-1.5, 1.5, 25), "visual": rng.uniform(-3, 3, 25)}
    problems = {}
    for m, col in (("audio", "clap_logits"), ("visual", "clip_logits")):
        z = getattr(val, col) + shift[m][None, None, :].astype(np.float32)
        problems[m] = ThresholdProblem.build(z, val.weak, getattr(val, f"{m}_gt"), True, m)
    return problems, shift


@pytest.fixture(scope="module")
def ray_local():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def test_exact_optimum_beats_planted_and_paper(planted):
    problems, shift = planted
    for m, p in problems.items():
        th, f = p.exact_optimum()
        assert f >= p.fidelity(PAPER[m] + shift[m]) - 1e-9  # the planted thresholds are not better than optimal
        assert f > p.fidelity(PAPER[m])  # the paper's thresholds are off on shifted logits
        assert label_fidelity(p.harvest(th), p.gt) == pytest.approx(f, abs=1e-9)


@pytest.mark.integration
def test_coord_search_recovers_exact_optimum(planted, ray_local, tmp_path):
    from tuning.thresholds import tune_thresholds

    problems, _ = planted
    cfg = TuneConfig(grid_points=9, classes_per_trial=13)
    out = tune_thresholds(problems, cfg, TuneResources(storage_dir=str(tmp_path / "tune")), "coord")
    for m, p in problems.items():
        exact = p.exact_optimum()[1]
        assert out[m]["fidelity"] >= exact - 0.1, (m, out[m]["fidelity"], exact)
        assert out[m]["fidelity"] >= out["paper"][m]["fidelity"]
        assert p.fidelity(out[m]["thresholds"]) == pytest.approx(out[m]["fidelity"], abs=1e-3)
        assert len(out[m]["thresholds"]) == 25
        assert out["unified"][m]["fidelity"] <= p.exact_unified()[1] + 1e-6
    assert out["_logs"]["search"] and len(out["_logs"]["unified"]) == 9


@pytest.mark.integration
def test_optuna_and_official_objective_run_through_tune(planted, ray_local, tmp_path):
    from tuning.thresholds import search_coord, search_optuna

    problems, _ = planted
    cfg = TuneConfig(trials=12)
    best, log = search_optuna(problems, PAPER, cfg, "tpe", TuneResources(storage_dir=str(tmp_path / "tune")))
    assert len(log) == 12
    for m, p in problems.items():  # the first point evaluated is Table 6: never worse than it
        assert best[m]["score"] >= p.fidelity(PAPER[m]) - 1e-9
    official = {"audio": problems["audio"]}
    best, _ = search_coord(official, {"audio": PAPER["audio"]}, TuneConfig(objective="official", max_sweeps=2),
                           TuneResources(storage_dir=str(tmp_path / "tune2")))
    assert best["audio"]["score"] >= problems["audio"].official(PAPER["audio"]) - 1e-9
    assert best["audio"]["score"] == pytest.approx(problems["audio"].official(best["audio"]["thresholds"]))


# --- CLI: JSON contract, malformed tables rejected before any trial ----------------------------------------------------


def _features(path, ids, clip, clap, status=None):
    """A features dataset in the extraction schema (fixed-size lists)."""
    def nested(x):
        inner = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1).astype(np.float32)), x.shape[-1])
        return pa.FixedSizeListArray.from_arrays(inner, x.shape[1])

    n = len(ids)
    table = pa.table({"video_id": pa.array(list(ids)), "split": pa.array(["val"] * n),
                      "weak": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * 25, np.uint8)), 25),
                      "clip_logits": nested(clip), "clap_logits": nested(clap),
                      "status": pa.array(status or ["ok"] * n)})
    os.makedirs(path, exist_ok=True)
    pq.write_table(table, os.path.join(path, "part-0.parquet"))
    return str(path)


@pytest.fixture(scope="module")
def val_ids():
    from valor_core.llp import load_split

    return load_split(LLP_DIR, "val").video_ids


def _no_trials(monkeypatch):
    from workflows import tune as T

    def boom(*a, **k):
        raise AssertionError("a trial was about to start")

    monkeypatch.setattr(T, "start_ray", boom)
    monkeypatch.setattr(T, "tune_thresholds", boom)


@pytest.mark.parametrize("case", ["shape", "nan", "missing", "null"])
def test_malformed_logits_rejected_before_trials(case, tmp_path, val_ids, monkeypatch, capsys):
    from workflows.cli import main

    _no_trials(monkeypatch)
    n = len(val_ids)
    rng = np.random.default_rng(0)
    clip = rng.normal(15, 3, (n, 10, 25)).astype(np.float32)
    clap = rng.normal(0, 2, (n, 10, 25)).astype(np.float32)
    ids = list(val_ids)
    if case == "shape":
        uri = _features(tmp_path / "f", ids, clip[:, :, :24], clap)
        expect = "expected 10x25"
    elif case == "nan":
        clap[5, 3, 7] = np.nan
        uri = _features(tmp_path / "f", ids, clip, clap)
        expect = f"NaN in {ids[5]}"
    elif case == "missing":
        uri = _features(tmp_path / "f", ids[:-4], clip[:-4], clap[:-4])
        expect = "4 of 649 val videos have no logits"
    else:  # a val video that failed extraction (status failed) counts as missing
        uri = _features(tmp_path / "f", ids, clip, clap, status=["ok"] * (n - 1) + ["failed"])
        expect = "1 of 649 val videos have no logits"
    rc = main(["tune", "thresholds", "--annotations", str(LLP_DIR), "--logits", uri, "--modality", "both",
               "--json", "--no-mlflow", "--out", str(tmp_path / "t.json")])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err, err
    assert not (tmp_path / "t.json").exists()


@pytest.mark.integration
def test_cli_json_contract_on_sim(ray_local, tmp_path, capsys):
    from workflows.cli import main

    out = tmp_path / "thresholds.json"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = main(["tune", "thresholds", "--annotations", str(LLP_DIR), "--logits", "sim:0", "--modality", "both",
               "--json", "--grid", "5", "--out", str(out), "--mlflow", uri, "--storage-dir", str(tmp_path / "rt")])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for m in ("audio", "visual"):
        assert len(last[m]["thresholds"]) == 25
        assert {"fidelity", "official"} <= set(last[m]) and {"fidelity", "official"} <= set(last["paper"][m])
        assert {"threshold", "fidelity", "official"} <= set(last["unified"][m])
        assert last[m]["fidelity"] >= last["paper"][m]["fidelity"]
        assert last[m]["fidelity"] >= last["exact"][m]["fidelity"] - 0.1
    assert last["seconds"] > 0
    assert json.loads(out.read_text())["audio"]["thresholds"] == last["audio"]["thresholds"]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    run = c.search_runs([c.get_experiment_by_name("valor-tune").experiment_id])[0]
    assert run.data.metrics["audio.tuned.fidelity"] == pytest.approx(last["audio"]["fidelity"])
    assert len(c.get_metric_history(run.info.run_id, "unified.trial.audio")) == 5


def test_cli_exact_searcher_needs_no_ray(tmp_path, monkeypatch, capsys):
    from workflows import tune as T
    from workflows.cli import main

    monkeypatch.setattr(T, "start_ray", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no Ray for exact")))
    rc = main(["tune", "thresholds", "--annotations", str(LLP_DIR), "--logits", "sim:1", "--modality", "audio",
               "--searcher", "exact", "--json", "--no-mlflow", "--out", str(tmp_path / "t.json")])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "visual" not in last and last["audio"]["fidelity"] == pytest.approx(last["exact"]["audio"]["fidelity"])


def test_validate_logits_messages():
    from valor_core.tuning_objective import validate_logits

    with pytest.raises(LogitsError, match=r"expected shape \(N, 10, 25\)"):
        validate_logits(np.zeros((3, 10, 24)), "clip_logits")
    z = np.zeros((3, 10, 25))
    z[1, 0, 0] = np.inf
    with pytest.raises(LogitsError, match="infinite in b"):
        validate_logits(z, "clip_logits", ["a", "b", "c"])
