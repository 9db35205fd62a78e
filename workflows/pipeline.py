"""`valor run --config FILE [key=value ...]`: the whole flow from one YAML, each stage skipped when already done.

    corpus/teachers (prepare: the demo corpus and tiny teachers are created on first use when the config asks for them)
        │
    extract   videos + manifest ──► <output>/features (+ failures)            Ray Data, CLIP/CLAP actors
    tune      features + val GT ──► <output>/thresholds.json                  Ray Tune
    harvest   features + θ      ──► <output>/labels                           Ray Data
    train     features + labels ──► <output>/train (checkpoints) + MLflow run Ray Train
    evaluate  checkpoint        ──► <output>/eval.json (+ MLflow metrics)
    demo      LLP-sim (no Ray) ──► <demo.out>/demo.{png,json,txt}               `valor demo` in-process (demo.enabled)

Skipping. Each stage has a *fingerprint*: the SHA-256 of the stage's resolved config section and the fingerprints of the
stages (or input files) it reads. After a stage's outputs are written, a completion marker `<output>/_pipeline/<stage>.json`
holding that fingerprint is written atomically (one PUT on S3, temp file + rename locally). A stage whose marker matches
(and whose outputs exist) is skipped; when every stage is skipped, `valor run` says "nothing to do". Changing one section
re-runs that stage and everything downstream of it, nothing upstream: e.g. `thresholds.*` re-runs harvest, train,
evaluate. A stage that re-runs makes everything downstream of it re-run too (its outputs may differ, e.g. a new search).
Before a stage runs its old outputs are removed, so old and new never mix - except extract interrupted with the same
fingerprint, which resumes in place (it skips the videos it already wrote).

Ray. With `ray.address` unset the pipeline calls `ray.init()`: in-process single-node Ray on a laptop, or - inside
`ray job submit` - the cluster that runs the job (Ray sets RAY_ADDRESS for the driver). `ray.address: auto` or
`ray://host:10001` connects explicitly. Ray is only started when some stage has work to do.

The resolved config (credentials redacted) is saved as `<output>/config.yaml` and handed to the train stage, which logs it
to MLflow as the run's parameters.

`--stage NAME` runs one stage alone (its inputs must be up to date: run the stages before it first); `--force` re-runs
even when up to date; `--plan` prints what would run and exits.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import posixpath
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from valor_core.config import ConfigError, PipelineConfig, load_config, redacted, to_dict

PIPELINE_VERSION = 1  # bump to invalidate every marker (a change in what a stage writes)
MARKER_DIR = "_pipeline"

# --- where things go ---------------------------------------------------------------------------------------------


def _abs_local(uri: Optional[str]) -> Optional[str]:
    """Local paths become absolute (Ray workers and job drivers may run elsewhere); URIs are kept as written."""
    if uri is None or "://" in str(uri):
        return uri
    return os.path.abspath(os.path.expanduser(str(uri)))


def resolve(cfg: PipelineConfig) -> PipelineConfig:
    """Absolute local paths, a manifest, an MLflow URI: the config as the stages will see it."""
    p = cfg.paths
    videos = _abs_local(p.videos)
    paths = dataclasses.replace(
        p,
        videos=videos,
        manifest=_abs_local(p.manifest) if p.manifest else posixpath.join(videos, "manifest.csv"),
        annotations=_abs_local(p.annotations),
        output=_abs_local(p.output).rstrip("/"),
        work=_abs_local(p.work),
    )
    uri = cfg.tracking.uri
    if uri is None:
        base = paths.output if "://" not in paths.output else paths.work
        uri = f"sqlite:///{base}/mlflow.db"
    demo_out = cfg.demo.out
    if demo_out is None:
        base = paths.output if "://" not in paths.output else paths.work
        demo_out = posixpath.join(base, "demo")
    return dataclasses.replace(cfg, paths=paths, tracking=dataclasses.replace(cfg.tracking, uri=uri),
                               demo=dataclasses.replace(cfg.demo, out=_abs_local(demo_out)))


@dataclass(frozen=True)
class Layout:
    """Every output URI of a run, derived from `paths.output`."""

    output: str

    def __getattr__(self, name: str) -> str:  # layout.features, layout.labels, ...
        if name in OUTPUTS:
            return posixpath.join(self.output, OUTPUTS[name])
        raise AttributeError(name)

    def marker(self, stage: str, kind: str = "done") -> str:
        suffix = "" if kind == "done" else f".{kind}"
        return posixpath.join(self.output, MARKER_DIR, f"{stage}{suffix}.json")


OUTPUTS = {
    "features": "features",
    "failures": "failures",  # extract's failures table (only written when some video failed)
    "thresholds": "thresholds.json",
    "labels": "labels",
    "train": "train",
    "eval": "eval.json",
    "config": "config.yaml",
}


class Store:
    """Small JSON/text objects and output removal on the output URI (local dir or S3), through workflows.objstore."""

    def __init__(self, cfg: PipelineConfig):
        from workflows import objstore

        self._o = objstore
        self.opts = objstore.s3_options(cfg.storage)

    def read_json(self, uri: str) -> Optional[dict]:
        try:
            return json.loads(self._o.read_bytes(uri, self.opts))
        except (FileNotFoundError, OSError, ValueError):
            return None

    def write_text(self, uri: str, text: str) -> None:
        self._o.write_bytes(uri, text.encode(), self.opts)

    def write_json(self, uri: str, data: dict) -> None:
        self.write_text(uri, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")

    def exists(self, uri: str) -> bool:
        return self._o.exists(uri, self.opts)

    def remove(self, uri: str) -> None:
        import pyarrow.fs as pafs

        fs, path = self._o.fs_for(uri, self.opts)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)
        elif self._o.is_s3(uri):  # S3 "directories" that only exist as a prefix
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.delete_dir_contents(path, missing_dir_ok=True)


# --- fingerprints --------------------------------------------------------------------------------------------------


def digest(obj: Any) -> str:
    """SHA-256 of a canonical JSON rendering (sorted keys, tuples as lists)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()


