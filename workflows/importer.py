"""`valor import llp`: the released per-video LLP features and pseudo-labels (.npy) -> a valor features dataset.

    valor import llp --feats DIR [--clip DIR] [--clap DIR] --out URI [--annotations DIR] [--json]

Inputs (every DIR local or s3://bucket/prefix; the folders of workflows.features.RELEASED below it, those present are
imported and the run says which):
    --feats DIR    AVVP-ECCV20 `feats/`: vggish/ (10,128), res152/ (80,2048), r2plus1d_18/ (10,512)
    --clip DIR     VALOR CLIP.zip `CLIP/`: features/ (10,768), segment_pseudo_labels/ (10,25)
    --clap DIR     VALOR CLAP.zip `CLAP/`: features/ (64,768), segment_pseudo_labels/ (10,25)
Every video of the LLP annotations (AVVP_train.csv, AVVP_val_pd.csv, AVVP_test_pd.csv in --annotations) is read as
`<folder>/<id>.npy`, id = the first 11 characters of its `filename` (the YouTube id), as the official loaders do; the
naming and the check of one file: workflows/released.py.

The rule: a video gets a features row iff every imported folder holds a good file for it (right shape, numeric dtype,
all finite, pseudo-labels 0/1). Each other file is a fatal failure row (stage "import", kind missing | truncated |
shape | dtype | nonfinite | outside_root, the reason naming the file; one row per bad file) and its video has no
features row: never a crash, never a silent zero, never a file outside its folder (`../../x` ids, symlinks out).

Flow (Ray Data): annotations -> skip videos already published (and, unless --retry-failed, failed before) -> one task
per `--rows-per-file` videos reads and checks their files and writes one features part and one failures part (staged
under <out>/_staging, then published: workflows.extract.publish) -> <out>/_runs/<run>.json (folders, code version,
summary). Output ownership, lock, layout and resume: as `valor extract` (workflows.outputs, workflows.features).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import posixpath
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from valor_core.classes import CLASSES, NUM_CLASSES, NUM_SEGMENTS
from valor_core.llp import SPLIT_FILES, AnnotationError, default_annotations, load_weak_csv
from workflows import objstore
from workflows.config import StorageConfig, redacted
from workflows.extract import plan, publish
from workflows.features import (RELEASED_LABELS, RUNS, SCHEMA_VERSION, STAGING, clean_staging, failure_schema,
                                failures_uri, fixed_list)
from workflows.manifest import Entry
from workflows.outputs import LockedError, OwnershipError, claim, lock, record_run
from workflows.trainset import annotations_record
from workflows.released import (ImportInputError, ImportProblem, load_released, npy_name, released_folders,
                                released_uri)
from workflows.runtime import code_version, start_ray

SPLITS = ("train", "val", "test")
ROOTS = ("feats", "clip", "clap")  # the options; RELEASED folders start with their names (case-insensitive)
ROWS_PER_FILE = 128  # videos per Parquet part (~110 MB with every folder: res152 is 640 KB a video)
READ_THREADS = 8  # concurrent file reads per task (S3 latency)


# --- one batch (a Ray task): read, check, write ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSpec:
    out: str
    failures: str
    opts: Optional[dict]
    run_id: str
    folders: dict  # column -> folder URI, in RELEASED order


def _features_table(batch: dict, rows: list[int], values: dict, sources: list[str], run_id: str):
    import pyarrow as pa

    weak = np.stack([np.asarray(batch["weak"][i], np.uint8) for i in rows])
    cols = {"video_id": pa.array([str(batch["video_id"][i]) for i in rows]),
            "split": pa.array([str(batch["split"][i]) for i in rows]),
            "labels": pa.array([str(batch["labels"][i]) for i in rows]),
            "weak": pa.FixedSizeListArray.from_arrays(pa.array(weak.reshape(-1)), NUM_CLASSES)}
    for col, arrays in values.items():
        cols[col] = fixed_list(np.stack(arrays), dtype=np.uint8 if col in RELEASED_LABELS else np.float32)
    cols.update(status=pa.array(["ok"] * len(rows)), source=pa.array(sources), run_id=pa.array([run_id] * len(rows)),
                schema_version=pa.array(np.full(len(rows), SCHEMA_VERSION, np.int16)))
    meta = {"valor.schema_version": str(SCHEMA_VERSION), "valor.segments": str(NUM_SEGMENTS),
            "valor.imported": json.dumps(list(values))}
    return pa.table(cols).replace_schema_metadata(meta)


def import_batch(batch: dict, spec: ImportSpec) -> dict:
    """Ray Data map_batches function: the batch's videos -> one features part + one failures part, published; returns
    per video its outcome ("ok" | "failed") and the kind of its first problem."""
    import pyarrow as pa

    vids = [str(v) for v in batch["video_id"]]
    jobs = [(i, col, objstore.join(folder, npy_name(v))) for i, v in enumerate(vids) for col, folder in
            spec.folders.items()]

    def load(job):
        i, col, _ = job
        try:
            return load_released(released_uri(spec.folders[col], vids[i]), col, spec.opts)
        except ImportProblem as problem:
            return problem

    with ThreadPoolExecutor(READ_THREADS) as pool:
        results = list(pool.map(load, jobs))
    problems: dict[int, list] = {}
    for (i, _, uri), got in zip(jobs, results):
        if isinstance(got, ImportProblem):
            problems.setdefault(i, []).append({"video_id": vids[i], "stage": "import", "kind": got.kind,
                                               "reason": got.reason, "fatal": True, "source": uri,
                                               "run_id": spec.run_id, "schema_version": SCHEMA_VERSION})
    good = [i for i in range(len(vids)) if i not in problems]
    values: dict[str, list] = {col: [] for col in spec.folders}
    sources: dict[int, list] = {}
    for (i, col, uri), got in zip(jobs, results):
        if i not in problems:
            values[col].append(got)
            sources.setdefault(i, []).append(uri)
    part = f"part-{spec.run_id}-{uuid.uuid4().hex[:12]}.parquet"
    fs, out_path = objstore.fs_for(spec.out, spec.opts)
    staging = posixpath.join(out_path, STAGING)
    if good:
        table = _features_table(batch, good, values, [";".join(sources[i]) for i in good], spec.run_id)
        publish(fs, posixpath.join(out_path, part), staging, table)
    if problems:  # published after the features part: a kill in between only redoes this batch's failed videos
        ffs, fail_path = objstore.fs_for(spec.failures, spec.opts)
        rows = [row for i in sorted(problems) for row in problems[i]]
        publish(ffs, posixpath.join(fail_path, part), staging, pa.Table.from_pylist(rows, schema=failure_schema()))
    return {"video_id": np.asarray(vids), "outcome": np.asarray(["failed" if i in problems else "ok"
                                                                 for i in range(len(vids))]),
            "kind": np.asarray([problems[i][0]["kind"] if i in problems else "" for i in range(len(vids))])}


# --- driver -----------------------------------------------------------------------------------------------------------


def llp_entries(annotations: str, log: Callable[[str], None]) -> list[Entry]:
    """One Entry per video of the LLP train/val/test files (a video listed in two splits: its first split only)."""
    out: list[Entry] = []
    seen: set[str] = set()
    for split in SPLITS:
        ids, weak = load_weak_csv(os.path.join(annotations, SPLIT_FILES[split]))
        for vid, w in zip(ids.tolist(), weak):
            if vid in seen:
                log(f"import: {vid} is listed in more than one split; kept in its first")
                continue
            seen.add(vid)
            labels = ",".join(CLASSES[j] for j in np.flatnonzero(w))
            out.append(Entry(video_id=vid, source=npy_name(vid), split=split, weak=tuple(int(x) for x in w),
                             labels=labels))
    return out


@dataclass
class ImportSummary:
    videos: int  # imported by this run
    failed: int  # videos of this run with a bad or missing file
    skipped: int  # already published (or failed before)
    seconds: float
    out: str
    failures: str = ""
    run_id: str = ""
    by_kind: dict = dataclasses.field(default_factory=dict)  # failed videos by the kind of their first problem

    def contract(self) -> dict:
        """The `--json` last line (CLI contract)."""
        return {"videos": self.videos, "failed": self.failed, "out": self.out}


def _local(uri: Optional[str]) -> Optional[str]:
    return uri if not uri or objstore.is_s3(uri) else objstore.fs_for(uri)[1]


def run_import(feats: Optional[str], out: str, *, clip: Optional[str] = None, clap: Optional[str] = None,
               annotations: Optional[str] = None, storage: StorageConfig = StorageConfig(),
               failures: Optional[str] = None, rows_per_file: int = ROWS_PER_FILE, retry_failed: bool = False,
               address: Optional[str] = None, num_cpus: Optional[int] = None,
               log: Callable[[str], None] = print) -> ImportSummary:
    """Import every LLP video not yet in `out` (see the module doc). Starts (and stops) Ray unless already up."""
    t0 = time.time()
    if rows_per_file < 1:
        raise ImportInputError(f"--rows-per-file must be >= 1, got {rows_per_file}")
    roots = {option: _local(root) for option, root in zip(ROOTS, (feats, clip, clap))}
    if not any(roots.values()):
        raise ImportInputError("nothing to import: give --feats, --clip and/or --clap")
    out = str(_local(out.rstrip("/")))
    failures = (failures or failures_uri(out)).rstrip("/")
    annotations = os.path.abspath(annotations or default_annotations())
    opts = objstore.s3_options(storage)
    # preflight, before Ray: storage answers, the folders and annotations are there, the output is valor's and free
    for uri in {u for u in (out, failures, *roots.values()) if u and objstore.is_s3(u)}:
        objstore.check_reachable(uri, opts)
    folders = released_folders(roots, opts)
    entries = llp_entries(annotations, log)
    marker = claim(out, "features", opts=opts, meta={"imported": folders, **annotations_record(out, annotations)})
    if "imported" not in marker:
        raise OwnershipError(f"{out} is a features dataset of `valor extract`, not of `valor import`: choose another "
                             "--out")
    if sorted(marker["imported"]) != sorted(folders):
        raise OwnershipError(f"{out} holds the imported columns {', '.join(marker['imported'])}; this run has "
                             f"{', '.join(folders)}: use a new --out (one dataset, one set of columns)")
    claim(failures, "failures", opts=opts)
    with lock(out, f"valor import llp -> {out}", opts):
        return _import_locked(entries, folders, roots, annotations, out, failures, opts, storage, rows_per_file,
                              retry_failed, address, num_cpus, log, t0)


def _import_locked(entries, folders, roots, annotations, out, failures, opts, storage, rows_per_file, retry_failed,
                   address, num_cpus, log, t0) -> ImportSummary:
    cleaned = clean_staging(out, opts)
    if cleaned:
        log(f"removed {cleaned} staged file(s) left by an interrupted run")
    p = plan(entries, out, failures, opts, retry_failed)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    for uri in (out, failures):  # the names this run's workers write are valor's (the manifest's run patterns)
        record_run(uri, run_id, opts)
    log(f"import: {len(entries)} LLP videos, {p.skipped} already done/failed, {len(p.todo)} to do; columns "
        f"{', '.join(folders)} -> {out}")
    summary = ImportSummary(videos=0, failed=0, skipped=p.skipped, seconds=0.0, out=out, failures=failures,
                            run_id=run_id)
    if p.todo:
        shutdown = start_ray(address, num_cpus=num_cpus, log=log)
        try:
            spec = ImportSpec(out=out, failures=failures, opts=opts, run_id=run_id, folders=folders)
            for batch in build_dataset(p.todo, spec, rows_per_file).iter_batches(batch_size=None,
                                                                                  batch_format="numpy"):
                for outcome, kind in zip(batch["outcome"], batch["kind"]):
                    if outcome == "ok":
                        summary.videos += 1
                    else:
                        summary.failed += 1
                        summary.by_kind[str(kind)] = summary.by_kind.get(str(kind), 0) + 1
        finally:
            shutdown()
    summary.seconds = time.time() - t0
    record = {"run_id": run_id, "schema_version": SCHEMA_VERSION, "command": "valor import llp",
              "roots": {k: v for k, v in roots.items() if v}, "imported": folders, "annotations": annotations,
              "out": out, "failures": failures, "rows_per_file": rows_per_file, "retry_failed": retry_failed,
              "storage": redacted(storage), "code_version": code_version(), "summary": dataclasses.asdict(summary),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    objstore.write_bytes(objstore.join(out, RUNS, f"{run_id}.json"),
                         (json.dumps(record, indent=1, default=str) + "\n").encode(), opts)
    return summary


def build_dataset(todo: list[Entry], spec: ImportSpec, rows_per_file: int):
    """The Ray Data pipeline (lazy): one block and one import task per `rows_per_file` videos."""
    import ray

    items = [{"video_id": e.video_id, "split": e.split, "labels": e.labels, "weak": np.asarray(e.weak, np.uint8)}
             for e in todo]
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / rows_per_file)))
    return ds.map_batches(import_batch, fn_kwargs={"spec": spec}, batch_size=rows_per_file, num_cpus=0.5,
                          batch_format="numpy")


# --- CLI -------------------------------------------------------------------------------------------------------------


def register(sub) -> None:
    p = sub.add_parser("import", help="import released features and pseudo-labels as a features dataset")
    isub = p.add_subparsers(dest="import_command", metavar="SUBCOMMAND")
    llp = isub.add_parser("llp", help="the released LLP .npy features (AVVP-ECCV20 feats/, VALOR CLIP/ CLAP/) -> "
                          "Parquet (Ray Data)", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    llp.add_argument("--feats", required=True, metavar="DIR",
                     help="AVVP-ECCV20 feats/ (vggish/, res152/, r2plus1d_18/)")
    llp.add_argument("--clip", default=None, metavar="DIR", help="VALOR CLIP/ (features/, segment_pseudo_labels/)")
    llp.add_argument("--clap", default=None, metavar="DIR", help="VALOR CLAP/ (features/, segment_pseudo_labels/)")
    llp.add_argument("--out", required=True, metavar="URI", help="output dataset: local dir or s3://bucket/prefix")
    llp.add_argument("--annotations", default=None, metavar="DIR", help="the LLP annotation CSVs (default: "
                     "$VALOR_ANNOTATIONS, else the files shipped with valor)")
    llp.add_argument("--json", action="store_true", help="last line: {videos, failed, out}")
    llp.add_argument("--failures", default=None, help="failures table URI (default: beside --out)")
    llp.add_argument("--rows-per-file", type=int, default=ROWS_PER_FILE, help="videos per Parquet part")
    llp.add_argument("--retry-failed", action="store_true", help="re-check videos listed in the failures table")
    llp.add_argument("--ray-address", dest="address", default=None, metavar="ADDR",
                     help="Ray cluster address (default: RAY_ADDRESS, else local Ray)")
    llp.add_argument("--address", dest="address", help=argparse.SUPPRESS, default=argparse.SUPPRESS)  # the old name
    llp.add_argument("--num-cpus", type=int, default=None, help="local Ray only: CPUs to use")
    llp.add_argument("--endpoint", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    llp.add_argument("--access-key", default=None, help="default: AWS_ACCESS_KEY_ID")
    llp.add_argument("--secret-key", default=None, help="default: AWS_SECRET_ACCESS_KEY")
    llp.set_defaults(func=_cli)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _cli(args) -> int:
    storage = StorageConfig(endpoint=args.endpoint, access_key=args.access_key, secret_key=args.secret_key)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))
    try:
        s = run_import(args.feats, args.out, clip=args.clip, clap=args.clap, annotations=args.annotations,
                       storage=storage, failures=args.failures, rows_per_file=args.rows_per_file,
                       retry_failed=args.retry_failed, address=args.address, num_cpus=args.num_cpus, log=log)
    except (ImportInputError, AnnotationError, OwnershipError, LockedError, objstore.StorageError,
            PermissionError) as err:
        print(f"valor import llp: error: {err}", file=sys.stderr)
        return 2
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(s.by_kind.items()))
    log(f"import: {s.videos} videos, failed {s.failed}{f' ({kinds})' if kinds else ''}, skipped {s.skipped} in "
        f"{s.seconds:.1f} s -> {s.out}; failures: {s.failures}")
    if args.json:
        print(json.dumps(s.contract()), flush=True)
    return 1 if (s.videos == 0 and s.failed > 0) else 0
