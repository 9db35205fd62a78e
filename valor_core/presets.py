"""Named training presets: the paper's configurations (VALOR Table 7, appendix B; the 2020 HAN code).

    han      2020 HAN baseline: d=512 x 1 layer, Adam 3e-4, StepLR(10, 0.1), batch 16, 40 epochs, Eq. 5 loss
    valor    VALOR: d=512 x 1, AdamW betas (0.5, 0.999) wd 1e-3, warm-up 10 + cosine 1e-4 -> 1e-6, clip 1.0,
             batch 64, 60 epochs, Eq. 9 loss on harvested labels
    valor+   VALOR+: d=256 x 4, lr 3e-4 -> 3e-6, otherwise as valor
    valor++  VALOR++: valor+ on CLIP ViT-L/14 frame embeddings (768, one step per segment) and CLAP audio embeddings
             (512); no R(2+1)D clip stream (this project extracts CLIP/CLAP only). The official script also feeds
             R(2+1)D-18 and CLAP HTSAT feature maps (768); `--set model.clip_dim=512 model.audio_dim=768` for that.
    kd       valor architecture and optimiser with the knowledge-distillation loss (Eq. 8; Table 4 "KD" row)
"""
from __future__ import annotations

from valor_core.config import HANConfig, OptimConfig, TrainConfig, replace

_VALOR = TrainConfig(preset="valor", model=HANConfig(), optim=OptimConfig(), loss="valor")

PRESETS: dict[str, TrainConfig] = {
    "han": TrainConfig(
        preset="han",
        model=HANConfig(),
        optim=OptimConfig(optimizer="adam", lr_max=3e-4, lr_min=0.0, betas=(0.9, 0.999), weight_decay=0.0,
                          schedule="step", warmup_epochs=0, step_size=10, gamma=0.1, epochs=40, batch_size=16,
                          grad_clip=0.0),
        loss="han",
    ),
    "valor": _VALOR,
    "valor+": replace(_VALOR, preset="valor+", **{"model.hidden": 256, "model.layers": 4,
                                                    "optim.lr_max": 3e-4, "optim.lr_min": 3e-6}),
    "valor++": replace(_VALOR, preset="valor++", features="clip_clap",
                       **{"model.hidden": 256, "model.layers": 4, "model.audio_dim": 512, "model.frame_dim": 768,
                          "model.frame_steps": 1, "model.clip_dim": 0, "optim.lr_max": 3e-4, "optim.lr_min": 3e-6}),
    "kd": replace(_VALOR, preset="kd", loss="kd"),
}


def get_preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}") from None


def shorten(cfg: TrainConfig, epochs: int) -> TrainConfig:
    """`cfg` trained for `epochs` instead of cfg.optim.epochs with the same schedule *shape*: the warm-up length and the
    StepLR step size scale by epochs / cfg.optim.epochs (rounded, at least 1 where they were set). For quick runs."""
    o = cfg.optim
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    ratio = epochs / o.epochs
    warm = max(1, round(o.warmup_epochs * ratio)) if o.warmup_epochs > 0 else 0
    step = max(1, round(o.step_size * ratio))
    return replace(cfg, **{"optim.epochs": epochs, "optim.warmup_epochs": warm, "optim.step_size": step})
