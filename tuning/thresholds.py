"""Ray Tune searches for VALOR's per-class harvesting thresholds against validation F (a library: no CLI, no MLflow,
no Ray start-up -- workflows/tune.py is the `valor tune thresholds` stage over it).

    tune_thresholds({modality: ThresholdProblem}, TuneConfig, TuneResources) -> summary dict

Problems (valor_core/tuning_objective.py) hold one modality's val logits, weak labels, dense GT and whether labels are
ANDed with the weak label. Objective: "fidelity" (default) = micro F of the harvested labels (z > theta) AND y against
val GT (VALOR Table 3); "official" = the official segment-level F of those labels as that modality's predictions.

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
side.

Summary: {"audio": {"thresholds": [25], "fidelity": F, "official": F}, "visual": {...},
          "paper": {"audio": {"fidelity": F, "official": F}, ...}, "unified": {"audio": {"threshold": t, ...}, ...},
          "exact": {"audio": {"fidelity": F}, ...}, "searcher", "objective", "filter_by_weak", "trials",
          "search_seconds", "_logs": per-phase trial rows (for MLflow step series)}
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any, Optional

import numpy as np

from tuning.config import TuneConfig, TuneResources
from valor_core.classes import CLAP_THRESHOLDS, CLIP_THRESHOLDS
from valor_core.tuning_objective import blocks

SEARCHERS = ("coord", "optuna", "cmaes", "exact")


def paper_thresholds(modality: str) -> np.ndarray:
    return np.asarray(CLAP_THRESHOLDS if modality == "audio" else CLIP_THRESHOLDS, np.float64)


# --- Ray Tune ----------------------------------------------------------------------------------------------------------


def _run_config(res: TuneResources, name: str, callbacks=None):
    from ray import tune

    storage = res.storage_dir or os.path.join(tempfile.gettempdir(), "valor-tune")
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


# Ray Tune copies these from the driver's environment into every trial actor's runtime_env, which Ray then logs in
# plain text (ray/tune/execution/class_cache.py). Trials here read nothing from S3, so the search runs without them.
TUNE_COPIES_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def _fit(tuner) -> None:
    """tuner.fit() with TUNE_ENV set and the credentials Tune would copy into trial runtime_envs unset, only for the
    call (other Tune/Train users in the process keep their environment)."""
    keys = (*TUNE_ENV, *TUNE_COPIES_CREDENTIALS)
    old = {k: os.environ.get(k) for k in keys}
    for k, v in TUNE_ENV.items():
        os.environ.setdefault(k, v)
    for k in TUNE_COPIES_CREDENTIALS:
        os.environ.pop(k, None)
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


def _slots(res: TuneResources) -> int:
    import ray

    if res.max_concurrent:
        return int(res.max_concurrent)
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


def search_coord(problems: dict, init: dict, cfg: TuneConfig,
                 res: TuneResources = TuneResources()) -> tuple[dict, list]:
    """Block coordinate ascent as Tune trials (see the module doc). Block size: `classes_per_trial`, or by default
    the concurrent trial slots shared by the modalities (2 CPUs, 2 modalities: one 25-class block each)."""
    from ray import tune

    _quiet_tune_env()
    slots = _slots(res)
    per_mod = max(1, slots // max(1, len(problems)))
    num_classes = next(iter(problems.values())).num_classes
    block = cfg.classes_per_trial or math.ceil(num_classes / per_mod)
    searcher = _make_coordinate_searcher(problems, init, cfg.objective, block, cfg.max_sweeps, cfg.tol,
                                         cfg.passes_per_trial)
    tuner = tune.Tuner(
        tune.with_parameters(_block_trial, problems=problems),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=slots,
                                    reuse_actors=True),
        run_config=_run_config(res, "coord"))
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


def search_optuna(problems: dict, init: dict, cfg: TuneConfig, algo: str = "tpe",
                  res: TuneResources = TuneResources()) -> tuple[dict, list]:
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
        tune_config=tune.TuneConfig(search_alg=alg, num_samples=cfg.trials, max_concurrent_trials=_slots(res),
                                    reuse_actors=True),
        run_config=_run_config(res, algo, [collect]))
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


def search_unified(problems: dict, cfg: TuneConfig, res: TuneResources = TuneResources()) -> tuple[dict, list]:
    """Tune grid over one threshold per modality (grid point i of each modality's own range in each trial)."""
    from ray import tune

    _quiet_tune_env()
    grids = {m: prob.unified_grid(cfg.grid_points) for m, prob in problems.items()}
    collect = _collector()
    tuner = tune.Tuner(
        tune.with_parameters(_grid_trial, problems=problems, grids=grids, objective=cfg.objective),
        param_space={"i": tune.grid_search(list(range(cfg.grid_points)))},
        tune_config=tune.TuneConfig(metric="score", mode="max", max_concurrent_trials=_slots(res), reuse_actors=True),
        run_config=_run_config(res, "unified", [collect]))
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


def tune_thresholds(problems: dict, cfg: TuneConfig, res: TuneResources = TuneResources(),
                    searcher: Optional[str] = None) -> dict:
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
        unified, logs["unified"] = search_unified(problems, cfg, res)
        out["unified_seconds"] = round(time.perf_counter() - t1, 3)
    out["unified"] = {m: {"threshold": round(unified[m]["threshold"], 6),
                          **_scores(p, np.full(p.num_classes, unified[m]["threshold"]))} for m, p in problems.items()}
    init = {m: paper[m] if cfg.init == "table6" else np.full(problems[m].num_classes, unified[m]["threshold"])
            for m in problems}
    t1 = time.perf_counter()
    if searcher == "exact":
        best = {m: {"thresholds": exact[m][0], "score": exact[m][1]} for m in problems}
    elif searcher == "coord":
        best, logs["search"] = search_coord(problems, init, cfg, res)
    else:
        best, logs["search"] = search_optuna(problems, init, cfg, "cmaes" if searcher == "cmaes" else "tpe", res)
    out["search_seconds"] = round(time.perf_counter() - t1, 3)
    for m, p in problems.items():
        th = np.asarray(best[m]["thresholds"], np.float64)
        out[m] = {"thresholds": [round(float(t), 6) for t in th], **_scores(p, th)}
        if "sweeps" in best[m]:
            out[m]["sweeps"] = best[m]["sweeps"]
    filters = {bool(p.filter_by_weak) for p in problems.values()}
    if len(filters) != 1:
        raise ValueError("the problems disagree on filter_by_weak: tune both modalities with the same label rule")
    out["searcher"], out["objective"], out["filter_by_weak"] = searcher, cfg.objective, filters.pop()
    out["trials"] = len(logs.get("search", [])) + len(logs.get("unified", []))
    out["_logs"] = logs
    return out
