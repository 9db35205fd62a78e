"""`valor predict`: a checkpoint's predictions and probabilities for one LLP split, as an .npz.

    valor predict --checkpoint SPEC --features SOURCE --split {train,val,test} --out FILE.npz [--json]

SPEC is anything `valor evaluate --checkpoint` takes (workflows/checkpoints.py): a checkpoint dir or file, a Ray Train
run dir, an s3:// prefix, an MLflow run id, or `official:PRESET:PATH` (an official checkpoint; then --features is
required). SOURCE is a features source (workflows/trainset.py; default: the one recorded with the checkpoint); repeat
--features for several datasets trained on as one.

The file holds
    video_ids      (N,) str          the split's videos with features, in the source's order
    audio, visual  (N, 10, 25) uint8 the official rule: segment prob >= 0.5 AND the video's global prob >= 0.5
    segment_prob   (N, 10, 2, 25) float32, axis 2 = (audio, visual)
    global_prob    (N, 25) float32   the MMIL-pooled video-level probability (Eq. 4)
and feeds `valor evaluate --predictions FILE.npz`. With --json the last stdout line is
{"videos": N, "out": FILE, "split": SPLIT}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

import numpy as np

from valor_core.llp import align_predictions
from workflows.checkpoints import CheckpointError, load_checkpoint_model, resolve_checkpoint
from workflows.trainset import load_eval_split

SPLITS = ("train", "val", "test")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("predict", help="a checkpoint's 0/1 predictions and probabilities for a split (.npz)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="SPEC",
                   help="a checkpoint dir/file, Ray Train run dir, s3:// prefix, MLflow run id, or official:PRESET:PATH")
    p.add_argument("--features", action="append", metavar="SOURCE",
                   help="features to predict from (default: the source(s) the checkpoint was trained on; required for "
                        "an official checkpoint); repeat it for several datasets as one (as `valor train`)")
    p.add_argument("--split", required=True, choices=SPLITS, help="LLP split to predict")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="where to write the arrays (written whole or not "
                   "at all)")
    p.add_argument("--annotations", default=None, metavar="DIR",
                   help="LLP annotation CSVs (default: $VALOR_ANNOTATIONS, else the LLP files shipped with valor)")
    p.add_argument("--tracking-uri", metavar="URI", help="with --checkpoint RUN: the MLflow store")
    p.add_argument("--json", action="store_true", help="print one JSON object (last line)")
    p.set_defaults(func=run)


def checkpoint_split(checkpoint: str, split: str, *, features: Optional[str] = None,
                     annotations: Optional[str] = None, tracking_uri: Optional[str] = None):
    """(model in eval mode, its TrainConfig, the split's AVVPArrays, the features source used) for a checkpoint REF
    (path, run id or official spec). Features: `features`, else the source recorded with the checkpoint."""
    model, cfg, meta = load_checkpoint_model(resolve_checkpoint(checkpoint, tracking_uri))
    features = features or meta.get("data", {}).get("features")
    if not features:
        kind = "an official checkpoint" if "official" in meta else "the checkpoint"
        raise CheckpointError(f"{checkpoint}: {kind} records no features source; pass --features")
    arrays = load_eval_split(features, split, cfg, annotations=annotations)
    m = cfg.model
    for name, dim in (("audio", m.audio_dim), ("frames", m.frame_dim), ("clips", m.clip_dim)):
        have = getattr(arrays, name)
        if dim > 0 and (have is None or have.shape[-1] != dim):
            got = "none" if have is None else f"shape {tuple(have.shape)}"
            raise CheckpointError(f"{checkpoint}: its HAN takes {name} of width {dim}; features {features} give {got}")
    return model, cfg, arrays, features


def predict_split(checkpoint: str, split, *, features: str | None = None, annotations: str | None = None,
                  tracking_uri: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(audio, visual) 0/1 predictions of a trained HAN (a checkpoint path, an MLflow run id or an official spec) for
    the LLP split `split` (official rule), aligned to its ids. Features: `features`, else the source recorded with the
    checkpoint. CheckpointError when the checkpoint, its features or the alignment fail."""
    from valor_core.fit import predict  # torch-bound

    try:
        model, _, arrays, features = checkpoint_split(checkpoint, split.name, features=features,
                                                      annotations=annotations, tracking_uri=tracking_uri)
        pa, pv = predict(model, arrays)
        audio, visual, _ = align_predictions(split.video_ids, arrays.video_ids, pa, pv,
                                             source=f"checkpoint {checkpoint} on {features}")
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    return audio.astype(np.uint8), visual.astype(np.uint8)


def predict_arrays(checkpoint: str, split: str, *, features: str | list[str] | None = None,
                   annotations: str | None = None,
                   tracking_uri: str | None = None) -> dict[str, np.ndarray]:
    """The arrays of the .npz (module doc) for `split`; CheckpointError when the checkpoint or features fail."""
    from valor_core.fit import decide, predict_probs  # torch-bound: imported where used

    try:
        model, _, arrays, _ = checkpoint_split(checkpoint, split, features=features, annotations=annotations,
                                               tracking_uri=tracking_uri)
        segment_prob, global_prob = predict_probs(model, arrays)
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    audio, visual = decide(segment_prob, global_prob)
    return {"video_ids": np.asarray(arrays.video_ids).astype(str), "audio": audio, "visual": visual,
            "segment_prob": segment_prob.astype(np.float32), "global_prob": global_prob.astype(np.float32)}


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> str:
    """Write `arrays` to `path` exactly (no .npz appended), via a temporary file renamed into place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def run(args: argparse.Namespace) -> int:
    try:
        features = args.features[0] if args.features and len(args.features) == 1 else args.features
        out = predict_arrays(args.checkpoint, args.split, features=features, annotations=args.annotations,
                             tracking_uri=args.tracking_uri)
        write_npz(args.out, out)
    except (CheckpointError, OSError) as err:
        print(f"valor predict: error: {err}", file=sys.stderr)
        return 1
    n = len(out["video_ids"])
    if args.json:
        print(json.dumps({"videos": n, "out": args.out, "split": args.split}))
    else:
        print(f"valor predict: {n} {args.split} videos -> {args.out} (video_ids, audio, visual, segment_prob, "
              f"global_prob)")
    return 0
