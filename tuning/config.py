"""The threshold search's configuration (tuning/thresholds.py), typed. Pure search settings: where Ray runs, where
MLflow is and where Tune keeps its files are the caller's (workflows/tune.py), passed as `TuneResources`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune search of theta^CLAP (audio) / theta^CLIP (visual) on val.

    Objective: "fidelity" = micro F of the harvested labels vs val GT (VALOR Table 3); "official" = per-modality official
    segment-level F of those labels. Searchers: coord (block coordinate ascent: blocks of `classes_per_trial` classes
    as parallel trials, each running exact line searches over its block), optuna (TPE), cmaes (Optuna CMA-ES), exact
    (in-process Dinkelbach, no Tune). Whether labels are ANDed with the weak label is the label config's
    `filter_by_weak` (valor_core.config.LabelConfig): one knob for tune and harvest."""

    LIMITS: ClassVar[dict] = {"classes_per_trial": ">= 1", "passes_per_trial": ">= 1", "max_sweeps": ">= 1",
                              "tol": ">= 0.0", "trials": ">= 1", "grid_points": ">= 2"}

    searcher: Literal["coord", "optuna", "cmaes", "exact"] = "coord"
    objective: Literal["fidelity", "official"] = "fidelity"
    init: Literal["table6", "unified"] = "table6"  # start point of coord / first Optuna point
    classes_per_trial: Optional[int] = None  # coord: classes per trial; None = one block per concurrent slot
    passes_per_trial: int = 10  # coord: Gauss-Seidel passes over its block a trial may run (stops when one gains 0)
    max_sweeps: int = 20  # coord: stop after this many sweeps even if still improving
    tol: float = 1e-6  # coord: a sweep gaining less (F points) ends the search
    trials: int = 200  # optuna / cmaes samples
    grid_points: int = 21  # unified-threshold grid (1st..99th percentile of the candidate logits)
    seed: int = 0


@dataclass(frozen=True)
class TuneResources:
    """How a search uses the Ray it runs on (not part of what it computes, so never hashed)."""

    max_concurrent: Optional[int] = None  # concurrent trials (None = as many as Ray's CPUs allow)
    storage_dir: Optional[str] = None  # Ray Tune experiment dir (None = <tmp>/valor-tune)