def file_digest(uri: Optional[str], store: Optional[Store] = None) -> Optional[str]:
    """Content hash of a small input file (manifest, annotation CSV); None when it does not exist."""
    if uri is None:
        return None
    if "://" in uri:
        if store is None:
            return None
        try:
            return hashlib.sha256(store._o.read_bytes(uri, store.opts)).hexdigest()
        except (FileNotFoundError, OSError):
            return None
    try:
        return hashlib.sha256(Path(uri).read_bytes()).hexdigest()
    except OSError:
        return None


def annotations_digest(directory: str, store: Optional[Store] = None) -> dict[str, Optional[str]]:
    return {name: file_digest(posixpath.join(directory, name), store)
            for name in ("AVVP_eval_audio.csv", "AVVP_eval_visual.csv")}


# --- stages --------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What a stage runner gets: the resolved config, where to write, what the stages before it produced."""

    cfg: PipelineConfig
    layout: Layout
    store: Store
    results: dict[str, dict]  # stage name -> the `result` of its completion marker (this run's or an earlier one's)
    resolved: dict  # the resolved, redacted config as a plain dict (train logs it to MLflow)
    env: dict[str, str] = field(default_factory=dict)  # environment the teachers need (tiny teachers' HF cache)
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]  # upstream stages whose fingerprints feed this one's
    section: Callable[[PipelineConfig], Any]  # the config that defines the stage's outputs (hashed)
    outputs: tuple[str, ...]  # OUTPUTS keys this stage writes (checked and cleared)
    enabled: Callable[[PipelineConfig], bool] = lambda cfg: True
    uses_ray: bool = True
    resumable: bool = False  # an interrupted run with the same fingerprint continues in place (else outputs are cleared)
    also_clears: tuple[str, ...] = ()  # outputs that may legitimately be absent (not checked) but are cleared with the rest
    help: str = ""
    produced: Callable[[PipelineConfig], tuple[str, ...]] = lambda cfg: ()  # outputs outside <output> (checked too)

    def missing(self, cfg: PipelineConfig, layout: "Layout", store: "Store") -> list[str]:
        uris = [getattr(layout, o) for o in self.outputs] + list(self.produced(cfg))
        return [u for u in uris if not store.exists(u)]


def _section(obj: Any, drop: tuple[str, ...] = ()) -> dict:
    """A config section as hashed: the fields the pipeline fills in itself (output URIs, Ray/MLflow plumbing) left out."""
    return {k: v for k, v in to_dict(obj).items() if k not in drop}


TUNE_PLUMBING = ("num_cpus", "max_concurrent", "ray_address", "storage_dir", "mlflow_uri", "experiment")


def _extract_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    return {"videos": cfg.paths.videos, "manifest": file_digest(cfg.paths.manifest, store),
            "teachers": to_dict(cfg.teachers), "media": to_dict(cfg.media),
            "extract": _section(cfg.extract, ("out", "clip_actors", "clap_actors", "decode_batch_size"))}


def _tune_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    return {"annotations": annotations_digest(cfg.paths.annotations, store),
            "tune": _section(cfg.tune, TUNE_PLUMBING)}


def _harvest_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    return {"thresholds": to_dict(cfg.thresholds), "harvest": _section(cfg.harvest, ("out",)),
            "thresholds_file": file_digest(cfg.harvest.thresholds_json, store)}


