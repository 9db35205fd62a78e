"""bench/calibrate_sim.py at a tiny budget: what it prints (fidelities vs Table 3, per-epoch val Type@AV, best-epoch
test Type@AV vs Table 1) and its errors for bad knobs, before any simulation."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = str(REPO / "bench" / "calibrate_sim.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=600, cwd=REPO)


def test_tiny_calibration_run_prints_the_comparison():
    r = _run("--train-videos", "64", "--epochs", "2", "--hidden", "16")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    fid = dict(re.findall(r"(audio|visual|av) ([\d.]+) \(paper", out))
    # the calibrated defaults keep VALOR Table 3's fidelities (85.07 / 82.14 / 77.07) within ~1.5 points
    assert abs(float(fid["audio"]) - 85.07) < 1.5 and abs(float(fid["visual"]) - 82.14) < 1.5
    assert abs(float(fid["av"]) - 77.07) < 1.5
    for model in ("han", "valor"):
        assert len(re.findall(rf"  {model} +epoch +\d+/2 ", out)) == 2
        m = re.search(rf"  {model} +best epoch +(\d) +val +([\d.]+) +test +([\d.]+) +paper ([\d.]+) +diff +([-+\d.]+)",
                      out)
        assert m and 1 <= int(m[1]) <= 2
        assert abs(float(m[5]) - (float(m[3]) - float(m[4]))) < 0.011
    assert float(re.search(r"  valor .* paper ([\d.]+)", out)[1]) == 62.0
    assert "han val Type@AV epoch 1" in out


def test_bad_knobs_are_refused_before_simulating():
    r = _run("--set", "no_such_knob=1")
    assert r.returncode == 2 and "no_such_knob" in r.stderr and "SimConfig" in r.stderr
    r = _run("--set", "profile=v9")
    assert r.returncode == 2 and "profile=v9" in r.stderr and "v1" in r.stderr
    r = _run("--set", "feature_noise")
    assert r.returncode != 0 and "KEY=VALUE" in r.stderr
