"""`valor evaluate`: the official AVVP numbers (segment + event level) and label fidelity of predictions on val/test.

    valor evaluate --annotations DIR --split {val,test} --predictions {naive,FILE.npz} [--audio-file F] [--json]
    valor evaluate --annotations DIR --split {val,test} --checkpoint RUN_OR_PATH [--features SOURCE] [--json]

Predictions come from a *source*: `--predictions naive` (each video's weak labels on all 10 segments of both
modalities), `--predictions FILE.npz` (`video_ids` (N,) str, `audio` and `visual` (N, 10, 25) 0/1) or
`--checkpoint RUN_OR_PATH` (a trained HAN predicts with the official rule; workflows/checkpoints.py; also
`official:PRESET:PATH`, an official checkpoint, with --features). Split videos
missing from the predictions and ids listed twice are errors naming them; extra ids are ignored with a warning on stderr.

`evaluate_checkpoint` is the same scoring for several splits at once (the pipeline's evaluate stage), with the numbers
added to the checkpoint's MLflow run.
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from typing import Any, Optional

import numpy as np

from valor_core.llp import AnnotationError, PredictionError, align_predictions, default_annotations, load_split
from valor_core.metrics import score_split
from workflows import tracking
from workflows.checkpoints import CheckpointError, resolve_checkpoint
from workflows.predict import predict_split

SPLITS = ("val", "test")


def add_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """Arguments of `valor evaluate`; returns the prediction-source group so other sources can be added."""
    parser.add_argument("--annotations", default=None, metavar="DIR",
                        help="directory with the LLP annotation CSVs (default: $VALOR_ANNOTATIONS, else the LLP files "
                             "shipped with valor)")
    parser.add_argument("--split", required=True, choices=SPLITS, help="LLP split to score (dense GT: val or test)")
    parser.add_argument("--audio-file", default="AVVP_eval_audio.csv", metavar="F",
                        help="dense audio annotation file, relative to DIR (default: %(default)s; the 2020 version "
                             "is orig_2020/AVVP_eval_audio.csv)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", metavar="{naive,FILE.npz}",
                        help="'naive' (weak labels on every segment of both modalities) or an .npz with video_ids, "
                             "audio, visual (N, 10, 25)")
    source.add_argument("--checkpoint", metavar="RUN_OR_PATH",
                        help="predict with a trained HAN: an MLflow run id of `valor train`, a checkpoint dir, or "
                             "official:PRESET:PATH (an official checkpoint; needs --features)")
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


def load_predictions(args: argparse.Namespace, split) -> tuple[np.ndarray, np.ndarray]:
    """(audio, visual) 0/1 predictions (N, 10, 25) aligned to `split.video_ids`, from the chosen source."""
    if getattr(args, "checkpoint", None):
        return predict_split(args.checkpoint, split, features=args.features, annotations=args.annotations,
                             tracking_uri=args.tracking_uri)
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
    except FileNotFoundError:
        raise EvaluateError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, EOFError) as err:
        raise EvaluateError(f"{path}: not a complete .npz archive ({err}); was it truncated?") from None
    except ValueError as err:
        if "pickle" in str(err):  # np.load's guess for anything that is neither .npy nor .npz
            raise EvaluateError(f"{path}: not an .npz file (expected video_ids, audio, visual arrays)") from None
        raise EvaluateError(f"{path}: cannot read predictions ({err})") from None
    except OSError as err:
        raise EvaluateError(f"{path}: cannot read predictions ({err})") from None
    if np.ndim(pred_ids) != 1:
        raise EvaluateError(f"{path}: video_ids must be a 1-D array of ids, got shape {np.shape(pred_ids)}")
    for name, arr in (("audio", audio), ("visual", visual)):
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise EvaluateError(f"{path}: {name} must hold 0/1 values (threshold the probabilities first)")
    try:
        audio, visual, extra = align_predictions(split.video_ids, pred_ids, audio, visual, source=str(path))
    except PredictionError as err:
        raise EvaluateError(str(err)) from None
    if extra:
        shown = ", ".join(extra[:10]) + (", ..." if len(extra) > 10 else "")
        print(f"valor evaluate: warning: {path}: ignoring {len(extra)} video id(s) not in the {split.name} split: "
              f"{shown}", file=sys.stderr)
    return audio.astype(np.uint8), visual.astype(np.uint8)


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


def evaluate_checkpoint(checkpoint: str, *, features: Optional[str] = None, annotations: Optional[str] = None,
                        tracking_uri: Optional[str] = None, splits=SPLITS, run_id: Optional[str] = None) -> dict:
    """{"checkpoint": REF, split: scores, ...} of a trained HAN on each split (official rule and metric); with
    `run_id`, the numbers are also logged to that MLflow run as `eval.<split>.<level>.<key>`."""
    annotations = annotations or default_annotations()
    out: dict[str, Any] = {"checkpoint": checkpoint}
    try:
        local = resolve_checkpoint(checkpoint, tracking_uri)  # once: an MLflow run's artifacts are downloaded once
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    for name in splits:
        split = load_split(annotations, name)
        audio, visual = predict_split(local, split, features=features, annotations=annotations,
                                      tracking_uri=tracking_uri)
        out[name] = score_split(split, audio, visual)
    if run_id:
        metrics: dict[str, float] = {}
        for name in splits:
            metrics.update(tracking.scores_flat(out[name], f"eval.{name}"))
        tracking.log_metrics(tracking.resolve_tracking_uri(tracking_uri), run_id, metrics)
    return out


def run(args: argparse.Namespace) -> int:
    args.annotations = args.annotations or default_annotations()
    try:
        split = load_split(args.annotations, args.split, audio_file=args.audio_file)
        audio, visual = load_predictions(args, split)
    except (AnnotationError, EvaluateError, PredictionError, CheckpointError) as err:
        print(f"valor evaluate: error: {err}", file=sys.stderr)
        return 1
    result = score_split(split, audio, visual)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
