"""The CLI contracts: `valor media synth`, `valor teachers tiny`, `valor teach` (subprocesses, offline)."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.media_fixtures import clap_teacher, clip_teacher, tiny_teachers  # noqa: F401 - fixtures
from valor_core.media.synth import BROKEN_KINDS

REPO = Path(__file__).resolve().parents[1]


def valor(*args, env=None, check=True):
    e = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", **(env or {}))
    p = subprocess.run([sys.executable, "-m", "workflows.cli", *map(str, args)], cwd=REPO, env=e,
                       capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"valor {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def last_json(p):
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_media_synth(tmp_path):
    out = last_json(valor("media", "synth", tmp_path / "c", "--videos", 2, "--broken", "--seed", 3))
    assert out["videos"] == 2 and out["broken"] == len(BROKEN_KINDS)
    manifest = Path(out["manifest"])
    with open(manifest) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 2 + len(BROKEN_KINDS) and set(rows[0]) == {"filename", "event_labels"}
    for r in rows:
        assert (manifest.parent / f"{r['filename']}.mp4").exists() and r["event_labels"]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{11}_\d+_\d+", r["filename"]) for r in rows[:2])


@pytest.mark.integration  # builds and runs real (tiny) models: the slowest CPU work of the suite
def test_teachers_tiny_is_deterministic_and_offline(tmp_path, tiny_teachers):
    import torch

    p = valor("teachers", "tiny", tmp_path / "t", "--json")
    assert len(p.stdout.strip().splitlines()) == 1  # --json: the JSON line alone on stdout, the notes on stderr
    out = last_json(p)
    assert set(out) == {"clip", "clap", "env"} and out["env"]["HF_HUB_OFFLINE"] == "1"
    ours = json.loads(Path(out["clap"]).read_text())["checkpoint"]
    theirs = json.loads(Path(tiny_teachers["clap"]).read_text())["checkpoint"]
    a = torch.load(Path(out["clap"]).parent / ours, weights_only=False)["state_dict"]
    b = torch.load(Path(tiny_teachers["clap"]).parent / theirs, weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.integration  # builds and runs real (tiny) models: the slowest CPU work of the suite
def test_teach_json_matches_in_process(tmp_path, tiny_teachers, clip_teacher, clap_teacher):
    from valor_core.media import decode
    from valor_core.media.synth import write_video

    video = write_video(tmp_path / "v.mp4", duration=10.0, size=(160, 90))
    p = valor("teach", video, "--clip", tiny_teachers["clip"], "--clap", tiny_teachers["clap"], "--json")
    out = last_json(p)
    assert out["video"] == "v" and out["clip_dim"] == clip_teacher.dim and out["clap_dim"] == clap_teacher.dim
    clip_logits, clap_logits = np.array(out["clip_logits"]), np.array(out["clap_logits"])
    assert clip_logits.shape == (10, 25) and clap_logits.shape == (10, 25)
    d = decode(video)
    np.testing.assert_allclose(clip_logits, clip_teacher.segment_logits([d])[0][0], atol=1e-4)
    assert "seg 9:" in p.stdout
    # CLAP on two segments only (the CLI ran all ten): same numbers in and out of process
    np.testing.assert_allclose(clap_logits[:2], clap_teacher.logits(clap_teacher.encode_audio(d.audio[:2])),
                               atol=1e-4)


def test_teach_errors(tmp_path, tiny_teachers):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"")
    p = valor("teach", bad, "--clip", tiny_teachers["clip"], "--clap", tiny_teachers["clap"], check=False)
    assert p.returncode == 1 and "empty" in p.stderr
    from valor_core.media.synth import write_video

    good = write_video(tmp_path / "g.mp4", duration=2.0, size=(64, 64), audio=False)
    p = valor("teach", good, "--clip", "ViT-B-32:/nowhere/clip.pt", "--clap", tiny_teachers["clap"], check=False)
    assert p.returncode == 2 and "/nowhere/clip.pt" in p.stderr
