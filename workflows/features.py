"""THE features contract: one owner for the datasets valor writes and reads, their schemas and where they sit.

Layout (every URI a local dir or `s3://bucket/prefix`; `beside(F, name)` is the one rule for siblings):

    F = <output>/features            the features dataset: part-*.parquet, one row per video (schema below)
    F/_runs/<run>.json               what each extraction run used (config, teachers, code version), its summary and
                                     the precision its teacher/backbone actors ran in ("precision": fp32 | bf16 | fp16,
                                     "auto" resolved; `recorded_precision` reads it, `valor parse` builds with it)
    F/_staging/                      in-flight files of a writer (never read as data: `_`-prefixed entries are skipped)
    beside(F, "failures")            the failures table (part-*.parquet)
    beside(F, "labels")              harvested labels (part-*.parquet + LABELS_SIDECAR written last = complete)

    beside(F, name) = <parent>/<name> when F ends in `/features` (the pipeline layout), else `<F>_<name>`.

Features schema (SCHEMA_VERSION 1; T = media.segments = 10, C = 25 classes in Table 6 order):
    video_id string · split string · labels string (weak label names) · weak fixed_size_list<uint8>[25]
    clip_ok, clap_ok bool      whether that teacher produced output (False: its columns below are all NaN)
    clip_logits, clap_logits   fixed_size_list<fixed_size_list<float32>[25]>[T]   (logit_scale x cosine)
    clip_emb, clap_emb         fixed_size_list<fixed_size_list<float32>[d]>[T]    (L2-normalised; d = teacher dim)
    clip_dense_emb             fixed_size_list<fixed_size_list<float32>[d]>[8T]   (only with dense=true)
    clip_teacher, clip_checkpoint, clap_teacher, clap_checkpoint  string
    (with `--features`: the clip_* / clap_* columns only for the teachers asked for, and the backbones' columns
    vggish / res152 / r2plus1d / clap_maps exactly as imported below; NaN rows where a backbone had no input)
    status string ("ok" | "partial": one teacher had no input, e.g. no audio track) · error string (why partial)
    issues string (recoverable media issues, "kind: reason; ...") · notes string (policies applied)
    duration float32 (s) · source string (video URI) · run_id string · schema_version int16
Imported features (`valor import llp`, workflows/importer.py; same layout): video_id · split · labels · weak as
    above, whichever RELEASED columns were imported -- vggish (10,128), res152 (80,2048), r2plus1d (10,512), clip_feat
    (10,768), clap_maps (64,768) as fixed_size_list<fixed_size_list<float32>>, visual_pseudo / audio_pseudo (10,25) as
    fixed_size_list<fixed_size_list<uint8>> -- status ("ok") · source (the files read) · run_id · schema_version.
Failures schema: video_id · stage ("read" | "decode" | "clip" | "clap" | a backbone name | "write" | "import") · kind ·
    reason · fatal bool (True: no features row) · source · run_id · schema_version. Partial videos have a features row
    AND a non-fatal failure row. Imported videos: one fatal row per bad file (kind missing | truncated | shape | dtype |
    nonfinite | outside_root).
Labels schema (workflows/harvest.py writes it): video_id, split, weak (25 uint8), audio_labels / visual_labels
    (10 x 25 uint8), audio_ok / visual_ok bool; the thresholds used in the schema metadata and in LABELS_SIDECAR.

Several datasets train together (`valor train --features A --features B`, workflows.trainset) only as `check_mix`
allows: no video id in two of them, the columns read have the same Arrow type (shape and dtype) in each, and the
datasets made by `valor extract` recorded the same media settings and the same teacher / backbone weights for those
columns (imported datasets record the released files, not how they were made). The precision the towers ran in is not
compared: bf16 weights move a feature by bf16 rounding (about 1e-2 relative), far less than the released features
(mixed freely) differ from any re-extraction, so GPU (auto = bf16) and CPU (auto = fp32) extractions train together.

The datasets record what made them: the teacher specs, the media settings and (valor_core.provenance) the SHA-256 of
each local weights file, in the marker; the extraction run's record repeats them (`weights`).

Readers refuse corrupt values in a row they use (`check_values`: NaN/inf or |x| > VALUE_BOUND) with one line naming
the dataset, the column and the videos: a corrupt video is never dropped in silence.
Readers convert nested list columns with `column_array` (one converter): rows are selected in NumPy after conversion,
never with Arrow filter/take (pyarrow 25.0.1 returns wrong values from filter/take on sliced nested fixed_size_list
arrays, e.g. a record batch of a Parquet scan).
"""
from __future__ import annotations

