"""Issue 22, JPEG round trip: `media.frame_source: ffmpeg-jpeg` gives the frames the official scripts read -- the JPEG
files `ffmpeg -i V -r 8 %06d.jpg` writes (ffmpeg's default MJPEG quality), opened with PIL -- picked as the default path
picks them, and is recorded in the dataset provenance.

The reference side is the real thing: the installed ffmpeg binary writing JPEG files, read with
`Image.open(path).convert('RGB')` as AVVP-ECCV20's extract_rgb_feat.py / VALOR's clip_preprocess.py do.
"""
from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from valor_core.config import MediaConfig, to_dict
from valor_core.configio import build
from valor_core.media import DecodeFailed, decode, geometry
from valor_core.media.synth import read_frame_code, vfr_times, write_video

JPEG = MediaConfig(frame_size=0, dense_frames=True, frame_source="ffmpeg-jpeg")  # source size: the JPEG pixels as read


def ffmpeg_r8_pixels(path, out_dir) -> np.ndarray:
    """(N, H, W, 3) uint8: the JPEG files `ffmpeg -i V -y -r 8 %06d.jpg` writes, each `Image.open(p).convert('RGB')`."""
    assert shutil.which("ffmpeg"), "ffmpeg is not installed (bin/test installs it: apt-get install ffmpeg)"
    out_dir.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-y", "-r", "8", f"{out_dir}/%06d.jpg"], check=True)
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(out_dir.glob("*.jpg"))])


def official_pick(n: int, k: int) -> np.ndarray:
    return np.round(np.linspace(0, n - 1, k)).astype(int)  # extract_rgb_feat.py / clip_preprocess.py


def textured_clip(path, fps: int = 25, seconds: float = 10.0, size=(640, 360)):
    """Natural-looking content: a smooth random field with fine grain, drifting 3 px a frame, H.264 CRF 18."""
    import av

    w, h = size
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3))
    field = np.kron(coarse, np.ones((8, 8, 1)))[:h, : w + 16]
    field = (field + np.roll(field, 4, 0) + np.roll(field, 4, 1) + np.roll(field, (4, 4), (0, 1))) / 4
    grain = rng.normal(0, 18, field.shape)
    with av.open(str(path), mode="w", format="mp4") as out:
        st = out.add_stream("libx264", rate=Fraction(fps))
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"crf": "18", "preset": "ultrafast", "threads": "1"}
        for i in range(int(round(seconds * fps))):
            img = np.clip(np.roll(field + grain, -3 * i, 1)[:, :w], 0, 255).astype(np.uint8)
            for packet in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize("fps,duration", [(25, 10.0), (29.97, 9.98), (23.976, 10.02), ("vfr", 10.02)])
def test_jpeg_frames_are_the_files_ffmpeg_r8_writes(tmp_path, fps, duration):
    """Every slot of the T frames and of the 8T stack equals, byte for byte, the PIL-decoded JPEG file at the
    official pick; the source frames behind them are the default path's."""
    path = tmp_path / "c.mp4"
    if fps == "vfr":
        write_video(path, duration=duration, fps=30, size=(160, 96), frame_times=vfr_times(duration))
    else:
        write_video(path, duration=duration, fps=fps, size=(160, 96))
    files = ffmpeg_r8_pixels(path, tmp_path / "jpg")
    v = decode(path, cfg=JPEG)
    assert v.frames.dtype == np.uint8 and v.frames.shape == (10, 96, 160, 3)
    assert np.array_equal(v.frames, files[official_pick(len(files), 10)])
    assert np.array_equal(v.dense_frames, files[official_pick(len(files), 80)])
    default = decode(path, cfg=MediaConfig(frame_size=0, dense_frames=True))
    written = [read_frame_code(f) for f in files]  # the source frame behind each JPEG
    assert v.frame_indices.tolist() == default.frame_indices.tolist() == [written[i] for i in
                                                                          official_pick(len(files), 10)]
    assert v.dense_indices.tolist() == default.dense_indices.tolist()


@pytest.fixture(scope="module")
def texture(tmp_path_factory):
    d = tmp_path_factory.mktemp("tex")
    path = textured_clip(d / "tex.mp4")
    return path, ffmpeg_r8_pixels(path, d / "jpg")


