"""The audio as the official feature scripts read it, from one decode of the file at its own rate.

- `read_native`: every sample of the audio stream at its native rate, converted to int16 by FFmpeg's own sample
  converter (libswresample through PyAV, as `ffmpeg -f s16le` does for audioread and moviepy), then the mean of the
  channels. No AAC tail is trimmed: FFmpeg emits whole 1024-sample frames and the official scripts keep them.
- `librosa_load`: what `librosa.load(path, sr=48000)` (librosa 0.10.1, soxr 0.3.6 in VALOR's environment) gives:
  the native wave resampled by soxr's HQ filter and fixed to ceil(n x ratio) samples. VALOR's
  `utils/clap_preprocess.py` reads the audio of both CLAP outputs this way.
- `clap_cuts`: VALOR's segments for the CLAP teacher: starts round(linspace(0, L, T + 1))[:T], each L // T long.
- `squeeze`: VALOR's `get_audio_feature_maps`: the whole 48-kHz wave indexed at round(linspace(0, L - 1, 480000)).
- `moviepy_16k`: AVVP-ECCV20 `scripts/extract_audio.py` (moviepy 1.x `write_audiofile(fps=16000)` of an
  AudioFileClip read at 44.1 kHz): output sample j is the 44.1-kHz sample round(44100 x j / 16000) (no anti-alias
  filter), int(16000 x duration) samples, zeros past the end.
"""
from __future__ import annotations

import io
import math
import os

import numpy as np

CLAP_RATE = 48000
CLAP_LEN = 480000  # VALOR's 10 s at 48 kHz
MOVIEPY_RATE = 44100  # moviepy AudioFileClip's default fps (the rate ffmpeg decodes to)
VGGISH_RATE = 16000


class NoAudio(Exception):
    """The file has no audio stream."""


def read_native(source) -> tuple[np.ndarray, int]:
    """A path, the file's bytes or a file object -> (mono float32 wave at the native rate, the rate): FFmpeg's int16
    samples / 32768, mean over channels (librosa's to_mono). NoAudio when there is no audio stream."""
    import av

    if isinstance(source, (bytes, bytearray, memoryview)):
        src = io.BytesIO(bytes(source))
    else:
        src = source if hasattr(source, "read") else os.fspath(source)
    with av.open(src, mode="r") as c:
        if not c.streams.audio:
            raise NoAudio("no audio stream")
        stream = c.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate)
        resampler, channels = None, 1
        chunks = []
        for frame in c.decode(stream):
            if resampler is None:
                channels = len(frame.layout.channels)
                resampler = av.AudioResampler(format="s16", layout=frame.layout.name, rate=frame.sample_rate)
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
        if resampler is not None:
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
    if not chunks:
        return np.zeros(0, np.float32), rate
    packed = np.concatenate([ch.reshape(-1) for ch in chunks]).reshape(-1, channels)  # s16 packed: interleaved
    return (packed.astype(np.float32) / 32768.0).mean(axis=1, dtype=np.float32), rate


def librosa_resample(wave: np.ndarray, rate: int, target: int = CLAP_RATE) -> np.ndarray:
    """librosa.resample(res_type='soxr_hq') of a 1-D float32 wave: soxr HQ, then fixed to ceil(n x target / rate)."""
    import soxr

    wave = np.asarray(wave, np.float32)
    if int(rate) == int(target):
        return wave
    y = soxr.resample(wave, int(rate), int(target), quality="HQ")
    n = int(math.ceil(len(wave) * float(target) / rate))
    return np.pad(y, (0, max(0, n - len(y))))[:n].astype(np.float32, copy=False)


def clap_cuts(wave: np.ndarray, segments: int) -> np.ndarray:
    """(L,) -> (T, L // T): VALOR clap_preprocess.get_audio_embedding's segments of the unsqueezed wave."""
    starts = np.round(np.linspace(0, len(wave), segments + 1)).astype(np.int64)[:segments]
    step = len(wave) // segments
    return np.ascontiguousarray(np.stack([wave[s:s + step] for s in starts]))


def squeeze(wave: np.ndarray, n: int = CLAP_LEN) -> np.ndarray:
    """VALOR get_audio_feature_maps: exactly n samples, wave[round(linspace(0, L - 1, n))]."""
    return np.asarray(wave)[np.round(np.linspace(0, len(wave) - 1, n)).astype(np.int32)]


def moviepy_16k(wave: np.ndarray, rate: int) -> np.ndarray:
    """AVVP-ECCV20 extract_audio.py's 16-kHz wave from the native one (a rate other than 44.1 kHz is first resampled
    to 44.1 kHz with soxr HQ, where moviepy's ffmpeg uses libswresample)."""
    x = librosa_resample(wave, rate, MOVIEPY_RATE)
    duration = len(x) / MOVIEPY_RATE
    tt = (1.0 / VGGISH_RATE) * np.arange(int(VGGISH_RATE * duration))
    frames = np.round(MOVIEPY_RATE * tt).astype(int)
    out = np.zeros(len(tt), np.float32)
    ok = frames < len(x)
    out[ok] = x[frames[ok]]
    return out


def read_decord(source, rate: int, channels: int) -> tuple[np.ndarray, int]:
    """Without PyAV: decord's mono wave at `rate` (its own resampler), its (L+R)/sqrt(2) stereo downmix rescaled to
    the mean."""
    import decord

    ar = decord.AudioReader(source, ctx=decord.cpu(0), sample_rate=int(rate), mono=True)
    wave = np.array(ar._array[0], dtype=np.float32, copy=True)
    if channels == 2:
        wave *= np.float32(1 / math.sqrt(2))
    return wave, int(rate)
