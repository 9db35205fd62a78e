"""`valor harvest`: VALOR's label elaboration over a whole features dataset -> harvested labels Parquet.

    valor harvest --logits SOURCE [--annotations DIR] [--thresholds JSON|table6] [--out URI]
                  [--no-filter] [--modality-agnostic] [--unified | --unified-audio X --unified-visual Y] [--json]
    valor harvest --features SOURCE --labeler han:SPEC [--labeler-threshold 0.5] [--no-filter] [--out URI] [--json]

For every video of the features dataset (`valor extract --out URI`; rows with status "ok" or "partial"): audio labels =
(clap_logits > theta^CLAP) AND weak, visual labels = (clip_logits > theta^CLIP) AND weak, each (10, 25) uint8
(valor_core.labels.harvest_labels). SOURCE is the features URI (local dir or s3://bucket/prefix) or `sim[:SEED]`
(LLP-sim teacher logits for every split of the annotations in DIR; --out is then required).

Thresholds, first match wins: --unified-audio/--unified-visual (one value for all classes, Table 8 ablation);
--unified (the best unified thresholds of a tune JSON); the per-class thresholds of a tune JSON (`valor tune thresholds
--out`); Table 6 (`--thresholds table6`, the default). --no-filter drops the AND with the weak label (ablation).
--modality-agnostic gives both modalities a OR v (VALOR Table 2, third row: labels without their modality).

Output (default: `labels` beside the features dataset, workflows.features.labels_uri; same object store): Parquet files
`part-NNNNN.parquet` with columns

    video_id string, split string, weak fixed_size_list<uint8>[25],
    audio_labels  fixed_size_list<fixed_size_list<uint8>[25]>[10],
    visual_labels fixed_size_list<fixed_size_list<uint8>[25]>[10]
    audio_ok, visual_ok bool   False where that teacher had no output (extraction status "partial": e.g. no audio
                               track); its labels are then all 0 and a trainer should mask that modality's loss

and the thresholds used recorded twice: in every file's schema metadata under `valor.harvest` (JSON: thresholds per
modality, filter_by_weak, unified, where they came from, source) and in `_harvest.json` beside the files, written last
(its presence marks a complete output; `pyarrow.dataset` ignores `_`-prefixed files). A re-run replaces the output.

VALOR Table 2, "HAN as dense labeler": `--labeler han:SPEC` takes the segment labels from a HAN trained on the weak
labels (SPEC: any checkpoint reference of workflows/checkpoints.py, e.g. `valor train --preset han`'s run id) instead
of the teachers' logits: its segment predictions by the official rule (segment prob >= x AND the video's global prob
>= x, x = --labeler-threshold, default 0.5), AND the weak label unless --no-filter -- the same filter the teachers'
labels get, so only the labeler differs. The paper says only that the HAN "individually annotate[s] segment-level
labels within the two modalities"; the rule is our choice. SOURCE then feeds the HAN (its own features, default: the
checkpoint's); the output has the same schema, its metadata names the labeler, and no thresholds apply.

A tune JSON records the label rule it was tuned for (`filter_by_weak`); harvesting with the other rule from its
thresholds is an error (tune again with the same rule, or pass explicit thresholds).
"""
from __future__ import annotations

import argparse
import json
import posixpath
import sys
import time
from typing import Any, Optional

import numpy as np

from valor_core.classes import NUM_CLASSES, NUM_SEGMENTS
from valor_core.config import LabelConfig
from valor_core.labels import harvest_labels, modality_agnostic, thresholds_for
from valor_core.llp import default_annotations
from valor_core.sim import parse_sim_source, simulate
from valor_core.tuning_objective import LogitsError, validate_logits
from workflows import objstore
from workflows.checkpoints import CheckpointError, checkpoint_source, load_checkpoint_model, resolve_checkpoint
from workflows.predict import checkpoint_split
from workflows.config import HarvestConfig, StorageConfig
from workflows.features import (LOGIT_COLUMNS, finish_labels, OK_FLAGS, column_array, features_dataset, labels_uri,
                                teacher_logits, usable_rows, write_labels_part)
