"""Speed of `valor parse` on CPU with the tiny teachers: model loading apart from the seconds per 10-s video after it.

    .venv/bin/python bench/parse.py [--videos 4] [--threads 2]

Writes tiny random CLIP/CLAP teachers and an untrained tiny clip_clap HAN checkpoint (the test suite's), N synth 10-s
videos (160x96, 8 fps, with audio), and runs `valor parse --no-ray --json` on them in this process; prints the
load time, each video's time and the mean. The target (issue 24) is <= 6 s per 10-s video on a 2-core CPU; it is
printed, not asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

TARGET_S = 6.0


def tiny_checkpoint(root: Path, clip_dim: int, clap_dim: int) -> str:
    """An untrained clip_clap HAN of the tiny teachers' widths, saved as a `valor train` checkpoint dir."""
    from valor_core.config import replace, to_dict
    from valor_core.fit import build_model
    from valor_core.presets import get_preset
    from workflows.checkpoints import save_checkpoint_dir

    cfg = replace(get_preset("valor"), features="clip_clap", device="cpu",
                  **{"model.audio_dim": clap_dim, "model.frame_dim": clip_dim, "model.frame_steps": 1,
                     "model.clip_dim": 0, "model.hidden": 32, "model.heads": 1, "model.ff": 64})
    state = build_model(cfg).state_dict()
    return save_checkpoint_dir(str(root / "ckpt"), model_state=state, best_state=state, optimizer_state=None,
                               state={}, config={"train": to_dict(cfg), "data": {}})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=4, help="10-s videos to parse")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    import torch

    from valor_core.config import TeacherConfig
    from valor_core.media.synth import random_content, write_video
    from valor_core.teachers import load_clap_teacher, load_clip_teacher
    from valor_core.teachers.tiny import write_tiny_teachers
    from workflows.cli import main as valor

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        specs = write_tiny_teachers(root / "teachers", seed=0)
        os.environ.update(specs["env"])
        tcfg = TeacherConfig(device="cpu")
        dims = load_clip_teacher(specs["clip"], tcfg).dim, load_clap_teacher(specs["clap"], tcfg).dim
        ckpt = tiny_checkpoint(root, *dims)
        rng = np.random.default_rng(0)
        for i in range(args.videos):
            write_video(root / "videos" / f"v{i}.mp4", duration=10.0, fps=8, size=(160, 96),
                        content=random_content(rng), seed=i)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            rc = valor(["parse", str(root / "videos"), "--checkpoint", ckpt, "--clip", specs["clip"], "--clap",
                        specs["clap"], "--out", str(root / "out"), "--no-ray", "--device", "cpu", "--json"])
        last = json.loads(out.getvalue().strip().splitlines()[-1])
    if rc != 0:
        print(f"bench/parse.py: valor parse exited {rc}: {last}", file=sys.stderr)
        return 1
    per = list(last["video_s"].values())
    mean = sum(per) / len(per)
    print(f"models loaded in {last['load_s']:.2f} s ({last['model_loads']} load)")
    print("per video (s): " + ", ".join(f"{v} {s:.2f}" for v, s in last["video_s"].items()))
    print(f"{mean:.2f} s/video after load on {args.threads} thread(s) (target <= {TARGET_S:g} s per 10-s video: "
          f"{'met' if mean <= TARGET_S else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
