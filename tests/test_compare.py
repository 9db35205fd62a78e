"""`valor compare` on a real MLflow sqlite store filled the way `valor train` fills it (workflows.tracking), no Ray."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.integration  # real Ray / S3 / MLflow or minutes of CPU training


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('compare')}/mlflow.db"  # one store (schema set-up costs seconds)


def _scores(base: float) -> dict:
    keys = ("audio", "visual", "av", "type", "event")
    return {"segment": {k: base + i for i, k in enumerate(keys)}, "event": {k: base - 10 + i for i, k in enumerate(keys)}}


def _fake_run(uri: str, name: str, preset: str, labels: str, base: float, finished: bool = True) -> str:
    from valor_core.config import to_dict
    from valor_core.presets import get_preset
    from workflows import tracking

    params = tracking.flatten(to_dict(get_preset(preset)))
    params.update(tracking.flatten({"data": {"features": "sim:0", "labels": labels,
                                             "thresholds": {"audio": [0.0] * 25}},
                                    "storage": {"secret_key": "hunter2"}}))
    params["train.workers"] = "2"
    run_id = tracking.start_run(uri, "valor", name, params,
                                {"valor.preset": preset, "valor.teachers": json.dumps({"clip": "sim"})})
    for epoch in (1, 2):
        tracking.log_metrics(uri, run_id, tracking.epoch_metrics(
            {"loss": 1.0 / epoch, "lr": 1e-4, "seconds": 1.0, "val": _scores(base - 2 + epoch)}), step=epoch)
    if finished:
        m = {"best_epoch": 2, "epochs_completed": 2}
        m.update(tracking.scores_flat(_scores(base), "final.val"))
        m.update(tracking.scores_flat(_scores(base + 1), "final.test"))
        tracking.log_metrics(uri, run_id, m, step=2)
        tracking.end_run(uri, run_id)
    return run_id


def test_compare_lists_runs_with_metrics(uri, capsys):
    from workflows.cli import main

    a = _fake_run(uri, "han-run", "han", "on the fly", 40.0)
    b = _fake_run(uri, "valor-run", "valor", "s3://bucket/labels", 50.0)
    c = _fake_run(uri, "unfinished", "valor+", "on the fly", 30.0, finished=False)

    assert main(["compare", "--tracking-uri", uri, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in runs] == [c, b, a]  # newest first
    by = {r["run_name"]: r for r in runs}
    assert by["valor-run"]["preset"] == "valor" and by["valor-run"]["labels"] == "s3://bucket/labels"
    assert by["valor-run"]["val"]["segment"] == {"audio": 50.0, "visual": 51.0, "av": 52.0, "type": 53.0, "event": 54.0}
    assert by["valor-run"]["test"]["event"]["audio"] == 41.0
    assert by["han-run"]["params"]["optim.optimizer"] == "adam" and by["han-run"]["best_epoch"] == 2
    assert by["han-run"]["teachers"] == {"clip": "sim"}
    assert by["unfinished"]["val"] is None and by["unfinished"]["status"] == "RUNNING"
    assert by["valor-run"]["params"]["storage.secret_key"] == "***"  # no secrets in params

    assert main(["compare", "--tracking-uri", uri, "--runs", a, b]) == 0
    table = capsys.readouterr().out
    assert a[:8] in table and b[:8] in table and c[:8] not in table and "53.00" in table


def test_compare_unknown_experiment(uri, capsys):
    from workflows.cli import main

    _fake_run(uri, "a-run", "han", "on the fly", 40.0)
    assert main(["compare", "--tracking-uri", uri, "--experiment", "nope", "--json"]) == 2  # a typo is no empty list
    err = capsys.readouterr().err.strip()
    assert "'nope'" in err and "it has: " in err and "valor" in err.split("it has: ")[1] and "\n" not in err


def test_classwise_f_and_figures(tmp_path):
    from workflows import figures

    rng = np.random.default_rng(0)
    gt_a = (rng.random((20, 10, 25)) < 0.1).astype(np.uint8)
    gt_v = (rng.random((20, 10, 25)) < 0.1).astype(np.uint8)
    f = figures.classwise_f(gt_a, gt_a)
    assert np.all((f == 100.0) | np.isnan(f))
    zero = figures.classwise_f(np.zeros_like(gt_a), gt_a)
    assert np.nanmax(zero) == 0.0
    ids = [f"v{i}" for i in range(20)]
    for path in (figures.plot_classwise(gt_a, gt_v, gt_a, gt_v, str(tmp_path / "c.png")),
                 figures.plot_timelines(ids, gt_a, 1 - gt_v, gt_a, gt_v, str(tmp_path / "t.png"))):
        assert open(path, "rb").read(4) == b"\x89PNG"


def test_compare_table_markdown_and_png(tmp_path, capsys):
    """`valor compare --table`: the finished runs in the Table 1 layout, the same numbers as MLflow holds."""
    from workflows.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for name, preset, base in (("han-t", "han", 40.0), ("valor-t", "valor", 50.0)):
        _fake_run(uri, name, preset, "on the fly", base)
    _fake_run(uri, "open", "valor+", "on the fly", 30.0, finished=False)
    capsys.readouterr()
    assert main(["compare", "--tracking-uri", uri, "--table", "--out", str(tmp_path / "t"), "--json"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out.strip().splitlines()[-1])
    assert info["runs"] == 2
    md = (tmp_path / "t" / "valor.md").read_text()
    rows = {tuple(c.strip() for c in ln.strip("|").split("|")[:2]): ln for ln in md.splitlines() if ln.startswith("| ")}
    cells = [c.strip() for c in rows[("valor-t", "test")].strip("|").split("|")]
    assert cells[2:] == [f"{v:.2f}" for v in (51, 52, 53, 54, 55, 41, 42, 43, 44, 45)]  # _scores(base + 1) for test
    assert ("open", "val") not in rows
    printed = [ln.split() for ln in out.splitlines() if ln.startswith("han-t")]
    assert printed[0][1:6] == ["40.00", "41.00", "42.00", "43.00", "44.00"]  # val comes first
    import matplotlib.image as mpimg

    img = mpimg.imread(tmp_path / "t" / "valor.png")
    assert img.shape[0] > 50 and img.shape[1] > 300 and (img[..., :3] < 0.5).any()  # text was drawn