from workflows.outputs import LockedError, OwnershipError, claim, clear_owned, lock
from workflows.runtime import code_version
from workflows.trainset import DataError

HARVEST_META_KEY = "valor.harvest"


def _log(msg: str) -> None:
    print(f"[harvest] {msg}", file=sys.stderr, flush=True)


# --- thresholds --------------------------------------------------------------------------------------------------------


def read_json_uri(uri: str, storage_opts: Optional[dict] = None) -> dict:
    try:
        return json.loads(objstore.read_bytes(uri, storage_opts))
    except FileNotFoundError:
        raise FileNotFoundError(f"thresholds file {uri} not found") from None


def resolve_thresholds(thresholds: Optional[str] = None, unified: bool = False,
                       unified_audio: Optional[float] = None, unified_visual: Optional[float] = None,
                       storage_opts: Optional[dict] = None, labels=None) -> tuple[dict, dict]:
    """({"audio": (25,), "visual": (25,)} float64, provenance) from the CLI options / a LabelConfig (see module doc).

    A tune JSON whose thresholds are used must have been tuned for `labels.filter_by_weak` (ValueError otherwise)."""
    labels = labels or LabelConfig()
    tuned = None
    if thresholds and thresholds != "table6":
        tuned = read_json_uri(thresholds, storage_opts)
    explicit = {"audio": unified_audio if unified_audio is not None else labels.unified_clap,
                "visual": unified_visual if unified_visual is not None else labels.unified_clip}
    per_class_cfg = {"audio": labels.clap_thresholds, "visual": labels.clip_thresholds}
    out, where = {}, {}
    for m in ("audio", "visual"):
        if explicit[m] is not None:
            out[m], where[m] = np.full(NUM_CLASSES, float(explicit[m])), f"unified {explicit[m]}"
        elif unified:
            if tuned is None or m not in (tuned.get("unified") or {}):
                raise ValueError(f"--unified needs a tune JSON with unified.{m}.threshold (--thresholds FILE)")
            _check_rule(tuned, thresholds, labels.filter_by_weak)
            t = float(tuned["unified"][m]["threshold"])
            out[m], where[m] = np.full(NUM_CLASSES, t), f"unified from {thresholds}"
        elif per_class_cfg[m] is not None:
            out[m], where[m] = thresholds_for(labels, m).astype(np.float64), "config"
        elif tuned is not None and m in tuned:
            th = np.asarray(tuned[m]["thresholds"], np.float64)
            if th.shape != (NUM_CLASSES,):
                raise ValueError(f"{thresholds}: {m}.thresholds has {th.size} values, expected {NUM_CLASSES}")
            _check_rule(tuned, thresholds, labels.filter_by_weak)
            out[m], where[m] = th, f"tuned ({thresholds})"
        else:
            out[m], where[m] = thresholds_for(LabelConfig(), m).astype(np.float64), "table6"
    return out, where


def _check_rule(tuned: dict, where: str, filter_by_weak: bool) -> None:
    """The tune JSON's label rule (filter_by_weak) must be the one harvest applies."""
    recorded = tuned.get("filter_by_weak")
    if recorded is not None and bool(recorded) != bool(filter_by_weak):
        rule = "with" if recorded else "without"
        raise ValueError(f"{where}: these thresholds were tuned {rule} the weak-label filter (filter_by_weak="
                         f"{str(bool(recorded)).lower()}) but harvest is asked for filter_by_weak="
                         f"{str(bool(filter_by_weak)).lower()}; tune again with the same rule or give thresholds "
                         "explicitly")


# --- harvesting ----------------------------------------------------------------------------------------------------------


def _labels_array(x: np.ndarray):
    import pyarrow as pa

    inner = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1).astype(np.uint8)), NUM_CLASSES)
    return pa.FixedSizeListArray.from_arrays(inner, NUM_SEGMENTS) if x.ndim == 3 else inner


