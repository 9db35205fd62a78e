"""Which label refinement a `valor run` config needs, and which labels each of its training runs reads.

    a run's loss     needs                                                  trains on
    ma-refined       labeler stage: MA stage 1 (refine.ma_stage1)           <output>/ma_labels   (`valor refine ma`)
                     refine stage:  the track swap with that model
    lsld             refine stage:  captions scored by the teachers'        <output>/lsld_labels (`valor refine lsld`)
                                    text towers (refine.lsld)
    anything else    harvest (or the imported pseudo-labels)                <output>/labels

`harvest.labeler: han` (VALOR Table 2, "HAN as dense labeler") makes the labeler stage train refine.han_labeler on the
weak labels and the harvest stage harvest its segment predictions instead of the teachers' logits, for every run;
`harvest.labeler: han:SPEC` harvests an existing checkpoint's.

One labeler per method per pipeline: every ma-retrain run of `runs:` retrains on the same refined labels.
"""
from __future__ import annotations

from typing import Optional

from valor_core.config import TrainConfig, to_dict
from valor_core.presets import get_preset
from workflows.config import ConfigError, PipelineConfig
from workflows.pipeline.layout import Layout, train_runs

REFINED = {"ma-refined": "ma", "lsld": "lsld"}  # loss -> the refinement whose labels it trains on
LABELER_PRESETS = {"ma": "ma", "han": "han"}  # labeler -> the preset it must be trained with
MA_STAGE2 = ("threshold", "refine", "seed")  # MAConfig fields only stage 2 reads (not in the labeler's fingerprint)


def training_configs(cfg: PipelineConfig) -> list[TrainConfig]:
    """The TrainConfig of every training run of the config (the `runs:`, else `train:`)."""
    return list(train_runs(cfg).values()) or [cfg.train]


def refinements(cfg: PipelineConfig) -> tuple[str, ...]:
    """The refinement methods the config's runs train on ("ma", "lsld"), in that order."""
    wanted = {REFINED[t.loss] for t in training_configs(cfg) if t.loss in REFINED}
    return tuple(m for m in ("ma", "lsld") if m in wanted)


def han_labeler(cfg: PipelineConfig) -> Optional[str]:
    """None (the teachers label), "train" (the labeler stage trains refine.han_labeler), or a checkpoint SPEC
    (`harvest.labeler: han:SPEC`); ConfigError for anything else."""
    value = cfg.harvest.labeler
    if value is None or value == "":
        return None
    kind, _, spec = str(value).partition(":")
    if kind != "han":
        raise ConfigError(f"harvest.labeler {value!r}: expected han (train one) or han:CHECKPOINT")
    return spec or "train"


def labelers(cfg: PipelineConfig) -> dict[str, TrainConfig]:
    """{labeler: its TrainConfig} the labeler stage trains: "ma" for MA stage 2, "han" for harvest.labeler: han."""
    out = {}
    if "ma" in refinements(cfg):
        out["ma"] = cfg.refine.ma_stage1
    if han_labeler(cfg) == "train":
        out["han"] = cfg.refine.han_labeler
    for name, tcfg in out.items():
        if tcfg.loss != get_loss(LABELER_PRESETS[name]):
            raise ConfigError(f"refine: the {name} labeler must train with loss {get_loss(LABELER_PRESETS[name])!r} "
                              f"(preset {LABELER_PRESETS[name]}), got {tcfg.loss!r}")
    return out


def get_loss(preset: str) -> str:
    return get_preset(preset).loss


def labels_for(cfg: PipelineConfig, tcfg: TrainConfig, layout: Layout) -> Optional[str]:
    """The labels dataset a training run reads (None: the imported pseudo-labels of a released-files config)."""
    if tcfg.loss in REFINED:
        return layout.refined(REFINED[tcfg.loss])
    return layout.labels if harvests(cfg) else None


def harvests(cfg: PipelineConfig) -> bool:
    """Whether the config has a harvest stage: some run trains on harvested labels, and there are teacher logits to
    threshold (not the released files) or a HAN labeler's predictions."""
    needed = any(t.loss not in REFINED for t in training_configs(cfg))
    return needed and (not cfg.released.enabled or han_labeler(cfg) is not None)


def tunes(cfg: PipelineConfig) -> bool:
    """Whether the config has a tune stage: harvest thresholds teacher logits with thresholds not given."""
    return harvests(cfg) and not cfg.released.enabled and not cfg.harvest.thresholds_json and han_labeler(cfg) is None


def labeler_section(cfg: PipelineConfig) -> dict:
    """What defines the labelers' checkpoints: their TrainConfigs without MA's stage-2-only fields."""
    out = {}
    for name, tcfg in labelers(cfg).items():
        d = to_dict(tcfg)
        d.pop("labels", None)
        if name == "ma":
            d["ma"] = {k: v for k, v in d["ma"].items() if k not in MA_STAGE2}
        out[name] = d
    return out


def refine_section(cfg: PipelineConfig) -> dict:
    """What defines the refined labels: MA's stage-2 rule, LSLD's config (the teachers are the features' own)."""
    methods = refinements(cfg)
    out: dict = {"methods": list(methods)}
    if "ma" in methods:
        out["ma"] = {k: getattr(cfg.refine.ma_stage1.ma, k) for k in MA_STAGE2}
    if "lsld" in methods:
        out["lsld"] = to_dict(cfg.refine.lsld)
    return out
