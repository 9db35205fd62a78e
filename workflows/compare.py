"""`valor compare`: training runs side by side, from MLflow (the same store `mlflow ui` shows).

    valor compare [--tracking-uri URI] [--experiment E] [--runs ID ...] [--split val|test|both] [--json]

One row per `valor train` run of the experiment (newest first): run id, name, status, preset, features, labels, teachers,
best epoch, and the final val/test numbers (segment and event level: audio, visual, AV, Type@AV, Event@AV).
`--json` prints a list of runs: {"run_id", "run_name", "status", "start_time", "preset", "features", "labels",
"teachers", "best_epoch", "epochs", "params": {...all params...}, "val": {"segment": {...}, "event": {...}},
"test": {...}}; val/test are null for a run that has not finished.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

from workflows import tracking
from workflows.tracking import DEFAULT_EXPERIMENT, KEYS, LEVELS


def _scores(metrics: dict, prefix: str) -> Optional[dict]:
    out = {lvl: {k: metrics.get(f"{prefix}.{lvl}.{k}") for k in KEYS} for lvl in LEVELS}
    if all(v is None for lvl in out.values() for v in lvl.values()):
        return None
    return {lvl: {k: (round(v, 2) if v is not None else None) for k, v in tab.items()} for lvl, tab in out.items()}


def list_runs(tracking_uri: Optional[str] = None, experiment: str = DEFAULT_EXPERIMENT,
              run_ids: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """The runs of `experiment` (or the given ids) as plain dicts, newest first."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    if not tracking.store_exists(uri):
        if run_ids:
            raise FileNotFoundError(f"no MLflow store at {uri}")
        return []  # nothing tracked yet: nothing to compare (and nothing created)
    c = tracking.client(uri)
    if run_ids:
        runs = [c.get_run(r) for r in run_ids]
    else:
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            return []
        runs = list(c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000))
    out = []
    for r in runs:
        p, m, t = r.data.params, r.data.metrics, r.data.tags
        teachers = t.get("valor.teachers")
        try:
            teachers = json.loads(teachers) if teachers else None
        except ValueError:
            pass
        epochs = m.get("epochs_completed")
        out.append({
            "run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
            "start_time": r.info.start_time, "preset": p.get("preset") or t.get("valor.preset"),
            "features": p.get("data.features"), "labels": p.get("data.labels"), "teachers": teachers,
            "workers": p.get("train.workers"),
            "best_epoch": int(m["best_epoch"]) if "best_epoch" in m else None,
            "epochs": int(epochs) if epochs is not None else None,
            "params": dict(sorted(p.items())),
            "val": _scores(m, "final.val"), "test": _scores(m, "final.test"),
        })
    return out


def format_table(runs: list[dict[str, Any]], splits=("val", "test")) -> str:
    if not runs:
        return "no runs"
    heads = ("A", "V", "AV", "Type", "Event")
    cols = [f"{s}.{lvl[:3]}.{h}" for s in splits for lvl in LEVELS for h in heads]
    lines = ["run       preset   features        labels          ep  " + " ".join(f"{c:>14s}" for c in cols)]
    for r in runs:
        vals = []
        for s in splits:
            for lvl in LEVELS:
                for k in KEYS:
                    v = (r.get(s) or {}).get(lvl, {}).get(k)
                    vals.append(f"{v:14.2f}" if v is not None else f"{'-':>14s}")
        lines.append(f"{r['run_id'][:8]:9s} {str(r['preset'])[:8]:8s} {str(r['features'])[:15]:15s} "
                     f"{str(r['labels'])[:15]:15s} {str(r['best_epoch'] or '-'):>3s} " + " ".join(vals))
    return "\n".join(lines)


def paper_table(scores: dict[str, dict], split: str = "test") -> str:
    """VALOR Table 1's layout: one row per run ({name: {split: {level: {key: F}}}}), segment-level then event-level
    A, V, AV, Type@AV, Event@AV of `split`."""
    heads = ("A", "V", "AV", "Type", "Event")
    width = max([len(n) for n in scores] + [6])
    lines = [f"{split:<{width}s}  " + "  ".join(f"{'segment-level':^34s}" if lvl == "segment" else f"{'event-level':^34s}"
                                                 for lvl in LEVELS),
             f"{'run':<{width}s}  " + "  ".join(" ".join(f"{h:>6s}" for h in heads) for _ in LEVELS)]
    for name, s in scores.items():
        cells = []
        for lvl in LEVELS:
            tab = (s.get(split) or {}).get(lvl) or {}
            cells.append(" ".join(f"{tab[k]:6.2f}" if tab.get(k) is not None else f"{'-':>6s}" for k in KEYS))
        lines.append(f"{name:<{width}s}  " + "  ".join(cells))
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("compare", help="training runs side by side (MLflow): preset, labels, val/test metrics",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="E")
    p.add_argument("--runs", nargs="+", default=None, metavar="ID", help="only these run ids")
    p.add_argument("--split", choices=("val", "test", "both"), default="both", help="table columns (text output)")
    p.add_argument("--json", action="store_true", help="print a JSON list of runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        runs = list_runs(args.tracking_uri, args.experiment, args.runs)
    except Exception as err:  # unreachable server, unknown run id, ...
        print(f"valor compare: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(runs))
    else:
        splits = ("val", "test") if args.split == "both" else (args.split,)
        print(format_table(runs, splits))
    return 0
