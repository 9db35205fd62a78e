"""Test media: real H.264 + AAC mp4 files written with PyAV (no ffmpeg binary needed), plus every broken kind.

Used by the tests, by `valor media synth` and by the demo corpus. Content is cheap but decodable *exactly*:

- Video frame i carries its own index as a 16-bit code in the top 40 % of the picture (2 rows x 8 blocks, white = 1,
  most significant bit first), so a decoder test can read back which source frame it got even after a 224x224 resize
  (`read_frame_code`). The lower 60 % shows a background colour per visible event class and a moving square.
- Audio: with no `content`, second s carries a sine at `timing_tone(s)` Hz (300 + 100 s), so each 1-s segment's
  dominant frequency says which second it came from (`dominant_frequency`). With `content`, each audible event class c
  plays `class_tone(c)` Hz during its events.

`synth_corpus` writes LLP-style videos (`<11 chars>_<start>_<end>.mp4`, 10 s, 1-3 events) and an LLP manifest CSV
(tab-separated `filename<TAB>event_labels`, labels comma-separated), like `AVVP_train.csv`.
"""
from __future__ import annotations

import csv
import json
import os
import string
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from valor_core.classes import CLASSES, NUM_CLASSES

PathLike = Union[str, os.PathLike]

CODE_BITS = 16
CODE_ROWS, CODE_COLS = 2, 8
CODE_FRACTION = 0.4  # top 40 % of the picture holds the frame code

BROKEN_KINDS = (
    "empty",  # zero-byte file -> EmptyFile
    "truncated",  # valid mp4 cut at 40 % -> TruncatedFile
    "not_video",  # text bytes named .mp4 -> NotAVideo
    "audio_only",  # AAC in an mp4, no video stream -> NoVideoStream
    "unknown_codec",  # video sample entry renamed to an unknown fourcc -> UnknownCodec
    "tiny",  # 0.3 s -> TooShort
    "no_audio",  # video only -> decodes; audio missing (NoAudioTrack issue)
    "silent",  # all-zero audio -> decodes; SilentAudio issue
    "short",  # 4.5 s -> decodes; ShortClip issue (pad policy)
    "long",  # 14 s -> decodes; LongClip issue (trim/uniform policy)
    "vfr",  # variable frame rate (15/30 fps alternating) -> decodes; VariableFrameRate issue
    "portrait",  # 360x640 -> decodes; UnusualGeometry issue (resized without crop)
    "odd_size",  # 321x241 (odd dims, 4:4:4) -> decodes; UnusualGeometry issue
)


def timing_tone(second: int) -> float:
    """Frequency (Hz) of the timing tone in second `second` of a content-less synth clip."""
    return 300.0 + 100.0 * second


def class_tone(c: int) -> float:
    """Frequency (Hz) that audible class `c` plays in synth content."""
    return 220.0 * 2 ** (c / 8.0)  # 220 Hz .. ~1.8 kHz, 1.5 semitones apart


def class_colour(c: int) -> tuple[int, int, int]:
    """RGB background colour of visible class `c` in synth content."""
    hue = c / NUM_CLASSES  # HSV(hue, 0.8, 0.9) -> RGB
    h6 = hue * 6.0
    i = int(h6) % 6
    f = h6 - int(h6)
    v, s = 0.9, 0.8
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(int(round(255 * x)) for x in rgb)  # type: ignore[return-value]


@dataclass
class Content:
    """What a synth clip shows and plays: (class index, onset s, offset s) events per modality."""

    visual: list[tuple[int, float, float]] = field(default_factory=list)
    audio: list[tuple[int, float, float]] = field(default_factory=list)

    def classes(self) -> list[int]:
        return sorted({c for c, _, _ in self.visual} | {c for c, _, _ in self.audio})


# --- pictures and sound --------------------------------------------------------------------------------------------