def harvest_table(video_ids, splits, weak, clap_logits, clip_logits, thresholds: dict, filter_by_weak: bool,
                  meta: dict, audio_ok=None, visual_ok=None):
    """One Arrow table of harvested labels (schema in the module doc), with `meta` in the schema metadata."""
    import pyarrow as pa

    weak = (np.asarray(weak) > 0).astype(np.uint8)
    a = harvest_labels(clap_logits, weak, thresholds["audio"], filter_by_weak)
    v = harvest_labels(clip_logits, weak, thresholds["visual"], filter_by_weak)
    if meta.get("modality_agnostic"):  # Table 2: a OR v for both modalities
        a = v = modality_agnostic(a, v)
    return labels_table(video_ids, splits, weak, a, v, meta, audio_ok, visual_ok), int(a.sum()), int(v.sum())


def labels_table(video_ids, splits, weak, audio, visual, meta: dict, audio_ok=None, visual_ok=None):
    """The labels schema (module doc) of given (N, 10, 25) audio / visual labels, with `meta` in the metadata."""
    import pyarrow as pa

    table = pa.table({
        "video_id": pa.array([str(x) for x in video_ids], pa.string()),
        "split": pa.array([str(x) for x in splits], pa.string()),
        "weak": _labels_array((np.asarray(weak) > 0).astype(np.uint8)),
        "audio_labels": _labels_array(np.asarray(audio)),
        "visual_labels": _labels_array(np.asarray(visual)),
        "audio_ok": pa.array(np.ones(len(audio), bool) if audio_ok is None else np.asarray(audio_ok, bool)),
        "visual_ok": pa.array(np.ones(len(visual), bool) if visual_ok is None else np.asarray(visual_ok, bool)),
    })
    return table.replace_schema_metadata({HARVEST_META_KEY: json.dumps(meta)})


# --- VALOR Table 2: a HAN as the dense labeler -----------------------------------------------------------------------

LABELERS = ("han",)


def parse_labeler(spec: str) -> tuple[str, str]:
    """`han:SPEC` -> ("han", SPEC); ValueError naming the option for anything else."""
    kind, sep, ref = str(spec).partition(":")
    if kind not in LABELERS or not sep or not ref:
        raise ValueError(f"--labeler {spec!r}: expected han:CHECKPOINT (a checkpoint path, Ray Train run dir, s3:// "
                         "prefix or MLflow run id of `valor train --preset han`)")
    return kind, ref


