"""Safety: no checkpoint runs code when valor loads it (every load is torch.load weights_only=True), and no video name
reaches the parse page's markup or script unescaped (that half lives in tests/test_parse.py's browser test).

A crafted checkpoint here is a real torch file whose unpickling would call `exec` (writing a sentinel file): valor
refuses it with one line naming the file and the global it holds, and the sentinel never appears. The laion_clap
checkpoint layouts (laion's training dict with NumPy scalars/arrays, DDP `module.` prefixes, NumPy 1 and 2 pickle
names) still load into the same teacher."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.media_fixtures import clap_teacher, tiny_teachers  # noqa: F401 - fixtures
from valor_core.config import TeacherConfig, to_dict
from valor_core.presets import get_preset

REPO = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickling this calls exec: it writes `sentinel`."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return exec, (f"open({self.sentinel!r}, 'w').write('code ran')",)


def crafted(path: Path, state: dict, sentinel: Path) -> Path:
    """A checkpoint holding real weights and a RunsCode entry (as a laion-style training dict)."""
    torch.save({"state_dict": state, "epoch": 3, "payload": RunsCode(sentinel)}, path)
    return path


def clap_state(tiny_teachers) -> dict:  # noqa: F811 - the fixture's value
    ckpt = Path(tiny_teachers["clap"]).parent / "tiny-clap.pt"
    return torch.load(ckpt, weights_only=True)["state_dict"]


def assert_refused(message: str, path: Path, sentinel: Path) -> None:
    assert "\n" not in message.strip(), message
    assert str(path) in message and "builtins.exec" in message and "refused" in message, message
    assert not sentinel.exists(), "unpickling ran the checkpoint's code"


@pytest.mark.integration  # a subprocess builds the tiny CLIP teacher (seconds)
def test_teach_refuses_a_clap_checkpoint_that_runs_code(tmp_path, tiny_teachers):  # noqa: F811
    from valor_core.media.synth import write_video

    sentinel = tmp_path / "code-ran"
    evil = crafted(tmp_path / "630k-fusion-best.pt", clap_state(tiny_teachers), sentinel)
    video = write_video(tmp_path / "v.mp4", duration=2.0, size=(64, 48))
    p = subprocess.run([sys.executable, "-m", "workflows.cli", "teach", str(video), "--clip", tiny_teachers["clip"],
                        "--clap", str(evil), "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, **tiny_teachers["env"]))
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert_refused(p.stderr, evil, sentinel)
    assert p.stderr.startswith("valor teach: ")


def test_checkpoint_dir_with_code_is_refused_naming_the_file(tmp_path):
    from workflows.checkpoints import CheckpointError, load_checkpoint_model, save_checkpoint_dir

    sentinel = tmp_path / "code-ran"
    cfg = get_preset("valor")
    ckpt = save_checkpoint_dir(str(tmp_path / "ckpt"), model_state={}, best_state={}, optimizer_state=None,
                               state={"epoch": 1}, config={"train": to_dict(cfg), "data": {}})
    best = crafted(Path(ckpt) / "best_model.pt", {}, sentinel)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_model(ckpt)
    assert_refused(str(err.value), best, sentinel)


def test_official_and_backbone_weights_with_code_are_refused(tmp_path):
    from valor_core.backbones.weights import BackboneError, load_state
    from valor_core.official import OfficialCheckpointError, load_official

    sentinel = tmp_path / "code-ran"
    evil = crafted(tmp_path / "weights.pth", {"w": torch.zeros(2)}, sentinel)
    with pytest.raises(OfficialCheckpointError) as official:
        load_official(str(evil), "han")
    assert_refused(str(official.value), evil, sentinel)
    with pytest.raises(BackboneError) as backbone:
        load_state(str(evil))
    assert_refused(str(backbone.value), evil, sentinel)


def _laion_training_dict(state: dict) -> dict:
    """As laion's CLAP training saves a checkpoint (DDP model: `module.` prefixes) with NumPy entries in it."""
    return {"epoch": np.int64(45), "name": "630k-fusion", "best_val": np.float64(0.5),
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {0: {"step": np.float32(100.0), "exp_avg_sq": np.zeros((2, 3), np.float32)}},
                          "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99), "params": [0]}]}}


def _numpy2_names(path: Path, ckpt: dict) -> None:
    """The same dict as a NumPy 2 pickle names it (numpy._core.multiarray ...), in torch's legacy format."""
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert b"numpy.core.multiarray" in data
    path.write_bytes(data.replace(b"numpy.core.multiarray", b"numpy._core.multiarray"))


@pytest.mark.integration  # builds the tiny laion_clap model per layout (seconds each)
@pytest.mark.parametrize("layout", ["laion-training-numpy1", "laion-training-numpy2", "bare-state-dict"])
def test_laion_clap_checkpoint_layouts_still_load(layout, tmp_path, tiny_teachers, clap_teacher):  # noqa: F811
    from valor_core.teachers import load_clap_teacher

    state = clap_state(tiny_teachers)
    path = tmp_path / "630k-fusion-best.pt"
    if layout == "laion-training-numpy1":
        torch.save(_laion_training_dict(state), path)
    elif layout == "laion-training-numpy2":
        _numpy2_names(path, _laion_training_dict(state))
    else:
        torch.save(state, path)
    spec = json.loads(Path(tiny_teachers["clap"]).read_text())  # the tiny teacher's spec, this checkpoint
    spec.update(checkpoint=str(path), hf_hub_cache=str((Path(tiny_teachers["clap"]).parent / spec["hf_hub_cache"])))
    (tmp_path / "clap.json").write_text(json.dumps(spec))
    teacher = load_clap_teacher(str(tmp_path / "clap.json"), TeacherConfig(device="cpu", batch_size=8))
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 48000)).astype(np.float32)
    np.testing.assert_allclose(teacher.encode_audio(audio), clap_teacher.encode_audio(audio), atol=1e-6)
    assert teacher.logit_scale == pytest.approx(clap_teacher.logit_scale)
