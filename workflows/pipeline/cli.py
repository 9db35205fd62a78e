"""`valor run --config FILE [key=value ...]`: the whole flow from one YAML, each stage skipped when already done.

    corpus/teachers (prepare: the demo corpus and tiny teachers are created on first use when the config asks for them)
        │
    extract   videos + manifest ──► <output>/features (+ failures)            Ray Data, CLIP/CLAP actors
    import    released files    ──► <output>/features (+ failures)            Ray Data (`released.*` set; then no
                                                                              tune/harvest: the released pseudo-labels)
    tune      features + val GT ──► <output>/thresholds.json                  Ray Tune
    labeler   features + weak   ──► <output>/labeler/<name>                   Ray Train: MA stage 1 (a run with preset
                                                                              ma-retrain), the HAN of harvest.labeler
    harvest   features + θ      ──► <output>/labels                           Ray Data (harvest.labeler: han -> the
                                                                              HAN's segment predictions, VALOR Table 2)
    refine    features + labeler──► <output>/ma_labels, lsld_labels           Ray tasks: MA's track swap (ma-retrain);
                                                                              LSLD's captions (a run with preset lsld)
    train     features + labels ──► <output>/train (checkpoints) + MLflow run Ray Train (every run of `runs:`)
    evaluate  checkpoint        ──► <output>/eval.json (+ MLflow metrics)   with `runs:`, a Table-1 layout of test
    demo      LLP-sim (no Ray) ──► <demo.out>/demo.{png,json,txt}               `valor demo` in-process (demo.enabled)

Skipping: each stage has a fingerprint of what defines its outputs and a completion marker (workflows/pipeline/
engine.py); a stage whose marker matches is skipped, and when every stage is, `valor run` says "nothing to do". Changing
one section re-runs that stage and everything downstream of it, nothing upstream: e.g. `thresholds.*` re-runs tune
(`thresholds.filter_by_weak`), harvest, train, evaluate. Outputs: workflows/pipeline/layout.py.

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
import json
import sys
from typing import Any

from workflows.compare import paper_table
from workflows.config import ConfigError, PipelineConfig, load_config, redacted
from workflows.objstore import StorageError
from workflows.outputs import LockedError, OwnershipError
from workflows.pipeline.engine import PipelineError, StageReport, to_yaml
from workflows.pipeline.layout import Layout, resolve
from workflows.pipeline.methods import labelers, refinements
from workflows.pipeline.stages import STAGE_NAMES, STAGES, run_pipeline


def summary(cfg: PipelineConfig, reports: list[StageReport]) -> dict:
    layout = Layout(cfg.paths.output)
    return {
        "enabled": [st.name for st in STAGES if st.enabled(cfg)],
        "stages": {r.name: {"status": r.status, "seconds": round(r.seconds, 3), "fingerprint": r.fingerprint[:16],
                            "reason": r.reason} for r in reports},
        "ran": [r.name for r in reports if r.status == "ran"],
        "output": cfg.paths.output,
        "features": layout.features,
        "labels": layout.labels,
        "refined": {m: layout.refined(m) for m in refinements(cfg)},
        "labelers": {name: layout.labeler_run(name) for name in labelers(cfg)},
        "thresholds": layout.thresholds,
        "checkpoints": layout.train,
        "eval": layout.eval,
        "config": layout.config,
        "tracking_uri": cfg.tracking.uri,
        "pictures": cfg.demo.out if cfg.demo.enabled else None,
        "ave": layout.ave_eval if cfg.ave.enabled else None,
        "results": {r.name: r.result for r in reports if r.result},
    }


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="the whole pipeline from one YAML config (extract -> tune -> [labeler] -> "
                                          "harvest -> [refine] -> train -> evaluate -> [ave]), skipping stages already done",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", metavar="FILE", help="pipeline YAML (configs/local.yaml, configs/llp.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides with YAML-typed values, e.g. train.optim.epochs=2 ray.address=auto")
    p.add_argument("--stage", choices=STAGE_NAMES, help="run this stage alone (its inputs must be up to date)")
    p.add_argument("--force", action="store_true", help="re-run the selected stage(s) even when up to date, and take "
                   "over an output root valor made for another pipeline (never foreign files)")
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
        print(to_yaml(redacted(cfg)), end="")
        return 0
    try:
        reports = run_pipeline(cfg, only=args.stage, force=args.force, plan=args.plan)
    except (ConfigError, OwnershipError, LockedError, StorageError) as err:  # bad input or a busy output: nothing done
        print(f"valor run: {err}", file=sys.stderr)
        return 2
    except PipelineError as err:
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
        scores = table_rows(cfg, s["results"].get("evaluate") or {})
        if scores:
            print(f"valor run: scores (LLP test, F-score %; val in {s['eval']})")
            print(paper_table(scores, "test"))
    if args.json:
        print(json.dumps(s, default=str))
    return 0


def table_rows(cfg: PipelineConfig, evaluated: dict) -> dict:
    """{row name: {split: scores}} of the evaluate stage's result: one row per run of `runs:`, else the train run."""
    if "runs" in evaluated:
        return evaluated["runs"]
    return {f"{cfg.name}-{cfg.train.preset}": evaluated} if evaluated.get("test") else {}


def where_things_are(s: dict) -> str:
    """The outputs this config's stages write (a stage the config turns off is not listed)."""
    on = set(s["enabled"])
    rows = [("extract" in on or "import" in on, f"  Parquet features  {s['features']}  (failures: {s['output']}/failures)"),
            ("harvest" in on, f"  harvested labels  {s['labels']}"),
            *[(True, f"  {m} labels{' ' * max(1, 12 - len(m))}{uri}") for m, uri in s["refined"].items()],
            *[(True, f"  {n} labeler{' ' * max(1, 11 - len(n))}{uri}") for n, uri in s["labelers"].items()],
            ("tune" in on, f"  thresholds        {s['thresholds']}"),
            ("train" in on, f"  checkpoints       {s['checkpoints']}  (--checkpoint takes it, or a run id with "
                            f"--tracking-uri {s['tracking_uri']})"),
            ("evaluate" in on, f"  evaluation        {s['eval']}"),
            (True, f"  resolved config   {s['config']}"),
            (True, f"  MLflow runs       {s['tracking_uri']}   (mlflow ui --backend-store-uri {s['tracking_uri']})")]
    lines = ["valor run: outputs", *[line for keep, line in rows if keep]]
    if s.get("ave"):
        lines.append(f"  AVE accuracies    {s['ave']}  (checkpoints: one folder per loss beside it)")
    if s.get("pictures"):
        lines.append(f"  pictures          {s['pictures']}/demo.png  (the LLP-sim han vs valor table: demo.txt, demo.json)")
    return "\n".join(lines)