import json
import posixpath
from typing import Any, Optional

import numpy as np

from valor_core.arrays import AVVPArrays
from valor_core.classes import NUM_CLASSES, NUM_SEGMENTS
from valor_core.llp import load_split
from valor_core.sim import parse_sim_source, simulate
from valor_core.tuning_objective import LogitsError, validate_logits
from workflows import objstore
from workflows.outputs import owned_parts, owns, read_marker, reserve, write_file

SCHEMA_VERSION = 1
STAGING = "_staging"
RUNS = "_runs"
LABELS_SIDECAR = "_harvest.json"
LOGIT_COLUMNS = {"audio": "clap_logits", "visual": "clip_logits"}
# The released LLP features and pseudo-labels (`valor import llp`): column -> (release folder, shape per video). The
# folder's first part names the import option (feats -> --feats, CLIP -> --clip, CLAP -> --clap).
RELEASED = {
    "vggish": ("feats/vggish", (10, 128)),  # AVVP-ECCV20 VGGish audio features
    "res152": ("feats/res152", (80, 2048)),  # ResNet-152 frame features, 8 fps
    "r2plus1d": ("feats/r2plus1d_18", (10, 512)),  # R(2+1)D-18 clip features
    "clip_feat": ("CLIP/features", (10, 768)),  # VALOR CLIP.zip: L2-normalised CLIP ViT-L/14 frame embeddings
    "visual_pseudo": ("CLIP/segment_pseudo_labels", (10, 25)),  # VALOR's 0/1 visual segment pseudo-labels
    "clap_maps": ("CLAP/features", (64, 768)),  # VALOR CLAP.zip: HTSAT feature maps of the whole clip
    "audio_pseudo": ("CLAP/segment_pseudo_labels", (10, 25)),  # VALOR's 0/1 audio segment pseudo-labels
}
RELEASED_LABELS = ("visual_pseudo", "audio_pseudo")  # uint8 0/1; the other released columns are float32


# --- where things sit ------------------------------------------------------------------------------------------------


def beside(features: str, name: str) -> str:
    """The sibling `name` (failures, labels) of the features dataset `features` (see the module doc)."""
    out = str(features).rstrip("/")
    parent, base = posixpath.split(out)
    if base == "features" and parent and not parent.endswith(":/"):
        return posixpath.join(parent, name)
    return f"{out}_{name}"


def failures_uri(features: str) -> str:
    return beside(features, "failures")


def labels_uri(features: str) -> str:
    return beside(features, "labels")


def clean_staging(out: str, opts: Optional[dict] = None) -> int:
    """Delete what killed runs left in <out>/_staging (never data: staged files are published by a move)."""
    fs, path = objstore.fs_for(out, opts)
    marker = read_marker(out, opts) or {}
    staged = [p for p in objstore.list_files(objstore.join(out, STAGING), opts, recursive=True)
              if owns(marker, posixpath.relpath(p, path))]  # what valor staged, never a file someone put there
    for p in staged:
        fs.delete_file(p)
    return len(staged)


def published_parts(uri: str, opts: Optional[dict] = None) -> list[str]:
    """Paths of the published Parquet parts directly under `uri` that valor wrote (its manifest: a stray file there
    is never read; staged and `_`/`.`-prefixed files excluded)."""
    return [p for p in owned_parts(uri, opts) if not posixpath.basename(p).startswith(("_", "."))]


# --- Arrow <-> NumPy ---------------------------------------------------------------------------------------------------


