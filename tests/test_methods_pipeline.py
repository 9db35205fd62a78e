"""`valor run` with the label-refinement methods: the labeler and refine stages a config's runs need (MA: stage 1 ->
track swap -> retrain; LSLD: caption scoring -> train; VALOR Table 2's HAN labeler), their fingerprints (fast, fake
runners), and MA + the HAN labeler end to end from released-layout files on a local Ray (slow)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.test_pipeline import FakeStages, _cfg
from tests.test_import import _main, good_annotations, release  # noqa: F401  (release: a module fixture)
from workflows.config import ConfigError
from workflows.pipeline import layout, methods, stages

# --- which stages a config has, and what re-runs when it changes (fake runners) ---------------------------------------


def _run(tmp_path, fake, *overrides):
    before = len(fake.ran)
    reports = stages.run_pipeline(_cfg(tmp_path, *overrides), runners=fake.runners(),
                                  prepare=lambda c, log, create=True: (c, {}), init_ray=lambda c, env: (lambda: None),
                                  log=lambda m: None)
    return fake.ran[before:], {r.name: r.status for r in reports}


MA = "runs=[{preset: ma-retrain, seed: 1}]"


def test_ma_run_trains_stage1_refines_then_retrains_and_reruns_only_what_changed(tmp_path):
    fake = FakeStages()
    ran, status = _run(tmp_path, fake, MA)
    assert ran == ["extract", "labeler", "refine", "train", "evaluate"]  # no run trains on harvested labels
    assert status["tune"] == status["harvest"] == "disabled"
    assert (tmp_path / "out" / "ma_labels" / "part-0.parquet").exists()
    assert _run(tmp_path, fake, MA)[0] == []
    # MA's stage-2 rule: the swap and what trains on it, not stage 1
    assert _run(tmp_path, fake, MA, "refine.ma_stage1.ma.threshold=0.4")[0] == ["refine", "train", "evaluate"]
    # stage 1's own config: everything from the labeler on
    assert _run(tmp_path, fake, MA, "refine.ma_stage1.ma.threshold=0.4", "refine.ma_stage1.ma.tau=0.1")[0] == [
        "labeler", "refine", "train", "evaluate"]
    # the train section is under stage 1 too (its shared keys): both retrain
    assert _run(tmp_path, fake, MA, "refine.ma_stage1.ma.threshold=0.4", "refine.ma_stage1.ma.tau=0.1",
                "train.optim.epochs=3")[0] == ["labeler", "refine", "train", "evaluate"]
    # LSLD's config is not this config's business while no run trains with lsld
    assert _run(tmp_path, fake, MA, "refine.ma_stage1.ma.threshold=0.4", "refine.ma_stage1.ma.tau=0.1",
                "train.optim.epochs=3", "refine.lsld.alpha=2")[0] == []
    (tmp_path / "out" / "ma_labels" / "part-0.parquet").unlink()
    shutil.rmtree(tmp_path / "out" / "ma_labels")
    assert _run(tmp_path, fake, MA, "refine.ma_stage1.ma.threshold=0.4", "refine.ma_stage1.ma.tau=0.1",
                "train.optim.epochs=3")[0] == ["refine", "train", "evaluate"]  # its labels gone: refine again


def test_lsld_and_han_labeler_stages(tmp_path):
    fake = FakeStages()
    lsld = "runs=[{preset: lsld, seed: 1}, {preset: valor, seed: 2}]"
    ran, _ = _run(tmp_path, fake, lsld)
    assert ran == ["extract", "tune", "harvest", "refine", "train", "evaluate"]  # valor needs the harvest
    assert _run(tmp_path, fake, lsld, "refine.lsld.alpha=2")[0] == ["refine", "train", "evaluate"]
    assert _run(tmp_path, fake, lsld, "refine.lsld.alpha=2", "refine.ma_stage1.ma.tau=0.1")[0] == []
    # VALOR Table 2: the HAN labels instead of the teachers; no tune (refine follows the labeler stage it reads)
    ran, status = _run(tmp_path, fake, lsld, "refine.lsld.alpha=2", "harvest.labeler=han")
    assert ran == ["labeler", "harvest", "refine", "train", "evaluate"] and status["tune"] == "disabled"
    assert _run(tmp_path, fake, lsld, "refine.lsld.alpha=2", "harvest.labeler=han",
                "harvest.labeler_threshold=0.6")[0] == ["harvest", "train", "evaluate"]


def test_labels_each_run_trains_on(tmp_path):
    cfg = _cfg(tmp_path, "runs=[{preset: ma-retrain, seed: 1}, {preset: lsld, seed: 1}, {preset: valor, seed: 1}]",
               "train.optim.epochs=2")
    lay = layout.Layout(cfg.paths.output)
    got = {name: methods.labels_for(cfg, t, lay) for name, t in layout.train_runs(cfg).items()}
    out = str(tmp_path / "out")
    assert got == {"ma-retrain-seed1": f"{out}/ma_labels", "lsld-seed1": f"{out}/lsld_labels",
                   "valor-seed1": f"{out}/labels"}
    assert methods.refinements(cfg) == ("ma", "lsld") and list(methods.labelers(cfg)) == ["ma"]
    s1 = cfg.refine.ma_stage1  # the train section with preset ma on top
    assert (s1.preset, s1.loss, s1.optim.epochs, s1.model.update) == ("ma", "ma", 2, "parallel")
    released = _cfg(tmp_path, "released.feats=/x", "runs=[{preset: han, seed: 1}]")
    assert methods.labels_for(released, released.runs[0], lay) is None  # the imported pseudo-labels
    assert not methods.harvests(released) and methods.harvests(_cfg(tmp_path, "released.feats=/x",
                                                                    "harvest.labeler=han"))


@pytest.mark.parametrize("overrides, message", [
    (["harvest.labeler=clip"], "harvest.labeler 'clip': expected han"),
    ([MA, "refine.ma_stage1.preset=han"], "the ma labeler must train with loss 'ma'"),
])
def test_bad_method_config_is_named_before_anything_runs(tmp_path, overrides, message):
    fake = FakeStages()
    with pytest.raises(ConfigError, match=message):
        _run(tmp_path, fake, *overrides)
    assert fake.ran == []


# --- end to end: released-layout files -> import -> MA and the HAN labeler -> train -> evaluate, on local Ray ---------


@pytest.mark.integration  # real local Ray: three Ray Train runs and the track swap
def test_ma_and_han_labeler_end_to_end(release, ray_local, tmp_path, capsys):  # noqa: F811
    """One `valor run`: import -> labeler (MA stage 1, the HAN labeler) -> harvest (the HAN's segment predictions) ->
    refine (MA's swap) -> train (ma-retrain on MA's labels, valor on the HAN's) -> evaluate; a second run does nothing."""
    from workflows import tracking
    from workflows.features import read_labels

    out = tmp_path / "methods"
    db = f"sqlite:///{tmp_path}/mlflow.db"
    ann = good_annotations(release, tmp_path / "ann")
    argv = ["run", "--config", str(REPO / "configs" / "methods.yaml"), f"paths.output={out}",
            f"paths.annotations={ann}", f"tracking.uri={db}", "released.rows_per_file=16",
            *[f"released.{opt}={release['roots'][opt]}" for opt in ("feats", "clip", "clap")],
            "runs=[{preset: ma-retrain, seed: 1}, {preset: valor, seed: 2}]", "harvest.labeler=han",
            "refine.ma_stage1.ma.threshold=0.6",
            "train.model.hidden=32", "train.model.ff=64", "train.model.heads=1", "train.optim.epochs=1",
            "train.optim.batch_size=8", "train.optim.warmup_epochs=0", "train.optim.step_size=1", "--json"]
    rc, stdout, err = _main(argv, capsys)
    assert rc == 0, err[-3000:]
    s = json.loads(stdout.strip().splitlines()[-1])
    assert s["ran"] == ["import", "labeler", "harvest", "refine", "train", "evaluate"]
    res = s["results"]
    stage1, han = res["labeler"]["ma"], res["labeler"]["han"]
    assert Path(stage1["checkpoint"]).is_relative_to(out / "labeler" / "ma")
    assert Path(han["checkpoint"]).is_relative_to(out / "labeler" / "han")
    n_train = len([v for v in release["ids"]["train"] if v in set(release["good"])])

    # MA's refined labels: every usable train video, only ever removing weak labels, with their provenance
    meta, table = read_labels(str(out / "ma_labels"))
    assert s["refined"] == {"ma": str(out / "ma_labels")}
    assert table.num_rows == n_train == res["refine"]["ma"]["videos"]
    assert meta["method"] == "ma" and meta["checkpoint"] == stage1["checkpoint"] and meta["config"]["threshold"] == 0.6
    assert meta["code_version"] and len(meta["class_error"]) == 25 and meta["source"] == str(out / "features")
    weak = np.array(table.column("weak").to_pylist())
    for col in ("audio_labels", "visual_labels"):
        assert (np.array(table.column(col).to_pylist()) <= weak[:, None]).all()

    # the HAN labeler's labels: its checkpoint's official-rule predictions AND weak, every split
    meta, table = read_labels(str(out / "labels"))
    assert meta["labeler"] == "han" and meta["checkpoint"] == han["checkpoint"] and meta["filter_by_weak"]
    assert set(table.column("split").to_pylist()) == {"train", "val", "test"}
    weak = np.array(table.column("weak").to_pylist())
    assert (np.array(table.column("audio_labels").to_pylist()) <= weak[:, None]).all()

    # the final checkpoints, each trained on its method's labels, each an MLflow run; stage 1 and the labeler too
    runs = res["train"]["runs"]
    assert sorted(runs) == ["ma-retrain-seed1", "valor-seed2"]
    for name, trained in runs.items():
        assert Path(trained["checkpoint"]).is_relative_to(out / "train" / name) and Path(trained["checkpoint"]).exists()
    ev = json.loads((out / "eval.json").read_text())["runs"]
    assert sorted(ev) == sorted(runs) and all(ev[n]["test"]["videos"] > 0 for n in ev)
    c = tracking.client(db)
    found = {r.info.run_name: r for r in c.search_runs([c.get_experiment_by_name("valor-methods").experiment_id])}
    assert set(found) == {"valor-methods-labeler-ma", "valor-methods-labeler-han", "valor-methods-ma-retrain-seed1",
                          "valor-methods-valor-seed2"}
    p = found["valor-methods-ma-retrain-seed1"].data.params
    assert p["loss"] == "ma-refined" and p["data.labels"] == str(out / "ma_labels")
    assert found["valor-methods-valor-seed2"].data.params["data.labels"] == str(out / "labels")
    assert found["valor-methods-labeler-ma"].data.params["loss"] == "ma"
    assert found["valor-methods-labeler-han"].data.params["loss"] == "han"

    rc, stdout, err = _main(argv, capsys)  # nothing changed: nothing runs
    assert rc == 0 and json.loads(stdout.strip().splitlines()[-1])["ran"] == [], err[-2000:]
    assert "nothing to do" in stdout


@pytest.mark.integration  # real local Ray: extract with the tiny teachers, LSLD's refine, one Ray Train run
def test_lsld_end_to_end(ray_local, tmp_path, capsys):  # noqa: F811
    """configs/local.yaml with one lsld run: extract (tiny CLIP/CLAP, their embeddings) -> refine (captions scored by
    the same teachers' text towers, re-weighting) -> train lsld on them -> evaluate; no tune or harvest (no run needs
    them); a second run does nothing."""
    from workflows import tracking
    from workflows.features import read_labels

    out, videos = tmp_path / "out", tmp_path / "videos"
    db = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["run", "--config", str(REPO / "configs" / "local.yaml"), f"paths.videos={videos}",
            f"paths.annotations={videos}", f"paths.work={tmp_path / 'work'}", f"paths.output={out}",
            "corpus.videos=8", f"tracking.uri={db}", "demo.enabled=false", "runs=[{preset: lsld, seed: 3}]",
            "extract.clip_actors=[1, 1]", "extract.clap_actors=[1, 1]", "train.num_workers=1",
            "train.model.hidden=32", "train.model.ff=64", "train.model.layers=1", "train.optim.epochs=1",
            "train.optim.batch_size=4", "--json"]
    rc, stdout, err = _main(argv, capsys)
    assert rc == 0, err[-3000:]
    s = json.loads(stdout.strip().splitlines()[-1])
    assert s["ran"] == ["extract", "refine", "train", "evaluate"]
    assert {k: s["stages"][k]["status"] for k in ("tune", "labeler", "harvest")} == dict.fromkeys(
        ("tune", "labeler", "harvest"), "disabled")
    meta, table = read_labels(str(out / "lsld_labels"))
    assert table.num_rows == s["results"]["refine"]["lsld"]["videos"] == 8
    assert meta["method"] == "lsld" and meta["source"] == str(out / "features") and meta["config"]["alpha"] == 4.0
    assert meta["teachers"]["clip"].startswith(str(tmp_path / "work")) and meta["code_version"]
    assert "visual_soft" in table.column_names
    weak = np.array(table.column("weak").to_pylist())
    assert (np.array(table.column("audio_labels").to_pylist()) <= weak[:, None]).all()
    trained = s["results"]["train"]["runs"]["lsld-seed3"]
    assert Path(trained["checkpoint"]).is_relative_to(out / "train" / "lsld-seed3")
    run = tracking.client(db).get_run(trained["run_id"])
    assert run.data.params["loss"] == "lsld" and run.data.params["data.labels"] == str(out / "lsld_labels")
    assert "eval.test.segment.type" in run.data.metrics
    rc, stdout, err = _main(argv, capsys)
    assert rc == 0 and json.loads(stdout.strip().splitlines()[-1])["ran"] == [], err[-2000:]
