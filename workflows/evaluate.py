"""`valor evaluate`: the official AVVP numbers (segment + event level) and label fidelity of predictions on val/test.

    valor evaluate --annotations DIR --split {val,test} --predictions {naive,FILE.npz} [--audio-file F] [--json]
    valor evaluate --annotations DIR --split {val,test} --checkpoint RUN_OR_PATH [--features SOURCE] [--json]

Predictions come from a *source*: `--predictions naive` (each video's weak labels on all 10 segments of both
modalities) or `--predictions FILE.npz` (`video_ids` (N,) str, `audio` and `visual` (N, 10, 25) 0/1). Split videos
missing from the file are an error naming them; extra ids are ignored with a warning on stderr.

Hook for later stages (`--checkpoint`): add an option to the mutually exclusive group returned by `add_arguments` and a
branch in `load_predictions`; everything after that (alignment, scoring, printing) is shared.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

SPLITS = ("val", "test")


def add_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """Arguments of `valor evaluate`; returns the prediction-source group so other sources can be added."""
    parser.add_argument("--annotations", required=True, metavar="DIR", help="directory with the LLP annotation CSVs")
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--audio-file", default="AVVP_eval_audio.csv", metavar="F",
                        help="dense audio annotation file, relative to DIR (default: %(default)s; the 2020 version "
                             "is orig_2020/AVVP_eval_audio.csv)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", metavar="{naive,FILE.npz}",
                        help="'naive' (weak labels on every segment of both modalities) or an .npz with video_ids, "
                             "audio, visual (N, 10, 25)")
    source.add_argument("--checkpoint", metavar="RUN_OR_PATH",
                        help="predict with a trained HAN: an MLflow run id of `valor train`, or a checkpoint dir")
    parser.add_argument("--features", metavar="SOURCE", help="with --checkpoint: features to predict from (default: "
                        "the source the run was trained on, e.g. sim:0)")
    parser.add_argument("--tracking-uri", metavar="URI", help="with --checkpoint RUN: the MLflow store (default: "
                        "$MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)")
    return source


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("evaluate", help="official AVVP metrics + label fidelity of predictions on val/test",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


class EvaluateError(Exception):
    pass


def align_predictions(split_ids: np.ndarray, pred_ids: np.ndarray, audio: np.ndarray, visual: np.ndarray,
                      source: str = "predictions") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of audio/visual reordered to `split_ids`. Missing split videos raise EvaluateError naming them; returns
    the extra ids (not in the split) so the caller can warn."""
    pred_ids = np.asarray(pred_ids).astype(str)
    for name, arr in (("audio", audio), ("visual", visual)):
        if arr.ndim != 3 or arr.shape[0] != len(pred_ids) or arr.shape[1:] != (10, 25):
            raise EvaluateError(f"{source}: {name} must be ({len(pred_ids)}, 10, 25), got {arr.shape}")
    where: dict[str, int] = {}
    for i, v in enumerate(pred_ids.tolist()):
        where.setdefault(v, i)
    missing = [v for v in split_ids.tolist() if v not in where]
    if missing:
        shown = ", ".join(missing[:20]) + (f", ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise EvaluateError(f"{source}: {len(missing)} video(s) of the split missing: {shown}")
    split_set = set(split_ids.tolist())
    extra = [v for v in where if v not in split_set]
    rows = np.fromiter((where[v] for v in split_ids.tolist()), dtype=np.int64, count=len(split_ids))
    return audio[rows], visual[rows], extra


def load_predictions(args: argparse.Namespace, split) -> tuple[np.ndarray, np.ndarray]:
    """(audio, visual) 0/1 predictions (N, 10, 25) aligned to `split.video_ids`, from the chosen source."""
    if getattr(args, "checkpoint", None):
        from workflows.train_ray import checkpoint_predictions

        return checkpoint_predictions(args, split)
    if args.predictions == "naive":
        naive = np.repeat(split.weak[:, None, :], 10, axis=1)
        return naive, naive.copy()
    path = args.predictions
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("video_ids", "audio", "visual") if k not in z.files]
            if missing:
                raise EvaluateError(f"{path}: missing array(s) {', '.join(missing)} (has {', '.join(z.files)})")
            pred_ids, audio, visual = z["video_ids"], z["audio"], z["visual"]
    except (OSError, ValueError) as err:
        raise EvaluateError(f"{path}: cannot read predictions ({err})") from None
    for name, arr in (("audio", audio), ("visual", visual)):
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise EvaluateError(f"{path}: {name} must hold 0/1 values (threshold the probabilities first)")
    audio, visual, extra = align_predictions(split.video_ids, pred_ids, audio, visual, source=str(path))
    if extra:
        shown = ", ".join(extra[:10]) + (", ..." if len(extra) > 10 else "")
        print(f"valor evaluate: warning: {path}: ignoring {len(extra)} video id(s) not in the {split.name} split: "
              f"{shown}", file=sys.stderr)
    return audio.astype(np.uint8), visual.astype(np.uint8)


def score(split, audio: np.ndarray, visual: np.ndarray) -> dict[str, Any]:
    """The CLI's JSON object for aligned 0/1 predictions on a split with dense GT (percent, 2 decimals)."""
    from valor_core.metrics import evaluate, label_fidelity

    s = evaluate(audio, visual, split.audio_gt, split.visual_gt)
    out: dict[str, Any] = {"split": split.name, "videos": int(len(split))}
    out.update(s.as_dict(decimals=2))
    out["fidelity"] = {
        "audio": round(label_fidelity(audio, split.audio_gt), 2),
        "visual": round(label_fidelity(visual, split.visual_gt), 2),
        "av": round(label_fidelity(audio * visual, split.av_gt), 2),
    }
    return out


def format_table(result: dict[str, Any]) -> str:
    keys = ("audio", "visual", "av", "type", "event")
    heads = ("Audio", "Visual", "AV", "Type@AV", "Event@AV")
    lines = [f"LLP {result['split']} ({result['videos']} videos), F-score %",
             f"{'':10s}" + "".join(f"{h:>10s}" for h in heads)]
    for level in ("segment", "event"):
        lines.append(f"{level:10s}" + "".join(f"{result[level][k]:10.2f}" for k in keys))
    fid = result["fidelity"]
    lines.append(f"{'fidelity':10s}" + "".join(f"{fid[k]:10.2f}" for k in ("audio", "visual", "av"))
                 + "   (micro F of labels vs GT, VALOR Table 3)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from valor_core.llp import AnnotationError, load_split

    try:
        split = load_split(args.annotations, args.split, audio_file=args.audio_file)
        audio, visual = load_predictions(args, split)
    except (AnnotationError, EvaluateError) as err:
        print(f"valor evaluate: error: {err}", file=sys.stderr)
        return 1
    result = score(split, audio, visual)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