def frame_image(index: int, t: float, size: tuple[int, int], content: Optional[Content] = None) -> np.ndarray:
    """The (H, W, 3) uint8 picture of frame `index` shown at time `t` s; size = (width, height)."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    code_h = int(round(h * CODE_FRACTION))
    img[:code_h] = 16
    for bit in range(CODE_BITS):
        if (index >> (CODE_BITS - 1 - bit)) & 1:
            r, col = divmod(bit, CODE_COLS)
            y0, y1 = r * code_h // CODE_ROWS, (r + 1) * code_h // CODE_ROWS
            x0, x1 = col * w // CODE_COLS, (col + 1) * w // CODE_COLS
            img[y0:y1, x0:x1] = 235
    lower = img[code_h:]
    active = [c for c, on, off in (content.visual if content else []) if on <= t < off]
    if active:
        bands = np.array_split(np.arange(w), len(active))
        for c, cols in zip(active, bands):
            lower[:, cols[0]:cols[-1] + 1] = class_colour(c)
    else:
        lower[:] = (96, 96, 96)
    # a moving square (one width across every 4 s)
    side = max(2, min(h - code_h, w) // 4)
    x = int((t / 4.0 % 1.0) * max(1, w - side))
    y = code_h + (h - code_h - side) // 2
    lower_y = y - code_h
    img[code_h:][lower_y:lower_y + side, x:x + side] = (250, 250, 40)
    return img


def read_frame_code(frame: np.ndarray) -> int:
    """The frame index written by `frame_image`, read back from a decoded (possibly resized) frame."""
    h, w = frame.shape[:2]
    code_h = int(round(h * CODE_FRACTION))
    gray = frame[:code_h].astype(np.float32).mean(axis=2)
    value = 0
    for bit in range(CODE_BITS):
        r, col = divmod(bit, CODE_COLS)
        y0, y1 = r * code_h // CODE_ROWS, (r + 1) * code_h // CODE_ROWS
        x0, x1 = col * w // CODE_COLS, (col + 1) * w // CODE_COLS
        dy, dx = max(1, (y1 - y0) // 4), max(1, (x1 - x0) // 4)
        cell = gray[y0 + dy:y1 - dy, x0 + dx:x1 - dx]
        value = (value << 1) | int(cell.mean() > 125)
    return value


def audio_track(duration: float, sample_rate: int, content: Optional[Content] = None, channels: int = 1,
                silent: bool = False, seed: int = 0) -> np.ndarray:
    """(channels, n) float32 waveform in [-1, 1]: timing tones (no content) or class tones during audio events."""
    n = int(round(duration * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    wave = np.zeros(n, np.float64)
    if silent:
        return np.zeros((channels, n), np.float32)
    if content is None:
        sec = np.floor(t).astype(np.int64)
        freq = timing_tone(0) + 100.0 * sec
        phase = 2 * np.pi * np.cumsum(freq) / sample_rate  # continuous phase across seconds
        wave = 0.3 * np.sin(phase)
    else:
        rng = np.random.default_rng(seed)
        wave += 0.003 * rng.standard_normal(n)  # faint noise floor: not silent, not a tone
        for c, on, off in content.audio:
            m = (t >= on) & (t < off)
            wave[m] += 0.25 * np.sin(2 * np.pi * class_tone(c) * t[m])
    wave = np.clip(wave, -1.0, 1.0)
    if channels == 1:
        return wave[None].astype(np.float32)
    # stereo: the same signal in both channels (so a mean downmix gives it back unchanged)
    return np.repeat(wave[None], channels, axis=0).astype(np.float32)


def dominant_frequency(x: np.ndarray, sample_rate: int) -> float:
    """Frequency (Hz) of the largest FFT peak of a 1-D signal (Hann window)."""
    x = np.asarray(x, np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sample_rate / len(x))


# --- writers -------------------------------------------------------------------------------------------------------


def write_video(path: PathLike, duration: float = 10.0, fps: float = 25, size: tuple[int, int] = (640, 360),
                audio: bool = True, sample_rate: int = 48000, content: Optional[Content] = None, seed: int = 0,
                channels: int = 1, silent: bool = False, frame_times: Optional[Sequence[float]] = None,
                video: bool = True, crf: int = 23, preset: str = "ultrafast", gop: int = 250) -> Path:
    """Write a real H.264 (libx264, yuv420p; yuv444p for odd sizes) + AAC mp4 with PyAV; returns the path.

    duration: seconds of video and audio; fps: constant frame rate (frames = round(duration * fps)), unless
    `frame_times` gives explicit presentation times in seconds (variable frame rate); size: (width, height);
    audio: add an AAC track (mono unless channels=2; silent=True writes zeros); content: events drawn/played
    (None = timing code only); video=False writes an audio-only mp4.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    odd = (w % 2) or (h % 2)
    with av.open(str(path), mode="w", format="mp4") as out:
        vstream = astream = None
        if video:
            rate = Fraction(fps).limit_denominator(1001)
            vstream = out.add_stream("libx264", rate=rate)
            vstream.width, vstream.height = w, h
            vstream.pix_fmt = "yuv444p" if odd else "yuv420p"
            vstream.options = {"crf": str(crf), "preset": preset, "g": str(gop), "threads": "1"}
            if frame_times is not None:
                vstream.codec_context.time_base = Fraction(1, 1000)
        if audio:
            astream = out.add_stream("aac", rate=sample_rate)
            astream.layout = "mono" if channels == 1 else "stereo"
        if vstream is not None:
            if frame_times is None:
                n = int(round(duration * fps))
                times = [i / fps for i in range(n)]
            else:
                times = list(frame_times)
            for i, t in enumerate(times):
                frame = av.VideoFrame.from_ndarray(frame_image(i, t, size, content), format="rgb24")
                if frame_times is not None:
                    frame.pts = int(round(t * 1000))
                    frame.time_base = Fraction(1, 1000)
                for packet in vstream.encode(frame.reformat(format=vstream.pix_fmt)):
                    out.mux(packet)
            for packet in vstream.encode():
                out.mux(packet)
        if astream is not None:
            wave = audio_track(duration, sample_rate, content, channels=channels, silent=silent, seed=seed)
            chunk = 1024
            for start in range(0, wave.shape[1], chunk):
                part = np.ascontiguousarray(wave[:, start:start + chunk])
                frame = av.AudioFrame.from_ndarray(part, format="fltp", layout=astream.layout.name)
                frame.sample_rate = sample_rate
                frame.pts = start
                frame.time_base = Fraction(1, sample_rate)
                for packet in astream.encode(frame):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return path


