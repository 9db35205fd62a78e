"""One video file (path or bytes) -> the T frames and T audio segments the teachers need (decord).

Sampling (METHOD-NOTES, "VALOR teachers, as run for the paper"):
- Frames: the video is put on an 8-fps grid (grid frame k shows the source frame on screen at k/8 s, found from the
  presentation timestamps, so variable frame rates sample correctly); the T frames are grid frames
  round(linspace(0, N8 - 1, T)) (`frame_sampling="linspace8fps"`, the paper's) or one per segment at its middle
  (`"per_segment"`). Resized by the decoder to frame_size x frame_size *without cropping*. Optional dense stack:
  8 grid frames per segment (80 for T = 10). `frame_source` "ffmpeg-jpeg": the same picks, but the pixels are the JPEG
  files the installed ffmpeg writes for `-r 8`, read with PIL as the official scripts read them
  (valor_core.media.ffmpeg_jpeg); "decode" (default): the decoded frames.
- Audio: as VALOR's clap_preprocess.py reads it with librosa.load(sr=48000): the whole stream at its own rate
  (FFmpeg's int16 samples, channel mean), soxr HQ to 48 kHz, T segments of len // T samples starting at
  round(linspace(0, len, T + 1)) (valor_core.media.audio). `wave` keeps the native-rate clip for the audio backbones.

Length policies (`MediaConfig.length_policy`):
- "uniform" (default, the paper's): whatever the clip's length, its frames and audio are split into T equal parts:
  a 9.5-s clip gives 76 grid frames and 0.95-s segments, a 12-s clip 96 grid frames and 1.2-s segments. The last
  audio cuts leave out len % T samples. A `ShortClip`/`LongClip` issue records it.
- "pad_trim": the first T x segment_seconds are used: longer clips are truncated; shorter ones repeat their last frame
  and zero-pad their audio to exactly T x segment_seconds x 48000 samples.
The AAC tail (decoders emit whole 1024-sample frames) is kept, as librosa keeps it. Stereo sources: the mean
(L+R)/2 of the int16 channels, librosa's to_mono.

Errors: see `valor_core.media.errors`. `decode` raises only `MediaError` subclasses (fatal kinds), never anything else;
recoverable kinds are listed in `DecodedVideo.issues`. `try_decode` never raises.
"""
from __future__ import annotations

import io
import math
import os
import struct
import subprocess
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from valor_core.config import MediaConfig
from valor_core.media import audio as official_audio
from valor_core.media import errors as E
from valor_core.media import ffmpeg_jpeg, frame_sync, geometry

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]

SHORT_LONG_TOLERANCE_S = 0.05
VFR_SPREAD = 0.1  # frame durations varying by more than 10 % of the median mark a variable frame rate


