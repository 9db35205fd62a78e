"""The stages of `valor run`, as data (STAGES) and thin runners: each runner calls the stage's own entry point (the
same function its `valor <stage>` command calls) with the pipeline's resolved config and layout; nothing here
re-implements a stage.

    extract   videos + manifest ──► <output>/features (+ failures)            workflows.extract.run_extract
    import    released files    ──► <output>/features (+ failures)            workflows.importer.run_import
    tune      features + val GT ──► <output>/thresholds.json (+ MLflow run)   workflows.tune.tune_and_record
    labeler   features + weak   ──► <output>/labeler/<name> + MLflow run      workflows.train_ray.train (MA stage 1,
                                                                              Table 2's HAN labeler)
    harvest   features + θ      ──► <output>/labels                           workflows.harvest.harvest (or
                                                                              harvest_labeler with harvest.labeler)
    refine    features + labeler──► <output>/{ma,lsld}_labels                 workflows.refine_ma / refine_lsld.refine
    train     features + labels ──► <output>/train (checkpoints) + MLflow run workflows.train_ray.train
    evaluate  checkpoint        ──► <output>/eval.json (+ MLflow metrics)     workflows.evaluate.evaluate_checkpoint
    ave       AVE (ave.enabled) ──► <output>/ave/<loss> + MLflow run each     workflows.ave_train_ray.train_ave_ray
                                    + <output>/ave/eval.json                  (as `valor ave train --ray`)
    demo      LLP-sim (no Ray)  ──► <demo.out>/demo.{png,json,txt}            workflows.demo.run_demo

Which stages a config has: `released.*` set -> import instead of extract, and no tune or harvest (training uses the
imported VALOR pseudo-labels); `harvest.thresholds_json` set (a file or "table6") -> no tune. With `runs:`, train and
evaluate do every run (layout.train_runs). A run whose loss trains on refined labels (ma-refined, lsld) or
`harvest.labeler: han` adds the labeler and refine stages it needs (workflows/pipeline/methods.py).

What each stage's fingerprint hashes (its *section*) is what defines its outputs: the label rule (`thresholds.*`,
including the one `filter_by_weak` knob) feeds tune and harvest; `train.labels` is not hashed (in a pipeline the
labels come from harvest); actor-pool sizes and Ray/MLflow plumbing are not hashed (they change speed, not results).

Train is resumable: interrupted (even killed) with the same fingerprint, it continues in place -- each run from its last
Ray Train checkpoint into its MLflow run, a run that completed is not trained again (workflows/train_ray).
"""
from __future__ import annotations

import posixpath
from typing import Callable, Optional

from tuning.config import TuneResources
from valor_core.config import to_dict
from valor_core.ave import AVEError
from workflows import ave_data, demo, evaluate, extract, harvest, importer, refine_lsld, refine_ma, tracking, tune
from workflows.config import PipelineConfig
from workflows.pipeline.engine import (Context, PipelineError, Runner, Stage, StageReport, Store, annotations_digest,
                                       execute, file_digest)
from workflows.pipeline import methods
from workflows.pipeline.layout import Layout, train_runs
from workflows.pipeline.prepare import prepare_inputs
from workflows.outputs import claim
from workflows.runtime import start_ray
from workflows.trainset import load_training_data

# --- what each stage's fingerprint hashes -------------------------------------------------------------------------


def _extract_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    speed_only = ("clip_actors", "clap_actors", "decode_batch_size")
    return {"videos": cfg.paths.videos, "manifest": file_digest(cfg.paths.manifest, store),
            "teachers": to_dict(cfg.teachers), "media": to_dict(cfg.media),
            "extract": {k: v for k, v in to_dict(cfg.extract).items() if k not in speed_only}}


def _import_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    released = {k: v for k, v in to_dict(cfg.released).items() if k != "rows_per_file"}
    return {"released": released, "annotations": annotations_digest(cfg.paths.annotations, store)}


def _tune_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    return {"annotations": annotations_digest(cfg.paths.annotations, store), "tune": to_dict(cfg.tune),
            "filter_by_weak": cfg.thresholds.filter_by_weak}


def _harvest_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    return {"thresholds": to_dict(cfg.thresholds), "harvest": to_dict(cfg.harvest),
            "thresholds_file": file_digest(cfg.harvest.thresholds_json, store)}


