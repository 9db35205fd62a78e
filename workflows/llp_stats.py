"""`valor data stats`: what is in an LLP split, or in the AVE splits.

    valor data stats --annotations DIR --split {train,val,test,full} [--audio-file F] [--json]
    valor data stats --dataset ave [--annotations DIR] [--split {train,val,test,full}] [--json]

Reports the number of videos, the histogram of labels per video, per-class video counts (weak labels), and for splits
with dense GT (val/test): `segment_events` = segment-level events (video, segment, class) active in audio or visual,
each counted once, and `non_aligned` = how many of those are active in exactly one modality (null for train/full).

AVE (`--dataset ave`, annotations: valor_core.ave; default split `full`): the sizes of the three *_order.h5 splits,
then for the chosen split the videos per class, event segments vs background segments, and the event length in
segments (mean, median, min, max, histogram; full_length = events covering all 10 segments).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from valor_core.ave import AVEError, SPLITS as AVE_SPLITS, load_splits as load_ave_splits
from valor_core.classes import CLASSES
from valor_core.llp import AnnotationError, default_annotations, load_split


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("data", help="LLP annotation utilities (stats)")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    s = sub.add_parser("stats", help="videos, label histogram, per-class counts, segment-level events of a split",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--dataset", default="llp", choices=("llp", "ave"), help="which annotations (default: %(default)s)")
    s.add_argument("--annotations", default=None, metavar="DIR", help="directory with the LLP annotation CSVs "
                   "(default: $VALOR_ANNOTATIONS, else the LLP files shipped with valor); with --dataset ave, the "
                   "directory with Annotations.txt and *_order.h5 (default: the AVE files shipped with valor)")
    s.add_argument("--split", default=None, choices=("train", "val", "test", "full"),
                   help="required for llp; for ave default full")
    s.add_argument("--audio-file", default="AVVP_eval_audio.csv", metavar="F",
                   help="dense audio annotation file, relative to DIR (default: %(default)s)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=run_stats, stats_parser=s)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def split_stats(split) -> dict[str, Any]:
    weak = split.weak.astype(np.int64)
    k = weak.sum(axis=1)
    hist = {str(int(v)): int(c) for v, c in zip(*np.unique(k, return_counts=True))}
    out: dict[str, Any] = {
        "split": split.name,
        "videos": int(len(split)),
        "label_count_histogram": hist,
        "class_counts": {name: int(n) for name, n in zip(CLASSES, weak.sum(axis=0))},
        "segment_events": None,
        "non_aligned": None,
    }
    if split.audio_gt is not None:
        a, v = split.audio_gt.astype(bool), split.visual_gt.astype(bool)
        out["segment_events"] = int(np.count_nonzero(a | v))
        out["non_aligned"] = int(np.count_nonzero(a ^ v))
        out["audio_segment_events"] = int(np.count_nonzero(a))
        out["visual_segment_events"] = int(np.count_nonzero(v))
        out["av_segment_events"] = int(np.count_nonzero(a & v))
    return out


def format_stats(s: dict[str, Any]) -> str:
    lines = [f"LLP {s['split']}: {s['videos']} videos",
             "labels per video: " + ", ".join(f"{k}: {n}" for k, n in s["label_count_histogram"].items())]
    if s["segment_events"] is not None:
        frac = 100.0 * s["non_aligned"] / max(s["segment_events"], 1)
        lines.append(f"segment-level events (audio or visual): {s['segment_events']}  "
                     f"(audio {s['audio_segment_events']}, visual {s['visual_segment_events']}, "
                     f"both {s['av_segment_events']}); non-aligned (one modality only): {s['non_aligned']} ({frac:.1f}%)")
    lines.append("videos per class:")
    width = max(len(c) for c in s["class_counts"])
    lines += [f"  {c:{width}s} {n:6d}" for c, n in s["class_counts"].items()]
    return "\n".join(lines)


def ave_stats(splits: dict, name: str) -> dict[str, Any]:
    split = splits[name]
    length = (split.end - split.start).astype(np.int64)
    seg = split.segments
    return {
        "dataset": "ave",
        "split": name,
        "videos": int(len(split)),
        "splits": {s: int(len(splits[s])) for s in AVE_SPLITS},
        "classes": len(split.classes) - 1,
        "class_counts": {c: int(n) for c, n in zip(split.classes[:-1], np.bincount(split.category,
                                                                                 minlength=len(split.classes) - 1))},
        "event_segments": int(np.count_nonzero(seg != split.background)),
        "background_segments": int(np.count_nonzero(seg == split.background)),
        "event_length": {"mean": round(float(length.mean()), 4), "median": float(np.median(length)),
                         "min": int(length.min()), "max": int(length.max()),
                         "full_length": int(np.count_nonzero(length == 10)),
                         "histogram": {str(k): int(n) for k, n in enumerate(np.bincount(length, minlength=11)) if n}},
        "repeated_video_ids": int(np.count_nonzero(np.unique(split.video_ids, return_counts=True)[1] > 1)),
    }


def format_ave_stats(s: dict[str, Any]) -> str:
    e = s["event_length"]
    total = s["event_segments"] + s["background_segments"]
    lines = [f"AVE {s['split']}: {s['videos']} videos, {s['classes']} event classes + background; splits: "
             + ", ".join(f"{k} {n}" for k, n in s["splits"].items()),
             f"segments: {s['event_segments']} event, {s['background_segments']} background "
             f"({100.0 * s['background_segments'] / max(total, 1):.1f}%)",
             f"event length (segments): mean {e['mean']:.2f}, median {e['median']:g}, min {e['min']}, max {e['max']}, "
             f"full 10 s {e['full_length']}",
             "  histogram: " + ", ".join(f"{k}: {n}" for k, n in e["histogram"].items()),
             f"video ids appearing more than once: {s['repeated_video_ids']}",
             "videos per class:"]
    width = max(len(c) for c in s["class_counts"])
    lines += [f"  {c:{width}s} {n:6d}" for c, n in s["class_counts"].items()]
    return "\n".join(lines)


def run_ave_stats(args: argparse.Namespace) -> int:
    try:
        splits = load_ave_splits(args.annotations)
    except AVEError as err:
        print(f"valor data stats: error: {err}", file=sys.stderr)
        return 1
    s = ave_stats(splits, args.split or "full")
    print(json.dumps(s) if args.json else format_ave_stats(s))
    return 0


def run_stats(args: argparse.Namespace) -> int:
    if getattr(args, "dataset", "llp") == "ave":
        return run_ave_stats(args)
    if args.split is None:
        args.stats_parser.error("the following arguments are required: --split")
    try:
        split = load_split(args.annotations or default_annotations(), args.split, audio_file=args.audio_file)
    except AnnotationError as err:
        print(f"valor data stats: error: {err}", file=sys.stderr)
        return 1
    s = split_stats(split)
    print(json.dumps(s) if args.json else format_stats(s))
    return 0
