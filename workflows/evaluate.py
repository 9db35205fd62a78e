"""`valor evaluate`: the official AVVP numbers (segment + event level) and label fidelity of predictions on val/test.

    valor evaluate --annotations DIR --split {val,test} --predictions {naive,FILE.npz} [--audio-file F] [--json]
    valor evaluate --annotations DIR --split {val,test} --checkpoint RUN_OR_PATH [--features SOURCE] [--json]

Predictions come from a *source*: `--predictions naive` (each video's weak labels on all 10 segments of both
modalities), `--predictions FILE.npz` (`video_ids` (N,) str, `audio` and `visual` (N, 10, 25) 0/1) or
`--checkpoint RUN_OR_PATH` (a trained HAN predicts with the official rule; workflows/checkpoints.py; also
`official:PRESET:PATH`, an official checkpoint, with --features). Split videos
missing from the predictions and ids listed twice are errors naming them; extra ids are ignored with a warning on stderr.

A checkpoint scores the split's videos its features hold (as `valor train` does); on fewer than the whole split every
output says so: the table header ("16 of 649 videos: a subset"), the JSON (`videos_scored` < `videos_in_split`,
`official_comparable` false) and the run's MLflow tags. Its annotations default to the ones the run was trained with
(then the ones its features dataset records, e.g. the demo corpus's GT).

`evaluate_checkpoint` is the same scoring for several splits at once (the pipeline's evaluate stage), with the numbers
added to the checkpoint's MLflow run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from typing import Any, Optional

import numpy as np

from valor_core.llp import AnnotationError, LLPSplit, PredictionError, align_predictions, default_annotations, load_split
from valor_core.metrics import score_split
from workflows import tracking
from workflows.checkpoints import CheckpointError, read_meta, resolve_checkpoint
from workflows.predict import checkpoint_split
from workflows.trainset import annotations_for

SPLITS = ("val", "test")


def add_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """Arguments of `valor evaluate`; returns the prediction-source group so other sources can be added."""
    parser.add_argument("--annotations", default=None, metavar="DIR",
                        help="directory with the LLP annotation CSVs (default: with --checkpoint the run's, else "
                             "$VALOR_ANNOTATIONS, else the LLP files shipped with valor)")
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
    """(audio, visual) 0/1 predictions (N, 10, 25) aligned to `split.video_ids`, from --predictions."""
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


def subset_note(result: dict[str, Any]) -> Optional[str]:
    """"16 of 649 videos: a subset, not comparable with the official numbers" for scores on part of a split."""
    scored, total = result.get("videos_scored", result["videos"]), result.get("videos_in_split", result["videos"])
    if result.get("official_comparable", True):
        return None
    return f"{scored} of {total} videos: a subset, not comparable with the official numbers"


def format_table(result: dict[str, Any]) -> str:
    keys = ("audio", "visual", "av", "type", "event")
    heads = ("Audio", "Visual", "AV", "Type@AV", "Event@AV")
    lines = [f"LLP {result['split']} ({subset_note(result) or str(result['videos']) + ' videos'}), F-score %",
             f"{'':10s}" + "".join(f"{h:>10s}" for h in heads)]
    for level in ("segment", "event"):
        lines.append(f"{level:10s}" + "".join(f"{result[level][k]:10.2f}" for k in keys))
    fid = result["fidelity"]
    lines.append(f"{'fidelity':10s}" + "".join(f"{fid[k]:10.2f}" for k in ("audio", "visual", "av"))
                 + "   (micro F of labels vs GT, VALOR Table 3)")
    return "\n".join(lines)


def checkpoint_annotations(local: str, features: Optional[str], given: Optional[str]) -> str:
    """The annotations to score a resolved checkpoint with: `given`, else the ones its run trained with, else the ones
    its features dataset records (trainset.annotations_for)."""
    data = read_meta(local).get("data", {})
    recorded = data.get("annotations")
    if given or (recorded and ("://" in recorded or os.path.isdir(recorded))):
        return given or recorded
    source = features or data.get("features")
    return annotations_for(source) if source else default_annotations()


def score_checkpoint(local: str, name: str, *, features: Optional[str], annotations: str,
                     audio_file: str = "AVVP_eval_audio.csv", tracking_uri: Optional[str] = None) -> dict:
    """score_split of a resolved checkpoint on the videos of split `name` that its features hold: a subset of the
    split is scored and says so (`videos_scored`, `videos_in_split`, `official_comparable`)."""
    from valor_core.fit import predict  # torch-bound

    split = load_split(annotations, name, audio_file=audio_file)
    try:
        model, _, arrays, features = checkpoint_split(local, name, features=features, annotations=annotations,
                                                      tracking_uri=tracking_uri)
        pa, pv = predict(model, arrays)
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    held = set(np.asarray(arrays.video_ids).astype(str).tolist())
    rows = np.flatnonzero([v in held for v in split.video_ids.tolist()])
    if rows.size == 0:
        raise CheckpointError(f"checkpoint on {features}: none of its {name} videos is in the {name} annotations of "
                              f"{annotations}: pass --annotations DIR (the dense GT of these videos)")
    covered = LLPSplit(name=name, video_ids=split.video_ids[rows], weak=split.weak[rows],
                       audio_gt=split.audio_gt[rows], visual_gt=split.visual_gt[rows])
    audio, visual, _ = align_predictions(covered.video_ids, arrays.video_ids, pa, pv,
                                         source=f"checkpoint on {features}")
    return score_split(covered, audio.astype(np.uint8), visual.astype(np.uint8), videos_in_split=len(split))


def evaluate_checkpoint(checkpoint: str, *, features: Optional[str] = None, annotations: Optional[str] = None,
                        tracking_uri: Optional[str] = None, splits=SPLITS, run_id: Optional[str] = None) -> dict:
    """{"checkpoint": REF, split: scores, ...} of a trained HAN on each split (official rule and metric); with
    `run_id`, the numbers are also logged to that MLflow run as `eval.<split>.<level>.<key>`, with the subset tags."""
    out: dict[str, Any] = {"checkpoint": checkpoint}
    try:
        local = resolve_checkpoint(checkpoint, tracking_uri)  # once: an MLflow run's artifacts are downloaded once
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    annotations = checkpoint_annotations(local, features, annotations)
    for name in splits:
        out[name] = score_checkpoint(local, name, features=features, annotations=annotations,
                                     tracking_uri=tracking_uri)
    if run_id:
        metrics: dict[str, float] = {}
        for name in splits:
            metrics.update(tracking.scores_flat(out[name], f"eval.{name}"))
        uri = tracking.resolve_tracking_uri(tracking_uri)
        tracking.log_metrics(uri, run_id, metrics)
        tracking.set_tags(uri, run_id, tracking.subset_tags({name: out[name] for name in splits}, "eval"))
    return out


def checkpoint_result(args: argparse.Namespace) -> dict:
    """`valor evaluate --checkpoint`'s scores for --split."""
    try:
        local = resolve_checkpoint(args.checkpoint, args.tracking_uri)
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    features = args.features
    annotations = checkpoint_annotations(local, features, args.annotations)
    return score_checkpoint(local, args.split, features=features, annotations=annotations,
                            audio_file=args.audio_file, tracking_uri=args.tracking_uri)


def run(args: argparse.Namespace) -> int:
    try:
        if args.checkpoint:
            result = checkpoint_result(args)
        else:
            split = load_split(args.annotations or default_annotations(), args.split, audio_file=args.audio_file)
            result = score_split(split, *load_predictions(args, split))
    except (AnnotationError, EvaluateError, PredictionError, CheckpointError) as err:
        print(f"valor evaluate: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else format_table(result))
    return 0
