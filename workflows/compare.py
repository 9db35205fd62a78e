"""`valor compare`: training runs side by side, from MLflow (the same store `mlflow ui` shows).

    valor compare [--tracking-uri URI] [--experiment E] [--runs ID ...] [--split val|test|both] [--json]
                                                         text: one block per split within 120 columns
    valor compare --experiment E --table [--out DIR]     every finished run in VALOR's Table 1 layout, printed and
                                                         written as DIR/<E>.md and DIR/<E>.png (default runs/compare)

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


class CompareError(ValueError):
    """What the user asked to compare does not exist; the message names what does."""


def _scores(metrics: dict, prefix: str) -> Optional[dict]:
    out = {lvl: {k: metrics.get(f"{prefix}.{lvl}.{k}") for k in KEYS} for lvl in LEVELS}
    if all(v is None for lvl in out.values() for v in lvl.values()):
        return None
    return {lvl: {k: (round(v, 2) if v is not None else None) for k, v in tab.items()} for lvl, tab in out.items()}


def list_runs(tracking_uri: Optional[str] = None, experiment: str = DEFAULT_EXPERIMENT,
              run_ids: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """The runs of `experiment` (or the given ids) as plain dicts, newest first; CompareError naming the experiments
    of the store when `experiment` is not one of them."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    if not tracking.store_exists(uri):
        if run_ids:
            raise FileNotFoundError(f"no MLflow store at {uri}")
        return []  # nothing tracked yet: nothing to compare (and nothing created)
    c = tracking.client(uri)
    tracking.close_dead_runs(uri, c)  # a run whose valor process was killed is KILLED, not RUNNING forever
    if run_ids:
        runs = [c.get_run(r) for r in run_ids]
    else:
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in c.search_experiments())
            raise CompareError(f"--experiment {experiment!r}: no such experiment in {uri} (it has: "
                               f"{', '.join(names) or 'none'})")
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
    """One block per split, each within 120 columns: run id, preset, features, labels, best epoch, then segment- and
    event-level A, V, AV, Type@AV, Event@AV (full names and values: --json, --table's Markdown)."""
    if not runs:
        return "no runs"
    heads = ("A", "V", "AV", "Type", "Event")
    blocks = []
    for s in splits:
        lines = [f"{s:<50s}" + "".join(f"{lvl + '-level':^30s}" for lvl in LEVELS).rstrip(),
                 f"{'run':9s}{'preset':9s}{'features':14s} {'labels':14s} {'ep':>2s}"
                 + "".join(f"{h:>6s}" for _ in LEVELS for h in heads)]
        for r in runs:
            vals = [(r.get(s) or {}).get(lvl, {}).get(k) for lvl in LEVELS for k in KEYS]
            lines.append(f"{r['run_id'][:8]:9s}{str(r['preset'])[:8]:9s}{str(r['features'])[:14]:14s} "
                         f"{str(r['labels'])[:14]:14s} {str(r['best_epoch'] or '-'):>2s}"
                         + "".join(f"{v:6.2f}" if v is not None else f"{'-':>6s}" for v in vals))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


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


def table_scores(runs: list[dict[str, Any]]) -> dict[str, dict]:
    """{row name: {"val": ..., "test": ...}} of the finished runs (oldest first), named by run name (else id)."""
    out: dict[str, dict] = {}
    for r in reversed(runs):
        if r.get("val") is None and r.get("test") is None:
            continue
        name = str(r.get("run_name") or r["run_id"][:8])
        if name in out:
            name = f"{name} ({r['run_id'][:8]})"
        out[name] = {"val": r.get("val"), "test": r.get("test")}
    return out


def markdown_table(scores: dict[str, dict], splits=("val", "test")) -> str:
    """The Table 1 layout as Markdown: a row per run and split, segment- then event-level F."""
    heads = [f"{lvl[:3]}. {h}" for lvl in LEVELS for h in ("A", "V", "AV", "Type@AV", "Event@AV")]
    lines = ["| run | split | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads)]
    for name, s in scores.items():
        for split in splits:
            cells = [(s.get(split) or {}).get(lvl, {}).get(k) for lvl in LEVELS for k in KEYS]
            lines.append(f"| {name} | {split} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(scores: dict[str, dict], out_dir: str, name: str) -> tuple[str, str]:
    """DIR/<name>.md and DIR/<name>.png of the Table 1 layout; returns their paths."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    md, png = os.path.join(out_dir, f"{name}.md"), os.path.join(out_dir, f"{name}.png")
    with open(md, "w") as fh:
        fh.write(f"# {name}\n\n" + markdown_table(scores))
    cols = ["run", "split"] + [f"{lvl[:3]}. {h}" for lvl in LEVELS for h in ("A", "V", "AV", "Type", "Event")]
    rows = [[n, split] + ["-" if v is None else f"{v:.2f}" for v in
                          ((s.get(split) or {}).get(lvl, {}).get(k) for lvl in LEVELS for k in KEYS)]
            for n, s in scores.items() for split in ("val", "test")]
    fig, ax = plt.subplots(figsize=(14, 0.6 + 0.32 * max(1, len(rows))))
    ax.axis("off")
    tab = ax.table(cellText=rows or [["-"] * len(cols)], colLabels=cols, loc="center", cellLoc="right")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    tab.auto_set_column_width(list(range(len(cols))))
    ax.set_title(f"{name}: segment- and event-level F (VALOR Table 1 layout)", fontsize=9)
    fig.savefig(png, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return md, png


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("compare", help="training runs side by side (MLflow): preset, labels, val/test metrics",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="E",
                   help="MLflow experiment (default: %(default)s; a name the store does not have lists those it has)")
    p.add_argument("--runs", nargs="+", default=None, metavar="ID", help="only these run ids")
    p.add_argument("--split", choices=("val", "test", "both"), default="both", help="table columns (text output)")
    p.add_argument("--json", action="store_true", help="print a JSON list of runs")
    p.add_argument("--table", action="store_true", help="every finished run in VALOR's Table 1 layout (val and "
                   "test), printed and written as DIR/<experiment>.md and .png")
    p.add_argument("--out", default="runs/compare", metavar="DIR", help="where --table writes (default runs/compare)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        runs = list_runs(args.tracking_uri, args.experiment, args.runs)
    except CompareError as err:
        print(f"valor compare: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # unreachable server, unknown run id, ...
        print(f"valor compare: error: {err}", file=sys.stderr)
        return 1
    if args.table:
        scores = table_scores(runs)
        print("\n\n".join(paper_table(scores, split) for split in ("val", "test")))
        md, png = write_table(scores, args.out, args.experiment)
        print(f"valor compare: {len(scores)} run(s) -> {md}, {png}")
        if args.json:
            print(json.dumps({"runs": len(scores), "markdown": md, "png": png}))
    elif args.json:
        print(json.dumps(runs))
    else:
        splits = ("val", "test") if args.split == "both" else (args.split,)
        print(format_table(runs, splits))
    return 0
