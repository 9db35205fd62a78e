"""`valor refine ma`: MA stage 2 (Wu & Yang 2021, Eq. 4-7) as a Ray job -> modality-aware labels beside the features.

    valor refine ma --checkpoint SPEC [--features SOURCE] [--out URI] [--threshold 0.5] [--refine both|audio|visual]
                    [--seed 0] [--videos-per-task 1024] [--ray-address ADDR] [--json]

SPEC is a stage-1 checkpoint (`valor train --preset ma`; any reference workflows.checkpoints resolves: a path, a Ray
Train run dir, s3://, an MLflow run id). SOURCE defaults to the features the checkpoint was trained on. Every train
video i gets a partner j sharing no weak label (seeded); Ray tasks of --videos-per-task videos each run the frozen
model on (V^i, A^i), (V^i, A^j) and (V^j, A^i); the driver then computes the normalised per-class train error E_c
and drops a visual (audio) label c when both video-level probabilities with the changed audio (vision) are below
0.5 x E_c (valor_core.ma).

Output (default: `ma_labels` beside the features, workflows.features.beside; `sim:` sources need --out): the labels
schema of `valor harvest` (video_id, split, weak, audio_labels, visual_labels (10x25 uint8: the video's modality-aware
labels on every segment), audio_ok, visual_ok) for the train videos, with provenance (checkpoint, MAConfig, E_c, code
version) in the schema metadata `valor.harvest` and in `_harvest.json`, written last. Stage 3:
`valor train --preset ma-retrain --features SOURCE --labels OUT`.
"""
from __future__ import annotations

import argparse
import json
import posixpath
import sys
import time
from typing import Any, Optional

import numpy as np

from valor_core.classes import NUM_SEGMENTS
from valor_core.config import MAConfig, to_dict
from valor_core.configio import ConfigError, build
from valor_core.sim import parse_sim_source
from workflows import objstore
from workflows.checkpoints import CheckpointError, load_checkpoint_model, resolve_checkpoint
from workflows.config import StorageConfig
from workflows.features import beside, finish_labels, write_labels_part
from workflows.harvest import HARVEST_META_KEY, _labels_array, _same_uri
from workflows.outputs import LockedError, OwnershipError, claim, clear_owned, lock
from workflows.refine import method_parsers
from workflows.runtime import code_version, start_ray
from workflows.trainset import DataError, load_eval_split

OUT_NAME = "ma_labels"


def _log(msg: str) -> None:
    print(f"[refine ma] {msg}", file=sys.stderr, flush=True)


def swap_task(train_cfg: dict, state: dict, inputs: dict, index: np.ndarray, partners: np.ndarray) -> dict:
    """One Ray task: the frozen stage-1 model's video-level probabilities on `index` with own / swapped tracks."""
    import torch

    from valor_core.fit import build_model
    from valor_core.ma import swap_probs
    from workflows.checkpoints import config_from_dict

    torch.set_num_threads(1)
    model = build_model(config_from_dict(train_cfg))
    model.load_state_dict(state)
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    return {"index": np.asarray(index), **swap_probs(model, tensors, index, partners)}


def labels_table(ids, splits, weak, audio, visual, meta: dict):
    """The `valor harvest` labels schema (its column writer); video-level (N, C) labels repeated on every segment."""
    import pyarrow as pa

    seg = (lambda x: np.repeat(np.asarray(x, np.uint8)[:, None, :], NUM_SEGMENTS, axis=1))  # noqa: E731
    n = len(ids)
    table = pa.table({
        "video_id": pa.array([str(x) for x in ids], pa.string()),
        "split": pa.array([str(x) for x in splits], pa.string()),
        "weak": _labels_array((np.asarray(weak) > 0).astype(np.uint8)),
        "audio_labels": _labels_array(seg(audio)),
        "visual_labels": _labels_array(seg(visual)),
        "audio_ok": pa.array(np.ones(n, bool)),
        "visual_ok": pa.array(np.ones(n, bool)),
    })
    return table.replace_schema_metadata({HARVEST_META_KEY: json.dumps(meta)})


def _scores(ray_address, train_cfg: dict, state: dict, inputs: dict, partners: np.ndarray, per_task: int) -> dict:
    """The Ray job: one task per `per_task` videos; the pieces back in video order."""
    import ray

    shutdown = start_ray(ray_address)
    try:
        task = ray.remote(num_cpus=1)(swap_task)
        cfg_ref, state_ref, inputs_ref = ray.put(train_cfg), ray.put(state), ray.put(inputs)
        n = len(partners)
        refs = [task.remote(cfg_ref, state_ref, inputs_ref, np.arange(s, min(s + per_task, n)),
                            partners[s:s + per_task]) for s in range(0, n, per_task)]
        parts = ray.get(refs)
    finally:
        shutdown()
    cat = (lambda key, m=None: np.concatenate([p[key] if m is None else p[key][m] for p in parts]))  # noqa: E731
    return {"global": cat("global"), **{k: {m: cat(k, m) for m in ("audio", "visual")}
                                        for k in ("own", "changed_audio", "changed_visual")}}


