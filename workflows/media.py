"""`valor media synth`, `valor teachers tiny`, `valor teach`: test media, offline smoke-test teachers, one video's logits.

    valor media synth OUT_DIR --videos N [--broken] [--seed S]
        writes OUT_DIR/<filename>.mp4 (LLP-style names, H.264 + AAC) and OUT_DIR/manifest.csv (LLP format);
        last line {"videos": N, "manifest": PATH, "broken": K}
    valor teachers tiny OUT_DIR [--seed S] [--amodel HTSAT-tiny]
        writes random-init open_clip + laion_clap teachers that load offline;
        last line {"clip": SPEC, "clap": SPEC, "env": {VAR: VALUE}}
    valor teach VIDEO [--clip SPEC] [--clap SPEC] [--json] [--top K]
        per-segment top classes and logits of both teachers; with --json the last line is
        {"video": ID, "clip_logits": TxC, "clap_logits": TxC or null, "clip_dim": d, "clap_dim": d, ...}
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from valor_core.classes import CLASSES
from valor_core.config import TeacherConfig
from valor_core.media import MediaError, decode
from valor_core.media.synth import BROKEN_KINDS, synth_corpus
from valor_core.teachers import TeacherError, load_clap_teacher, load_clip_teacher
from valor_core.teachers.tiny import write_tiny_teachers


def register(sub: argparse._SubParsersAction) -> None:
    media = sub.add_parser("media", help="test media: write synthetic LLP-style mp4 corpora")
    msub = media.add_subparsers(dest="media_command", metavar="SUBCOMMAND")
    synth = msub.add_parser("synth", help="write N synthetic H.264+AAC videos and an LLP-format manifest")
    synth.add_argument("out_dir", help="folder for the videos and manifest.csv")
    synth.add_argument("--videos", type=int, default=10, help="number of good videos (default 10)")
    synth.add_argument("--broken", action="store_true", help="also write one file of every broken kind")
    synth.add_argument("--seed", type=int, default=0, help="random seed of labels and content (default 0)")
    synth.add_argument("--duration", type=float, default=10.0, help="seconds per video (default 10)")
    synth.add_argument("--size", default="320x180", help="WIDTHxHEIGHT (default 320x180)")
    synth.add_argument("--fps", type=float, default=25.0, help="frames per second (default 25)")
    synth.set_defaults(func=cmd_synth)
    media.set_defaults(func=lambda args: (media.print_help(), 2)[1])

    teachers = sub.add_parser("teachers", help="teacher utilities")
    tsub = teachers.add_subparsers(dest="teachers_command", metavar="SUBCOMMAND")
    tiny = tsub.add_parser("tiny", help="write small random-init CLIP/CLAP teachers that load offline")
    tiny.add_argument("out_dir", help="folder for the two teachers' files")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    tiny.add_argument("--amodel", default="HTSAT-tiny", help="laion_clap audio tower (default HTSAT-tiny)")
    tiny.add_argument("--json", action="store_true", help="only the JSON line on stdout (the notes go to stderr)")
    tiny.set_defaults(func=cmd_tiny)
    teachers.set_defaults(func=lambda args: (teachers.print_help(), 2)[1])

    teach = sub.add_parser("teach", help="one video's per-segment CLIP and CLAP logits")
    teach.add_argument("video", help="a video file")
    teach.add_argument("--clip", default=None, help="CLIP teacher: tiny, a folder or ARCH:PRETRAINED (default "
                       "ViT-L-14:openai)")
    teach.add_argument("--clap", default=None, help="CLAP teacher: tiny, a folder or a checkpoint file "
                       "(default 630k-fusion-best.pt)")
    teach.add_argument("--json", action="store_true", help="end with one JSON line of logits")
    teach.add_argument("--top", type=int, default=3, help="classes shown per segment (default 3)")
    teach.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda")
    teach.set_defaults(func=cmd_teach)


def cmd_synth(args) -> int:
    try:
        w, h = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        print(f"--size must be WIDTHxHEIGHT, got {args.size!r}", file=sys.stderr)
        return 2
    manifest = synth_corpus(args.out_dir, args.videos, broken=args.broken, seed=args.seed, duration=args.duration,
                            size=(w, h), fps=args.fps)
    n_broken = len(BROKEN_KINDS) if args.broken else 0
    print(f"wrote {args.videos} videos" + (f" + {n_broken} broken files" if n_broken else "") + f" to {args.out_dir}")
    print(json.dumps({"videos": args.videos, "manifest": str(manifest), "broken": n_broken}))
    return 0


def cmd_tiny(args) -> int:
    specs = write_tiny_teachers(args.out_dir, seed=args.seed, amodel=args.amodel)
    note = sys.stderr if getattr(args, "json", False) else sys.stdout
    print("tiny random-init teachers (smoke tests only: their logits mean nothing)", file=note)
    print(f"  --clip {specs['clip']}", file=note)
    print(f"  --clap {specs['clap']}", file=note)
    print("  spec syntax: CLIP 'CONFIG.json:CHECKPOINT' (open_clip); CLAP a spec JSON naming checkpoint, audio tower "
          "and the Hugging Face cache holding its tokenizers/text model", file=note)
    if specs["env"]:
        print("  other processes importing laion_clap first: export " +
              " ".join(f"{k}={v}" for k, v in specs["env"].items()), file=note)
    print(json.dumps(specs))
    return 0


def _top(row, k: int) -> str:
    order = sorted(range(len(row)), key=lambda c: -row[c])[:k]
    return ", ".join(f"{CLASSES[c]} {row[c]:.2f}" for c in order)


def cmd_teach(args) -> int:
    tcfg = TeacherConfig(device=args.device)
    clip_spec = args.clip or tcfg.clip
    clap_spec = args.clap or tcfg.clap
    try:
        video = decode(args.video)
    except MediaError as err:
        print(f"valor teach: {err}", file=sys.stderr)
        return 1
    try:
        clip = load_clip_teacher(clip_spec, tcfg)
        clap = load_clap_teacher(clap_spec, tcfg)
    except (TeacherError, FileNotFoundError) as err:
        print(f"valor teach: {err}", file=sys.stderr)
        return 2
    clip_logits = clip.segment_logits([video])[0][0]
    clap_logits = None if video.audio is None else clap.segment_logits([video])[0][0]
    print(f"{video.video_id}: {video.duration:.2f} s, {video.fps:.2f} fps, {video.size[0]}x{video.size[1]}"
          + (f"; issues: {', '.join(video.issue_kinds())}" if video.issues else ""))
    print(f"CLIP {clip.spec} (d={clip.dim}, scale {clip.logit_scale:.2f}) | CLAP {clap.spec} (d={clap.dim}, "
          f"scale {clap.logit_scale:.2f})")
    for t in range(clip_logits.shape[0]):
        audio = _top(clap_logits[t], args.top) if clap_logits is not None else f"(audio missing: {video.audio_reason})"
        print(f"  seg {t}: visual {_top(clip_logits[t], args.top)} | audio {audio}")
    if args.json:
        r = lambda a: None if a is None else np.round(a.astype(np.float64), 5).tolist()  # noqa: E731
        print(json.dumps({"video": video.video_id, "clip_logits": r(clip_logits), "clap_logits": r(clap_logits),
                          "clip_dim": clip.dim, "clap_dim": clap.dim, "clip_spec": clip.spec, "clap_spec": clap.spec,
                          "issues": video.issue_kinds(), "audio_missing": video.audio_missing}))
    return 0