def _train_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    return {"train": to_dict(cfg.train), "annotations": annotations_digest(cfg.paths.annotations, store)}


STAGES: tuple[Stage, ...] = (
    Stage("extract", (), _extract_section, ("features",), resumable=True, also_clears=("failures",),
          help="decode videos, CLIP/CLAP logits + embeddings -> Parquet"),
    Stage("tune", ("extract",), _tune_section, ("thresholds",),
          help="Ray Tune per-class thresholds on val -> thresholds.json"),
    Stage("harvest", ("extract", "tune"), _harvest_section, ("labels",),
          help="thresholds AND weak labels -> harvested labels Parquet"),
    Stage("train", ("extract", "harvest"), _train_section, ("train",),
          help="Ray Train DDP HAN + MLflow run + checkpoint"),
    Stage("evaluate", ("train",), lambda c, s=None: {"annotations": annotations_digest(c.paths.annotations, s)},
          ("eval",), help="official segment/event F on val/test -> eval.json + MLflow"),
    Stage("demo", (), lambda c, s=None: {"demo": to_dict(c.demo)}, (), enabled=lambda c: c.demo.enabled,
          uses_ray=False, help="the LLP-sim science demo: han vs valor table + pictures",
          produced=lambda c: tuple(posixpath.join(c.demo.out, f) for f in DEMO_FILES)),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
DEMO_FILES = ("demo.json", "demo.png", "demo.txt")


def fingerprints(cfg: PipelineConfig, store: Optional[Store] = None,
                 stages: tuple[Stage, ...] = STAGES) -> dict[str, str]:
    """Each stage's fingerprint for this config: hash(stage, its section, its inputs' fingerprints, version)."""
    fps: dict[str, str] = {}
    for st in stages:
        fps[st.name] = digest({"stage": st.name, "version": PIPELINE_VERSION, "section": st.section(cfg, store),
                               "inputs": {name: fps[name] for name in st.inputs}})
    return fps


# --- running -------------------------------------------------------------------------------------------------------

Runner = Callable[[Context], dict]


def default_runners() -> dict[str, Runner]:
    return dict(RUNNERS)


@dataclass
class StageReport:
    name: str
    status: str  # ran | skipped | disabled
    fingerprint: str
    seconds: float = 0.0
    result: dict = field(default_factory=dict)
    reason: str = ""


class PipelineError(RuntimeError):
    pass


def stage_status(cfg: PipelineConfig, store: Store, stages: tuple[Stage, ...] = STAGES) -> dict[str, dict]:
    """For each stage: its fingerprint, whether a matching marker and its outputs exist, and why not."""
    layout = Layout(cfg.paths.output)
    fps = fingerprints(cfg, store, stages)
    out = {}
    for st in stages:
        marker = store.read_json(layout.marker(st.name))
        if not st.enabled(cfg):
            state, why = "disabled", f"{st.name} is disabled in the config"
        elif marker is None:
            state, why = "todo", "never completed"
        elif marker.get("fingerprint") != fps[st.name]:
            changed = [k for k, v in (marker.get("inputs") or {}).items()
                       if v != fingerprints_of_inputs(st, fps).get(k)]
            section_changed = marker.get("section_digest") != digest(st.section(cfg, store))
            parts = (["its config changed"] if section_changed else []) + [f"{c} changed" for c in changed]
            state, why = "todo", ", ".join(parts) or "fingerprint changed"
        else:
            missing = st.missing(cfg, layout, store)
            state, why = ("todo", f"outputs missing: {', '.join(missing)}") if missing else ("done", "up to date")
        out[st.name] = {"state": state, "reason": why, "fingerprint": fps[st.name], "marker": marker}
    return out


def fingerprints_of_inputs(st: Stage, fps: dict[str, str]) -> dict[str, str]:
    return {name: fps[name] for name in st.inputs}


def run_pipeline(cfg: PipelineConfig, *, only: Optional[str] = None, force: bool = False, plan: bool = False,
                 runners: Optional[dict[str, Runner]] = None, stages: tuple[Stage, ...] = STAGES,
                 prepare: Optional[Callable[[PipelineConfig, Callable], tuple[PipelineConfig, dict]]] = None,
                 init_ray: Optional[Callable[[PipelineConfig, dict], Callable[[], None]]] = None,
                 log: Callable[[str], None] = print) -> list[StageReport]:
    """Run (or plan) the stages of a resolved config; returns one StageReport per stage.

    `runners`/`prepare`/`init_ray` default to the real ones (below); tests pass fakes."""
    if only is not None and only not in {s.name for s in stages}:
        raise PipelineError(f"unknown stage {only!r}; stages: {', '.join(s.name for s in stages)}")
    cfg, env = (prepare or prepare_inputs)(cfg, log)
    store = Store(cfg)
    layout = Layout(cfg.paths.output)
    status = stage_status(cfg, store, stages)
    fps = {name: s["fingerprint"] for name, s in status.items()}
    selected = [st for st in stages if only is None or st.name == only]

    todo = []
    for st in selected:
        s = status[st.name]
        if s["state"] == "disabled":
            continue
        if s["state"] == "todo" or force or any(t.name in st.inputs for t in todo):
            todo.append(st)
    if only is not None and todo:
        st = todo[0]
        stale = [i for i in st.inputs if status[i]["state"] != "done"]
        if stale:
            raise PipelineError(f"--stage {only}: its input stage(s) {', '.join(stale)} are not up to date for this "
                                f"config ({'; '.join(status[i]['reason'] for i in stale)}); run them first "
                                f"(`valor run` without --stage, or --stage {stale[0]})")
    reports: list[StageReport] = []
    todo_names = {st.name for st in todo}
    for st in selected:
        s = status[st.name]
        if s["state"] == "disabled":
            reports.append(StageReport(st.name, "disabled", fps[st.name], reason=s["reason"]))
        elif st.name not in todo_names:
            reports.append(StageReport(st.name, "skipped", fps[st.name], result=(s["marker"] or {}).get("result", {}),
                                       reason="up to date"))
    if plan or not todo:
        for st in todo:
            reports.append(StageReport(st.name, "todo", fps[st.name], reason=status[st.name]["reason"]))
        reports.sort(key=lambda r: STAGE_NAMES.index(r.name) if r.name in STAGE_NAMES else 99)
        return reports

    runners = runners if runners is not None else default_runners()
    resolved = redacted(cfg)
    store.write_text(layout.config, _yaml(resolved))
    results = {name: (s["marker"] or {}).get("result", {}) for name, s in status.items() if s["state"] == "done"}
    shutdown = lambda: None  # noqa: E731
    if any(st.uses_ray for st in todo):
        shutdown = (init_ray or start_ray)(cfg, env)
    try:
        for i, st in enumerate(todo):
            if not any(t.uses_ray for t in todo[i:]):  # the rest (the demo) runs without Ray: give its CPUs back
                shutdown()
                shutdown = lambda: None  # noqa: E731
            fp = fps[st.name]
            started = store.read_json(layout.marker(st.name, "started"))
            if force or not st.resumable or not (started and started.get("fingerprint") == fp):
                # a different config made what is there: remove it so old and new outputs never mix
                with contextlib.suppress(FileNotFoundError):
                    store.remove(layout.marker(st.name))
                for key in st.outputs + st.also_clears:
                    store.remove(getattr(layout, key))
                store.write_json(layout.marker(st.name, "started"), {"stage": st.name, "fingerprint": fp,
                                                                     "started_at": time.time()})
            log(f"[valor run] {st.name}: running ({status[st.name]['reason']}) ...")
            ctx = Context(cfg=cfg, layout=layout, store=store, results=results, resolved=resolved, env=env, log=log)
            t0 = time.time()
            result = runners[st.name](ctx) or {}
            seconds = time.time() - t0
            missing = st.missing(cfg, layout, store)
            if missing:
                raise PipelineError(f"stage {st.name} finished without writing {', '.join(missing)}")
            results[st.name] = result
            store.write_json(layout.marker(st.name), {
                "stage": st.name, "fingerprint": fp, "inputs": fingerprints_of_inputs(st, fps),
                "section": st.section(cfg, store), "section_digest": digest(st.section(cfg, store)),
                "outputs": {o: getattr(layout, o) for o in st.outputs}, "result": result,
                "seconds": round(seconds, 3), "finished_at": time.time(), "code": code_version(),
            })
            log(f"[valor run] {st.name}: done in {seconds:.1f} s")
            reports.append(StageReport(st.name, "ran", fp, seconds=seconds, result=result,
                                       reason=status[st.name]["reason"]))
    finally:
        shutdown()
    reports.sort(key=lambda r: STAGE_NAMES.index(r.name) if r.name in STAGE_NAMES else 99)
    return reports


def code_version() -> str:
    """git commit of the code (with '+dirty'), or the package version when not in a checkout (e.g. a Ray working_dir)."""
    import subprocess

    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from valor_core import __version__

    return f"valor {__version__}"


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)


