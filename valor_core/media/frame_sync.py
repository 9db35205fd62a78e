"""Which source frames `ffmpeg -i V -r 8 %06d.jpg` writes (AVVP-ECCV20 / VALOR `extract_frames.py`), without ffmpeg.

`-r 8` as an output option makes ffmpeg's constant-frame-rate output sync (`do_video_out`, VSYNC_CFR: the image2
muxer is neither variable-fps nor timestamp-less) place every decoded frame on the 8-fps output clock, duplicating or
dropping frames. This module replays that arithmetic from the container's timestamps (PyAV demuxes the packets; no
frame is decoded):

- a frame's time is its pts minus the file's start time (the earliest start of ANY stream: a video that starts after
  its audio gets duplicates of its first frame at the start), in output ticks of 1/8 s at ffmpeg's precision
  (rounded to 1/(8 * 2^16), plus 2^-17 to break exact midpoints);
- its duration is 8 / the stream's guessed frame rate (at most one tick), or the packet's duration when that
  rounds to at least one tick;
- delta0 = time - next output tick, delta = delta0 + duration; a frame that starts up to its duration before the
  next tick is clipped to it; delta < -1.1 drops the frame, delta > 1.1 writes lrint(delta) copies, of which
  lrint(delta0 - 0.6) (when delta0 > 1.1) repeat the previous frame; otherwise one copy;
- at the end, the last frame is repeated median(last three previous-frame repeat counts) times.

Checked against Debian's ffmpeg 5.1 by tests/test_extract_frames.py on clips at 23.976-60 fps and variable rate.
VALOR's environment pins ffmpeg 4.2.2, whose `do_video_out` has the same CFR arithmetic.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

OUTPUT_FPS = 8
_EXTRA = 1 << 16  # ffmpeg's extra precision bits for a 1/8 time base: clip(29 - log2(8), 0, 16) = 16 bits


@dataclass(frozen=True)
class VideoTiming:
    """The video stream's frames in presentation order, as ffmpeg's output sync sees them."""

    pts: tuple  # exact pts of each frame (Fractions of a second), relative to the file's start time, sorted
    durations: tuple  # packet duration of each frame (Fractions of a second; 0 = unknown)
    frame_rate: Fraction  # av_guess_frame_rate of the stream (0 = unknown)


def read_timing(source) -> VideoTiming:
    """Demux the video packets of `source` (a path, the file's bytes or a binary file object) with PyAV: their pts, durations, start."""
    import av

    if isinstance(source, (bytes, bytearray, memoryview)):
        src = io.BytesIO(bytes(source))
    else:
        src = source if hasattr(source, "read") else os.fspath(source)
    with av.open(src, mode="r") as c:
        st = c.streams.video[0]
        tb = Fraction(st.time_base)
        start_us = c.start_time or 0
        items, reordered = [], False
        for pkt in c.demux(st):
            if pkt.pts is None or pkt.size == 0 or getattr(pkt, "is_discard", False):
                continue
            items.append((pkt.pts, pkt.duration or 0))
            reordered |= pkt.dts is not None and pkt.dts != pkt.pts
        rate = st.guessed_rate or 0
        iso = "mp4" in c.format.name or "mov" in c.format.name
    if iso and reordered:  # ffmpeg <= 5.1's mov demuxer sets no packet duration on samples with composition offsets
        items = [(p, 0) for p, _ in items]
    items.sort()
    offset = _rescale(start_us, Fraction(1, 1_000_000), tb)  # ffmpeg's ts_offset, in the stream's time base
    pts = tuple((p - offset) * tb for p, _ in items)
    return VideoTiming(pts=pts, durations=tuple(d * tb for _, d in items), frame_rate=Fraction(rate))


def timing_from_starts(starts, frame_rate: float) -> VideoTiming:
    """A VideoTiming from decoder timestamps alone (no PyAV): the file's start offset and the packet durations are
    unknown, so only clips whose video starts with the file are replayed exactly."""
    pts = tuple(Fraction(float(t)).limit_denominator(1 << 20) for t in starts)
    return VideoTiming(pts=pts, durations=(Fraction(0),) * len(pts),
                       frame_rate=Fraction(frame_rate).limit_denominator(1001))


def _rescale(value: int, src: Fraction, dst: Fraction) -> int:
    """av_rescale_q with round-to-nearest, halves away from zero."""
    x = Fraction(value) * src / dst
    return int(x.numerator * 2 + x.denominator) // (2 * x.denominator) if x >= 0 else -_rescale(-value, src, dst)


def _lrint(x: float) -> int:
    return int(np.rint(x))


def ffmpeg_cfr_frames(timing: VideoTiming, fps: float = OUTPUT_FPS) -> np.ndarray:
    """Index (into `timing.pts`) of the source frame that each output frame of `ffmpeg -r fps` shows."""
    fps = Fraction(fps).limit_denominator(1001)
    default = min(float(fps / timing.frame_rate), 1.0) if timing.frame_rate else 1.0
    out: list[int] = []
    sync_opts = 0
    last_nb0 = [0, 0, 0]
    for i, (t, dur) in enumerate(zip(timing.pts, timing.durations)):
        ticks = Fraction(_rescale_fraction(t * fps * _EXTRA), _EXTRA)
        sync_ipts = float(ticks) + (np.sign(float(ticks)) / (1 << 17))
        duration = default
        if _lrint(float(dur * fps)) > 0:
            duration = float(_lrint(float(dur * fps)))
        delta0 = sync_ipts - sync_opts
        delta = delta0 + duration
        nb0, nb = 0, 1
        if delta0 < 0 < delta:
            delta0 = 0.0
        if delta < -1.1:
            nb = 0
        elif delta > 1.1:
            nb = _lrint(delta)
            if delta0 > 1.1:
                nb0 = _lrint(delta0 - 0.6)
        nb0 = min(nb0, nb)
        last_nb0 = [nb0] + last_nb0[:2]
        for k in range(nb):
            out.append(i - 1 if (k < nb0 and i > 0) else i)
        sync_opts += nb
    tail = sorted(last_nb0)[1]
    out.extend([len(timing.pts) - 1] * tail if timing.pts else [])
    return np.asarray(out, np.int64)


def _rescale_fraction(x: Fraction) -> int:
    """Round a Fraction to the nearest integer, halves away from zero (av_rescale_q's rounding)."""
    n = abs(x)
    r = int(n.numerator * 2 + n.denominator) // (2 * n.denominator)
    return r if x >= 0 else -r
