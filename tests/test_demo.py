"""`valor demo` end to end at a tiny scale (JSON shape, table, outputs) and its error for missing annotations."""
from __future__ import annotations

import json

import pytest

from tests.conftest import LLP_DIR
from workflows.cli import main

pytestmark = pytest.mark.integration  # real Ray / S3 / MLflow or minutes of CPU training



def test_demo_json_and_table(capsys, tmp_path):
    rc = main(["demo", "--annotations", str(LLP_DIR), "--epochs", "1", "--train-videos", "128", "--hidden", "16",
               "--out", str(tmp_path), "--json"])
    captured = capsys.readouterr()
    assert rc == 0
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["train_videos"] == 128 and out["val_videos"] == 649 and out["test_videos"] == 1200
    for model in ("han", "valor"):
        for split in ("val", "test"):
            for level in ("segment", "event"):
                assert set(out[model][split][level]) == {"audio", "visual", "av", "type", "event"}
                assert all(0 <= v <= 100 for v in out[model][split][level].values())
    assert out["han"]["config"]["loss"] == "han" and out["valor"]["config"]["loss"] == "valor"
    assert out["valor"]["config"]["model"]["hidden"] == 16
    assert set(out["fidelity"]) == {"audio", "visual", "av"}
    # the harvested labels beat weak labels on every segment (the point of VALOR's label elaboration)
    assert all(out["fidelity"][k] > out["fidelity_weak_labels"][k] for k in ("audio", "visual", "av"))
    assert "Type@AV" in captured.err and "demo scale" in captured.err  # the table and its caveats go to stderr
    assert (tmp_path / "demo.json").exists() and (tmp_path / "demo.png").stat().st_size > 0


def test_demo_without_annotations_says_what_to_pass(capsys, tmp_path):
    rc = main(["demo", "--annotations", str(tmp_path / "nowhere")])
    assert rc == 1
    assert "--annotations" in capsys.readouterr().err
