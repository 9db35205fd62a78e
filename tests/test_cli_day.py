"""The CLI as documented (issue 24, items 1-8): each command as the README writes it, through `python -m workflows.cli`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def valor(*args: str, cwd: Path = ROOT, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`valor ARGS` as a user runs it: a fresh process, text output, the exit code."""
    base = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**base, **(env or {})})


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


# --- 1. numbers as Python and YAML 1.2 users write them ---------------------------------------------------------------


@pytest.mark.parametrize("written, value", [("2e-4", 2e-4), ("1E-3", 1e-3), (".5", 0.5), ("1_000", 1000.0),
                                            ("+.5e-1", 0.05)])
def test_train_set_reads_scientific_notation(written, value):
    out = valor("train", "--preset", "valor", "--dry-run", "--json", "--set", f"optim.lr_max={written}")
    assert out.returncode == 0, out.stderr
    assert last_json(out.stdout)["config"]["optim"]["lr_max"] == pytest.approx(value)


def test_run_override_reads_scientific_notation(tmp_path):
    out = valor("run", "--config", "configs/local.yaml", "--print-config", f"paths.output={tmp_path}/out",
                "ave.lr=1e-3", "train.optim.lr_max=2E-4", "train.optim.epochs=1_0")
    assert out.returncode == 0, out.stderr
    import yaml

    cfg = yaml.safe_load(out.stdout)
    assert cfg["ave"]["lr"] == pytest.approx(1e-3)
    assert cfg["train"]["optim"]["lr_max"] == pytest.approx(2e-4)
    assert cfg["train"]["optim"]["epochs"] == 10

