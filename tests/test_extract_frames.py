"""Issue 22, frames: valor picks the frames `ffmpeg -r 8` writes and transforms them as the official scripts do.

The reference side is the real thing: the installed ffmpeg binary (bin/test installs Debian's), and the torchvision /
PIL calls of AVVP-ECCV20's extract_rgb_feat.py / extract_3D_feat.py and VALOR's clip_preprocess.py.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from valor_core.backbones import r2plus1d, resnet
from valor_core.config import MediaConfig
from valor_core.media import decode
from valor_core.media.synth import read_frame_code, vfr_times, write_video
from valor_core.teachers.base import TeacherError
from valor_core.teachers.clip import create_clip_model
from valor_core.teachers.tiny import write_tiny_clip

FPS = [23.976, 25, 29.97, 30, 60, "vfr"]
DURATIONS = [9.98, 10.0, 10.02]


def _clip(tmp_path, fps, duration, size=(160, 96)):
    path = tmp_path / f"c_{fps}_{duration}.mp4"
    if fps == "vfr":  # 30 fps in even seconds, 15 in odd ones
        return write_video(path, duration=duration, fps=30, size=size, frame_times=vfr_times(duration))
    return write_video(path, duration=duration, fps=fps, size=size)


def ffmpeg_r8(path, out_dir):
    """The JPEGs `ffmpeg -i V -y -r 8 %06d.jpg` writes (AVVP-ECCV20 / VALOR extract_frames.py), as PIL images."""
    assert shutil.which("ffmpeg"), "ffmpeg is not installed (bin/test installs it: apt-get install ffmpeg)"
    out_dir.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-y", "-r", "8", f"{out_dir}/%06d.jpg"], check=True)
    return [Image.open(p).convert("RGB") for p in sorted(out_dir.glob("*.jpg"))]


def official_pick(n: int, k: int) -> np.ndarray:
    return np.round(np.linspace(0, n - 1, k)).astype(int)  # extract_rgb_feat.py / clip_preprocess.py


@pytest.mark.parametrize("duration", DURATIONS)
@pytest.mark.parametrize("fps", FPS)
def test_frames_are_those_ffmpeg_r8_writes(tmp_path, fps, duration):
    path = _clip(tmp_path, fps, duration)
    jpegs = ffmpeg_r8(path, tmp_path / "jpg")
    written = [read_frame_code(np.asarray(im)) for im in jpegs]  # the source frame behind each JPEG
    v = decode(path, cfg=MediaConfig(dense_frames=True, frame_size=64))
    assert v.dense_indices.tolist() == [written[i] for i in official_pick(len(written), 80)]
    assert v.frame_indices.tolist() == [written[i] for i in official_pick(len(written), 10)]
    assert len(written) in (81, 82, 83) and written[:3] == sorted(written[:3])  # start duplicates/drift included


def test_delayed_video_start_duplicates_the_first_frame(tmp_path):
    """A video stream that starts 0.3 s after its audio: ffmpeg repeats the first frame on the 8-fps clock."""
    path = write_video(tmp_path / "late.mp4", duration=10.0, fps=25, size=(160, 96),
                       frame_times=[0.3 + i / 25 for i in range(243)])
    written = [read_frame_code(np.asarray(im)) for im in ffmpeg_r8(path, tmp_path / "jpg")]
    v = decode(path, cfg=MediaConfig(dense_frames=True, frame_size=64))
    assert written[:3] == [0, 0, 0]
    assert v.dense_indices.tolist() == [written[i] for i in official_pick(len(written), 80)]


@pytest.fixture(scope="module")
def wide_clip(tmp_path_factory):
    """A 640 x 360 clip whose source frames, decoded at source size, feed both sides of the geometry tests."""
    d = tmp_path_factory.mktemp("geom")
    path = write_video(d / "wide.mp4", duration=10.0, fps=25, size=(640, 360))
    src = decode(path, cfg=MediaConfig(dense_frames=True, frame_size=0))  # source-size frames, no geometry
    official = decode(path, cfg=MediaConfig(dense_frames=True))  # the default: official geometry at 224
    return src, official


def _script_input(frames, transform):
    return torch.stack([transform(Image.fromarray(f)) for f in frames])


def test_resnet_input_is_pretrainedmodels_load_transform(wide_clip):
    src, official = wide_clip
    assert src.dense_frames.shape[1:3] == (360, 640)
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(resnet.MEAN, resnet.STD)])
    want = _script_input(src.dense_frames[:16], tf)
    got = resnet.to_input(official.dense_frames[:16], resnet.SIZE, resnet.MEAN, resnet.STD)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_r2plus1d_input_is_avvp_transform_image(wide_clip):
    src, official = wide_clip
    tf = T.Compose([T.Resize((112, 112)), T.ToTensor(), T.Normalize(r2plus1d.MEAN, r2plus1d.STD)])
    want = _script_input(src.dense_frames[:16], tf)
    got = resnet.to_input(official.dense_small[:16], r2plus1d.SIZE, r2plus1d.MEAN, r2plus1d.STD)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_clip_input_is_valor_clip_preprocess(wide_clip, tmp_path):
    src, official = wide_clip
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    tf = T.Compose([T.ToTensor(), T.Resize((224, 224), antialias=False), T.Normalize(mean, std)])
    want = _script_input(src.frames, tf)
    got = (torch.from_numpy(official.frames).permute(0, 3, 1, 2) - torch.tensor(mean).view(1, 3, 1, 1)) / \
        torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert official.frame_indices.tolist() == src.frame_indices.tolist()


def _gelus(model):
    kinds = {type(m).__name__ for m in model.visual.modules()}
    return "QuickGELU" in kinds, "GELU" in kinds


def test_openai_tag_builds_quick_gelu_without_weights():
    assert _gelus(create_clip_model("ViT-B-32", "openai", load_weights=False)) == (True, False)
    assert _gelus(create_clip_model("ViT-B-32", None, load_weights=False)) == (False, True)  # random: as configured


def test_openai_format_file_builds_quick_gelu_and_a_mismatch_is_refused(tmp_path):
    spec = write_tiny_clip(tmp_path)
    cfg_json = spec.split(":")[0]
    import open_clip

    open_clip.add_model_config(cfg_json)
    name = cfg_json.rsplit("/", 1)[-1][:-5]
    jit = tmp_path / "openai.pt"  # OpenAI's format: a TorchScript archive
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(jit))
    assert _gelus(create_clip_model(name, str(jit), load_weights=False)) == (True, False)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    assert _gelus(create_clip_model(name, str(plain), load_weights=False)) == (False, True)
    quick_cfg = tmp_path / "tiny-quick.json"
    quick_cfg.write_text(json.dumps({**json.loads(open(cfg_json).read()), "quick_gelu": True}))
    open_clip.add_model_config(str(quick_cfg))
    with pytest.raises(TeacherError, match="trained with GELU"):
        create_clip_model("tiny-quick", str(plain), load_weights=False)


def test_datasets_of_other_frame_preprocessing_are_not_mixed(tmp_path):
    """An extraction recording the official frame preprocessing of its res152 / r2plus1d columns and one from before
    (none recorded) are refused together in one line naming a column; two new ones mix."""
    from tests.test_mix import _made, _write
    from valor_core.media.geometry import OFFICIAL
    from workflows.features import MixError, check_mix

    new = dict(_made(), preprocessing={k: OFFICIAL[k] for k in ("res152", "r2plus1d")})
    _write(tmp_path / "old", ["a_0"], made=_made())
    _write(tmp_path / "new", ["b_0"], made=new)
    _write(tmp_path / "new2", ["c_0"], made=new)
    cols = [["vggish", "res152", "r2plus1d"]] * 2
    with pytest.raises(MixError, match=r"extracted with different r2plus1d preprocessing \(None vs 'AVVP-ECCV20 "
                                       r"scripts/extract_frames.py \(ffmpeg -r 8\) \+ extract_3D_feat.py") as err:
        check_mix([str(tmp_path / "old"), str(tmp_path / "new")], cols)
    assert "\n" not in str(err.value)
    check_mix([str(tmp_path / "new"), str(tmp_path / "new2")], cols)