def _rename_video_fourcc(data: bytes, new: bytes = b"zzz1") -> bytes:
    """Rename the H.264 sample entry (`avc1` inside `stsd`) so no decoder recognises the codec."""
    stsd = data.find(b"stsd")
    pos = data.find(b"avc1", stsd)
    if stsd < 0 or pos < 0:
        raise ValueError("no avc1 sample entry found")
    return data[:pos] + new + data[pos + 4:]


def write_broken(path: PathLike, kind: str, seed: int = 0) -> Path:
    """Write one broken/awkward file of `kind` (see BROKEN_KINDS) at `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_video":
        path.write_bytes(b"this is not a video, just some text saved with an .mp4 name\n" * 64)
    elif kind == "truncated":
        write_video(path, duration=3.0, seed=seed)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.4)])
    elif kind == "audio_only":
        write_video(path, duration=3.0, video=False, seed=seed)
    elif kind == "unknown_codec":
        write_video(path, duration=3.0, seed=seed)
        path.write_bytes(_rename_video_fourcc(path.read_bytes()))
    elif kind == "tiny":
        write_video(path, duration=0.3, seed=seed)
    elif kind == "no_audio":
        write_video(path, duration=10.0, audio=False, seed=seed)
    elif kind == "silent":
        write_video(path, duration=10.0, silent=True, seed=seed)
    elif kind == "short":
        write_video(path, duration=4.5, seed=seed)
    elif kind == "long":
        write_video(path, duration=14.0, seed=seed)
    elif kind == "vfr":
        write_video(path, duration=10.0, frame_times=vfr_times(10.0), seed=seed)
    elif kind == "portrait":
        write_video(path, duration=10.0, size=(360, 640), seed=seed)
    elif kind == "odd_size":
        write_video(path, duration=10.0, size=(321, 241), seed=seed)
    else:
        raise ValueError(f"unknown broken kind {kind!r}; expected one of {', '.join(BROKEN_KINDS)}")
    return path


def vfr_times(duration: float) -> list[float]:
    """Presentation times of the `vfr` kind: 30 fps in even seconds, 15 fps in odd seconds."""
    times, t = [], 0.0
    while t < duration - 1e-9:
        times.append(round(t, 6))
        t += 1 / 30 if int(t + 1e-9) % 2 == 0 else 1 / 15
    return times


# --- an LLP-style corpus -------------------------------------------------------------------------------------------

_ID_CHARS = string.ascii_letters + string.digits + "-_"


def random_content(rng: np.random.Generator, duration: float = 10.0) -> Content:
    """1-3 event classes; each gets an audio and/or visual event of 2-10 whole seconds."""
    k = int(rng.integers(1, 4))
    classes = rng.choice(NUM_CLASSES, size=k, replace=False)
    content = Content()
    for c in classes:
        which = rng.choice(["audio", "visual", "both"], p=[0.3, 0.2, 0.5])
        for mod in (["audio", "visual"] if which == "both" else [which]):
            length = int(rng.integers(2, int(duration) + 1))
            on = int(rng.integers(0, int(duration) - length + 1))
            getattr(content, mod).append((int(c), float(on), float(on + length)))
    return content


def llp_filename(rng: np.random.Generator) -> str:
    """An LLP-style name: 11 YouTube-id characters, then `_<start>_<end>` in integer seconds."""
    vid = "".join(rng.choice(list(_ID_CHARS), size=11))
    start = int(rng.integers(0, 300)) * 10
    return f"{vid}_{start}_{start + 10}"


def synth_corpus(out_dir: PathLike, n_videos: int, broken: bool = False, seed: int = 0, duration: float = 10.0,
                 size: tuple[int, int] = (320, 180), fps: float = 25) -> Path:
    """Write `n_videos` LLP-style mp4 files into `out_dir` plus `manifest.csv` (LLP format); returns the manifest path.

    With broken=True, every broken kind is written as well (named `broken-<kind>-<id>`), listed in the manifest like
    any other video (a real corpus does not announce its bad files) and in `broken.json` {filename: kind}.
    Events are also written to `events.json` {filename: {"audio": [[class, on, off], ...], "visual": [...]}}.
    Deterministic in `seed`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, events, kinds = [], {}, {}
    names: set[str] = set()
    for i in range(n_videos):
        name = llp_filename(rng)
        while name in names:
            name = llp_filename(rng)
        names.add(name)
        content = random_content(rng, duration)
        write_video(out / f"{name}.mp4", duration=duration, fps=fps, size=size, content=content, seed=seed + i)
        labels = [CLASSES[c] for c in content.classes()]
        rows.append((name, ",".join(labels)))
        events[name] = {"audio": [list(e) for e in content.audio], "visual": [list(e) for e in content.visual]}
    if broken:
        for kind in BROKEN_KINDS:
            name = f"broken-{kind}-{llp_filename(rng)}"
            write_broken(out / f"{name}.mp4", kind, seed=seed)
            kinds[name] = kind
            rows.append((name, CLASSES[int(rng.integers(NUM_CLASSES))]))
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename", "event_labels"])
        writer.writerows(rows)
    (out / "events.json").write_text(json.dumps(events, indent=1, sort_keys=True))
    if broken:
        (out / "broken.json").write_text(json.dumps(kinds, indent=1, sort_keys=True))
    return manifest


def video_bytes(**kwargs) -> bytes:
    """`write_video` into memory (through a temporary file); kwargs as for write_video."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = write_video(Path(tmp) / "v.mp4", **kwargs)
        return p.read_bytes()