def _labeler_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    return {"labelers": methods.labeler_section(cfg), "annotations": annotations_digest(cfg.paths.annotations, store)}


def _refine_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    return methods.refine_section(cfg)


def _refined_files(cfg: PipelineConfig) -> tuple[str, ...]:
    return tuple(Layout(cfg.paths.output).refined(m) for m in methods.refinements(cfg))


def _train_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    def section(t) -> dict:
        return {k: v for k, v in to_dict(t).items() if k != "labels"}

    return {"train": section(cfg.train), "runs": {name: section(t) for name, t in train_runs(cfg).items()},
            "annotations": annotations_digest(cfg.paths.annotations, store)}


def _evaluate_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    return {"annotations": annotations_digest(cfg.paths.annotations, store)}


def _ave_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    return {"ave": to_dict(cfg.ave)}


def _demo_section(cfg: PipelineConfig, store: Optional[Store] = None) -> dict:
    return {"demo": to_dict(cfg.demo)}


def _demo_files(cfg: PipelineConfig) -> tuple[str, ...]:
    return tuple(posixpath.join(cfg.demo.out, f) for f in demo.OUTPUT_FILES)


STAGES: tuple[Stage, ...] = (
    Stage("extract", (), _extract_section, ("features",), resumable=True, also_clears=("failures",),
          enabled=lambda c: not c.released.enabled, help="decode videos, CLIP/CLAP logits + embeddings -> Parquet"),
    Stage("import", (), _import_section, ("features",), resumable=True, also_clears=("failures",),
          enabled=lambda c: c.released.enabled, help="the released LLP feature files -> Parquet (instead of extract)"),
    Stage("tune", ("extract",), _tune_section, ("thresholds",),
          enabled=methods.tunes,
          help="Ray Tune per-class thresholds on val -> thresholds.json"),
    Stage("labeler", ("extract", "import"), _labeler_section, ("labeler",), enabled=lambda c: bool(methods.labelers(c)),
          help="train the model a method labels with (MA stage 1; harvest.labeler: han) -> labeler/<name>"),
    Stage("harvest", ("extract", "tune", "labeler"), _harvest_section, ("labels",), enabled=methods.harvests,
          help="thresholds AND weak labels (or a HAN labeler's predictions) -> harvested labels Parquet"),
    Stage("refine", ("extract", "import", "labeler"), _refine_section, (), enabled=lambda c: bool(methods.refinements(c)),
          also_clears=("ma_labels", "lsld_labels"), produced=_refined_files,
          help="MA track swap / LSLD caption scoring -> ma_labels / lsld_labels (runs with loss ma-refined / lsld)"),
    Stage("train", ("extract", "import", "harvest", "refine"), _train_section, ("train",), resumable=True,
          help="Ray Train DDP HAN + MLflow run + checkpoint"),
    Stage("evaluate", ("train",), _evaluate_section, ("eval",),
          help="official segment/event F on val/test -> eval.json + MLflow"),
    Stage("ave", (), _ave_section, ("ave",), enabled=lambda c: c.ave.enabled,
          help="AVE (appendix F): a Ray Train job + MLflow run per loss -> ave/<loss>, ave/eval.json"),
    Stage("demo", (), _demo_section, (), enabled=lambda c: c.demo.enabled, uses_ray=False,
          help="the LLP-sim science demo: han vs valor table + pictures", produced=_demo_files),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


# --- runners -------------------------------------------------------------------------------------------------------


def run_extract(ctx: Context) -> dict:
    cfg = ctx.cfg
    s = extract.run_extract(cfg.paths.manifest, cfg.paths.videos, cfg.teachers.clip, cfg.teachers.clap,
                            ctx.layout.features, cfg=cfg.extract, teachers=cfg.teachers, media=cfg.media,
                            storage=cfg.storage, log=ctx.log)
    if s.done + s.skipped == 0:
        raise PipelineError(f"extract: no video succeeded ({s.failed} failed; see {s.failures})")
    return {**s.contract(), "partial": s.partial, "failures": s.failures, "run_id": s.run_id,
            "failed_by_stage": s.by_stage}


def run_import(ctx: Context) -> dict:
    cfg, r = ctx.cfg, ctx.cfg.released
    s = importer.run_import(r.feats, ctx.layout.features, clip=r.clip, clap=r.clap, annotations=cfg.paths.annotations,
                            storage=cfg.storage, rows_per_file=r.rows_per_file, log=ctx.log)
    if s.videos + s.skipped == 0:
        raise PipelineError(f"import: no video imported ({s.failed} failed; see {s.failures})")
    return {**s.contract(), "failures": s.failures, "run_id": s.run_id, "failed_by_kind": s.by_kind}


def run_tune(ctx: Context) -> dict:
    cfg = ctx.cfg
    problems = tune.load_problems(ctx.layout.features, cfg.paths.annotations, tune.MODALITIES,
                                  cfg.thresholds.filter_by_weak, storage_opts=ctx.store.opts)
    res = TuneResources(storage_dir=posixpath.join(cfg.paths.work, "ray-tune"))
    summary, run_id = tune.tune_and_record(problems, cfg.tune, source=ctx.layout.features, out=ctx.layout.thresholds,
                                           res=res, storage_opts=ctx.store.opts, tracking_uri=cfg.tracking.uri,
                                           experiment=cfg.tracking.experiment)
    return {"mlflow_run": run_id, "searcher": summary["searcher"], "seconds": summary["seconds"],
            **{m: {k: summary[m][k] for k in ("fidelity", "official")} for m in tune.MODALITIES if m in summary},
            "paper": summary.get("paper"), "filter_by_weak": summary["filter_by_weak"]}


def run_labeler(ctx: Context) -> dict:
    """Each labeler the config needs (methods.labelers), trained like a run: checkpoints in labeler/<name>."""
    claim(ctx.layout.labeler, "checkpoints", opts=ctx.store.opts)
    out = {}
    for name, tcfg in methods.labelers(ctx.cfg).items():
        ctx.log(f"[valor run] labeler: training the {name} labeler (preset {tcfg.preset})")
        out[name] = _train_one(ctx, tcfg, ctx.layout.labeler_run(name), f"{ctx.cfg.name}-labeler-{name}", labels=None)
    return out


def _checkpoint_of(ctx: Context, name: str) -> str:
    trained = (ctx.results.get("labeler") or {}).get(name) or {}
    ref = trained.get("checkpoint") or trained.get("run_id")
    if not ref:
        raise PipelineError(f"the labeler stage recorded no checkpoint for the {name} labeler")
    return ref


def run_refine(ctx: Context) -> dict:
    """The refinement of every method the runs train on (methods.refinements), each its own labels dataset."""
    cfg, out = ctx.cfg, {}
    for method in methods.refinements(cfg):
        where = ctx.layout.refined(method)
        ctx.log(f"[valor run] refine: {method} -> {where}")
        if method == "ma":
            ma = cfg.refine.ma_stage1.ma
            s = refine_ma.refine(_checkpoint_of(ctx, "ma"), ctx.layout.features, where,
                                 overrides={k: getattr(ma, k) for k in methods.MA_STAGE2},
                                 annotations=cfg.paths.annotations, tracking_uri=cfg.tracking.uri,
                                 videos_per_task=cfg.refine.videos_per_task, ray_address=cfg.ray.address,
                                 storage_opts=ctx.store.opts)
        else:
            s = refine_lsld.refine(ctx.layout.features, where, clip_spec=cfg.teachers.clip,
                                   clap_spec=cfg.teachers.clap, cfg=cfg.refine.lsld, teacher_cfg=cfg.teachers,
                                   storage_opts=ctx.store.opts)
        out[method] = {k: s[k] for k in ("videos", "out", "audio_labels", "visual_labels", "weak_labels",
                                         "weak_segment_labels", "soft_labels", "checkpoint") if k in s}
    return out


def run_harvest(ctx: Context) -> dict:
    cfg = ctx.cfg
    labeler = methods.han_labeler(cfg)
    if labeler is not None:  # VALOR Table 2: a HAN's segment predictions instead of the teachers' logits
        ref = _checkpoint_of(ctx, "han") if labeler == "train" else labeler
        summary = harvest.harvest_labeler(f"han:{ref}", ctx.layout.features, ctx.layout.labels,
                                          annotations=cfg.paths.annotations, threshold=cfg.harvest.labeler_threshold,
                                          filter_by_weak=cfg.thresholds.filter_by_weak,
                                          splits=tuple(cfg.harvest.splits), rows_per_file=cfg.harvest.rows_per_file,
                                          tracking_uri=cfg.tracking.uri, storage_opts=ctx.store.opts)
        return {k: summary[k] for k in ("videos", "files", "splits", "audio_labels", "visual_labels", "labeler",
                                        "checkpoint", "filter_by_weak")}
    source = cfg.harvest.thresholds_json or ctx.layout.thresholds
    th, where = harvest.resolve_thresholds(source, storage_opts=ctx.store.opts, labels=cfg.thresholds)
    summary = harvest.harvest(ctx.layout.features, ctx.layout.labels, annotations=cfg.paths.annotations,
                              thresholds=th, provenance=where, filter_by_weak=cfg.thresholds.filter_by_weak,
                              rows_per_file=cfg.harvest.rows_per_file, splits=tuple(cfg.harvest.splits),
                              storage_opts=ctx.store.opts, modality_agnostic=cfg.thresholds.modality_agnostic)
    return {k: summary[k] for k in ("videos", "files", "splits", "audio_labels", "visual_labels", "from",
                                    "filter_by_weak") if k in summary}


def run_train(ctx: Context) -> dict:
    """One MLflow run per training run with the resolved pipeline config as its parameters (`data.pipeline.*`) and as
    an artifact (pipeline/config.json); checkpoints in train/ (train/<run> with `runs:`)."""
    runs = train_runs(ctx.cfg)
    if not runs:
        return _train_one(ctx, ctx.cfg.train, ctx.layout.train, f"{ctx.cfg.name}-{ctx.cfg.train.preset}")
    claim(ctx.layout.train, "checkpoints", opts=ctx.store.opts)
    out = {}
    for name, tcfg in runs.items():
        ctx.log(f"[valor run] train: run {name} ({len(out) + 1} of {len(runs)})")
        out[name] = _train_one(ctx, tcfg, ctx.layout.train_run(name), f"{ctx.cfg.name}-{name}")
    return {"runs": out}


def _train_one(ctx: Context, tcfg, storage: str, run_name: str, labels: Optional[str] = "auto") -> dict:
    """One training run; labels "auto" = what the run trains on (methods.labels_for: harvested, refined, or the
    imported pseudo-labels), None = none given (a labeler: the weak labels are its targets)."""
    from workflows import train_ray  # torch-bound: imported where used, so `valor run --plan` starts without torch

    cfg = ctx.cfg
    if labels == "auto":
        labels = methods.labels_for(cfg, tcfg, ctx.layout)
    data, tcfg, meta = load_training_data(ctx.layout.features, tcfg, labels=labels, annotations=cfg.paths.annotations)
    meta["pipeline"] = ctx.resolved
    outcome = train_ray.train(tcfg, data, workers=tcfg.num_workers, use_gpu=tcfg.use_gpu,
                              tracking_uri=cfg.tracking.uri, experiment=cfg.tracking.experiment,
                              storage=storage, run_name=run_name, data_meta=meta, reuse_completed=True)
    if outcome.run_id:
        tracking.log_json(cfg.tracking.uri, outcome.run_id, ctx.resolved, "pipeline", "config.json")
    return outcome.as_json()


def run_evaluate(ctx: Context) -> dict:
    trained = ctx.results.get("train", {})
    if "runs" not in trained:
        out = _evaluate_one(ctx, trained)
        ctx.store.write_json(ctx.layout.eval, out)
        return _scores(out)
    outs = {name: _evaluate_one(ctx, t) for name, t in trained["runs"].items()}
    ctx.store.write_json(ctx.layout.eval, {"runs": outs})
    return {"runs": {name: _scores(out) for name, out in outs.items()}}


def _evaluate_one(ctx: Context, trained: dict) -> dict:
    ref = trained.get("run_id") or trained.get("checkpoint")
    if not ref:
        raise PipelineError("evaluate: the train stage recorded no run id or checkpoint")
    return evaluate.evaluate_checkpoint(ref, features=ctx.layout.features, annotations=ctx.cfg.paths.annotations,
                                        tracking_uri=ctx.cfg.tracking.uri, run_id=trained.get("run_id"))


def _scores(out: dict) -> dict:
    return {name: {lvl: out[name][lvl] for lvl in ("segment", "event")} for name in evaluate.SPLITS}


def run_ave(ctx: Context) -> dict:
    """`valor ave train --ray` once per loss of the `ave:` section, tracked in the pipeline's MLflow experiment."""
    from workflows import ave_train_ray  # torch-bound: imported where used

    a, cfg = ctx.cfg.ave, ctx.cfg
    claim(ctx.layout.ave, "checkpoints", opts=ctx.store.opts)
    try:  # read once for every loss: with valor among them, its harvested labels ride along (han ignores them)
        data, source = ave_data.load_data(a.annotations, a.features, a.sim, a.train_videos, a.seed,
                                          "valor" if "valor" in a.losses else "han")
    except AVEError as err:
        raise PipelineError(f"ave: {err}") from None
    videos = {s: len(x) for s, x in data.items()}
    out = {}
    for loss in a.losses:
        meta = {"source": source, "loss": loss, "videos": videos}
        ctx.log(f"[valor run] ave: loss {loss} on {source} ({meta['videos']['train']} train videos)")
        o = ave_train_ray.train_ave_ray(ave_data.train_config(loss, a.hidden, a.seed, a.epochs, a.lr), data,
                                        data_meta=meta, workers=a.workers, use_gpu=a.use_gpu,
                                        tracking_uri=cfg.tracking.uri, experiment=cfg.tracking.experiment,
                                        storage=ctx.layout.ave_run(loss), run_name=f"{cfg.name}-ave-{loss}")
        out[loss] = {"run_id": o.run_id, "checkpoint": o.checkpoint, "source": source, "videos": meta["videos"],
                     "best_epoch": o.best_epoch, "val_accuracy": round(o.val_accuracy, 2),
                     "test_accuracy": round(o.test_accuracy, 2),
                     "background_accuracy": round(o.background_accuracy, 2)}
    ctx.store.write_json(ctx.layout.ave_eval, out)
    return out


def run_demo(ctx: Context) -> dict:
    """`valor demo` in this process, with `demo.args` parsed by its own parser; its files in demo.out."""
    cfg = ctx.cfg
    try:
        args = demo.parse_demo_args(cfg.demo.args)
    except ValueError as err:
        raise PipelineError(f"demo.args {list(cfg.demo.args)}: not valid `valor demo` arguments: {err}") from None
    args.out = cfg.demo.out
    ctx.log(f"[valor run] demo: valor demo {' '.join(map(str, cfg.demo.args)) or '(its defaults)'} -> {args.out}")
    try:
        out = demo.run_demo(args, log=ctx.log)
    except (FileNotFoundError, ValueError) as err:
        raise PipelineError(f"demo: {err}") from None
    ctx.log(demo.format_table(out))
    demo.write_outputs(out, args.out)
    keep = ("train_videos", "epochs", "hidden", "lr_scale", "han_lr_scale", "fidelity", "seconds")
    return {**{k: out[k] for k in keep if k in out}, "out": args.out,
            **{m: {"test": {lvl: out[m]["test"][lvl] for lvl in ("segment", "event")}, "best_epoch": out[m]["best_epoch"]}
               for m in demo.MODELS}}


RUNNERS: dict[str, Runner] = {"extract": run_extract, "import": run_import, "tune": run_tune, "labeler": run_labeler,
                               "harvest": run_harvest, "refine": run_refine, "train": run_train,
                               "evaluate": run_evaluate, "ave": run_ave, "demo": run_demo}


def start_pipeline_ray(cfg: PipelineConfig, env: dict) -> Callable[[], None]:
    """Ray for the stages (workflows.runtime.start_ray with the config's `ray` section and the teachers' env)."""
    return start_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
                     namespace=cfg.ray.namespace, env=env)


def run_pipeline(cfg: PipelineConfig, *, only: Optional[str] = None, force: bool = False, plan: bool = False,
                 runners: Optional[dict[str, Runner]] = None, stages: tuple[Stage, ...] = STAGES,
                 prepare=None, init_ray=None, log: Callable[[str], None] = print) -> list[StageReport]:
    """`valor run` on a resolved config: the real stages, runners, input preparation and Ray (each replaceable)."""
    return execute(cfg, stages, RUNNERS if runners is None else runners, prepare=prepare or prepare_inputs,
                   init_ray=init_ray or start_pipeline_ray, only=only, force=force, plan=plan, log=log)
