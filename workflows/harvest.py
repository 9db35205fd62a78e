"""`valor harvest`: VALOR's label elaboration over a whole features dataset -> harvested labels Parquet.

    valor harvest --logits SOURCE [--annotations DIR] [--thresholds JSON|table6] [--out URI]
                  [--no-filter] [--unified | --unified-audio X --unified-visual Y] [--json]

For every video of the features dataset (`valor extract --out URI`; rows with status "ok" or "partial"): audio labels =
(clap_logits > theta^CLAP) AND weak, visual labels = (clip_logits > theta^CLIP) AND weak, each (10, 25) uint8
(valor_core.labels.harvest_labels). SOURCE is the features URI (local dir or s3://bucket/prefix) or `sim[:SEED]`
(LLP-sim teacher logits for every split of the annotations in DIR; --out is then required).

Thresholds, first match wins: --unified-audio/--unified-visual (one value for all classes, Table 8 ablation);
--unified (the best unified thresholds of a tune JSON); the per-class thresholds of a tune JSON (`valor tune thresholds
--out`); Table 6 (`--thresholds table6`, the default). --no-filter drops the AND with the weak label (ablation).

Output (default: `labels` beside the features dataset, i.e. <features>/../labels; same object store): Parquet files
`part-NNNNN.parquet` with columns

    video_id string, split string, weak fixed_size_list<uint8>[25],
    audio_labels  fixed_size_list<fixed_size_list<uint8>[25]>[10],
    visual_labels fixed_size_list<fixed_size_list<uint8>[25]>[10]
    audio_ok, visual_ok bool   False where that teacher had no output (extraction status "partial": e.g. no audio
                               track); its labels are then all 0 and a trainer should mask that modality's loss

and the thresholds used recorded twice: in every file's schema metadata under `valor.harvest` (JSON: thresholds per
modality, filter_by_weak, unified, where they came from, source) and in `_harvest.json` beside the files, written last
(its presence marks a complete output; `pyarrow.dataset` ignores `_`-prefixed files). A re-run replaces the output.

Also here: the readers `valor tune thresholds` uses (`read_val_logits`: val logits joined to the LLP val split, with
malformed tables rejected before any trial starts).
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

HARVEST_META_KEY = "valor.harvest"
SIDECAR = "_harvest.json"
LOGIT_COLUMNS = {"audio": "clap_logits", "visual": "clip_logits"}


def _log(msg: str) -> None:
    print(f"[harvest] {msg}", file=sys.stderr, flush=True)


# --- sources ---------------------------------------------------------------------------------------------------------


def parse_sim(source: str) -> Optional[int]:
    """`sim` -> 0, `sim:7` -> 7, anything else -> None (a dataset URI)."""
    s = str(source)
    if s == "sim":
        return 0
    if s.startswith("sim:"):
        try:
            return int(s[4:])
        except ValueError:
            raise ValueError(f"--logits {s!r}: expected sim or sim:SEED with an integer seed") from None
    return None


def column_array(table, name: str, shape: tuple[int, ...], dtype=np.float32, ids=None,
                 allow_null: bool = False) -> np.ndarray:
    """A list / fixed-size-list / fixed-shape-tensor column as a (N, *shape) array, or LogitsError saying why not.
    With allow_null, null rows become NaN instead of an error.

    Rows are selected in NumPy *after* conversion, never with Arrow's filter/take: pyarrow 25.0.1 returns wrong
    values from filter/take on a sliced nested fixed_size_list array (e.g. a record batch of a Parquet scan), the
    extraction's logits type. flatten() and concatenation of sliced arrays are correct."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from valor_core.tuning_objective import LogitsError

    if name not in table.column_names:
        raise LogitsError(f"column {name!r} missing (columns: {', '.join(table.column_names)})")
    col = table.column(name).combine_chunks() if table.num_rows else table.column(name)
    n = table.num_rows
    if n == 0:
        return np.zeros((0, *shape), dtype)
    if col.null_count:
        rows = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
        if not allow_null:
            who = ", ".join(str(ids[i]) if ids is not None else f"row {i}" for i in rows[:3])
            raise LogitsError(f"{name}: {len(rows)} video(s) have no value ({who})")
        nan = np.full(shape, np.nan).tolist()  # rare: go through Python, null rows become NaN
        values = [nan if v is None else v for v in col.to_pylist()]
        try:
            return np.asarray(values, dtype=dtype).reshape(n, *shape)
        except ValueError as err:
            raise LogitsError(f"{name}: expected {'x'.join(map(str, shape))} values per video ({err})") from None
    if isinstance(col.type, pa.FixedShapeTensorType):
        arr = col.to_numpy_ndarray()
        if arr.shape[1:] != shape:
            raise LogitsError(f"{name}: expected {shape} per video, got {arr.shape[1:]}")
        return arr.astype(dtype, copy=False)
    flat, dims = col, []
    while pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
        lengths = pc.list_value_length(flat).to_numpy(zero_copy_only=False)
        if lengths.size and (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise LogitsError(f"{name}: ragged values (lengths {lengths[0]} and {lengths[bad]} at nesting level "
                              f"{len(dims)}); expected {'x'.join(map(str, shape))} per video")
        dims.append(int(lengths[0]) if lengths.size else 0)
        if flat.null_count:
            raise LogitsError(f"{name}: null entries inside the values")
        flat = flat.flatten()
    if not dims:
        raise LogitsError(f"{name}: expected a list column of {'x'.join(map(str, shape))} values, got {col.type}")
    # nested lists give the row shape level by level; a single level may hold the whole row flat
    row_shape = tuple(dims) if len(dims) > 1 else (dims[0],)
    if row_shape != shape and not (len(row_shape) == 1 and row_shape[0] == int(np.prod(shape))):
        raise LogitsError(f"{name}: expected {'x'.join(map(str, shape))} values per video, got "
                          f"{'x'.join(map(str, row_shape))}")
    if flat.null_count:
        raise LogitsError(f"{name}: null entries inside the values")
    try:
        values = flat.to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, TypeError) as err:
        raise LogitsError(f"{name}: values are not numeric ({flat.type}): {err}") from None
    if not np.issubdtype(values.dtype, np.number):
        raise LogitsError(f"{name}: values are not numeric ({flat.type})")
    return values.reshape(n, *shape).astype(dtype, copy=False)


