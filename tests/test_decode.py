"""Decoding: exact frame indices and audio segments, bytes == path, policies, and a typed error per broken kind."""
from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.media_fixtures import broken_files, media_dir, synth_clips  # noqa: F401 - fixtures
from valor_core.config import MediaConfig
from valor_core.media import decode, errors as E, try_decode
from valor_core.media.synth import (
    audio_track,
    dominant_frequency,
    read_frame_code,
    timing_tone,
    vfr_times,
    write_video,
)

SR = 48000
PTS_GRID = dict(frame_grid="pts", frame_geometry="squash")  # the k/8-s grid these tests compute independently


def expected_cfr(duration: float, fps: float, T: int = 10):
    """Independent expectation for a constant-frame-rate synth clip under the paper's (uniform) policy."""
    n = int(round(duration * fps))
    video_s = n / fps
    n8 = math.floor(video_s * 8 + 1e-6)
    k = np.round(np.linspace(0, n8 - 1, T)).astype(int)
    src = np.minimum(np.floor(k / 8 * fps + 1e-6).astype(int), n - 1)
    written = int(round(duration * SR))
    # AAC decoders emit whole 1024-sample frames (the encoder's first, priming frame is dropped); the tail is kept,
    # as librosa.load keeps it
    decoded = math.ceil((written + 1024) / 1024) * 1024 - 1024
    return src, decoded // T, video_s


@pytest.mark.parametrize("duration", [10.0, 9.5, 12.0])
@pytest.mark.parametrize("fps", [25, 30])
def test_frame_indices_and_audio_segments_exact(synth_clips, duration, fps):
    v = decode(synth_clips[(duration, fps)], cfg=MediaConfig(**PTS_GRID))
    src, seg_len, video_s = expected_cfr(duration, fps)
    assert v.frames.shape == (10, 224, 224, 3) and v.frames.dtype == np.uint8
    assert v.frame_indices.tolist() == src.tolist()
    assert [read_frame_code(f) for f in v.frames] == src.tolist()  # the pixels really are those frames
    assert v.audio.shape == (10, seg_len) and v.audio.dtype == np.float32
    assert v.duration == pytest.approx(video_s, abs=1e-3) and v.fps == pytest.approx(fps, rel=1e-3)
    if duration == 10.0:
        assert seg_len == 48025 and not v.issues
        # second s plays timing_tone(s): each segment is exactly that second
        assert [round(dominant_frequency(a, SR)) for a in v.audio] == [timing_tone(s) for s in range(10)]
    else:
        assert v.issue_kinds() == (["short_clip"] if duration < 10 else ["long_clip"])
        assert "uniform" in v.notes[0]


def test_bytes_and_path_identical(synth_clips):
    path = synth_clips[(9.5, 30)]
    cfg = MediaConfig(dense_frames=True)  # the default ffmpeg grid and official geometry
    a = decode(path, "x", cfg)
    b = decode(path.read_bytes(), "x", cfg)
    for name in ("frames", "frame_indices", "audio", "dense_frames", "dense_indices"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.duration, a.fps, a.size, a.notes, a.issue_kinds()) == (b.duration, b.fps, b.size, b.notes,
                                                                     b.issue_kinds())


def test_dense_stack_is_the_8fps_grid(synth_clips):
    v = decode(synth_clips[(10.0, 25)], cfg=MediaConfig(dense_frames=True, **PTS_GRID))
    expect = np.floor(np.arange(80) / 8 * 25 + 1e-6).astype(int)
    assert v.dense_frames.shape == (80, 224, 224, 3)
    assert v.dense_indices.tolist() == expect.tolist()
    assert [read_frame_code(f) for f in v.dense_frames[::7]] == expect[::7].tolist()