@dataclass
class DecodedVideo:
    """What `decode` returns. Arrays are NumPy; `audio` is None when the audio is missing."""

    video_id: str
    # (T, S, S, 3), S = MediaConfig.frame_size (source size when 0): frame_geometry "official": float32 in [0, 1],
    # VALOR's CLIP resize; "squash": uint8 resized by the decoder
    frames: np.ndarray
    frame_indices: np.ndarray  # (T,) source frame index of each frame
    frame_times: np.ndarray  # (T,) presentation time (s) of each frame
    audio: Optional[np.ndarray]  # (T, L) float32 mono segments at sample_rate, L = len // T; None if missing
    sample_rate: int
    duration: float  # video duration (s): end of the last frame
    fps: float  # average frame rate
    size: tuple[int, int]  # source (width, height)
    audio_missing: bool = False
    audio_reason: str = ""
    dense_frames: Optional[np.ndarray] = None  # (8T, S, S, 3) uint8 when dense_frames ("official": ResNet's crop)
    dense_indices: Optional[np.ndarray] = None
    dense_small: Optional[np.ndarray] = None  # (8T, S/2, S/2, 3) uint8: R(2+1)D's stack (frame_geometry "official")
    audio_duration: float = 0.0  # seconds of audio decoded (before segmenting)
    wave: Optional[np.ndarray] = None  # (n,) float32 the whole clip at wave_rate (the file's own rate), as
    wave_rate: int = 0  # FFmpeg gives it (int16 samples, channel mean): the audio backbones' input
    issues: tuple[E.MediaIssue, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def segments(self) -> int:
        return int(self.frames.shape[0])

    def issue_kinds(self) -> list[str]:
        return [i.kind for i in self.issues]


# --- container sniffing -------------------------------------------------------------------------------------------

_ISO_TYPES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot", b"uuid", b"styp", b"moof"}


def _container(head: bytes) -> str:
    """A guess of the container from the first bytes: 'iso' (mp4/mov/3gp), 'mkv', 'avi', 'flv', 'ts', 'ogg', 'ps', ''."""
    if len(head) >= 8 and head[4:8] in _ISO_TYPES:
        return "iso"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "mkv"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "ps"
    if len(head) > 376 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47:
        return "ts"
    return ""


def _iso_truncation(read_at, size: int) -> str:
    """'' if the top-level ISO-BMFF boxes tile the data and a moov exists, else the reason it looks truncated."""
    offset, seen = 0, set()
    while offset < size:
        header = read_at(offset, 16)
        if len(header) < 8:
            return f"box header cut at byte {offset} of {size}"
        box_size, box_type = struct.unpack(">I4s", header[:8])
        if box_size == 1:
            if len(header) < 16:
                return f"box header cut at byte {offset} of {size}"
            box_size = struct.unpack(">Q", header[8:16])[0]
        elif box_size == 0:
            box_size = size - offset
        if box_size < 8:
            return f"invalid box size {box_size} at byte {offset}"
        if offset + box_size > size:
            return (f"'{box_type.decode('latin-1')}' box at byte {offset} needs {box_size} bytes, "
                    f"only {size - offset} present")
        seen.add(box_type)
        offset += box_size
    if b"moov" not in seen and b"moof" not in seen:
        return "no 'moov' box (the index written when a recording is finalised)"
    return ""


@dataclass
class _Probe:
    container: str
    has_video: bool = False
    has_audio: bool = False
    video_codec: Optional[str] = None
    audio_channels: int = 0
    width: int = 0
    height: int = 0
    video_duration: float = 0.0  # stream duration from the container (0 = unknown)
    error: str = ""


def _probe(data_or_path, video_id: str) -> _Probe:
    """Classify the source before decoding: raises the fatal kinds it can tell from bytes and stream metadata."""
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        data = bytes(data_or_path)
        size = len(data)

        def read_at(off: int, n: int) -> bytes:
            return data[off:off + n]

        opener = lambda: io.BytesIO(data)  # noqa: E731
    else:
        path = os.fspath(data_or_path)
        try:
            size = os.path.getsize(path)
            fh = open(path, "rb")
        except OSError as err:
            raise E.SourceUnreadable(video_id, f"{path}: {err.strerror or err}") from None

        def read_at(off: int, n: int) -> bytes:
            fh.seek(off)
            return fh.read(n)

        opener = lambda: path  # noqa: E731
    try:
        if size == 0:
            raise E.EmptyFile(video_id, "zero bytes")
        head = read_at(0, 4096)
        kind = _container(head)
        if kind == "iso":
            why = _iso_truncation(read_at, size)
            if why:
                raise E.TruncatedFile(video_id, why)
    finally:
        if not isinstance(data_or_path, (bytes, bytearray, memoryview)):
            fh.close()
    probe = _Probe(container=kind)
    try:
        import av

        with av.open(opener(), mode="r") as c:
            for s in c.streams:
                if s.type == "video" and not probe.has_video:
                    probe.has_video = True
                    probe.video_codec = s.codec_context.name if s.codec_context is not None else None
                    if s.codec_context is not None:
                        probe.width, probe.height = int(s.codec_context.width), int(s.codec_context.height)
                    if s.duration and s.time_base:
                        probe.video_duration = float(s.duration * s.time_base)
                elif s.type == "audio" and not probe.has_audio:
                    probe.has_audio = True
                    try:
                        probe.audio_channels = int(s.codec_context.layout.nb_channels)
                    except Exception:  # noqa: BLE001 - a layout-less stream: decord decides
                        probe.audio_channels = 0
    except ImportError:
        probe.error = "PyAV not importable"
        probe.has_video = probe.has_audio = True  # let decord decide
    except Exception as err:  # noqa: BLE001 - av raises many error types; classify by container guess
        if kind:
            raise E.TruncatedFile(video_id, f"{kind} container that no demuxer can open: {err}") from None
        raise E.NotAVideo(video_id, f"not a recognised media container ({err})") from None
    if not probe.has_video:
        raise E.NoVideoStream(video_id, "the file has no video stream" + (" (audio only)" if probe.has_audio else ""))
    if probe.video_codec is None and not probe.error:  # without PyAV there is no codec to check: decord decides
        raise E.UnknownCodec(video_id, "the video stream's codec is not supported by any decoder here")
    return probe


# --- sampling ------------------------------------------------------------------------------------------------------


def grid_count(span: float, grid_fps: float) -> int:
    """Number of grid frames (k / grid_fps for k = 0..N-1) in `span` seconds."""
    return max(1, int(math.floor(span * grid_fps + 1e-6)))


def sample_grid(span: float, segments: int, grid_fps: float = 8.0, sampling: str = "linspace8fps",
                policy: str = "uniform", segment_seconds: float = 1.0) -> np.ndarray:
    """Times (s) at which the T frames are taken, given the clip length `span` (s)."""
    if policy == "pad_trim":
        span = segments * segment_seconds
    if sampling == "linspace8fps":
        n = grid_count(span, grid_fps)
        k = np.round(np.linspace(0, n - 1, segments)).astype(np.int64)
        return k / grid_fps
    if sampling == "per_segment":
        return (np.arange(segments) + 0.5) * (span / segments)
    raise ValueError(f"unknown frame_sampling {sampling!r}")


def dense_grid(span: float, segments: int, grid_fps: float = 8.0, policy: str = "uniform",
               segment_seconds: float = 1.0) -> np.ndarray:
    """Times (s) of the dense stack: grid_fps x segment_seconds frames per segment (80 for 10 x 1 s at 8 fps)."""
    per = int(round(grid_fps * segment_seconds))
    m = per * segments
    if policy == "pad_trim":
        return np.arange(m) / grid_fps
    n = grid_count(span, grid_fps)
    if n == m:
        return np.arange(m) / grid_fps
    return np.round(np.linspace(0, n - 1, m)).astype(np.int64) / grid_fps


def frames_at(times: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Index of the source frame on screen at each time (the last frame whose start <= t), clamped to the clip."""
    idx = np.searchsorted(starts, np.asarray(times) + 1e-4, side="right") - 1
    return np.clip(idx, 0, len(starts) - 1)


def segment_audio(wave: np.ndarray, segments: int, policy: str = "uniform", sample_rate: int = 48000,
                  segment_seconds: float = 1.0) -> np.ndarray:
    """(n,) -> (T, L): uniform: VALOR's CLAP cuts (L = n // T, starts round(linspace(0, n, T + 1))); pad_trim: the
    first T x segment_seconds, zero-padded, in T consecutive parts."""
    if policy == "pad_trim":
        target = int(round(segments * segment_seconds * sample_rate))
        if len(wave) < target:
            wave = np.concatenate([wave, np.zeros(target - len(wave), wave.dtype)])
        wave = wave[:target]
        seg = len(wave) // segments
        return np.ascontiguousarray(wave[: seg * segments].reshape(segments, seg))
    return official_audio.clap_cuts(wave, segments)


# --- decode --------------------------------------------------------------------------------------------------------


def _quiet_decord():
    import decord

    try:
        decord.logging.set_level(decord.logging.QUIET)
    except Exception:  # noqa: BLE001
        pass
    return decord


def decode(source: Source, video_id: str = "", cfg: MediaConfig = MediaConfig(), strict: bool = False) -> DecodedVideo:
    """Decode one video into T frames + T audio segments; see the module docstring for sampling and policies.

    source: a path, or the file's bytes (objects read from S3). Raises only `MediaError` subclasses: the fatal kinds,
    or (strict=True) the first recoverable issue.
    """
    if not video_id:
        video_id = os.path.splitext(os.path.basename(os.fspath(source)))[0] if not isinstance(
            source, (bytes, bytearray, memoryview)) else "<bytes>"
    try:
        out = _decode(source, video_id, cfg)
    except E.MediaError:
        raise
    except Exception as err:  # noqa: BLE001 - never let a decoder's own error type escape
        raise E.DecodeFailed(video_id, f"{type(err).__name__}: {err}".strip()[:500]) from None
    if strict and out.issues:
        raise out.issues[0]
    return out


def try_decode(source: Source, video_id: str = "", cfg: MediaConfig = MediaConfig()
               ) -> tuple[Optional[DecodedVideo], Optional[E.MediaError]]:
    """`decode` that never raises: (video, None) or (None, error)."""
    try:
        return decode(source, video_id, cfg), None
    except E.MediaError as err:
        return None, err
    except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt and friends still propagate
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return None, E.DecodeFailed(video_id, f"{type(err).__name__}: {err}")


@dataclass
class _VideoPart:
    """The video half of `_decode`: sampled frames, their indices and the clip's timing and geometry."""

    frames: np.ndarray
    idx: np.ndarray
    starts: np.ndarray
    dense: Optional[np.ndarray]
    didx: Optional[np.ndarray]
    duration: float
    fps: float
    size: tuple[int, int]
    dense_small: Optional[np.ndarray] = None


@dataclass
class _AudioPart:
    """The audio half of `_decode`: (T, L) segments or the reason they are missing."""

    audio: Optional[np.ndarray] = None
    missing: bool = False
    reason: str = ""
    duration: float = 0.0
    wave: Optional[np.ndarray] = None
    wave_rate: int = 0


def _decode(source: Source, video_id: str, cfg: MediaConfig) -> DecodedVideo:
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    if is_bytes:
        source = bytes(source)
    probe = _probe(source, video_id)

    def reader_src():
        return io.BytesIO(source) if is_bytes else os.fspath(source)

    issues: list[E.MediaIssue] = []
    notes: list[str] = []
    v = _decode_video(reader_src, probe, video_id, cfg, issues, notes)
    a = _decode_audio(reader_src, probe, video_id, cfg, v.duration, issues, notes)
    return DecodedVideo(
        video_id=video_id, frames=np.ascontiguousarray(v.frames), frame_indices=v.idx.astype(np.int64),
        frame_times=v.starts[v.idx], audio=a.audio, sample_rate=int(cfg.sample_rate), duration=v.duration,
        fps=v.fps, size=v.size, audio_missing=a.missing, audio_reason=a.reason,
        dense_frames=None if v.dense is None else np.ascontiguousarray(v.dense),
        dense_indices=None if v.didx is None else v.didx.astype(np.int64), audio_duration=a.duration,
        dense_small=v.dense_small,
        wave=a.wave, wave_rate=a.wave_rate, issues=tuple(issues), notes=tuple(notes))


def _decode_video(reader_src, probe: _Probe, video_id: str, cfg: MediaConfig, issues: list, notes: list
                  ) -> _VideoPart:
    """Open the video with decord, check its length and frame rate, and take the sampled frames."""
    decord = _quiet_decord()
    T = int(cfg.segments)
    nominal = T * cfg.segment_seconds
    size = int(cfg.frame_size)
    official = cfg.frame_geometry == "official"
    kw = {"width": size, "height": size} if size > 0 and not official else {}  # official: source size, then geometry
    try:
        vr = decord.VideoReader(reader_src(), ctx=decord.cpu(0), num_threads=int(cfg.decode_threads), **kw)
    except Exception as err:  # noqa: BLE001
        msg = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        if "cannot find video stream" in msg:
            raise E.UnknownCodec(video_id, f"decord found no decodable video stream ({probe.video_codec})") from None
        raise E.DecodeFailed(video_id, f"decord could not open the video: {msg}") from None
    try:
        n = len(vr)
        ts = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
        starts = ts[:, 0]
        duration = float(ts[-1, 1]) if n else 0.0
        if ts[-1, 0] < probe.video_duration <= ts[-1, 0] + 1.0:  # the container knows the last frame's duration
            duration = probe.video_duration
        fps = float(vr.get_avg_fps())
        src_w, src_h = probe.width, probe.height
        if not (src_w and src_h):
            src_h, src_w = (int(x) for x in vr[0].shape[:2]) if size <= 0 else (size, size)
        if duration < cfg.min_duration:
            raise E.TooShort(video_id, f"{duration:.2f} s of video < min_duration {cfg.min_duration:g} s")
        if n > 2:
            d = np.diff(starts)
            med = float(np.median(d))
            if med > 0 and float(d.max() - d.min()) > VFR_SPREAD * med:
                issues.append(E.VariableFrameRate(
                    video_id, f"frame durations {d.min() * 1e3:.1f}-{d.max() * 1e3:.1f} ms (median {med * 1e3:.1f})"))
                notes.append("variable frame rate: frames picked by presentation time")
        if cfg.frame_source == "ffmpeg-jpeg":
            frames, dense, idx, didx = _jpeg_frames(reader_src, starts, fps, cfg, video_id, notes)
        else:
            idx, didx = _pick_frames(reader_src, starts, duration, fps, cfg)
            frames, dense = _decoded_frames(vr, idx, didx, video_id)
    finally:
        del vr
    small = None
    if official and size > 0:
        frames, dense, small = _official_geometry(frames, dense, size)
    if src_w < src_h or src_w % 2 or src_h % 2 or min(src_w, src_h) < 64:
        issues.append(E.UnusualGeometry(video_id, f"{src_w}x{src_h} source"))
        if size > 0:
            notes.append(f"{src_w}x{src_h} source: each official script's resize/crop" if official else
                         f"{src_w}x{src_h} resized to {size}x{size} without cropping")
    if duration < nominal - SHORT_LONG_TOLERANCE_S or duration > nominal + SHORT_LONG_TOLERANCE_S:
        cls = E.ShortClip if duration < nominal else E.LongClip
        if cfg.length_policy == "uniform":
            how = f"uniform: {T} segments of {duration / T:.3f} s"
        elif duration < nominal:
            how = f"pad_trim: last frame repeated and audio zero-padded to {nominal:g} s"
        else:
            how = f"pad_trim: first {nominal:g} s used"
        issues.append(cls(video_id, f"{duration:.2f} s vs {nominal:g} s nominal; {how}"))
        notes.append(how)
    return _VideoPart(frames=frames, idx=idx, starts=starts, dense=dense, didx=didx, duration=duration, fps=fps,
                      size=(src_w, src_h), dense_small=small)


def _decoded_frames(vr, idx: np.ndarray, didx: Optional[np.ndarray], video_id: str):
    """The source frames `idx` (and the stack `didx`) decoded by decord, each decoded once."""
    unique = np.unique(idx if didx is None else np.concatenate([idx, didx]))
    try:
        batch = vr.get_batch(unique.tolist()).asnumpy()
    except Exception as err:  # noqa: BLE001
        raise E.DecodeFailed(video_id, f"decoding frames failed: {str(err).splitlines()[0][:300]}") from None
    pos = {int(i): j for j, i in enumerate(unique)}
    return batch[[pos[int(i)] for i in idx]], batch[[pos[int(i)] for i in didx]] if didx is not None else None


def _jpeg_frames(reader_src, starts: np.ndarray, avg_fps: float, cfg: MediaConfig, video_id: str, notes: list):
    """frame_source "ffmpeg-jpeg": the JPEGs `ffmpeg -r grid_fps` writes (valor_core.media.ffmpeg_jpeg), picked at the
    same positions as the decoded path and read with PIL -> (frames, stack, their source frame indices from the
    replayed grid)."""
    src = reader_src()
    try:
        files = ffmpeg_jpeg.jpeg_files(src.getvalue() if hasattr(src, "getvalue") else src, cfg.grid_fps)
    except (ffmpeg_jpeg.FfmpegFailed, OSError, subprocess.SubprocessError) as err:
        raise E.DecodeFailed(video_id, str(err)[:500]) from None
    grid = _ffmpeg_grid(reader_src, starts, cfg.grid_fps, avg_fps)
    if len(grid) != len(files):
        notes.append(f"ffmpeg wrote {len(files)} JPEGs where {len(grid)} were expected: frame indices approximate")
        grid = grid[np.minimum(np.arange(len(files)), len(grid) - 1)]
    pos, dpos = grid_positions(len(files), cfg)
    unique = np.unique(pos if dpos is None else np.concatenate([pos, dpos]))
    pixels = ffmpeg_jpeg.decode_jpegs([files[i] for i in unique])
    at = np.searchsorted(unique, pos)
    dense = pixels[np.searchsorted(unique, dpos)] if dpos is not None else None
    return pixels[at], dense, grid[pos], grid[dpos] if dpos is not None else None


def grid_positions(n_written: int, cfg: MediaConfig) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Which of the n frames `ffmpeg -r grid_fps` writes the official scripts read: round(linspace(0, N - 1, T)) for
    the T frames and round(linspace(0, N - 1, 8T)) for the stack (cfg.dense_frames, else None); N = n (uniform) or
    the grid frames of the first T x segment_seconds (pad_trim: the last frame repeated past the end)."""
    T = int(cfg.segments)
    n = n_written if cfg.length_policy == "uniform" else grid_count(T * cfg.segment_seconds, cfg.grid_fps)
    per = int(round(cfg.grid_fps * cfg.segment_seconds))
    pos = np.minimum(linspace_positions(n, T), n_written - 1)
    dpos = np.minimum(linspace_positions(n, per * T), n_written - 1) if cfg.dense_frames else None
    return pos, dpos


def _pick_frames(reader_src, starts: np.ndarray, duration: float, avg_fps: float, cfg: MediaConfig
                 ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Source frame indices of the T frames and (cfg.dense_frames) of the 8T-frame stack.

    frame_grid "ffmpeg" (linspace8fps): the grid is the frames `ffmpeg -r grid_fps` writes (valor_core.media.frame_sync);
    the T frames are grid[round(linspace(0, N - 1, T))] and the stack grid[round(linspace(0, N - 1, 8T))], as the
    official scripts index the JPEGs (pad_trim: positions on the first T x segment_seconds of grid, the last frame
    repeated past the end). Otherwise the frame on screen at each grid time."""
    T = int(cfg.segments)
    if cfg.frame_grid == "ffmpeg" and cfg.frame_sampling == "linspace8fps":
        grid = _ffmpeg_grid(reader_src, starts, cfg.grid_fps, avg_fps)
        pos, dpos = grid_positions(len(grid), cfg)
        return grid[pos], grid[dpos] if dpos is not None else None
    times = sample_grid(duration, T, cfg.grid_fps, cfg.frame_sampling, cfg.length_policy, cfg.segment_seconds)
    didx = None
    if cfg.dense_frames:
        didx = frames_at(dense_grid(duration, T, cfg.grid_fps, cfg.length_policy, cfg.segment_seconds), starts)
    return frames_at(times, starts), didx


def linspace_positions(n: int, k: int) -> np.ndarray:
    """np.round(np.linspace(0, n - 1, k)): which of n JPEGs the official scripts read (round half to even)."""
    return np.round(np.linspace(0, n - 1, k)).astype(np.int64)


def _ffmpeg_grid(reader_src, starts: np.ndarray, fps: float, avg_fps: float) -> np.ndarray:
    """The decord frame index of every frame `ffmpeg -r fps` writes; matched by position when the demuxed frame count
    equals decord's, else by time from the first frame."""
    try:
        timing = frame_sync.read_timing(reader_src())
    except ImportError:  # no PyAV: decord's timestamps (relative to the first frame, no packet durations)
        timing = frame_sync.timing_from_starts(starts - starts[0], avg_fps)
    chosen = frame_sync.ffmpeg_cfr_frames(timing, fps)
    if len(timing.pts) == len(starts):
        return chosen
    rel = np.asarray([float(t - timing.pts[0]) for t in timing.pts])
    return frames_at(rel[chosen], starts - starts[0])


def _official_geometry(frames: np.ndarray, dense: Optional[np.ndarray], size: int):
    """Source-size frames -> (CLIP's float input, ResNet-152's crop of the stack, R(2+1)D's 112-px stack)."""
    clip = geometry.clip_pixels(frames, size)
    if dense is None:
        return clip, None, None
    return clip, geometry.resnet_frames(dense, size), geometry.r2plus1d_frames(dense, size // 2)


def _decode_audio(reader_src, probe: _Probe, video_id: str, cfg: MediaConfig, duration: float, issues: list,
                  notes: list) -> _AudioPart:
    """Read the whole audio stream at its own rate (valor_core.media.audio.read_native), resample it to
    cfg.sample_rate as librosa.load does and cut it into T segments (uniform: VALOR's CLAP cuts)."""
    T = int(cfg.segments)
    out = _AudioPart()
    sr = int(cfg.sample_rate)
    if not probe.has_audio:
        out.missing, out.reason = True, "no audio stream"
        issues.append(E.NoAudioTrack(video_id, out.reason))
        return out
    try:
        if probe.error:  # no PyAV: decord decodes (and resamples) the audio
            native, rate = official_audio.read_decord(reader_src(), sr, probe.audio_channels)
            notes.append("audio resampled by decord (PyAV not importable)")
        else:
            native, rate = official_audio.read_native(reader_src())
    except official_audio.NoAudio:
        out.missing, out.reason = True, "no audio stream"
        issues.append(E.NoAudioTrack(video_id, out.reason))
        return out
    except Exception as err:  # noqa: BLE001 - any decoder error is this video's audio failure
        msg = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        if "Can't find audio stream" in msg:
            out.missing, out.reason = True, "no audio stream"
            issues.append(E.NoAudioTrack(video_id, out.reason))
            return out
        out.missing, out.reason = True, f"audio decode failed: {msg}"
        issues.append(E.AudioDecodeFailed(video_id, out.reason))
        return out
    if probe.audio_channels == 2:
        notes.append("stereo downmixed to the mean (L+R)/2")
    wave = official_audio.librosa_resample(native, rate, sr)
    out.wave, out.wave_rate, out.duration = native, rate, len(wave) / sr
    if len(wave) < T:
        out.missing, out.reason = True, f"{len(wave)} audio samples < {T} segments"
        issues.append(E.AudioDecodeFailed(video_id, out.reason))
        return out
    out.audio = segment_audio(wave, T, cfg.length_policy, sr, cfg.segment_seconds)
    if cfg.length_policy == "uniform" and len(wave) % T:
        notes.append(f"audio segments of {len(wave) // T} samples at round(linspace(0, {len(wave)}, {T + 1})) "
                     "(VALOR clap_preprocess)")
    peak = float(np.abs(wave).max()) if len(wave) else 0.0
    if peak < cfg.silence_threshold:
        issues.append(E.SilentAudio(video_id, f"peak amplitude {peak:.2e} < {cfg.silence_threshold:g}"))
        notes.append("silent audio kept as is")
    return out
