"""The JPEG round trip of the official scripts (`MediaConfig.frame_source: ffmpeg-jpeg`).

AVVP-ECCV20 / VALOR `extract_frames.py` run `ffmpeg -i V -y -r 8 %06d.jpg`, and the feature scripts read those files
with PIL (`Image.open(path).convert('RGB')`). This module runs the installed ffmpeg once per video with the same
options, but writes the JPEGs to a pipe (`-f image2pipe -vcodec mjpeg`: the image2 muxer's codec and ffmpeg's default
MJPEG rate control, the same constant-frame-rate output sync) instead of files, splits the stream into its JPEG files
and decodes the ones asked for as the scripts do. A source given as bytes is written to a temporary file first (MP4
needs a seekable input).
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from typing import Sequence, Union

import numpy as np

TIMEOUT_S = 600


class FfmpegFailed(RuntimeError):
    """ffmpeg is missing or could not turn the video into JPEGs; the message says which."""


def ffmpeg_binary() -> str:
    """The installed ffmpeg, or FfmpegFailed naming what to install."""
    path = shutil.which("ffmpeg")
    if not path:
        raise FfmpegFailed("media.frame_source ffmpeg-jpeg needs the ffmpeg program on PATH (apt-get install ffmpeg)")
    return path


def jpeg_files(source: Union[str, os.PathLike, bytes], fps: float = 8.0) -> list[bytes]:
    """The JPEG files `ffmpeg -i V -r fps %06d.jpg` writes, in order, as bytes (one ffmpeg run, no files written)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        with tempfile.TemporaryDirectory(prefix="valor-jpeg-") as tmp:
            path = os.path.join(tmp, "video")
            with open(path, "wb") as fh:
                fh.write(bytes(source))
            return jpeg_files(path, fps)
    cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-i", os.fspath(source), "-r", f"{fps:g}",
           "-f", "image2pipe", "-vcodec", "mjpeg", "pipe:1"]
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT_S)
    if run.returncode != 0:
        last = (run.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1][:300]
        raise FfmpegFailed(f"ffmpeg -r {fps:g} to JPEG failed (exit {run.returncode}): {last}")
    files = split_jpegs(run.stdout)
    if not files:
        raise FfmpegFailed(f"ffmpeg -r {fps:g} wrote no JPEG")
    return files


def split_jpegs(stream: bytes) -> list[bytes]:
    """Concatenated baseline JPEG files -> each file: marker segments are skipped by their length, the entropy-coded
    data up to the next marker that is neither a stuffed 0xFF00 nor a restart marker; a file ends at EOI (0xFFD9)."""
    files, start, n = [], 0, len(stream)
    while start < n:
        if stream[start:start + 2] != b"\xff\xd8":
            raise FfmpegFailed(f"ffmpeg's MJPEG stream has no JPEG start at byte {start}")
        pos = start + 2
        while True:
            if stream[pos:pos + 2] == b"\xff\xd9":
                pos += 2
                break
            if pos + 4 > n or stream[pos] != 0xFF:
                raise FfmpegFailed(f"ffmpeg's MJPEG stream is cut or malformed at byte {pos}")
            marker = stream[pos + 1]
            pos += 2 + int.from_bytes(stream[pos + 2:pos + 4], "big")
            if marker == 0xDA:  # start of scan: entropy-coded data follows
                pos = _scan_end(stream, pos)
        files.append(stream[start:pos])
        start = pos
    return files


def _scan_end(stream: bytes, pos: int) -> int:
    """Position of the first real marker after entropy-coded data starting at `pos`."""
    while True:
        pos = stream.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(stream):
            raise FfmpegFailed("ffmpeg's MJPEG stream ends inside a scan")
        nxt = stream[pos + 1]
        if nxt != 0x00 and not 0xD0 <= nxt <= 0xD7:
            return pos
        pos += 2


def decode_jpegs(files: Sequence[bytes]) -> np.ndarray:
    """(N, H, W, 3) uint8: each JPEG as the official scripts read it, `Image.open(...).convert('RGB')`."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files])