def test_pad_trim_policy(synth_clips):
    cfg = MediaConfig(length_policy="pad_trim", **PTS_GRID)
    long = decode(synth_clips[(12.0, 30)], cfg=cfg)  # first 10 s
    k = np.round(np.linspace(0, 79, 10)).astype(int)
    assert long.frame_indices.tolist() == np.floor(k / 8 * 30 + 1e-6).astype(int).tolist()
    assert long.audio.shape == (10, SR)
    assert [round(dominant_frequency(a, SR)) for a in long.audio] == [timing_tone(s) for s in range(10)]
    short = decode(synth_clips[(9.5, 25)], cfg=cfg)  # last frame repeated, audio zero-padded to 10 s
    n = int(round(9.5 * 25))
    assert short.frame_indices[-1] == n - 1 and short.audio.shape == (10, SR)
    assert np.abs(short.audio[-1, SR // 2 + 1024:]).max() == 0.0  # the padded tail
    assert np.abs(short.audio[-1, : SR // 2 - 2048]).max() > 0.1
    assert "pad_trim" in short.notes[0]


def test_per_segment_sampling(synth_clips):
    v = decode(synth_clips[(10.0, 30)], cfg=MediaConfig(frame_sampling="per_segment", frame_size=112, **PTS_GRID))
    expect = np.floor((np.arange(10) + 0.5) * 30 + 1e-6).astype(int)
    assert v.frames.shape == (10, 112, 112, 3)
    assert [read_frame_code(f) for f in v.frames] == expect.tolist()


def test_variable_frame_rate_sampled_by_time(broken_files):
    v = decode(broken_files["vfr"], cfg=MediaConfig(**PTS_GRID))
    assert "variable_frame_rate" in v.issue_kinds()
    starts = np.array(vfr_times(10.0))
    grid = np.round(np.linspace(0, math.floor(v.duration * 8 + 1e-6) - 1, 10)).astype(int) / 8
    expect = np.searchsorted(starts, grid + 1e-4, side="right") - 1
    assert [read_frame_code(f) for f in v.frames] == expect.tolist()


def test_stereo_downmix_is_the_mean(media_dir):
    mono = decode(write_video(media_dir / "mono.mp4", duration=2.0, size=(64, 64)), cfg=MediaConfig(segments=2,
                                                                                                  min_duration=0.5))
    stereo = decode(write_video(media_dir / "stereo.mp4", duration=2.0, size=(64, 64), channels=2),
                    cfg=MediaConfig(segments=2, min_duration=0.5))
    rms = lambda a: float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))  # noqa: E731
    ref = 0.3 / math.sqrt(2)  # the written sine's RMS; decord's own downmix would give sqrt(2) x that
    assert rms(stereo.audio) == pytest.approx(ref, rel=0.05) and rms(mono.audio) == pytest.approx(ref, rel=0.05)


def test_44k_source_resampled_to_48k(media_dir):
    v = decode(write_video(media_dir / "sr44.mp4", duration=10.0, size=(64, 64), sample_rate=44100))
    assert v.audio.shape == (10, math.ceil(math.ceil((441000 + 1024) / 1024 - 1) * 1024 * SR / 44100) // 10)
    assert [round(dominant_frequency(a, SR)) for a in v.audio] == [timing_tone(s) for s in range(10)]


FATAL = {"empty": E.EmptyFile, "truncated": E.TruncatedFile, "not_video": E.NotAVideo,
         "audio_only": E.NoVideoStream, "unknown_codec": E.UnknownCodec, "tiny": E.TooShort}
RECOVERABLE = {"no_audio": E.NoAudioTrack, "silent": E.SilentAudio, "short": E.ShortClip, "long": E.LongClip,
               "vfr": E.VariableFrameRate, "portrait": E.UnusualGeometry, "odd_size": E.UnusualGeometry}


@pytest.mark.parametrize("kind", sorted(FATAL))
def test_fatal_kinds_raise_their_typed_error(broken_files, kind):
    path = broken_files[kind]
    with pytest.raises(FATAL[kind]) as info:
        decode(path, "vid-" + kind)
    err = info.value
    assert type(err) is FATAL[kind] and err.fatal and err.video_id == "vid-" + kind and err.reason
    again = pickle.loads(pickle.dumps(err))  # crosses Ray process boundaries
    assert type(again) is type(err) and again.to_dict() == err.to_dict()
    video, err2 = try_decode(path.read_bytes(), "vid-" + kind)  # bytes too, and never raising
    assert video is None and type(err2) is FATAL[kind]


@pytest.mark.parametrize("kind", sorted(RECOVERABLE))
def test_recoverable_kinds_decode_with_their_issue(broken_files, kind):
    v = decode(broken_files[kind], kind)
    issue = next(i for i in v.issues if isinstance(i, RECOVERABLE[kind]))
    assert not issue.fatal and issue.video_id == kind and issue.reason
    assert v.frames.shape == (10, 224, 224, 3)
    if kind == "no_audio":
        assert v.audio is None and v.audio_missing and v.audio_reason
    else:
        assert v.audio is not None and v.audio.shape[0] == 10 and not v.audio_missing
    with pytest.raises(RECOVERABLE[kind]):
        decode(broken_files[kind], kind, strict=True)


def test_never_crashes_the_caller(tmp_path):
    video, err = try_decode(tmp_path / "missing.mp4", "m")
    assert video is None and isinstance(err, E.SourceUnreadable)
    rng = np.random.default_rng(0)
    for i in range(5):
        junk = rng.integers(0, 256, size=int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
        video, err = try_decode(b"\x00\x00\x00\x18ftypisom" + junk if i % 2 else junk, f"junk{i}")
        assert video is None and isinstance(err, E.MediaError)


def test_audio_track_helper_matches_written_length():
    assert audio_track(9.5, SR).shape == (1, int(9.5 * SR))


def test_decodes_when_pyav_cannot_be_imported(synth_clips):
    """Without PyAV the probe cannot name the codec: decord decides, the video is not called unknown_codec."""
    path = str(synth_clips[(10.0, 25)])
    code = ("import sys, json\nsys.modules['av'] = None  # `import av` raises ImportError\n"
            "from valor_core.media import decode\n"
            f"d = decode({path!r}, 'v')\n"
            "print(json.dumps([list(d.frames.shape), d.audio is not None]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [[10, 224, 224, 3], True]
    with_av = decode(path, "v")
    assert with_av.frames.shape == (10, 224, 224, 3)