# --- the real stages -------------------------------------------------------------------------------------------------
# Each runner calls the stage's own Python entry point with the pipeline's resolved config and layout; nothing here
# re-implements a stage.

CORPUS_MARKER = "corpus.json"
TINY = "tiny"


def prepare_inputs(cfg: PipelineConfig, log: Callable[[str], None] = print) -> tuple[PipelineConfig, dict]:
    """Create what the config asks to be created on first use: the demo corpus and the tiny teachers.

    Returns the config with the teachers resolved to concrete specs, and the environment they need."""
    env: dict[str, str] = {}
    # the S3 endpoint/keys of the config also serve the stages that read the standard AWS environment (driver only)
    for key, var in (("endpoint", "AWS_ENDPOINT_URL"), ("access_key", "AWS_ACCESS_KEY_ID"),
                     ("secret_key", "AWS_SECRET_ACCESS_KEY")):
        if getattr(cfg.storage, key):
            os.environ[var] = getattr(cfg.storage, key)
    if cfg.corpus.generate:
        ensure_corpus(cfg, log)
    if TINY in (cfg.teachers.clip, cfg.teachers.clap):
        specs = ensure_tiny_teachers(posixpath.join(cfg.paths.work, "teachers-tiny"), log)
        env.update(specs.get("env") or {})
        os.environ.update(env)
        cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(
            cfg.teachers,
            clip=specs["clip"] if cfg.teachers.clip == TINY else cfg.teachers.clip,
            clap=specs["clap"] if cfg.teachers.clap == TINY else cfg.teachers.clap))
    return cfg, env