def features_dataset(uri: str, storage_opts: Optional[dict] = None):
    """The features Parquet dataset under URI (pyarrow.dataset; `_`/`.`-prefixed entries, e.g. _failures, ignored)."""
    import pyarrow.dataset as ds

    from workflows import objstore

    fs, path = objstore.fs_for(uri, storage_opts)
    try:
        return ds.dataset(path, filesystem=fs, format="parquet")
    except FileNotFoundError:
        raise FileNotFoundError(f"no features dataset at {uri}") from None


OK_FLAGS = {"clap_logits": "clap_ok", "clip_logits": "clip_ok"}  # extraction: False = that teacher had no input


USABLE_STATUS = ("ok", "partial")  # rows with features; "partial": one teacher missing (see the `*_ok` flags)


def _usable(table) -> np.ndarray:
    """(N,) bool: rows whose status is usable (all rows when there is no status column). NumPy, not an Arrow filter."""
    if "status" not in table.column_names:
        return np.ones(table.num_rows, bool)
    return np.isin(np.asarray(table.column("status").to_pylist(), dtype=object), USABLE_STATUS)


def _flags(table, col: str) -> np.ndarray:
    name = OK_FLAGS[col]
    if name not in table.column_names:
        return np.ones(table.num_rows, bool)
    return np.asarray(table.column(name).fill_null(False).to_numpy(zero_copy_only=False), bool)