def fixed_list(arr: np.ndarray, valid: Optional[np.ndarray] = None, dtype=np.float32):
    """(n, a, b) numpy -> fixed_size_list<fixed_size_list<dtype>[b]>[a]; rows where valid is False are all-NaN (float
    dtypes only; 0/1 label columns are written with dtype=np.uint8 and no `valid`).

    (Not Arrow nulls: pyarrow 25 cannot read back a null entry of a nested fixed_size_list from Parquet.)"""
    import pyarrow as pa

    n, a, b = arr.shape
    arr = np.array(arr, dtype, copy=True) if valid is not None else np.ascontiguousarray(arr, dtype)
    if valid is not None:
        arr[~np.asarray(valid, bool)] = np.nan
    inner = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), b)
    return pa.FixedSizeListArray.from_arrays(inner, a)


def column_array(table, name: str, shape: tuple[int, ...], dtype=np.float32, ids=None,
                 allow_null: bool = False) -> np.ndarray:
    """A list / fixed-size-list / fixed-shape-tensor column as a (N, *shape) array, or LogitsError saying why not.
    With allow_null, null rows become NaN instead of an error. (Select rows in NumPy afterwards: see the module doc.)"""
    import pyarrow as pa
    import pyarrow.compute as pc

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


# Corrupt, not a feature: a NaN / inf, or a magnitude no network's float32 output comes near -- L2-normalised
# embeddings are <= 1, logits <= the teachers' logit scale (100), the paper's CNN features with real weights < 1e3, and
# even a random-init ResNet-152 (no trained BatchNorm statistics) gives ~3e8 -- while a flipped top exponent bit gives
# values like 2.5e38.
VALUE_BOUND = 1e30