def test_jpeg_round_trip_on_natural_content(texture):
    """On textured content the JPEG frames are the files' pixels, several levels away from the direct decode; the
    geometry after them is each official script's transform of those JPEG pixels."""
    path, files = texture
    v = decode(path, cfg=JPEG)
    d = decode(path, cfg=MediaConfig(frame_size=0, dense_frames=True))
    assert np.array_equal(v.dense_frames, files[official_pick(len(files), 80)])
    assert v.dense_indices.tolist() == d.dense_indices.tolist()
    assert np.abs(v.dense_frames.astype(float) - d.dense_frames).mean() > 3.0  # the lossy JPEG the scripts read
    official = decode(path, cfg=MediaConfig(dense_frames=True, frame_source="ffmpeg-jpeg"))  # 224-px geometry
    stack = files[official_pick(len(files), 80)]
    assert np.array_equal(official.dense_frames, geometry.resnet_frames(stack, 224))
    assert np.array_equal(official.dense_small, geometry.r2plus1d_frames(stack, 112))
    assert np.array_equal(official.frames, geometry.clip_pixels(files[official_pick(len(files), 10)], 224))


def test_jpeg_frames_from_bytes_equal_from_path(texture):
    """A video given as bytes (objects read from S3) gives the same JPEG frames as its file."""
    path, _ = texture
    cfg = MediaConfig(frame_size=0, frame_source="ffmpeg-jpeg")
    assert np.array_equal(decode(path.read_bytes(), "tex", cfg).frames, decode(path, cfg=cfg).frames)


def test_jpeg_needs_the_official_frame_choice_and_geometry():
    """ffmpeg-jpeg with another frame grid, geometry or sampling is refused when the config is built, in one line."""
    for other in ({"frame_grid": "pts"}, {"frame_geometry": "squash"}, {"frame_sampling": "per_segment"}):
        with pytest.raises(ValueError, match=r"media.frame_source ffmpeg-jpeg .* needs media.frame_grid ffmpeg") as e:
            build(MediaConfig, {"frame_source": "ffmpeg-jpeg", **other}, where="media")
        assert "\n" not in str(e.value) and next(iter(other.values())) in str(e.value)
    assert build(MediaConfig, {"frame_source": "ffmpeg-jpeg"}, where="media").frame_source == "ffmpeg-jpeg"
    assert MediaConfig().frame_source == "decode"


def test_missing_ffmpeg_is_one_clear_error(tmp_path, monkeypatch):
    """Without the ffmpeg program the option fails in one line naming it: the extract preflight before any video, and
    decode as that video's DecodeFailed."""
    from workflows.config import ExtractConfig
    from workflows.extract import check_features

    path = write_video(tmp_path / "c.mp4", duration=2.0, fps=25, size=(64, 48), audio=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without ffmpeg
    with pytest.raises(DecodeFailed, match="needs the ffmpeg program on PATH"):
        decode(path, cfg=JPEG)
    with pytest.raises(RuntimeError, match="media.frame_source ffmpeg-jpeg needs the ffmpeg program on PATH"):
        check_features(ExtractConfig(features=("vggish",), vggish_weights="random"), None, None,
                       MediaConfig(frame_source="ffmpeg-jpeg"))


def test_jpeg_and_decoded_datasets_are_not_mixed(tmp_path):
    """The frame columns' preprocessing record names the JPEG round trip: a dataset extracted from JPEG frames and one
    from decoded frames are refused together in one line; the decoded record is the one before the option."""
    from tests.test_mix import _made, _write
    from workflows.features import MixError, check_mix

    jpeg, decoded = (geometry.frame_preprocessing(MediaConfig(frame_source=s)) for s in ("ffmpeg-jpeg", "decode"))
    assert decoded == geometry.OFFICIAL
    assert all("MJPEG" in jpeg[k] and jpeg[k] != decoded[k] for k in ("res152", "r2plus1d", "clip"))
    assert geometry.frame_preprocessing(MediaConfig(frame_grid="pts")) == {}
    media = {k: v for k, v in to_dict(MediaConfig()).items() if k != "frame_source"}  # only the record differs
    for name, record in (("jpeg", jpeg), ("decoded", decoded), ("jpeg2", jpeg)):
        _write(tmp_path / name, [f"{name}_0"], made=dict(_made(media=media), preprocessing=record))
    cols = [["vggish", "res152", "r2plus1d"]] * 2
    with pytest.raises(MixError, match=r"different r2plus1d preprocessing .*MJPEG") as err:
        check_mix([str(tmp_path / "jpeg"), str(tmp_path / "decoded")], cols)
    assert "\n" not in str(err.value)
    check_mix([str(tmp_path / "jpeg"), str(tmp_path / "jpeg2")], cols)