def refine(checkpoint: str, features: Optional[str] = None, out: Optional[str] = None, *,
           overrides: Optional[dict] = None, annotations: Optional[str] = None, tracking_uri: Optional[str] = None,
           videos_per_task: int = 1024, ray_address: Optional[str] = None, storage_opts: Optional[dict] = None) -> dict:
    """Refine the train labels of `features` with the stage-1 `checkpoint` into `out`; the summary. MAConfig: the
    checkpoint's, with `overrides` (field -> value) applied."""
    from valor_core.fit import to_tensors
    from valor_core.ma import class_error, draw_partners, refine_labels

    t0 = time.perf_counter()
    ckpt_dir = resolve_checkpoint(checkpoint, tracking_uri)
    model, train_cfg, meta = load_checkpoint_model(ckpt_dir)
    if train_cfg.loss not in ("ma", "ma-refined") and "official" not in meta:
        _log(f"note: {checkpoint} was trained with loss {train_cfg.loss!r}, not MA stage 1 (loss 'ma')")
    features = features or meta.get("data", {}).get("features")
    if not features:
        raise CheckpointError(f"{checkpoint}: the checkpoint records no features source; pass --features")
    cfg = build(MAConfig, dict(overrides or {}), base=train_cfg.ma)
    if out is None:
        if parse_sim_source(features) is not None:
            raise ValueError("--features sim[:SEED] needs --out URI (there is no features dataset to write beside)")
        out = beside(features, OUT_NAME)
    if parse_sim_source(features) is None and _same_uri(out, features):
        raise OwnershipError(f"--out {out} is the features dataset itself: choose another path")
    claim(out, "labels", opts=storage_opts)
    with lock(out, f"valor refine ma -> {out}", storage_opts):
        arrays = load_eval_split(features, "train", train_cfg, annotations=annotations)
        inputs = {k: np.ascontiguousarray(v.numpy()) for k, v in to_tensors(arrays, train_cfg, targets=False).items()}
        partners = draw_partners(arrays.weak, cfg.seed)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        probs = _scores(ray_address, to_dict(train_cfg), state, inputs, partners, max(1, int(videos_per_task)))
        error = class_error(probs["global"], arrays.weak, cfg.threshold)
        audio, visual = refine_labels(arrays.weak, probs["changed_audio"], probs["changed_visual"], error, partners,
                                      cfg.threshold, cfg.refine)
        weak = (np.asarray(arrays.weak) > 0)
        info = {"method": "ma", "rule": "drop label c of a modality when, with the other video's track in the other "
                "modality, both video-level probs < threshold x E_c (MA Eq. 4-7)",
                "config": to_dict(cfg), "checkpoint": str(checkpoint), "checkpoint_dir": str(ckpt_dir),
                "checkpoint_run_id": meta.get("run_id"), "class_error": [round(float(e), 6) for e in error],
                "source": str(features), "code_version": code_version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        clear_owned(out, storage_opts)
        splits = np.full(len(arrays.video_ids), "train", object)
        table = labels_table(arrays.video_ids, splits, weak, audio, visual, info)
        write_labels_part(out, 0, table, storage_opts)
        summary = {"videos": int(len(arrays.video_ids)), "files": 1, "splits": {"train": int(len(arrays.video_ids))},
                   "out": str(out), "weak_labels": int(weak.sum()), "audio_labels": int(audio.sum()),
                   "visual_labels": int(visual.sum()), "no_partner": int((partners < 0).sum()), **info,
                   "seconds": round(time.perf_counter() - t0, 3)}
        finish_labels(out, summary, storage_opts)
    return summary


# --- CLI -------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    opts = objstore.s3_options(StorageConfig())
    given = {k: v for k, v in {"threshold": args.threshold, "refine": args.refine, "seed": args.seed}.items()
             if v is not None}
    try:
        summary = refine(args.checkpoint, args.features, args.out, overrides=given, annotations=args.annotations,
                         tracking_uri=args.tracking_uri, videos_per_task=args.videos_per_task,
                         ray_address=args.ray_address, storage_opts=opts)
    except (ConfigError, CheckpointError, DataError, FileNotFoundError, ValueError, OwnershipError, LockedError,
            PermissionError) as err:
        print(f"valor refine ma: {err}", file=sys.stderr)
        return 2
    _log(f"{summary['videos']} train videos -> {summary['out']}: {summary['audio_labels']} audio / "
         f"{summary['visual_labels']} visual labels of {summary['weak_labels']} weak ({summary['seconds']} s)")
    if args.json:
        print(json.dumps(summary))
    return 0


def register(subparsers: Any) -> None:
    """Adds `valor refine ma` (workflows.refine owns `valor refine`)."""
    methods = method_parsers(subparsers)
    d = MAConfig()
    p = methods.add_parser("ma", help="MA track swap with unrelated videos -> modality-aware labels (stage 2)",
                           description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="SPEC", help="the stage-1 checkpoint (valor train --preset "
                   "ma): path, Ray Train run dir, s3://, or MLflow run id")
    p.add_argument("--features", default=None, metavar="SOURCE", help="features (default: the checkpoint's)")
    p.add_argument("--out", default=None, metavar="URI", help=f"output (default: {OUT_NAME} beside the features)")
    p.add_argument("--annotations", default=None, metavar="DIR", help="LLP annotation CSVs (default: shipped)")
    p.add_argument("--threshold", type=float, default=None, help=f"Eq. 6/7 threshold (default {d.threshold})")
    p.add_argument("--refine", choices=("both", "audio", "visual"), default=None,
                   help="which modality's labels to refine (Table 3; default both)")
    p.add_argument("--seed", type=int, default=None, help=f"partner draw seed (default {d.seed})")
    p.add_argument("--videos-per-task", type=int, default=1024, help="videos per Ray task (default %(default)s)")
    p.add_argument("--tracking-uri", default=None, metavar="URI", help="MLflow store for run-id checkpoints")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="existing Ray cluster (default: in-process)")
    p.add_argument("--json", action="store_true", help="last stdout line: the summary as JSON")
    p.set_defaults(func=run)
