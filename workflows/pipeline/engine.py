"""The pipeline engine: stages as data, fingerprints, completion markers, and running what is not yet done.

Each stage has a *fingerprint*: the SHA-256 of the stage's resolved config section and the fingerprints of the stages (or
input files) it reads. After a stage's outputs are written, a completion marker `<output>/_pipeline/<stage>.json`
holding that fingerprint is written atomically (one PUT on S3, temp file + rename locally). A stage whose marker matches
(and whose outputs exist) is skipped; when every stage is skipped, `valor run` says "nothing to do". Changing one section
re-runs that stage and everything downstream of it, nothing upstream. A stage that re-runs makes everything downstream
of it re-run too (its outputs may differ, e.g. a new search). Before a stage runs its old outputs are removed, so old and
new never mix - except a `resumable` stage interrupted with the same fingerprint, which continues in place.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from workflows import objstore
from workflows.config import PipelineConfig, check_input_dir, redacted
from workflows.outputs import check_removable, claim, lock, remove_owned, reserve, write_file
from workflows.pipeline.layout import FILE_OUTPUTS, Layout
from workflows.runtime import code_version

PIPELINE_VERSION = 1  # bump to invalidate every marker (a change in what a stage writes)


class Store:
    """Small JSON/text objects on the output URI (local dir or S3), through workflows.objstore."""

    def __init__(self, cfg: PipelineConfig):
        self.opts = objstore.s3_options(cfg.storage)

    def read_bytes(self, uri: str) -> bytes:
        return objstore.read_bytes(uri, self.opts)

    def read_json(self, uri: str) -> Optional[dict]:
        try:
            return json.loads(objstore.read_bytes(uri, self.opts))
        except (FileNotFoundError, OSError, ValueError):
            return None

    def write_text(self, uri: str, text: str) -> None:
        write_file(uri, text.encode(), self.opts)  # recorded in the manifest of the output it lies in

    def write_json(self, uri: str, data: dict) -> None:
        self.write_text(uri, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")

    def exists(self, uri: str) -> bool:
        return objstore.exists(uri, self.opts)


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
            return hashlib.sha256(store.read_bytes(uri)).hexdigest()
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
    outputs: tuple[str, ...]  # layout.OUTPUTS keys this stage writes (checked and cleared)
    enabled: Callable[[PipelineConfig], bool] = lambda cfg: True
    uses_ray: bool = True
    resumable: bool = False  # an interrupted run with the same fingerprint continues in place (else outputs are cleared)
    also_clears: tuple[str, ...] = ()  # outputs that may legitimately be absent (not checked) but are cleared with the rest
    help: str = ""
    produced: Callable[[PipelineConfig], tuple[str, ...]] = lambda cfg: ()  # outputs outside <output> (checked too)

    def missing(self, cfg: PipelineConfig, layout: "Layout", store: "Store") -> list[str]:
        uris = [layout.uri(o) for o in self.outputs] + list(self.produced(cfg))
        return [u for u in uris if not store.exists(u)]


def fingerprints(cfg: PipelineConfig, store: Optional[Store], stages: tuple[Stage, ...]) -> dict[str, str]:
    """Each stage's fingerprint for this config: hash(stage, its section, its inputs' fingerprints, version)."""
    fps: dict[str, str] = {}
    for st in stages:
        fps[st.name] = digest({"stage": st.name, "version": PIPELINE_VERSION, "section": st.section(cfg, store),
                               "inputs": {name: fps[name] for name in st.inputs}})
    return fps


# --- running -------------------------------------------------------------------------------------------------------

Runner = Callable[[Context], dict]


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


def stage_status(cfg: PipelineConfig, store: Store, stages: tuple[Stage, ...]) -> dict[str, dict]:
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


Prepare = Callable[[PipelineConfig, Callable, bool], tuple[PipelineConfig, dict]]  # (cfg, log, create)
InitRay = Callable[[PipelineConfig, dict], Callable[[], None]]


def execute(cfg: PipelineConfig, stages: tuple[Stage, ...], runners: dict[str, Runner], *, prepare: Prepare,
            init_ray: InitRay, only: Optional[str] = None, force: bool = False, plan: bool = False,
            log: Callable[[str], None] = print) -> list[StageReport]:
    """Run (or plan) `stages` of a resolved config with `runners`; returns one StageReport per stage.

    `prepare` makes the inputs the config asks for (before anything is read), `init_ray` starts Ray when a stage that
    needs it has work; workflows/pipeline/stages.py passes the real ones, tests pass fakes."""
    if only is not None and only not in {s.name for s in stages}:
        raise PipelineError(f"unknown stage {only!r}; stages: {', '.join(s.name for s in stages)}")
    if only in (None, "extract") and not (cfg.corpus.generate or cfg.released.enabled):  # before anything is made
        check_input_dir(cfg.paths.videos, "paths.videos")
    cfg, env = prepare(cfg, log, not plan)
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
        stale = [i for i in st.inputs if status[i]["state"] == "todo"]
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
        return _ordered(reports, stages)

    # preflight: the stores answer; the output root is this pipeline's (never foreign files) and ours while we run
    for uri in {u for u in (cfg.paths.output, cfg.paths.videos, cfg.paths.annotations) if objstore.is_s3(u)}:
        objstore.check_reachable(uri, store.opts)
    claim(cfg.paths.output, "pipeline", name=cfg.name, opts=store.opts, force=force)
    with lock(cfg.paths.output, f"valor run {cfg.name}", store.opts):
        _run_todo(cfg, todo, status, fps, runners, init_ray, env, store, layout, force, reports, log)
    return _ordered(reports, stages)


def _run_todo(cfg: PipelineConfig, todo: list[Stage], status: dict, fps: dict, runners: dict, init_ray: InitRay,
              env: dict, store: Store, layout: Layout, force: bool, reports: list[StageReport],
              log: Callable[[str], None]) -> None:
    """Run the stages in `todo` in order (the output root's lock is held), appending their reports."""
    resolved = redacted(cfg)
    store.write_text(layout.config, to_yaml(resolved))
    results = {name: (s["marker"] or {}).get("result", {}) for name, s in status.items() if s["state"] == "done"}
    shutdown = lambda: None  # noqa: E731
    if any(st.uses_ray for st in todo):
        shutdown = init_ray(cfg, env)
    try:
        for i, st in enumerate(todo):
            if not any(t.uses_ray for t in todo[i:]):  # the rest (the demo) runs without Ray: give its CPUs back
                shutdown()
                shutdown = lambda: None  # noqa: E731
            fp = fps[st.name]
            started = store.read_json(layout.marker(st.name, "started"))
            if force or not st.resumable or not (started and started.get("fingerprint") == fp):
                # a different config made what is there: remove what valor wrote so old and new outputs never mix
                # (every output is checked before any is touched; files valor did not write are kept and reported)
                uris = [layout.marker(st.name)] + [layout.uri(key) for key in st.outputs + st.also_clears]
                for uri in uris:
                    check_removable(uri, store.opts)
                for uri in uris:
                    remove_owned(uri, store.opts, log=log)
                store.write_json(layout.marker(st.name, "started"), {"stage": st.name, "fingerprint": fp,
                                                                     "started_at": time.time()})
            for key in st.outputs:
                if key in FILE_OUTPUTS:  # recorded before the stage writes it: a kill mid-stage leaves it valor's
                    reserve(layout.uri(key), store.opts)
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
                "outputs": {o: layout.uri(o) for o in st.outputs}, "result": result,
                "seconds": round(seconds, 3), "finished_at": time.time(), "code": code_version(),
            })
            log(f"[valor run] {st.name}: done in {seconds:.1f} s")
            reports.append(StageReport(st.name, "ran", fp, seconds=seconds, result=result,
                                       reason=status[st.name]["reason"]))
    finally:
        shutdown()


def _ordered(reports: list[StageReport], stages: tuple[Stage, ...]) -> list[StageReport]:
    order = [s.name for s in stages]
    return sorted(reports, key=lambda r: order.index(r.name) if r.name in order else len(order))


def to_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
