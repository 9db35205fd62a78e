"""`valor tune thresholds`: Ray Tune searches for VALOR's per-class harvesting thresholds against validation F.

    valor tune thresholds --annotations DIR --logits SOURCE --modality {audio,visual,both}
                          [--searcher coord|optuna|cmaes|exact] [--objective fidelity|official] [--json]

SOURCE is an extraction output (`valor extract --out URI`: a local dir or `s3://bucket/prefix`, the features Parquet
dataset with `video_id`, `clip_logits` (10x25), `clap_logits` (10x25), `status`) or `sim[:SEED]` (LLP-sim teacher
logits). The val split's videos, weak labels and dense GT come from the LLP annotations in DIR. Audio is tuned on the CLAP
logits (theta^CLAP), visual on the CLIP logits (theta^CLIP).

Objective (valor_core/tuning_objective.py): "fidelity" (default) = micro F of the harvested labels (z > theta) AND y
against val GT (VALOR Table 3); "official" = the official segment-level F of those labels as that modality's predictions.

Searchers, all driven by Ray Tune (one Tuner each; trials receive the val arrays once through the object store):
  coord   (default) block coordinate ascent. Each trial takes a block of classes of one modality and runs exact 1-D line
          searches over every distinct logit value of each class in turn, with the other thresholds fixed; a custom
          Tune Searcher merges finished blocks (kept only when they still improve the current thresholds), and starts
          another sweep until one gains nothing. The objective is nearly separable by class (fidelity is a ratio of
          per-class sums), so blocks run as parallel trials; for fidelity the fixed point is the exact optimum.
  optuna  Optuna TPE over all 25 (x2) thresholds via ray.tune.search.optuna.OptunaSearch (generic baseline).
  cmaes   Optuna CMA-ES, same space.
  exact   no Tune: the exact fidelity optimum (Dinkelbach) in-process, for reference.
Plus always: a Tune grid over one unified threshold per modality, and the paper's Table 6 thresholds, evaluated side by
side. Results: one MLflow parent run (params, final metrics, per-trial metrics as step series, the JSON as an artifact)
and a thresholds JSON file (`--out`, default runs/thresholds.json) that `valor harvest --thresholds` reads.

With --json the last stdout line is
  {"audio": {"thresholds": [25], "fidelity": F, "official": F}, "visual": {...},
   "paper": {"audio": {"fidelity": F, "official": F}, "visual": {...}},
   "unified": {"audio": {"threshold": t, "fidelity": F, "official": F}, "visual": {...}},
   "exact": {"audio": {"fidelity": F}, ...}, "searcher": ..., "objective": ..., "trials": n, "seconds": S}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Optional

import numpy as np

from valor_core.config import TuneConfig

MODALITIES = ("audio", "visual")
TEACHER = {"audio": "clap", "visual": "clip"}  # audio <- CLAP logits, visual <- CLIP logits
SEARCHERS = ("coord", "optuna", "cmaes", "exact")


def _log(msg: str) -> None:
    print(f"[tune] {msg}", file=sys.stderr, flush=True)


# --- inputs -----------------------------------------------------------------------------------------------------------


def load_problems(source: str, annotations: str, modalities=MODALITIES, filter_by_weak: bool = True,
                  storage_opts: Optional[dict] = None) -> dict:
    """The val `ThresholdProblem` of each modality from SOURCE (URI or sim[:SEED]), validated (LogitsError otherwise)."""
    from valor_core.tuning_objective import ThresholdProblem
    from workflows.harvest import read_val_logits

    val = read_val_logits(source, annotations, storage_opts)
    return {m: ThresholdProblem.build(getattr(val, f"{TEACHER[m]}_logits"), val.weak, getattr(val, f"{m}_gt"),
                                      filter_by_weak, m) for m in modalities}


def paper_thresholds(modality: str) -> np.ndarray:
    from valor_core.classes import CLAP_THRESHOLDS, CLIP_THRESHOLDS

    return np.asarray(CLAP_THRESHOLDS if modality == "audio" else CLIP_THRESHOLDS, np.float64)


# --- Ray Tune ----------------------------------------------------------------------------------------------------------


def _ray_init(cfg: TuneConfig):
    """Start (or join) Ray; returns the function that undoes it (a no-op when Ray was already up)."""
    import ray

    if ray.is_initialized():
        return lambda: None
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=False)
    return ray.shutdown


def _run_config(cfg: TuneConfig, name: str, callbacks=None):
    from ray import tune

    storage = cfg.storage_dir or os.path.join(tempfile.gettempdir(), "valor-tune")
    return tune.RunConfig(name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                          storage_path=os.path.abspath(storage), verbose=0, log_to_file=False,
                          callbacks=callbacks)


TUNE_ENV = {
    # per-trial CSV/JSON/TensorBoard loggers cost more than these trials (results come through a callback instead)
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",  # the classic reporter honours verbose=0: stdout stays clean for --json
}


def _quiet_tune_env() -> None:
    import logging

    for name in ("ray.tune.analysis.experiment_analysis", "ray.tune.search.searcher", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _fit(tuner) -> None:
    """tuner.fit() with TUNE_ENV set only for the call (other Tune/Train users in the process keep their loggers)."""
    old = {k: os.environ.get(k) for k in TUNE_ENV}
    for k, v in TUNE_ENV.items():
        os.environ.setdefault(k, v)
    try:
        tuner.fit()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _collector():
    """A Tune callback keeping (config, last result) of every finished trial, in completion order."""
    from ray import tune

    class Collect(tune.Callback):
        def __init__(self):
            self.rows: list[tuple[dict, dict]] = []
            self._last: dict[str, dict] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._last[trial.trial_id] = result

        def on_trial_complete(self, iteration, trials, trial, **info):
            if trial.trial_id in self._last:
                self.rows.append((dict(trial.config), self._last.pop(trial.trial_id)))

    return Collect()


def _slots(cfg: TuneConfig) -> int:
    import ray

    if cfg.max_concurrent:
        return int(cfg.max_concurrent)
    return max(1, int(ray.available_resources().get("CPU", ray.cluster_resources().get("CPU", 1))))


def _block_trial(config: dict, problems: dict) -> dict:
    """One coord trial: exact line searches over a block of classes of one modality, other thresholds fixed."""
    prob = problems[config["modality"]]
    classes = list(config["classes"])
    th, score = prob.block_update(np.asarray(config["thresholds"], np.float64), classes, config["objective"],
                                  passes=config["passes"])
    return {"score": float(score), "block": [float(th[c]) for c in classes]}


def _make_coordinate_searcher(problems: dict, init: dict, objective: str, block_size: int, max_sweeps: int,
                              tol: float, passes: int = 1):
    from ray.tune.search import Searcher

    class CoordinateSearcher(Searcher):
        """Hands out (modality, class block) jobs with the current thresholds; merges finished blocks when they still
        improve the current score; a sweep = every block of a modality once; stops a modality after a sweep that gains
        less than `tol` (or after `max_sweeps`)."""

        def __init__(self):
            super().__init__(metric="score", mode="max")
            from valor_core.tuning_objective import blocks

            self.state = {}
            for m, prob in problems.items():
                th = np.asarray(init[m], np.float64).copy()
                self.state[m] = {"th": th, "score": prob.score(th, objective), "queue": [],
                                 "blocks": blocks(prob.num_classes, block_size), "inflight": 0, "sweep": 0,
                                 "gained": 0.0, "done": False, "history": []}
                self._refill(m)
            self.pending: dict[str, tuple[str, list[int]]] = {}
            self.errors = 0
            self.log: list[dict] = []
            self._rr = 0

        def _refill(self, m: str) -> None:
            s = self.state[m]
            s["sweep"] += 1
            s["gained"] = 0.0
            s["queue"] = [list(b) for b in s["blocks"]]
            s["history"].append(s["score"])

        def suggest(self, trial_id: str):
            mods = [m for m in self.state if not self.state[m]["done"]]
            if not mods:
                return Searcher.FINISHED
            for i in range(len(mods)):  # round-robin over modalities with work queued
                m = mods[(self._rr + i) % len(mods)]
                s = self.state[m]
                if s["queue"]:
                    self._rr += 1
                    block = s["queue"].pop(0)
                    s["inflight"] += 1
                    self.pending[trial_id] = (m, block)
                    return {"modality": m, "classes": block, "thresholds": s["th"].tolist(),
                            "objective": objective, "sweep": s["sweep"], "passes": passes}
            return None  # everything queued is in flight: wait for results

        def save(self, checkpoint_path: str) -> None:  # nothing worth resuming: a search takes seconds
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

        def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
            if trial_id not in self.pending:
                return
            m, block = self.pending.pop(trial_id)
            s = self.state[m]
            s["inflight"] -= 1
            accepted = False
            if error:
                self.errors += 1
            if not error and result and "block" in result:
                cand = s["th"].copy()
                cand[block] = result["block"]
                new = problems[m].score(cand, objective)  # re-scored: other blocks may have moved meanwhile
                if new > s["score"] + 1e-12:
                    s["gained"] += new - s["score"]
                    s["th"], s["score"], accepted = cand, new, True
                elif result["score"] > s["score"] + tol:  # stale snapshot: improvement exists, retry next sweep
                    s["gained"] += tol
            self.log.append({m: s["score"], "first_class": block[0], "accepted": int(accepted)})
            if not s["queue"] and s["inflight"] == 0:
                if s["gained"] < tol or s["sweep"] >= max_sweeps:
                    s["done"] = True
                    s["history"].append(s["score"])
                else:
                    self._refill(m)

    return CoordinateSearcher()


def search_coord(problems: dict, init: dict, cfg: TuneConfig) -> tuple[dict, list]:
    """Block coordinate ascent as Tune trials (see the module doc). Block size: `classes_per_trial`, or by default
    the concurrent trial slots shared by the modalities (2 CPUs, 2 modalities: one 25-class block each)."""
    import math

    from ray import tune

    _quiet_tune_env()
    slots = _slots(cfg)
    per_mod = max(1, slots // max(1, len(problems)))
    num_classes = next(iter(problems.values())).num_classes
    block = cfg.classes_per_trial or math.ceil(num_classes / per_mod)
    searcher = _make_coordinate_searcher(problems, init, cfg.objective, block, cfg.max_sweeps, cfg.tol,
                                         cfg.passes_per_trial)
    tuner = tune.Tuner(
        tune.with_parameters(_block_trial, problems=problems),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=slots,
                                    reuse_actors=True),
        run_config=_run_config(cfg, "coord"))
    _fit(tuner)
    if searcher.errors:
        raise RuntimeError(f"coord search: {searcher.errors} trial(s) failed (see the Tune errors above)")
    best = {m: {"thresholds": s["th"], "score": s["score"], "sweeps": s["sweep"]} for m, s in searcher.state.items()}
    return best, searcher.log


def _optuna_trial(config: dict, problems: dict, objective: str) -> dict:
    out = {}
    for m, prob in problems.items():
        th = np.array([config[f"{m}_{c:02d}"] for c in range(prob.num_classes)], np.float64)
        out[m] = prob.score(th, objective)
    out["score"] = float(np.mean([out[m] for m in problems]))
    return out


def search_optuna(problems: dict, init: dict, cfg: TuneConfig, algo: str = "tpe") -> tuple[dict, list]:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    _quiet_tune_env()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, start = {}, {}
    for m, prob in problems.items():
        lo, hi = prob.bounds()
        for c in range(prob.num_classes):
            key = f"{m}_{c:02d}"
            space[key] = tune.uniform(float(lo[c]), float(hi[c]))
            start[key] = float(np.clip(init[m][c], lo[c], hi[c]))
    sampler = (optuna.samplers.CmaEsSampler(seed=cfg.seed, x0=start) if algo == "cmaes"
               else optuna.samplers.TPESampler(seed=cfg.seed))
    alg = OptunaSearch(metric="score", mode="max", sampler=sampler,
                       points_to_evaluate=[start] if algo != "cmaes" else None)
    collect = _collector()
    tuner = tune.Tuner(
        tune.with_parameters(_optuna_trial, problems=problems, objective=cfg.objective),
        param_space=space,
        tune_config=tune.TuneConfig(search_alg=alg, num_samples=cfg.trials, max_concurrent_trials=_slots(cfg),
                                    reuse_actors=True),
        run_config=_run_config(cfg, algo, [collect]))
    _fit(tuner)
    best, log = {}, []
    if len(collect.rows) < cfg.trials:
        raise RuntimeError(f"{algo} search: only {len(collect.rows)} of {cfg.trials} trials finished "
                           "(see the Tune errors above)")
    for config, metrics in collect.rows:
        log.append({m: metrics[m] for m in problems} | {"score": metrics["score"]})
        for m, prob in problems.items():  # modalities are independent: best of each, possibly from different trials
            if m not in best or metrics[m] > best[m]["score"]:
                th = np.array([config[f"{m}_{c:02d}"] for c in range(prob.num_classes)], np.float64)
                best[m] = {"thresholds": th, "score": float(metrics[m])}
    return best, log


def _grid_trial(config: dict, problems: dict, grids: dict, objective: str) -> dict:
    out = {}
    for m, prob in problems.items():
        t = float(grids[m][config["i"]])
        out[f"{m}_threshold"] = t
        out[m] = prob.score(np.full(prob.num_classes, t), objective)
    out["score"] = float(np.mean([out[m] for m in problems]))
    return out


def search_unified(problems: dict, cfg: TuneConfig) -> tuple[dict, list]:
    """Tune grid over one threshold per modality (grid point i of each modality's own range in each trial)."""
    from ray import tune

    _quiet_tune_env()
    grids = {m: prob.unified_grid(cfg.grid_points) for m, prob in problems.items()}
    collect = _collector()
    tuner = tune.Tuner(
        tune.with_parameters(_grid_trial, problems=problems, grids=grids, objective=cfg.objective),
        param_space={"i": tune.grid_search(list(range(cfg.grid_points)))},
        tune_config=tune.TuneConfig(metric="score", mode="max", max_concurrent_trials=_slots(cfg), reuse_actors=True),
        run_config=_run_config(cfg, "unified", [collect]))
    _fit(tuner)
    best, log = {}, []
    for config, metrics in sorted(collect.rows, key=lambda r: r[0]["i"]):
        log.append({k: metrics[k] for k in metrics if k in problems or k.endswith("_threshold")})
        for m in problems:
            if m not in best or metrics[m] > best[m]["score"]:
                best[m] = {"threshold": float(metrics[f"{m}_threshold"]), "score": float(metrics[m])}
    if len(collect.rows) < cfg.grid_points:
        raise RuntimeError(f"unified grid: only {len(collect.rows)} of {cfg.grid_points} trials finished "
                           "(see the Tune errors above)")
    return best, log


# --- the whole command --------------------------------------------------------------------------------------------------


def _scores(prob, th) -> dict:
    return {"fidelity": round(prob.fidelity(th), 4), "official": round(prob.official(th), 4)}


def check_searcher(searcher: str) -> None:
    """ValueError now (before Ray or any trial) when a searcher is unknown or its package is missing."""
    import importlib.util

    if searcher not in SEARCHERS:
        raise ValueError(f"unknown searcher {searcher!r}; expected one of {', '.join(SEARCHERS)}")
    if searcher == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ValueError("searcher cmaes needs the `cmaes` package (Optuna's CmaEsSampler): pip install cmaes; "
                         "or use --searcher optuna (TPE)")


def tune_thresholds(problems: dict, cfg: TuneConfig, searcher: Optional[str] = None) -> dict:
    """Run the searches on validated problems (Ray must be reachable unless searcher == 'exact'); the summary dict."""
    searcher = searcher or cfg.searcher
    check_searcher(searcher)
    out: dict[str, Any] = {}
    paper = {m: paper_thresholds(m) for m in problems}
    out["paper"] = {m: _scores(p, paper[m]) for m, p in problems.items()}
    exact = {m: p.exact_optimum(paper[m]) for m, p in problems.items()}
    out["exact"] = {m: {"fidelity": round(exact[m][1], 4)} for m in problems}
    logs: dict[str, list] = {}
    if searcher == "exact":
        unified = {m: dict(zip(("threshold", "score"), p.exact_unified())) for m, p in problems.items()}
    else:
        t1 = time.perf_counter()
        unified, logs["unified"] = search_unified(problems, cfg)
        out["unified_seconds"] = round(time.perf_counter() - t1, 3)
    out["unified"] = {m: {"threshold": round(unified[m]["threshold"], 6),
                          **_scores(p, np.full(p.num_classes, unified[m]["threshold"]))} for m, p in problems.items()}
    init = {m: paper[m] if cfg.init == "table6" else np.full(problems[m].num_classes, unified[m]["threshold"])
            for m in problems}
    t1 = time.perf_counter()
    if searcher == "exact":
        best = {m: {"thresholds": exact[m][0], "score": exact[m][1]} for m in problems}
    elif searcher == "coord":
        best, logs["search"] = search_coord(problems, init, cfg)
    else:
        best, logs["search"] = search_optuna(problems, init, cfg, "cmaes" if searcher == "cmaes" else "tpe")
    out["search_seconds"] = round(time.perf_counter() - t1, 3)
    for m, p in problems.items():
        th = np.asarray(best[m]["thresholds"], np.float64)
        out[m] = {"thresholds": [round(float(t), 6) for t in th], **_scores(p, th)}
        if "sweeps" in best[m]:
            out[m]["sweeps"] = best[m]["sweeps"]
    out["searcher"], out["objective"], out["filter_by_weak"] = searcher, cfg.objective, cfg.filter_by_weak
    out["trials"] = len(logs.get("search", [])) + len(logs.get("unified", []))
    out["_logs"] = logs
    return out


def mlflow_log(summary: dict, cfg: TuneConfig, params: dict, json_path: Optional[str]) -> str:
    """One MLflow run (the parent of the search): params, final metrics (per modality: tuned / paper / unified /
    exact), every Tune phase's trials as step series (`unified.trial.audio`, `search.trial.score`, ...), and the
    thresholds JSON as an artifact. Tracking URI: cfg.mlflow_uri, else $MLFLOW_TRACKING_URI, else runs/mlflow.db."""
    from mlflow.entities import Metric

    from workflows import tracking

    uri = tracking.resolve_tracking_uri(cfg.mlflow_uri)
    run_id = tracking.start_run(uri, cfg.experiment, f"tune-thresholds-{summary['searcher']}",
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
    import dataclasses

    from valor_core.tuning_objective import LogitsError

    t0 = time.perf_counter()
    cfg = TuneConfig()
    over = {k: v for k, v in {
        "searcher": args.searcher, "objective": args.objective, "trials": args.trials, "grid_points": args.grid,
        "classes_per_trial": args.classes_per_trial, "max_sweeps": args.max_sweeps, "num_cpus": args.num_cpus,
        "max_concurrent": args.max_concurrent, "mlflow_uri": args.mlflow, "experiment": args.experiment,
        "storage_dir": args.storage_dir, "seed": args.seed, "init": args.init, "ray_address": args.address,
    }.items() if v is not None}
    if args.no_filter:
        over["filter_by_weak"] = False
    cfg = dataclasses.replace(cfg, **over)
    modalities = MODALITIES if args.modality == "both" else (args.modality,)
    try:  # everything is validated before Ray or any trial starts
        check_searcher(cfg.searcher)
        problems = load_problems(args.logits, args.annotations, modalities, cfg.filter_by_weak)
    except (LogitsError, FileNotFoundError, ValueError) as err:
        print(f"valor tune thresholds: {err}", file=sys.stderr)
        return 2
    n = problems[modalities[0]].logits.shape[0]
    _log(f"{n} val videos, modality {args.modality}, searcher {cfg.searcher}, objective {cfg.objective}")
    stop = _ray_init(cfg) if cfg.searcher != "exact" else (lambda: None)
    try:
        summary = tune_thresholds(problems, cfg)
    finally:
        stop()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["source"] = args.logits
    logs = summary.pop("_logs")
    out_path = args.out or os.path.join("runs", "thresholds.json")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as fh:
        json.dump(summary, fh, indent=1)
    if not args.no_mlflow:
        summary["_logs"] = logs
        try:
            run_id = mlflow_log(summary, cfg, {"source": args.logits, "modality": args.modality,
                                                "searcher": cfg.searcher, "objective": cfg.objective,
                                                "filter_by_weak": cfg.filter_by_weak, "init": cfg.init,
                                                "classes_per_trial": cfg.classes_per_trial, "trials": cfg.trials},
                                 out_path)
            _log(f"MLflow run {run_id}")
        finally:
            summary.pop("_logs", None)
    _print_table(summary, modalities)
    _log(f"thresholds -> {out_path}")
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
                        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True, help="dir with the LLP CSVs (AVVP_val_pd.csv, AVVP_eval_*.csv)")
    p.add_argument("--logits", required=True, metavar="SOURCE", help="extraction output URI (dir or s3://) or sim[:SEED]")
    p.add_argument("--modality", choices=("audio", "visual", "both"), default="both")
    p.add_argument("--searcher", choices=SEARCHERS, default=None, help=f"default {d.searcher}")
    p.add_argument("--objective", choices=("fidelity", "official"), default=None, help=f"default {d.objective}")
    p.add_argument("--no-filter", action="store_true", help="tune for the no-video-label-filter ablation")
    p.add_argument("--init", choices=("table6", "unified"), default=None, help="coord/optuna start point")
    p.add_argument("--trials", type=int, default=None, help=f"optuna/cmaes trials (default {d.trials})")
    p.add_argument("--grid", type=int, default=None, help=f"unified-threshold grid points (default {d.grid_points})")
    p.add_argument("--classes-per-trial", type=int, default=None, help=f"coord block size (default {d.classes_per_trial})")
    p.add_argument("--max-sweeps", type=int, default=None)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of an in-process Ray (default: all)")
    p.add_argument("--max-concurrent", type=int, default=None, help="concurrent trials (default: Ray's CPUs)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or in-process)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="thresholds JSON (default runs/thresholds.json)")
    p.add_argument("--mlflow", default=None, metavar="URI", help="tracking URI (default sqlite:///<cwd>/runs/mlflow.db)")
    p.add_argument("--experiment", default=None, help=f"MLflow experiment (default {d.experiment})")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--storage-dir", default=None, help="Ray Tune storage (default <tmp>/valor-tune)")
    p.add_argument("--json", action="store_true", help="last stdout line: the summary as JSON")
    p.set_defaults(func=run)
    tune_p.set_defaults(func=lambda a: (tune_p.print_help(), 2)[1])