def _teacher_logits(table, col: str, ids, where: str, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits (K, 10, 25) float32, ok (K,) bool) of one teacher column for the rows in `keep`; rows whose teacher
    produced no output get -inf (they harvest nothing), every other row must be finite (LogitsError otherwise)."""
    from valor_core.tuning_objective import validate_logits

    ok = _flags(table, col)[keep]
    z = column_array(table, col, (NUM_SEGMENTS, NUM_CLASSES), ids=ids, allow_null=True)[keep]
    kept_ids = np.asarray(ids)[keep]
    validate_logits(z[ok], f"{where} {col}", kept_ids[ok])
    if not ok.all():
        z[~ok] = -np.inf
    return z, ok


def read_val_logits(source: str, annotations: str, storage_opts: Optional[dict] = None):
    """Val split teacher logits aligned to the LLP val videos (order of AVVP_val_pd.csv), with weak labels and dense GT
    from `annotations`, as AVVPArrays. Raises LogitsError (wrong shape, NaN/inf, nulls, missing val videos)."""
    from valor_core.arrays import AVVPArrays
    from valor_core.llp import load_split
    from valor_core.tuning_objective import LogitsError, validate_logits

    seed = parse_sim(source)
    if seed is not None:
        from valor_core.sim import simulate

        val = simulate(annotations, seed=seed, splits=("val",))["val"]
        for col in LOGIT_COLUMNS.values():
            setattr(val, col, validate_logits(getattr(val, col), f"sim:{seed} {col}", val.video_ids))
        return val
    split = load_split(annotations, "val")
    dataset = features_dataset(source, storage_opts)
    needed = ["video_id", *LOGIT_COLUMNS.values()]
    missing_cols = [c for c in needed if c not in dataset.schema.names]
    if missing_cols:
        raise LogitsError(f"{source}: features dataset lacks column(s) {', '.join(missing_cols)} "
                          f"(has {', '.join(dataset.schema.names)})")
    extra = [f for f in (*OK_FLAGS.values(), "status") if f in dataset.schema.names]
    table = dataset.to_table(columns=needed + extra)  # no Arrow filter/take on nested lists (see column_array)
    ids = np.asarray(table.column("video_id").to_pylist(), dtype=object)
    usable = _usable(table)
    first: dict = {}
    for i in np.flatnonzero(usable):
        first.setdefault(ids[i], int(i))
    absent = [v for v in split.video_ids if v not in first]
    if absent:
        raise LogitsError(f"{source}: {len(absent)} of {len(split.video_ids)} val videos have no logits "
                          f"(e.g. {', '.join(map(str, absent[:3]))}); re-run extraction for them or check the source")
    rows = np.array([first[v] for v in split.video_ids])
    arrays = {}
    for col in LOGIT_COLUMNS.values():
        bad = ~_flags(table, col)[rows]
        if bad.any():
            who = ", ".join(map(str, np.asarray(split.video_ids)[bad][:3]))
            raise LogitsError(f"{source}: {int(bad.sum())} val videos have no {col} (their {OK_FLAGS[col]} is "
                              f"false, e.g. {who}): the val GT needs every val video for the search")
        z = column_array(table, col, (NUM_SEGMENTS, NUM_CLASSES), ids=ids, allow_null=True)[rows]
        arrays[col] = validate_logits(z, f"{source} {col}", split.video_ids)
    return AVVPArrays(video_ids=np.asarray(split.video_ids), weak=split.weak, audio_gt=split.audio_gt,
                      visual_gt=split.visual_gt, **arrays)


# --- thresholds --------------------------------------------------------------------------------------------------------


def read_json_uri(uri: str, storage_opts: Optional[dict] = None) -> dict:
    from workflows import objstore

    try:
        return json.loads(objstore.read_bytes(uri, storage_opts))
    except FileNotFoundError:
        raise FileNotFoundError(f"thresholds file {uri} not found") from None


def resolve_thresholds(thresholds: Optional[str] = None, unified: bool = False,
                       unified_audio: Optional[float] = None, unified_visual: Optional[float] = None,
                       storage_opts: Optional[dict] = None, labels=None) -> tuple[dict, dict]:
    """({"audio": (25,), "visual": (25,)} float64, provenance) from the CLI options / a LabelConfig (see module doc)."""
    from valor_core.config import LabelConfig
    from valor_core.labels import thresholds_for

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
            t = float(tuned["unified"][m]["threshold"])
            out[m], where[m] = np.full(NUM_CLASSES, t), f"unified from {thresholds}"
        elif per_class_cfg[m] is not None:
            out[m], where[m] = thresholds_for(labels, m).astype(np.float64), "config"
        elif tuned is not None and m in tuned:
            th = np.asarray(tuned[m]["thresholds"], np.float64)
            if th.shape != (NUM_CLASSES,):
                raise ValueError(f"{thresholds}: {m}.thresholds has {th.size} values, expected {NUM_CLASSES}")
            out[m], where[m] = th, f"tuned ({thresholds})"
        else:
            out[m], where[m] = thresholds_for(LabelConfig(), m).astype(np.float64), "table6"
    return out, where


# --- harvesting ----------------------------------------------------------------------------------------------------------


def _labels_array(x: np.ndarray):
    import pyarrow as pa

    inner = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1).astype(np.uint8)), NUM_CLASSES)
    return pa.FixedSizeListArray.from_arrays(inner, NUM_SEGMENTS) if x.ndim == 3 else inner


def harvest_table(video_ids, splits, weak, clap_logits, clip_logits, thresholds: dict, filter_by_weak: bool,
                  meta: dict, audio_ok=None, visual_ok=None):
    """One Arrow table of harvested labels (schema in the module doc), with `meta` in the schema metadata."""
    import pyarrow as pa

    from valor_core.labels import harvest_labels

    weak = (np.asarray(weak) > 0).astype(np.uint8)
    a = harvest_labels(clap_logits, weak, thresholds["audio"], filter_by_weak)
    v = harvest_labels(clip_logits, weak, thresholds["visual"], filter_by_weak)
    table = pa.table({
        "video_id": pa.array([str(x) for x in video_ids], pa.string()),
        "split": pa.array([str(x) for x in splits], pa.string()),
        "weak": _labels_array(weak),
        "audio_labels": _labels_array(a),
        "visual_labels": _labels_array(v),
        "audio_ok": pa.array(np.ones(len(a), bool) if audio_ok is None else np.asarray(audio_ok, bool)),
        "visual_ok": pa.array(np.ones(len(v), bool) if visual_ok is None else np.asarray(visual_ok, bool)),
    })
    return table.replace_schema_metadata({HARVEST_META_KEY: json.dumps(meta)}), int(a.sum()), int(v.sum())


def default_out(features_uri: str) -> str:
    """`labels` beside the features dataset (<features>/../labels), on the same store."""
    from workflows import objstore

    base = str(features_uri).rstrip("/")
    parent = posixpath.dirname(base) if objstore.is_s3(base) or "/" in base else "."
    return objstore.join(parent, "labels")


def _batches(source: str, annotations: Optional[str], storage_opts: Optional[dict], rows: int, splits=()):
    """Yields (video_ids, splits, weak, clap_logits, clip_logits) batches from a features dataset or LLP-sim."""
    from valor_core.tuning_objective import LogitsError, validate_logits

    seed = parse_sim(source)
    if seed is not None:
        if not annotations:
            raise ValueError("--logits sim[:SEED] needs --annotations DIR (the LLP CSVs the simulation follows)")
        from valor_core.sim import simulate

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
        keep = _usable(t)
        if splits and "split" in t.column_names:
            keep &= np.isin(np.asarray(t.column("split").to_pylist(), dtype=object), list(splits))
        for i in np.flatnonzero(keep):  # a video written twice is harvested once
            if ids[i] in seen:
                keep[i] = False
            seen.add(ids[i])
        if not keep.any():
            continue
        za, ok_a = _teacher_logits(t, "clap_logits", ids, source, keep)
        zv, ok_v = _teacher_logits(t, "clip_logits", ids, source, keep)
        weak = column_array(t, "weak", (NUM_CLASSES,), np.float32, ids=ids, allow_null=True)[keep]
        if not np.isfinite(weak).all():
            raise LogitsError(f"{source}: weak labels missing for some videos (e.g. {ids[keep][0]})")
        sp = (np.asarray(t.column("split").to_pylist(), dtype=object)[keep].tolist() if "split" in t.column_names
              else [""] * int(keep.sum()))
        yield ids[keep], sp, weak, za, zv, ok_a, ok_v


def harvest(source: str, out: Optional[str] = None, *, annotations: Optional[str] = None,
            thresholds: Optional[dict] = None, provenance: Optional[dict] = None, filter_by_weak: bool = True,
            rows_per_file: int = 4096, splits=(), storage_opts: Optional[dict] = None) -> dict:
    """Harvest every video of SOURCE into Parquet at `out` (default: beside the features). Returns a summary dict."""
    import pyarrow.parquet as pq

    from workflows import objstore

    t0 = time.perf_counter()
    if thresholds is None:
        thresholds, provenance = resolve_thresholds(storage_opts=storage_opts)
    thresholds = {m: np.asarray(thresholds[m], np.float64) for m in ("audio", "visual")}
    for m, th in thresholds.items():
        if th.shape != (NUM_CLASSES,) or not np.isfinite(th).all():
            raise ValueError(f"{m} thresholds must be {NUM_CLASSES} finite numbers, got {th}")
    if out is None:
        if parse_sim(source) is not None:
            raise ValueError("--logits sim[:SEED] needs --out URI (there is no features dataset to write beside)")
        out = default_out(source)
    meta = {"thresholds": {m: [float(t) for t in thresholds[m]] for m in ("audio", "visual")},
            "teachers": {"audio": "clap_logits > theta^CLAP", "visual": "clip_logits > theta^CLIP"},
            "filter_by_weak": bool(filter_by_weak), "from": provenance or {}, "source": str(source),
            "rule": "(z > theta) AND weak" if filter_by_weak else "z > theta",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fs, path = objstore.fs_for(out, storage_opts)
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir_contents(path, missing_dir_ok=True)  # a re-run replaces the output, never mixes with it
    fs.create_dir(path, recursive=True)
    videos = files = n_a = n_v = 0
    per_split: dict[str, int] = {}
    pending: list[tuple] = []

    def flush(parts: list[tuple]) -> None:
        nonlocal files, videos, n_a, n_v
        ids, sp, weak, za, zv, ok_a, ok_v = (np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(7))
        table, ca, cv = harvest_table(ids, sp, weak, za, zv, thresholds, filter_by_weak, meta, ok_a, ok_v)
        pq.write_table(table, posixpath.join(path, f"part-{files:05d}.parquet"), filesystem=fs)
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
               "out": str(out), **{k: meta[k] for k in ("thresholds", "filter_by_weak", "from", "source")},
               "seconds": round(time.perf_counter() - t0, 3)}
    objstore.put_atomic(fs, posixpath.join(path, SIDECAR), (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def read_harvest(uri: str, storage_opts: Optional[dict] = None) -> tuple[dict, Any]:
    """(metadata dict, pyarrow Table) of a harvest output; FileNotFoundError when incomplete (no sidecar)."""
    import pyarrow.dataset as ds

    from workflows import objstore

    fs, path = objstore.fs_for(uri, storage_opts)
    meta = json.loads(objstore.read_bytes(objstore.join(uri, SIDECAR), storage_opts))
    table = ds.dataset(path, filesystem=fs, format="parquet").to_table()
    return meta, table


# --- CLI -------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from valor_core.config import StorageConfig
    from valor_core.tuning_objective import LogitsError
    from workflows import objstore

    opts = objstore.s3_options(StorageConfig())
    try:
        th, where = resolve_thresholds(args.thresholds, args.unified, args.unified_audio, args.unified_visual, opts)
        summary = harvest(args.logits, args.out, annotations=args.annotations, thresholds=th, provenance=where,
                          filter_by_weak=not args.no_filter, rows_per_file=args.rows_per_file,
                          splits=tuple(args.split or ()), storage_opts=opts)
    except (LogitsError, FileNotFoundError, ValueError) as err:
        print(f"valor harvest: {err}", file=sys.stderr)
        return 2
    _log(f"{summary['videos']} videos -> {summary['out']} ({summary['files']} files, "
         f"{summary['audio_labels']} audio / {summary['visual_labels']} visual segment labels, "
         f"thresholds: audio {where['audio']}, visual {where['visual']}; filter_by_weak={summary['filter_by_weak']})")
    if args.json:
        print(json.dumps(summary))
    return 0


def register(subparsers: Any) -> None:
    from valor_core.config import HarvestConfig

    d = HarvestConfig()
    p = subparsers.add_parser("harvest", help="thresholds AND weak labels -> harvested labels Parquet",
                              description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logits", "--features", dest="logits", required=True, metavar="SOURCE",
                   help="features dataset URI (valor extract --out) or sim[:SEED]")
    p.add_argument("--annotations", default=None, help="LLP CSV dir (needed for sim)")
    p.add_argument("--thresholds", default="table6", metavar="JSON|table6",
                   help="tune JSON (valor tune thresholds --out) or table6 (default)")
    p.add_argument("--unified", action="store_true", help="use the unified thresholds of the tune JSON")
    p.add_argument("--unified-audio", type=float, default=None, metavar="X", help="one CLAP threshold for all classes")
    p.add_argument("--unified-visual", type=float, default=None, metavar="X", help="one CLIP threshold for all classes")
    p.add_argument("--no-filter", action="store_true", help="drop the AND with the weak label (ablation)")
    p.add_argument("--out", default=None, help="output URI (default: labels beside the features)")
    p.add_argument("--split", action="append", default=None, help="only this split (repeatable; default all)")
    p.add_argument("--rows-per-file", type=int, default=d.rows_per_file)
    p.add_argument("--json", action="store_true", help="last stdout line: the summary as JSON")
    p.set_defaults(func=run)