def ensure_corpus(cfg: PipelineConfig, log: Callable[[str], None] = print) -> None:
    """The generated demo corpus at paths.videos (mp4 + LLP CSVs); made once, reused while its recipe is unchanged."""
    root = cfg.paths.videos
    if "://" in root:
        raise ConfigError(f"corpus.generate needs a local paths.videos, got {root}")
    recipe = {"videos": cfg.corpus.videos, "seed": cfg.corpus.seed, "version": 1}
    marker = Path(root) / CORPUS_MARKER
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()) == recipe:
            return
    from valor_core.media.synth import synth_corpus

    log(f"[valor run] generating the demo corpus: {cfg.corpus.videos} synthetic 10-s mp4 videos with LLP-style labels "
        f"(seed {cfg.corpus.seed}) at {root}")
    t0 = time.time()
    synth_corpus(root, cfg.corpus.videos, seed=cfg.corpus.seed)
    write_llp_annotations(root, seed=cfg.corpus.seed)
    marker.write_text(json.dumps(recipe))
    log(f"[valor run] demo corpus ready in {time.time() - t0:.1f} s")


def write_llp_annotations(root: str, seed: int = 0, val: float = 0.25, test: float = 0.25) -> None:
    """LLP annotation files for a generated corpus (from its events.json): train/val/test weak-label splits and the dense
    audio/visual GT of val and test, in the exact LLP formats (tab-separated), so the LLP loaders read it unchanged;
    manifest.csv gains a `split` column."""
    import csv

    import numpy as np

    from valor_core.classes import CLASSES

    r = Path(root)
    events = json.loads((r / "events.json").read_text())
    with open(r / "manifest.csv", newline="") as fh:
        rows = [row for row in csv.DictReader(fh, delimiter="\t")]
    names = [row["filename"] for row in rows if row["filename"] in events]
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = max(1, int(round(val * len(names))))
    n_test = max(1, int(round(test * len(names))))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[names[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    weak = {row["filename"]: row["event_labels"] for row in rows}

    def write(name: str, header: list[str], body: list[list]) -> None:
        with open(r / name, "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(header)
            w.writerows(body)

    for split, fname in (("train", "AVVP_train.csv"), ("val", "AVVP_val_pd.csv"), ("test", "AVVP_test_pd.csv")):
        write(fname, ["filename", "event_labels"], [[n, weak[n]] for n in names if split_of[n] == split])
    write("AVVP_dataset_full.csv", ["filename", "event_labels"], [[n, weak[n]] for n in names])
    # the extraction manifest names each video's split, so the features carry it
    write("manifest.csv", ["filename", "event_labels", "split"],
          [[row["filename"], row["event_labels"], split_of.get(row["filename"], "")] for row in rows])
    for modality in ("audio", "visual"):
        body = [[n, int(on), int(off), CLASSES[int(c)]]
                for n in names if split_of[n] != "train" for c, on, off in events[n][modality]]
        write(f"AVVP_eval_{modality}.csv", ["filename", "onset", "offset", "event_labels"], body)


def ensure_tiny_teachers(directory: str, log: Callable[[str], None] = print) -> dict:
    """Small random-init CLIP/CLAP teachers (valor_core.teachers.tiny), made once in `directory` and reused after."""
    log("[valor run] teachers: small RANDOM-INIT CLIP/CLAP models (real weights cannot be downloaded here) - the "
        "pipeline runs for real, but the logits carry no meaning; configs/llp.yaml names the paper's checkpoints")
    specs_path = Path(directory) / "specs.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        specs = json.loads(specs_path.read_text())
        files = [p for spec in (specs["clip"], specs["clap"]) for p in spec.split(":") if p]
        if all(Path(p).exists() for p in files):
            return specs
    from valor_core.teachers.tiny import write_tiny_teachers

    t0 = time.time()
    specs = write_tiny_teachers(directory)
    log(f"[valor run] tiny teachers written to {directory} in {time.time() - t0:.1f} s")
    return specs


FORWARD_ENV_PREFIXES = ("HF_", "TRANSFORMERS_", "HUGGINGFACE_", "VALOR_", "TORCH_HOME", "OPEN_CLIP", "WANDB_MODE",
                        "TOKENIZERS_PARALLELISM", "MLFLOW_DISABLE_TELEMETRY", "RAY_TRAIN_")
RAY_DEFAULT_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}  # Train's report() blocks ~2 s per call otherwise


def _job_env_vars() -> dict:
    """The env_vars of the job's runtime_env when this driver runs under `ray job submit` (Ray injects the job config)."""
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")  # ray._private.runtime_env.constants
        return dict((job.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def start_ray(cfg: PipelineConfig, env: dict) -> Callable[[], None]:
    """Connect to Ray (ray.address, or the job's cluster under `ray job submit`) or start it in-process.

    The environment the stages' workers need (tiny teachers' offline HF cache, quiet-library switches) goes into the
    driver's runtime_env; under `ray job submit` Ray merges it into the job's."""
    import ray

    if ray.is_initialized():
        return lambda: None
    for k, v in RAY_DEFAULT_ENV.items():
        os.environ.setdefault(k, v)
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIXES)}
    env_vars.update(env)
    for k in _job_env_vars():  # under `ray job submit`: Ray refuses a driver env var the job's runtime_env also sets
        env_vars.pop(k, None)
    kwargs: dict[str, Any] = {"namespace": cfg.ray.namespace, "log_to_driver": True,
                              "runtime_env": {"env_vars": env_vars} if env_vars else None}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray listener on 127.0.0.1
        kwargs.update(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, include_dashboard=False)
    ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    return ray.shutdown


def run_extract(ctx: Context) -> dict:
    """workflows.extract: Ray Data decode -> CLIP | CLAP actors -> features Parquet (+ failures table beside it)."""
    from workflows import extract as X

    cfg = ctx.cfg
    s = X.run_extract(cfg.paths.manifest, cfg.paths.videos, cfg.teachers.clip, cfg.teachers.clap, ctx.layout.features,
                      cfg=dataclasses.replace(cfg.extract, out=ctx.layout.features), teachers=cfg.teachers,
                      media=cfg.media, storage=cfg.storage, log=ctx.log)
    if s.done + s.skipped == 0:
        raise PipelineError(f"extract: no video succeeded ({s.failed} failed; see {s.failures})")
    return {**s.contract(), "partial": s.partial, "failures": s.failures, "run_id": s.run_id,
            "failed_by_stage": s.by_stage}


def run_tune(ctx: Context) -> dict:
    """tuning.thresholds: Ray Tune search on the val logits of the features -> thresholds.json (+ an MLflow run)."""
    import tempfile

    from tuning import thresholds as T

    cfg = ctx.cfg
    tcfg = dataclasses.replace(cfg.tune, mlflow_uri=cfg.tracking.uri, experiment=cfg.tracking.experiment,
                               storage_dir=cfg.tune.storage_dir or posixpath.join(cfg.paths.work, "ray-tune"))
    problems = T.load_problems(ctx.layout.features, cfg.paths.annotations, T.MODALITIES, tcfg.filter_by_weak,
                               storage_opts=ctx.store.opts)
    t0 = time.time()
    summary = T.tune_thresholds(problems, tcfg)
    summary["seconds"] = round(time.time() - t0, 3)
    summary["source"] = ctx.layout.features
    logs = summary.pop("_logs", {})
    ctx.store.write_json(ctx.layout.thresholds, summary)
    params = {"source": ctx.layout.features, "modality": "both", "searcher": tcfg.searcher,
              "objective": tcfg.objective, "filter_by_weak": tcfg.filter_by_weak, "init": tcfg.init,
              "classes_per_trial": tcfg.classes_per_trial, "trials": tcfg.trials}
    with tempfile.TemporaryDirectory() as d:
        local = os.path.join(d, "thresholds.json")
        Path(local).write_text(json.dumps(summary, indent=1))
        run_id = T.mlflow_log({**summary, "_logs": logs}, tcfg, params, local)
    return {"mlflow_run": run_id, "searcher": tcfg.searcher, "seconds": summary["seconds"],
            **{m: {k: summary[m][k] for k in ("fidelity", "official")} for m in T.MODALITIES if m in summary},
            "paper": summary.get("paper")}


def run_harvest(ctx: Context) -> dict:
    """workflows.harvest: (z > θ) AND weak for every video -> labels Parquet (θ recorded in its metadata)."""
    from workflows import harvest as H

    cfg = ctx.cfg
    source = cfg.harvest.thresholds_json or ctx.layout.thresholds
    th, where = H.resolve_thresholds(source, storage_opts=ctx.store.opts, labels=cfg.thresholds)
    summary = H.harvest(ctx.layout.features, ctx.layout.labels, annotations=cfg.paths.annotations, thresholds=th,
                        provenance=where, filter_by_weak=cfg.thresholds.filter_by_weak,
                        rows_per_file=cfg.harvest.rows_per_file, splits=tuple(cfg.harvest.splits),
                        storage_opts=ctx.store.opts)
    return {k: summary[k] for k in ("videos", "files", "splits", "audio_labels", "visual_labels", "from",
                                    "filter_by_weak") if k in summary}


def run_train(ctx: Context) -> dict:
    """workflows.train_ray: Ray Train DDP HAN on features + harvested labels; one MLflow run with the resolved pipeline
    config as its parameters (`data.pipeline.*`) and as an artifact (pipeline/config.json); checkpoints in train/."""
    from workflows import datasets, tracking
    from workflows import train_ray as TR

    cfg = ctx.cfg
    data, tcfg, meta = datasets.load_training_data(ctx.layout.features, cfg.train, labels=ctx.layout.labels,
                                                   annotations=cfg.paths.annotations)
    meta["pipeline"] = ctx.resolved
    outcome = TR.train(tcfg, data, workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                       tracking_uri=cfg.tracking.uri, experiment=cfg.tracking.experiment, storage=ctx.layout.train,
                       run_name=f"{cfg.name}-{tcfg.preset}", data_meta=meta)
    if outcome.run_id:
        tracking.log_json(cfg.tracking.uri, outcome.run_id, ctx.resolved, "pipeline", "config.json")
    return outcome.as_json()


def run_evaluate(ctx: Context) -> dict:
    """Score the trained model on val and test with the official metric (workflows.evaluate + train_ray's checkpoint
    predictions) -> eval.json, and add the numbers to the training run in MLflow."""
    from valor_core.llp import load_split
    from workflows import evaluate as E
    from workflows import tracking
    from workflows.train_ray import predict_split

    cfg = ctx.cfg
    trained = ctx.results.get("train", {})
    ref = trained.get("run_id") or trained.get("checkpoint")
    if not ref:
        raise PipelineError("evaluate: the train stage recorded no run id or checkpoint")
    out: dict[str, Any] = {"checkpoint": ref}
    for name in ("val", "test"):
        split = load_split(cfg.paths.annotations, name)
        audio, visual = predict_split(ref, split, features=ctx.layout.features, annotations=cfg.paths.annotations,
                                      tracking_uri=cfg.tracking.uri)
        out[name] = E.score(split, audio, visual)
    ctx.store.write_json(ctx.layout.eval, out)
    if trained.get("run_id"):
        metrics = {}
        for name in ("val", "test"):
            metrics.update(tracking.scores_flat(out[name], f"eval.{name}"))
        tracking.log_metrics(cfg.tracking.uri, trained["run_id"], metrics)
    return {name: {lvl: out[name][lvl] for lvl in ("segment", "event")} for name in ("val", "test")}


def demo_args(cfg: PipelineConfig) -> argparse.Namespace:
    """`valor demo`'s own arguments (its parser and defaults) with `demo.args` applied: the demo runs exactly as the CLI
    would run it."""
    from workflows import demo as D

    parser = argparse.ArgumentParser(prog="valor", exit_on_error=False)
    D.register(parser.add_subparsers(dest="command"))
    argv = ["demo", *map(str, cfg.demo.args)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args, extra = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        extra = None
    if extra is None or extra:
        why = f"unrecognized {extra}" if extra else err.getvalue().strip().splitlines()[-1]
        raise PipelineError(f"demo.args {list(cfg.demo.args)}: not valid `valor demo` arguments: {why}")
    args.out = cfg.demo.out
    return args


def run_demo(ctx: Context) -> dict:
    """workflows.demo (`valor demo`) in this process: LLP-sim -> Table 6 harvest -> han vs valor on CPU -> the val/test
    table; demo.json, demo.png and demo.txt (the table) in demo.out."""
    from workflows import demo as D

    cfg = ctx.cfg
    args = demo_args(cfg)
    flags = " ".join(map(str, cfg.demo.args)) or "(its defaults)"
    ctx.log(f"[valor run] demo: valor demo {flags} -> {cfg.demo.out}")
    try:
        out = D.run_demo(args, log=ctx.log)
    except (FileNotFoundError, ValueError) as err:
        raise PipelineError(f"demo: {err}") from None
    table = D.format_table(out)
    ctx.log(table)
    D.write_outputs(out, cfg.demo.out)
    Path(cfg.demo.out, "demo.txt").write_text(table + "\n")
    keep = ("train_videos", "epochs", "hidden", "lr_scale", "fidelity", "seconds")
    return {**{k: out[k] for k in keep if k in out}, "out": cfg.demo.out,
            **{m: {"test": {lvl: out[m]["test"][lvl] for lvl in ("segment", "event")}, "best_epoch": out[m]["best_epoch"]}
               for m in D.MODELS}}


RUNNERS: dict[str, Runner] = dict(extract=run_extract, tune=run_tune, harvest=run_harvest, train=run_train,
                                  evaluate=run_evaluate, demo=run_demo)


# --- CLI -----------------------------------------------------------------------------------------------------------


def summary(cfg: PipelineConfig, reports: list[StageReport]) -> dict:
    layout = Layout(cfg.paths.output)
    return {
        "stages": {r.name: {"status": r.status, "seconds": round(r.seconds, 3), "fingerprint": r.fingerprint[:16],
                            "reason": r.reason} for r in reports},
        "ran": [r.name for r in reports if r.status == "ran"],
        "output": cfg.paths.output,
        "features": layout.features,
        "labels": layout.labels,
        "thresholds": layout.thresholds,
        "checkpoints": layout.train,
        "eval": layout.eval,
        "config": layout.config,
        "tracking_uri": cfg.tracking.uri,
        "pictures": cfg.demo.out if cfg.demo.enabled else None,
        "results": {r.name: r.result for r in reports if r.result},
    }


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="the whole pipeline from one YAML config (extract -> tune -> harvest -> "
                                          "train -> evaluate), skipping stages already done",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", metavar="FILE", help="pipeline YAML (configs/local.yaml, configs/llp.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides with YAML-typed values, e.g. train.optim.epochs=2 ray.address=auto")
    p.add_argument("--stage", choices=STAGE_NAMES, help="run this stage alone (its inputs must be up to date)")
    p.add_argument("--force", action="store_true", help="re-run the selected stage(s) even when up to date")
    p.add_argument("--plan", action="store_true", help="print what would run, run nothing")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--json", action="store_true", help="last line: a JSON summary")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = resolve(load_config(args.config, args.overrides))
    except ConfigError as err:
        print(f"valor run: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(_yaml(redacted(cfg)), end="")
        return 0
    try:
        reports = run_pipeline(cfg, only=args.stage, force=args.force, plan=args.plan)
    except (PipelineError, ConfigError) as err:
        print(f"valor run: {err}", file=sys.stderr)
        return 1
    for r in reports:
        line = f"  {r.name:<9} {r.status:<8}"
        if r.status == "ran":
            line += f" {r.seconds:7.1f} s"
        elif r.reason:
            line += f" ({r.reason})"
        print(line)
    ran = [r for r in reports if r.status == "ran"]
    if args.plan:
        todo = [r.name for r in reports if r.status == "todo"]
        print(f"valor run: would run {', '.join(todo)}" if todo else "valor run: nothing to do (all stages up to date)")
    elif not ran:
        print("valor run: nothing to do (all stages up to date for this config)")
    s = summary(cfg, reports)
    if not args.plan:
        print(where_things_are(s))
    if args.json:
        print(json.dumps(s, default=str))
    return 0


def where_things_are(s: dict) -> str:
    lines = ["valor run: outputs",
             f"  Parquet features  {s['features']}  (failures: {s['output']}/failures)",
             f"  harvested labels  {s['labels']}",
             f"  thresholds        {s['thresholds']}",
             f"  checkpoints       {s['checkpoints']}",
             f"  evaluation        {s['eval']}",
             f"  resolved config   {s['config']}",
             f"  MLflow runs       {s['tracking_uri']}   (mlflow ui --backend-store-uri {s['tracking_uri']})"]
    if s.get("pictures"):
        lines.append(f"  pictures          {s['pictures']}/demo.png  (the LLP-sim han vs valor table: demo.txt, demo.json)")
    return "\n".join(lines)
