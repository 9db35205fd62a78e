"""Per-clip decode cost of valor_core.media.decode vs the ffmpeg command line doing the same work, same run.

    .venv/bin/python bench/decode.py [--repeats 15] [--threads 1] [--dense]

Work per clip (a 10-s 640x360 H.264 + AAC mp4 written by valor_core.media.synth, x264 defaults: GOP 250, crf 23):
the 10 frames VALOR's CLIP teacher uses (8-fps grid, round(linspace)), resized to 224x224, plus the whole audio track
as mono float32 at 48 kHz. The ffmpeg floor decodes exactly those frames (select filter on the same frame numbers,
scale=224:224, rgb24) and the audio (-ac 1 -ar 48000 f32le) in one command writing to /dev/null-like pipes; its time
includes process start, as a user of the command line would pay. Both run single-threaded by default (--threads).
Target: valor / ffmpeg <= 1.2 (medians). ffmpeg missing: `apt-get update && apt-get install -y ffmpeg`.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from valor_core.config import MediaConfig  # noqa: E402
from valor_core.media import decode  # noqa: E402
from valor_core.media.synth import write_video  # noqa: E402


def ffmpeg_cmd(path: Path, frames: list[int], threads: int, dense: bool) -> list[str]:
    select = "+".join(f"eq(n\\,{i})" for i in frames)
    return ["ffmpeg", "-nostdin", "-v", "error", "-threads", str(threads), "-i", str(path),
            "-map", "0:v", "-vf", f"select='{select}',scale=224:224", "-vsync", "0", "-f", "rawvideo",
            "-pix_fmt", "rgb24", "pipe:1",
            "-map", "0:a", "-ac", "1", "-ar", "48000", "-f", "f32le", "pipe:2"] if not dense else []


def run_ffmpeg(cmd: list[str]) -> tuple[float, int, int]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-500:].decode(errors="replace"))
    return dt, len(p.stdout), len(p.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="decoder threads for both (default 1)")
    ap.add_argument("--dense", action="store_true", help="also time valor with the 80-frame dense stack")
    args = ap.parse_args()
    if shutil.which("ffmpeg") is None:
        print("ffmpeg is not installed: `apt-get update && apt-get install -y ffmpeg` (Debian), then re-run",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_video(Path(tmp) / "clip.mp4", duration=10.0, fps=25, size=(640, 360), preset="veryfast")
        cfg = MediaConfig(decode_threads=args.threads)
        v = decode(clip, cfg=cfg)  # warm-up; also gives the frame numbers ffmpeg must select
        frames = v.frame_indices.tolist()
        cmd = ffmpeg_cmd(clip, frames, args.threads, False)
        _, nv, na = run_ffmpeg(cmd)
        assert nv == 10 * 224 * 224 * 3, f"ffmpeg returned {nv} video bytes"
        ours, theirs, dense = [], [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            t = time.perf_counter()
            decode(clip, cfg=cfg)
            ours.append(time.perf_counter() - t)
            theirs.append(run_ffmpeg(cmd)[0])
            if args.dense:
                t = time.perf_counter()
                decode(clip, cfg=MediaConfig(decode_threads=args.threads, dense_frames=True))
                dense.append(time.perf_counter() - t)
        med_o, med_f = statistics.median(ours), statistics.median(theirs)
        print(f"clip: 10 s 640x360 H.264 + AAC, {clip.stat().st_size / 1e3:.0f} kB; frames {frames}; "
              f"audio {v.audio.shape} (ffmpeg: {na // 4} samples); threads {args.threads}; {args.repeats} runs")
        print(f"valor decode (decord): median {med_o * 1e3:.1f} ms, min {min(ours) * 1e3:.1f} ms")
        print(f"ffmpeg CLI floor:      median {med_f * 1e3:.1f} ms, min {min(theirs) * 1e3:.1f} ms")
        if dense:
            print(f"valor decode + 80-frame dense stack: median {statistics.median(dense) * 1e3:.1f} ms")
        print(f"ratio valor/ffmpeg: {med_o / med_f:.2f} (medians), {min(ours) / min(theirs):.2f} (minima); "
              f"target <= 1.2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
