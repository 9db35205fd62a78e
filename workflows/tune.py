"""`valor tune thresholds`: the threshold-search stage -- val logits in, thresholds JSON + MLflow run out.

    valor tune thresholds --logits SOURCE [--annotations DIR] --modality {audio,visual,both}
                          [--searcher coord|optuna|cmaes|exact] [--objective fidelity|official] [--no-filter] [--json]

SOURCE is an extraction output (`valor extract --out URI`: a local dir or `s3://bucket/prefix`, the features Parquet
dataset with `video_id`, `clip_logits` (10x25), `clap_logits` (10x25), `status`) or `sim[:SEED]` (LLP-sim teacher
logits). The val split's videos, weak labels and dense GT come from the LLP annotations in DIR (default: the files
shipped with valor). Audio is tuned on the CLAP logits (theta^CLAP), visual on the CLIP logits (theta^CLIP);
--no-filter tunes for the no-weak-label-filter ablation, and the JSON records which rule it was tuned for
(`filter_by_weak`; `valor harvest` refuses to apply it with the other rule). The searches are tuning/thresholds.py;
malformed logits are rejected before Ray starts. Results: the thresholds JSON (`--out`, default runs/thresholds.json,
local or s3://) and one MLflow run (params, final metrics, per-trial step series, the JSON as an artifact).

With --json the last stdout line is
  {"audio": {"thresholds": [25], "fidelity": F, "official": F}, "visual": {...},
   "paper": {"audio": {"fidelity": F, "official": F}, "visual": {...}},
   "unified": {"audio": {"threshold": t, "fidelity": F, "official": F}, "visual": {...}},
   "exact": {"audio": {"fidelity": F}, ...}, "searcher": ..., "objective": ..., "filter_by_weak": ..., "trials": n,
   "seconds": S}
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any, Optional

from tuning.config import TuneConfig, TuneResources
from tuning.thresholds import SEARCHERS, check_searcher, tune_thresholds
from valor_core.llp import default_annotations
from valor_core.tuning_objective import LogitsError, ThresholdProblem
from workflows import objstore, tracking
from workflows.features import LOGIT_COLUMNS, read_val_logits
from workflows.runtime import start_ray

MODALITIES = ("audio", "visual")


def _log(msg: str) -> None:
    print(f"[tune] {msg}", file=sys.stderr, flush=True)


def load_problems(source: str, annotations: str, modalities=MODALITIES, filter_by_weak: bool = True,
                  storage_opts: Optional[dict] = None) -> dict:
    """The val `ThresholdProblem` of each modality from SOURCE (URI or sim[:SEED]), validated (LogitsError otherwise)."""
    val = read_val_logits(source, annotations, storage_opts)
    return {m: ThresholdProblem.build(getattr(val, LOGIT_COLUMNS[m]), val.weak, getattr(val, f"{m}_gt"),
                                      filter_by_weak, m) for m in modalities}


def tune_and_record(problems: dict, cfg: TuneConfig, *, source: str, out: str, res: TuneResources = TuneResources(),
                    storage_opts: Optional[dict] = None, tracking_uri: Optional[str] = None,
                    experiment: str = "valor-tune", track: bool = True) -> tuple[dict, Optional[str]]:
    """Search, write the thresholds JSON to `out` (local or s3://), log one MLflow run: (summary, MLflow run id)."""
    t0 = time.perf_counter()
    summary = tune_thresholds(problems, cfg, res)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["source"] = source
    logs = summary.pop("_logs")
    text = json.dumps(summary, indent=1)
    objstore.write_bytes(out, (text + "\n").encode(), storage_opts)
    run_id = None
    if track:
        params = {"source": source, "modality": "+".join(problems), "searcher": cfg.searcher,
                  "objective": cfg.objective, "filter_by_weak": summary["filter_by_weak"], "init": cfg.init,
                  "classes_per_trial": cfg.classes_per_trial, "trials": cfg.trials}
        with tempfile.TemporaryDirectory() as d:
            local = os.path.join(d, "thresholds.json")
            with open(local, "w") as fh:
                fh.write(text)
            run_id = mlflow_log({**summary, "_logs": logs}, params, local, tracking_uri, experiment)
    return summary, run_id


def mlflow_log(summary: dict, params: dict, json_path: Optional[str], tracking_uri: Optional[str] = None,
               experiment: str = "valor-tune") -> str:
    """One MLflow run (the parent of the search): params, final metrics (per modality: tuned / paper / unified /
    exact), every Tune phase's trials as step series (`unified.trial.audio`, `search.trial.score`, ...), and the
    thresholds JSON as an artifact. Tracking URI: `tracking_uri`, else $MLFLOW_TRACKING_URI, else runs/mlflow.db."""
    from mlflow.entities import Metric

    uri = tracking.resolve_tracking_uri(tracking_uri)
    run_id = tracking.start_run(uri, experiment, f"tune-thresholds-{summary['searcher']}",
                                {k: str(v) for k, v in params.items()}, tags={"valor.stage": "tune"})
    c = tracking.client(uri)
    final = {"seconds": summary.get("seconds", 0.0), "search_seconds": summary.get("search_seconds", 0.0)}
    for m in MODALITIES:
        if m in summary:
            for kind in ("fidelity", "official"):
                final[f"{m}.tuned.{kind}"] = summary[m][kind]
                final[f"{m}.paper.{kind}"] = summary["paper"][m][kind]
                final[f"{m}.unified.{kind}"] = summary["unified"][m][kind]
            final[f"{m}.exact.fidelity"] = summary["exact"][m]["fidelity"]
            final[f"{m}.unified.threshold"] = summary["unified"][m]["threshold"]
    tracking.log_metrics(uri, run_id, final, c=c)
    now = int(time.time() * 1000)
    for phase, rows in (summary.get("_logs") or {}).items():
        metrics = [Metric(f"{phase}.trial.{k}", float(v), now, step)
                   for step, row in enumerate(rows) for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(metrics), 1000):
            c.log_batch(run_id, metrics=metrics[i:i + 1000])
    if json_path and os.path.exists(json_path):
        c.log_artifact(run_id, json_path)
    tracking.end_run(uri, run_id)
    return run_id


def run(args: argparse.Namespace) -> int:
    cfg = dataclasses.replace(TuneConfig(), **{k: v for k, v in {
        "searcher": args.searcher, "objective": args.objective, "trials": args.trials, "grid_points": args.grid,
        "classes_per_trial": args.classes_per_trial, "max_sweeps": args.max_sweeps, "seed": args.seed,
        "init": args.init}.items() if v is not None})
    res = TuneResources(max_concurrent=args.max_concurrent, storage_dir=args.storage_dir)
    modalities = MODALITIES if args.modality == "both" else (args.modality,)
    try:  # everything is validated before Ray or any trial starts
        check_searcher(cfg.searcher)
        problems = load_problems(args.logits, args.annotations or default_annotations(), modalities,
                                 not args.no_filter)
    except (LogitsError, FileNotFoundError, ValueError) as err:
        print(f"valor tune thresholds: {err}", file=sys.stderr)
        return 2
    n = problems[modalities[0]].logits.shape[0]
    _log(f"{n} val videos, modality {args.modality}, searcher {cfg.searcher}, objective {cfg.objective}")
    out = args.out or os.path.join("runs", "thresholds.json")
    stop = start_ray(args.address, num_cpus=args.num_cpus, log_to_driver=False) if cfg.searcher != "exact" \
        else (lambda: None)
    try:
        summary, run_id = tune_and_record(problems, cfg, source=args.logits, out=out, res=res,
                                          tracking_uri=args.mlflow, experiment=args.experiment,
                                          track=not args.no_mlflow)
    finally:
        stop()
    if run_id:
        _log(f"MLflow run {run_id}")
    _print_table(summary, modalities)
    _log(f"thresholds -> {out}")
    if args.json:
        print(json.dumps(summary))
    return 0


def _print_table(summary: dict, modalities) -> None:
    lines = [f"{'':10s}{'thresholds':>12s}{'fidelity':>10s}{'official':>10s}"]
    for m in modalities:
        lines.append(f"{m}:")
        lines.append(f"  {'Table 6':10s}{'':>10s}{summary['paper'][m]['fidelity']:10.2f}{summary['paper'][m]['official']:10.2f}")
        u = summary["unified"][m]
        lines.append(f"  {'unified':10s}{u['threshold']:10.3f}{u['fidelity']:10.2f}{u['official']:10.2f}")
        lines.append(f"  {'tuned':10s}{'(per class)':>10s}{summary[m]['fidelity']:10.2f}{summary[m]['official']:10.2f}")
        lines.append(f"  {'exact opt':10s}{'(fidelity)':>10s}{summary['exact'][m]['fidelity']:10.2f}")
    print("\n".join(lines), file=sys.stderr)


def register(subparsers: Any) -> None:
    d = TuneConfig()
    tune_p = subparsers.add_parser("tune", help="Ray Tune searches (thresholds)")
    tsub = tune_p.add_subparsers(dest="tune_command", metavar="WHAT")
    p = tsub.add_parser("thresholds", help="search per-class harvesting thresholds against val F",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", default=None, help="dir with the LLP CSVs (AVVP_val_pd.csv, AVVP_eval_*.csv; "
                   "default: $VALOR_ANNOTATIONS, else the LLP files shipped with valor)")
    p.add_argument("--logits", required=True, metavar="SOURCE", help="extraction output URI (dir or s3://) or sim[:SEED]")
    p.add_argument("--modality", choices=("audio", "visual", "both"), default="both",
                   help="tune CLAP (audio), CLIP (visual) thresholds or both (default both)")
    p.add_argument("--searcher", choices=SEARCHERS, default=None, help=f"default {d.searcher}")
    p.add_argument("--objective", choices=("fidelity", "official"), default=None, help=f"default {d.objective}")
    p.add_argument("--no-filter", action="store_true", help="tune for the no-video-label-filter ablation")
    p.add_argument("--init", choices=("table6", "unified"), default=None, help="coord/optuna start point")
    p.add_argument("--trials", type=int, default=None, help=f"optuna/cmaes trials (default {d.trials})")
    p.add_argument("--grid", type=int, default=None, help=f"unified-threshold grid points (default {d.grid_points})")
    p.add_argument("--classes-per-trial", type=int, default=None, help="coord block size (default: one block per "
                   "concurrent trial slot)")
    p.add_argument("--max-sweeps", type=int, default=None, help="coord searcher: stop after this many sweeps over "
                   "the classes (default 20)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of an in-process Ray (default: all)")
    p.add_argument("--max-concurrent", type=int, default=None, help="concurrent trials (default: Ray's CPUs)")
    p.add_argument("--ray-address", dest="address", default=None, metavar="ADDR",
                   help="Ray address (default: RAY_ADDRESS or in-process)")
    p.add_argument("--address", dest="address", help=argparse.SUPPRESS, default=argparse.SUPPRESS)  # the old name
    p.add_argument("--seed", type=int, default=None, help="searcher seed (default: the config's)")
    p.add_argument("--out", default=None, help="thresholds JSON (default runs/thresholds.json)")
    p.add_argument("--tracking-uri", dest="mlflow", default=None, metavar="URI",
                   help="MLflow tracking URI (default sqlite:///<cwd>/runs/mlflow.db)")
    p.add_argument("--mlflow", dest="mlflow", help=argparse.SUPPRESS, default=argparse.SUPPRESS)  # the old name
    p.add_argument("--experiment", default="valor-tune", help="MLflow experiment (default %(default)s)")
    p.add_argument("--no-mlflow", action="store_true", help="do not track the search in MLflow")
    p.add_argument("--storage-dir", default=None, help="Ray Tune storage (default <tmp>/valor-tune)")
    p.add_argument("--json", action="store_true", help="last stdout line: the summary as JSON")
    p.set_defaults(func=run)
    tune_p.set_defaults(func=lambda a: (tune_p.print_help(), 2)[1])