def labeler_labels(segment_prob: np.ndarray, global_prob: np.ndarray, weak: np.ndarray, threshold: float = 0.5,
                   filter_by_weak: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(audio, visual) (N, 10, 25) uint8 segment labels from a HAN's probabilities: the official rule (segment prob >=
    threshold AND the video's global prob >= threshold), AND the weak label when filter_by_weak."""
    from valor_core.fit import decide  # torch-bound: imported where used

    audio, visual = decide(np.asarray(segment_prob), np.asarray(global_prob), threshold)
    if filter_by_weak:
        y = (np.asarray(weak) > 0).astype(np.uint8)[:, None, :]
        audio, visual = audio & y, visual & y
    return audio.astype(np.uint8), visual.astype(np.uint8)


def harvest_labeler(labeler: str, source: Optional[str] = None, out: Optional[str] = None, *,
                    annotations: Optional[str] = None, threshold: float = 0.5, filter_by_weak: bool = True,
                    splits=(), rows_per_file: int = 4096, tracking_uri: Optional[str] = None,
                    storage_opts: Optional[dict] = None) -> dict:
    """Harvest a HAN labeler's segment predictions (labeler_labels) for every video of `source` (default: the
    features the checkpoint was trained on) into `out` (default: beside the features); the summary."""
    from valor_core.fit import predict_probs  # torch-bound: imported where used

    t0 = time.perf_counter()
    kind, ref = parse_labeler(labeler)
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"--labeler-threshold {threshold}: expected a probability in (0, 1)")
    ckpt_dir = resolve_checkpoint(ref, tracking_uri)
    _, train_cfg, ckpt_meta = load_checkpoint_model(ckpt_dir)
    if train_cfg.loss != "han" and "official" not in ckpt_meta:
        _log(f"note: labeler {ref} was trained with loss {train_cfg.loss!r}, not the HAN baseline's ('han')")
    source = source or recorded_source(ref, ckpt_meta.get("data", {}).get("features"))
    if out is None:
        if parse_sim_source(source) is not None:
            raise ValueError("--features sim[:SEED] needs --out URI (there is no features dataset to write beside)")
        out = labels_uri(source)
    if parse_sim_source(source) is None and _same_uri(out, source):
        raise OwnershipError(f"--out {out} is the features dataset itself: choose another path")
    meta = {"labeler": kind, "checkpoint": str(ref), "checkpoint_dir": checkpoint_source(ref, ckpt_dir, tracking_uri),
            "checkpoint_run_id": ckpt_meta.get("run_id"), "threshold": float(threshold),
            "filter_by_weak": bool(filter_by_weak), "source": str(source), "code_version": code_version(),
            "rule": f"HAN segment prob >= {threshold} AND video prob >= {threshold}" + (" AND weak" if filter_by_weak
                                                                                       else ""),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    claim(out, "labels", opts=storage_opts)
    with lock(out, f"valor harvest --labeler -> {out}", storage_opts):
        clear_owned(out, storage_opts)
        files = videos = n_a = n_v = 0
        per_split: dict[str, int] = {}
        for split in tuple(splits) or ("train", "val", "test"):
            try:
                model, _, arrays, _ = checkpoint_split(str(ckpt_dir), split, features=source, annotations=annotations)
            except DataError:
                if splits:  # asked for by name: it must be there
                    raise
                continue  # a features dataset without this split
            seg, glob = predict_probs(model, arrays)
            audio, visual = labeler_labels(seg, glob, arrays.weak, threshold, filter_by_weak)
            for start in range(0, len(arrays.video_ids), rows_per_file):
                sl = slice(start, start + rows_per_file)
                n = len(arrays.video_ids[sl])
                table = labels_table(arrays.video_ids[sl], [split] * n, arrays.weak[sl], audio[sl], visual[sl], meta)
                write_labels_part(out, files, table, storage_opts)
                files += 1
            videos += len(arrays.video_ids)
            per_split[split] = len(arrays.video_ids)
            n_a, n_v = n_a + int(audio.sum()), n_v + int(visual.sum())
        if videos == 0:
            raise ValueError(f"{source}: no videos to label")
        summary = {"videos": videos, "files": files, "splits": per_split, "audio_labels": n_a, "visual_labels": n_v,
                   "out": str(out), **meta, "seconds": round(time.perf_counter() - t0, 3)}
        finish_labels(out, summary, storage_opts)
    return summary


def _batches(source: str, annotations: Optional[str], storage_opts: Optional[dict], rows: int, splits=()):
    """Yields (video_ids, splits, weak, clap_logits, clip_logits) batches from a features dataset or LLP-sim."""
    sim = parse_sim_source(source)
    if sim is not None:
        seed = sim[0]
        if not annotations:
            raise ValueError("--logits sim[:SEED] needs --annotations DIR (the LLP CSVs the simulation follows)")
        names = tuple(splits) or ("train", "val", "test")
        for name, arr in simulate(annotations, seed=seed, splits=names).items():
            for col in LOGIT_COLUMNS.values():
                validate_logits(getattr(arr, col), f"sim:{seed} {name} {col}", arr.video_ids)
            for i in range(0, len(arr), rows):
                sl = slice(i, i + rows)
                n = len(arr.video_ids[sl])
                yield (arr.video_ids[sl], [name] * n, arr.weak[sl], arr.clap_logits[sl], arr.clip_logits[sl],
                       np.ones(n, bool), np.ones(n, bool))
        return
    dataset = features_dataset(source, storage_opts)
    needed = ["video_id", "weak", *LOGIT_COLUMNS.values()]
    missing = [c for c in needed if c not in dataset.schema.names]
    if missing:
        raise LogitsError(f"{source}: features dataset lacks column(s) {', '.join(missing)}")
    cols = needed + [c for c in ("split", "status", *OK_FLAGS.values()) if c in dataset.schema.names]
    seen: set = set()
    import pyarrow as pa

    # no Arrow filter/take on nested lists (see column_array): whole batches are converted, rows picked in NumPy
    for batch in dataset.to_batches(columns=cols, batch_size=rows):
        if batch.num_rows == 0:
            continue
        t = pa.Table.from_batches([batch])
        ids = np.asarray(t.column("video_id").to_pylist(), dtype=object)
        keep = usable_rows(t)
        if splits and "split" in t.column_names:
            keep &= np.isin(np.asarray(t.column("split").to_pylist(), dtype=object), list(splits))
        for i in np.flatnonzero(keep):  # a video written twice is harvested once
            if ids[i] in seen:
                keep[i] = False
            seen.add(ids[i])
        if not keep.any():
            continue
        za, ok_a = teacher_logits(t, "clap_logits", ids, source, keep)
        zv, ok_v = teacher_logits(t, "clip_logits", ids, source, keep)
        weak = column_array(t, "weak", (NUM_CLASSES,), np.float32, ids=ids, allow_null=True)[keep]
        if not np.isfinite(weak).all():
            raise LogitsError(f"{source}: weak labels missing for some videos (e.g. {ids[keep][0]})")
        sp = (np.asarray(t.column("split").to_pylist(), dtype=object)[keep].tolist() if "split" in t.column_names
              else [""] * int(keep.sum()))
        yield ids[keep], sp, weak, za, zv, ok_a, ok_v


def harvest(source: str, out: Optional[str] = None, *, annotations: Optional[str] = None,
            thresholds: Optional[dict] = None, provenance: Optional[dict] = None, filter_by_weak: bool = True,
            rows_per_file: int = 4096, splits=(), storage_opts: Optional[dict] = None,
            modality_agnostic: bool = False) -> dict:
    """Harvest every video of SOURCE into Parquet at `out` (default: beside the features). Returns a summary dict.
    `out` must be new, empty or a labels output valor made (OwnershipError otherwise, before anything is read)."""
    t0 = time.perf_counter()
    sim = parse_sim_source(source)
    if thresholds is None:
        thresholds, provenance = resolve_thresholds(storage_opts=storage_opts)
    thresholds = {m: np.asarray(thresholds[m], np.float64) for m in ("audio", "visual")}
    for m, th in thresholds.items():
        if th.shape != (NUM_CLASSES,) or not np.isfinite(th).all():
            raise ValueError(f"{m} thresholds must be {NUM_CLASSES} finite numbers, got {th}")
    if out is None:
        if sim is not None:
            raise ValueError("--logits sim[:SEED] needs --out URI (there is no features dataset to write beside)")
        out = labels_uri(source)
    meta = {"thresholds": {m: [float(t) for t in thresholds[m]] for m in ("audio", "visual")},
            "teachers": {"audio": "clap_logits > theta^CLAP", "visual": "clip_logits > theta^CLIP"},
            "filter_by_weak": bool(filter_by_weak), "from": provenance or {}, "source": str(source),
            "rule": ("(z > theta) AND weak" if filter_by_weak else "z > theta")
            + (", then a OR v for both modalities" if modality_agnostic else ""),
            "modality_agnostic": bool(modality_agnostic), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if sim is None and _same_uri(out, source):
        raise OwnershipError(f"--out {out} is the features dataset itself: choose another path")
    claim(out, "labels", opts=storage_opts)  # a new or empty path, or a labels output valor made
    with lock(out, f"valor harvest -> {out}", storage_opts):
        clear_owned(out, storage_opts)  # a re-run replaces the output, never mixes with it
        return _harvest_into(out, source, annotations, thresholds, filter_by_weak, rows_per_file, splits, storage_opts,
                             meta, t0)


def _same_uri(a: str, b: str) -> bool:
    norm = (lambda u: u.rstrip("/") if objstore.is_s3(u) else objstore.fs_for(u)[1].rstrip("/"))  # noqa: E731
    return norm(str(a)) == norm(str(b))


def _harvest_into(out, source, annotations, thresholds, filter_by_weak, rows_per_file, splits, storage_opts, meta,
                  t0) -> dict:
    videos = files = n_a = n_v = 0
    per_split: dict[str, int] = {}
    pending: list[tuple] = []

    def flush(parts: list[tuple]) -> None:
        nonlocal files, videos, n_a, n_v
        ids, sp, weak, za, zv, ok_a, ok_v = (np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(7))
        table, ca, cv = harvest_table(ids, sp, weak, za, zv, thresholds, filter_by_weak, meta, ok_a, ok_v)
        write_labels_part(out, files, table, storage_opts)
        files, videos, n_a, n_v = files + 1, videos + table.num_rows, n_a + ca, n_v + cv
        for s in sp:
            per_split[str(s)] = per_split.get(str(s), 0) + 1

    buffered = 0
    for piece in _batches(source, annotations, storage_opts, rows_per_file, splits):
        pending.append(piece)
        buffered += len(piece[0])
        while buffered >= rows_per_file:  # files of rows_per_file videos, whatever the batches of the scan
            whole = [np.concatenate([np.asarray(p[i]) for p in pending]) for i in range(7)]
            flush([tuple(x[:rows_per_file] for x in whole)])
            rest = tuple(x[rows_per_file:] for x in whole)
            pending, buffered = ([rest], len(rest[0])) if len(rest[0]) else ([], 0)
    if pending:
        flush(pending)
    if videos == 0:
        raise ValueError(f"{source}: no videos to harvest (no rows with status 'ok')")
    summary = {"videos": videos, "files": files, "splits": per_split, "audio_labels": n_a, "visual_labels": n_v,
               "out": str(out),
               **{k: meta[k] for k in ("thresholds", "filter_by_weak", "modality_agnostic", "from", "source")},
               "seconds": round(time.perf_counter() - t0, 3)}
    finish_labels(out, summary, storage_opts)
    return summary


# --- CLI -------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    opts = objstore.s3_options(StorageConfig())
    if args.labeler:
        return run_labeler(args, opts)
    if not args.logits:
        print("valor harvest: --logits/--features SOURCE is required (without --labeler)", file=sys.stderr)
        return 2
    try:
        th, where = resolve_thresholds(args.thresholds, args.unified, args.unified_audio, args.unified_visual, opts,
                                       labels=LabelConfig(filter_by_weak=not args.no_filter))
        summary = harvest(args.logits, args.out, annotations=args.annotations or default_annotations(), thresholds=th,
                          provenance=where, filter_by_weak=not args.no_filter, rows_per_file=args.rows_per_file,
                          splits=tuple(args.split or ()), storage_opts=opts,
                          modality_agnostic=args.modality_agnostic)
    except (LogitsError, FileNotFoundError, ValueError, OwnershipError, LockedError, PermissionError) as err:
        print(f"valor harvest: {err}", file=sys.stderr)
        return 2
    _log(f"{summary['videos']} videos -> {summary['out']} ({summary['files']} files, "
         f"{summary['audio_labels']} audio / {summary['visual_labels']} visual segment labels, "
         f"thresholds: audio {where['audio']}, visual {where['visual']}; filter_by_weak={summary['filter_by_weak']})")
    if args.json:
        print(json.dumps(summary))
    return 0


def recorded_source(ref: str, recorded) -> str:
    """The one features dataset a checkpoint was trained on (its data.features), to label without --features;
    CheckpointError (one line) when it records none, or several (a labels dataset is written beside ONE dataset)."""
    sources = [recorded] if isinstance(recorded, str) else [str(s) for s in recorded or [] if s]
    if not sources or not sources[0]:
        raise CheckpointError(f"{ref}: the checkpoint records no features source; pass --features")
    if len(sources) > 1:
        raise CheckpointError(f"{ref}: the checkpoint was trained on {len(sources)} features datasets "
                              f"({', '.join(sources)}); labels are written beside one: pass --features with the one "
                              "to label")
    return sources[0]


def run_labeler(args: argparse.Namespace, opts: dict) -> int:
    """`valor harvest --labeler han:SPEC`: no thresholds apply (Table 2's HAN labeler)."""
    given = [o for o, v in (("--unified", args.unified), ("--unified-audio", args.unified_audio is not None),
                            ("--unified-visual", args.unified_visual is not None),
                            ("--modality-agnostic", args.modality_agnostic)) if v]
    try:
        if given:
            raise ValueError(f"--labeler takes no thresholds: drop {', '.join(given)}")
        summary = harvest_labeler(args.labeler, args.logits, args.out,
                                  annotations=args.annotations or default_annotations(),
                                  threshold=args.labeler_threshold, filter_by_weak=not args.no_filter,
                                  splits=tuple(args.split or ()), rows_per_file=args.rows_per_file,
                                  tracking_uri=args.tracking_uri, storage_opts=opts)
    except (CheckpointError, LogitsError, FileNotFoundError, ValueError, OwnershipError, LockedError,
            PermissionError) as err:
        print(f"valor harvest: {err}", file=sys.stderr)
        return 2
    _log(f"{summary['videos']} videos -> {summary['out']} ({summary['files']} files, {summary['audio_labels']} audio / "
         f"{summary['visual_labels']} visual segment labels from the {summary['labeler']} labeler {args.labeler})")
    if args.json:
        print(json.dumps(summary))
    return 0


def register(subparsers: Any) -> None:
    d = HarvestConfig()
    p = subparsers.add_parser("harvest", help="thresholds AND weak labels -> harvested labels Parquet",
                              description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logits", "--features", dest="logits", default=None, metavar="SOURCE",
                   help="features dataset URI (valor extract --out) or sim[:SEED] (required without --labeler)")
    p.add_argument("--annotations", default=None, help="LLP CSV dir for sim (default: $VALOR_ANNOTATIONS, else the LLP "
                   "files shipped with valor)")
    p.add_argument("--thresholds", default="table6", metavar="JSON|table6",
                   help="tune JSON (valor tune thresholds --out) or table6 (default)")
    p.add_argument("--unified", action="store_true", help="use the unified thresholds of the tune JSON")
    p.add_argument("--unified-audio", type=float, default=None, metavar="X", help="one CLAP threshold for all classes")
    p.add_argument("--unified-visual", type=float, default=None, metavar="X", help="one CLIP threshold for all classes")
    p.add_argument("--no-filter", action="store_true", help="drop the AND with the weak label (ablation)")
    p.add_argument("--modality-agnostic", action="store_true",
                   help="both modalities get audio OR visual (VALOR Table 2: modality-agnostic labels)")
    p.add_argument("--labeler", default=None, metavar="han:SPEC", help="VALOR Table 2: a HAN checkpoint labels the "
                   "segments (official rule AND weak) instead of the teachers' logits; SOURCE may then be omitted "
                   "(the checkpoint's features)")
    p.add_argument("--labeler-threshold", type=float, default=d.labeler_threshold, metavar="X",
                   help="the labeler's rule: segment prob >= X AND video prob >= X (default %(default)s)")
    p.add_argument("--tracking-uri", default=None, metavar="URI", help="MLflow store for a run-id labeler")
    p.add_argument("--out", default=None, help="output URI (default: labels beside the features)")
    p.add_argument("--split", action="append", default=None, help="only this split (repeatable; default all)")
    p.add_argument("--rows-per-file", type=int, default=d.rows_per_file, help="videos per Parquet file (default "
                   "%(default)s)")
    p.add_argument("--json", action="store_true", help="last stdout line: the summary as JSON")
    p.set_defaults(func=run)