def corrupt_rows(values: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(N,) bool: the rows of an (N, ...) float array holding a NaN / inf or a |value| > VALUE_BOUND (in chunks of
    rows: no full-size temporary)."""
    out = np.zeros(len(values), bool)
    if not len(values):
        return out
    flat = values.reshape(len(values), -1)
    for i in range(0, len(values), chunk):
        out[i:i + chunk] = ~(np.abs(flat[i:i + chunk]) <= VALUE_BOUND).all(axis=1)  # NaN compares False
    return out


def check_values(values: np.ndarray, where: str, column: str, ids) -> None:
    """LogitsError (one line, naming `where`, the column and the first videos) when rows of `values` are corrupt
    (corrupt_rows); the caller passes only the rows it would use."""
    bad = np.flatnonzero(corrupt_rows(values))
    if bad.size:
        who = ", ".join(str(ids[i]) for i in bad[:3]) + (f" and {bad.size - 3} more" if bad.size > 3 else "")
        raise LogitsError(f"{where}: column {column} of {bad.size} video(s) holds corrupt values (NaN/inf or |x| > "
                          f"{VALUE_BOUND:g}): {who}; re-extract or re-import them")


def features_dataset(uri: str, storage_opts: Optional[dict] = None):
    """The features Parquet dataset under URI (pyarrow.dataset; `_`/`.`-prefixed entries, e.g. _staging, ignored)."""
    import pyarrow.dataset as ds

    fs, _ = objstore.fs_for(uri, storage_opts)
    files = published_parts(uri, storage_opts)
    if not files:
        raise FileNotFoundError(f"no features dataset at {uri}")
    return ds.dataset(files, filesystem=fs, format="parquet")


# --- readers --------------------------------------------------------------------------------------------------------


def read_features(out: str, opts: Optional[dict] = None, columns: Optional[list[str]] = None):
    """The published features dataset as one pyarrow Table (what `pyarrow.dataset.dataset(out)` reads)."""
    import pyarrow.dataset as ds

    fs, path = objstore.fs_for(out, opts)
    files = published_parts(out, opts)
    if not files:
        return None
    return ds.dataset(files, filesystem=fs, format="parquet").to_table(columns=columns)


def failure_schema():
    import pyarrow as pa

    return pa.schema([("video_id", pa.string()), ("stage", pa.string()), ("kind", pa.string()),
                      ("reason", pa.string()), ("fatal", pa.bool_()), ("source", pa.string()),
                      ("run_id", pa.string()), ("schema_version", pa.int16())])


def read_failures(out: str, opts: Optional[dict] = None, failures: Optional[str] = None):
    """The failures table, current view: fatal rows of videos that later succeeded (`--retry-failed`) are dropped."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    furi = failures or failures_uri(out)
    fs, _ = objstore.fs_for(furi, opts)
    files = published_parts(furi, opts)
    if not files:
        return pa.Table.from_pylist([], schema=failure_schema())
    table = ds.dataset(files, filesystem=fs, format="parquet").to_table()
    feats = read_features(out, opts, columns=["video_id"])
    if feats is not None and table.num_rows:
        done = feats.column("video_id")
        stale = pc.and_(table.column("fatal"), pc.is_in(table.column("video_id"), value_set=done))
        table = table.filter(pc.invert(stale))
    if table.num_rows and len(set(table.column("run_id").to_pylist())) > 1:
        # a video retried (--retry-failed) and failing again: keep the rows of its latest run (run ids sort by time)
        vids, runs = table.column("video_id").to_pylist(), table.column("run_id").to_pylist()
        latest: dict[str, str] = {}
        for v, r in zip(vids, runs):
            latest[v] = max(latest.get(v, r), r)
        table = table.filter(pa.array([latest[v] == r for v, r in zip(vids, runs)]))
    return table


OK_FLAGS = {"clap_logits": "clap_ok", "clip_logits": "clip_ok"}  # extraction: False = that teacher had no input


USABLE_STATUS = ("ok", "partial")  # rows with features; "partial": one teacher missing (see the `*_ok` flags)


def usable_rows(table) -> np.ndarray:
    """(N,) bool: rows whose status is usable (all rows when there is no status column). NumPy, not an Arrow filter."""
    if "status" not in table.column_names:
        return np.ones(table.num_rows, bool)
    return np.isin(np.asarray(table.column("status").to_pylist(), dtype=object), USABLE_STATUS)


def teacher_ok(table, col: str) -> np.ndarray:
    name = OK_FLAGS[col]
    if name not in table.column_names:
        return np.ones(table.num_rows, bool)
    return np.asarray(table.column(name).fill_null(False).to_numpy(zero_copy_only=False), bool)


def teacher_logits(table, col: str, ids, where: str, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits (K, 10, 25) float32, ok (K,) bool) of one teacher column for the rows in `keep`; rows whose teacher
    produced no output get -inf (they harvest nothing), every other row must be finite (LogitsError otherwise)."""
    ok = teacher_ok(table, col)[keep]
    z = column_array(table, col, (NUM_SEGMENTS, NUM_CLASSES), ids=ids, allow_null=True)[keep]
    kept_ids = np.asarray(ids)[keep]
    validate_logits(z[ok], f"{where} {col}", kept_ids[ok])
    check_values(z[ok], where, col, kept_ids[ok])
    if not ok.all():
        z[~ok] = -np.inf
    return z, ok


def read_val_logits(source: str, annotations: str, storage_opts: Optional[dict] = None):
    """Val split teacher logits aligned to the LLP val videos (order of AVVP_val_pd.csv), with weak labels and dense GT
    from `annotations`, as AVVPArrays. Raises LogitsError (wrong shape, NaN/inf, nulls, missing val videos)."""
    sim = parse_sim_source(source)
    if sim is not None:
        seed = sim[0]
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
    usable = usable_rows(table)
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
        bad = ~teacher_ok(table, col)[rows]
        if bad.any():
            who = ", ".join(map(str, np.asarray(split.video_ids)[bad][:3]))
            raise LogitsError(f"{source}: {int(bad.sum())} val videos have no {col} (their {OK_FLAGS[col]} is "
                              f"false, e.g. {who}): the val GT needs every val video for the search")
        z = column_array(table, col, (NUM_SEGMENTS, NUM_CLASSES), ids=ids, allow_null=True)[rows]
        arrays[col] = validate_logits(z, f"{source} {col}", split.video_ids)
        check_values(arrays[col], source, col, split.video_ids)
    return AVVPArrays(video_ids=np.asarray(split.video_ids), weak=split.weak, audio_gt=split.audio_gt,
                      visual_gt=split.visual_gt, **arrays)


def recorded_precision(uri: str, opts: Optional[dict] = None) -> Optional[str]:
    """The precision the latest extraction run of the dataset `uri` that extracted videos ran its teachers and
    backbones in (its F/_runs record; run ids sort by time); None when none recorded one (imports, older datasets)."""
    try:
        records = sorted(p for p in objstore.list_files(objstore.join(uri, RUNS), opts, suffix=".json"))
    except (FileNotFoundError, OSError):
        return None
    for path in reversed(records):
        try:
            record = json.loads(objstore.read_bytes(objstore.join(uri, RUNS, posixpath.basename(path)), opts))
        except (FileNotFoundError, OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("precision"):
            return str(record["precision"])
    return None


def write_labels_part(out: str, index: int, table, opts: Optional[dict] = None) -> None:
    """Part `index` of the labels output `out` (claimed, cleared): recorded in its manifest, then written."""
    import pyarrow.parquet as pq

    uri = objstore.join(out, f"part-{index:05d}.parquet")
    reserve(uri, opts)
    fs, path = objstore.fs_for(uri, opts)
    pq.write_table(table, path, filesystem=fs)


def finish_labels(out: str, summary: dict, opts: Optional[dict] = None) -> None:
    """Mark a labels output complete: its LABELS_SIDECAR (the run's summary), written last and atomically."""
    write_file(objstore.join(out, LABELS_SIDECAR), (json.dumps(summary, indent=1) + "\n").encode(), opts)


def labels_complete(uri: str, storage_opts: Optional[dict] = None) -> bool:
    """Whether a complete harvest output (its sidecar, written last) is at `uri`."""
    try:
        return objstore.is_file(objstore.join(uri, LABELS_SIDECAR), storage_opts)
    except OSError:
        return False


def read_labels(uri: str, storage_opts: Optional[dict] = None) -> tuple[dict, Any]:
    """(metadata dict, pyarrow Table) of a harvest output; FileNotFoundError when incomplete (no sidecar)."""
    import pyarrow.dataset as ds

    fs, _ = objstore.fs_for(uri, storage_opts)
    meta = json.loads(objstore.read_bytes(objstore.join(uri, LABELS_SIDECAR), storage_opts))
    table = ds.dataset(published_parts(uri, storage_opts), filesystem=fs, format="parquet").to_table()
    return meta, table


# --- several datasets as one training set -----------------------------------------------------------------------------

# a column -> what made it, in an extraction marker's "teachers" record (backbones: its "features" entry)
MADE_BY = {"clip_emb": "clip", "clip_logits": "clip", "clip_dense_emb": "clip", "clap_emb": "clap",
           "clap_logits": "clap", "clap_maps": "clap"}
MEDIA_IRRELEVANT = ("dense_frames", "decode_threads")  # decoding details that leave the features as they are


class MixError(ValueError):
    """Features datasets that cannot be trained on together; the one-line message names them and the difference."""


def content_of(digests) -> list[str]:
    """The SHA-256s of a feature's weights files in a provenance record (valor_core.provenance.digests), in order."""
    return [str(d.get("sha256")) for d in digests or []]


def weights_changed(recorded: Optional[dict], now: dict) -> Optional[tuple[str, str, str, str]]:
    """The first feature whose weights files (a "weights" provenance record {feature: digests}, `valor extract`) hold
    other content in `now` than in `recorded`: (feature, the first file that differs, its recorded and its present
    sha256, shortened; "none" where a record has no such file), or None when every feature both record has the same
    content (a record from before digests, or a feature without local files, matches anything)."""
    for feature, files in now.items():
        old = (recorded or {}).get(feature)
        a, b = content_of(old), content_of(files)
        if old is not None and a != b:
            k = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            path = (files if k < len(files) else old)[k].get("file", "?")
            return feature, path, a[k][:12] if k < len(a) else "none", b[k][:12] if k < len(b) else "none"
    return None


def made_with(uri: str, columns, opts: Optional[dict] = None) -> Optional[dict]:
    """How an extraction dataset made `columns`: {"media": ..., column: teacher spec / backbone weights,
    "weights": {column: digests of its weights files, where recorded}}; None for an imported dataset (or one recording
    nothing)."""
    marker = read_marker(uri, opts) or {}
    record = marker.get("teachers")
    if not isinstance(record, dict) or "imported" in marker:
        return None
    media = {k: v for k, v in (record.get("media") or {}).items() if k not in MEDIA_IRRELEVANT}
    weights = record.get("features") or {}
    digests = record.get("weights") or {}
    out: dict = {"media": media, "weights": {}}
    for col in columns:
        if col in MADE_BY:
            out[col] = record.get(MADE_BY[col])
        elif col in RELEASED:
            out[col] = weights.get(col, "hub cache")
        feature = next((k for k in (col, MADE_BY.get(col)) if k in digests), None)
        if feature is not None:
            out["weights"][col] = digests[feature]
        if col in MADE_BY or col in RELEASED:  # the official preprocessing it follows (None: recorded none)
            out[f"{col} preprocessing"] = (record.get("preprocessing") or {}).get(MADE_BY.get(col, col))
    return out


def _what_differs(key: str) -> str:
    return "media settings" if key == "media" else key if key.endswith(" preprocessing") else key + " weights"


def check_mix(uris, columns, opts: Optional[dict] = None) -> None:
    """Whether the features datasets `uris` can be concatenated by video id for training, reading `columns[i]` (a
    list of column names) of `uris[i]`; columns[i][k] of every dataset feed the same input. MixError (one line)
    naming the datasets: a video id in two of them; a column of another Arrow type (shape or dtype); different media
    settings or teachers / backbone weights recorded by two extraction datasets. Reads schemas, markers and ids only."""
    import pyarrow.compute as pc

    uris, columns = list(uris), [list(c) for c in columns]
    schemas = [features_dataset(u, opts).schema for u in uris]
    for k, col in enumerate(columns[0]):
        types = [s.field(c[k]).type if c[k] in s.names else None for s, c in zip(schemas, columns)]
        for i in range(1, len(uris)):
            if types[i] != types[0]:
                raise MixError(f"features {uris[0]} and {uris[i]} cannot be trained together: column {col} is "
                               f"{types[0]} in the first and {columns[i][k]} is {types[i]} in the second (another "
                               "shape or dtype)")
    made = [made_with(u, c, opts) for u, c in zip(uris, columns)]
    extracted = [i for i, m in enumerate(made) if m is not None]
    for i in extracted[1:]:
        a, b = made[extracted[0]], made[i]
        diff = [k for k in sorted(set(a) | set(b), key=str) if k != "weights" and a.get(k) != b.get(k)]
        if diff:
            k = diff[0]
            raise MixError(f"features {uris[extracted[0]]} and {uris[i]} cannot be trained together: they were "
                           f"extracted with different {_what_differs(k)} "
                           f"({a.get(k)!r} vs {b.get(k)!r})")
        changed = weights_changed(a["weights"], b["weights"])
        if changed:
            col, path, old, new = changed
            raise MixError(f"features {uris[extracted[0]]} and {uris[i]} cannot be trained together: their {col} "
                           f"weights have the same spec but other content (sha256 {old} vs {new}; {path})")
    seen: dict[str, int] = {}
    for i, u in enumerate(uris):
        ids = features_dataset(u, opts).to_table(columns=["video_id"]).column("video_id")
        ids = pc.unique(ids).to_pylist()
        common = [v for v in ids if v in seen]
        if common:
            raise MixError(f"features {uris[seen[common[0]]]} and {u} both hold video {common[0]!r} ({len(common)} "
                           "video id(s) in common): a video may come from one source only")
        seen.update(dict.fromkeys(ids, i))
