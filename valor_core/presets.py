"""Named training presets: the paper's configurations (VALOR Table 7, appendix B; the 2020 HAN code).

    han        the 2020 HAN baseline exactly (AVVP-ECCV20 nets/net_audiovisual.py MMIL_Net): d=512 x 1 layer, 1 head,
               FFN 512, both modalities updated from the layer's original inputs (parallel); Adam 3e-4, StepLR(10,
               0.1), batch 16, 40 epochs, Eq. 5 loss. 4,569,675 trainable parameters (the official module's
               audio_encoder, visual_encoder, cmt_encoder and hat_encoder.norm1/2 are never used by its forward)
    han-valor  VALOR's HAN architecture (8 heads, FFN 1024, sequential update) with the 2020 optimiser and loss
    valor      VALOR: d=512 x 1, AdamW betas (0.5, 0.999) wd 1e-3, warm-up 10 + cosine 1e-4 -> 1e-6, clip 1.0,
               batch 64, 60 epochs, Eq. 9 loss on harvested labels
    valor+     VALOR+: d=256 x 4, lr 3e-4 -> 3e-6, otherwise as valor
    valor++    VALOR++ with the official inputs (Franklin905/VALOR scripts/train_valor++.sh): valor+ on CLAP HTSAT
               feature maps (64, 768) resampled to 10 steps as main_network.py does, CLIP ViT-L/14 frame embeddings
               (10, 768) fused with R(2+1)D-18 clips (10, 512) as the ResNet stream is
    kd         valor architecture and optimiser with the knowledge-distillation loss (Eq. 8; Table 4 "KD" row)
    valor-global / valor-visual / valor-audio   VALOR Table 4's middle rows, valor otherwise: the refined weak labels
               max_t y^m_t for both modalities (global); the baseline's audio term with VALOR's dense visual labels;
               VALOR's dense audio labels with the baseline's visual term (valor_core.losses.TABLE4)
    ma         MA stage 1 (Wu & Yang 2021): the 2020 HAN + contrastive loss (MA Eq. 8, tau 0.2), Adam 3e-4, StepLR(10,
               0.1), batch 16, 12 epochs; `valor refine ma` then swaps tracks -> modality-aware labels (stage 2)
    ma-retrain MA stage 3: the same from scratch, 40 epochs, on `valor refine ma` labels (loss ma-refined)
    lsld       LSLD (Fan et al. 2023; fyyCS/LSLD): the 2020 HAN with 4 layers on CLIP/CLAP embeddings, Adam 2e-4,
               StepLR(6, 0.25), batch 32, 20 epochs, 3:1:1 loss on `valor refine lsld` labels (valor_core.lsld)
"""
from __future__ import annotations

from valor_core.config import HANConfig, OptimConfig, TrainConfig, replace

_VALOR = TrainConfig(preset="valor", model=HANConfig(), optim=OptimConfig(), loss="valor")
_HAN_VALOR = TrainConfig(
    preset="han-valor",
    model=HANConfig(),
    optim=OptimConfig(optimizer="adam", lr_max=3e-4, lr_min=0.0, betas=(0.9, 0.999), weight_decay=0.0,
                      schedule="step", warmup_epochs=0, step_size=10, gamma=0.1, epochs=40, batch_size=16,
                      grad_clip=0.0),
    loss="han",
)

PRESETS: dict[str, TrainConfig] = {
    "han": replace(_HAN_VALOR, preset="han", **{"model.heads": 1, "model.ff": 512, "model.update": "parallel"}),
    "han-valor": _HAN_VALOR,
    "valor": _VALOR,
    "valor+": replace(_VALOR, preset="valor+", **{"model.hidden": 256, "model.layers": 4,
                                                    "optim.lr_max": 3e-4, "optim.lr_min": 3e-6}),
    "valor++": replace(_VALOR, preset="valor++", features="clip_clap_maps",
                       **{"model.hidden": 256, "model.layers": 4, "model.audio_dim": 768, "model.audio_steps": 64,
                          "model.frame_dim": 768, "model.frame_steps": 1, "model.clip_dim": 512,
                          "optim.lr_max": 3e-4, "optim.lr_min": 3e-6}),
    "kd": replace(_VALOR, preset="kd", loss="kd"),
    "lsld": replace(_HAN_VALOR, preset="lsld", loss="lsld", features="clip_clap",
                    **{"model.heads": 1, "model.ff": 512, "model.update": "parallel", "model.layers": 4,
                       "model.audio_dim": 512, "model.frame_dim": 512, "model.frame_steps": 1, "model.clip_dim": 0,
                       "optim.lr_max": 2e-4, "optim.step_size": 6, "optim.gamma": 0.25, "optim.epochs": 20,
                       "optim.batch_size": 32}),
}
PRESETS.update({name: replace(_VALOR, preset=name, loss=name) for name in ("valor-global", "valor-visual", "valor-audio")})
# MA (Wu & Yang 2021) on the 2020 HAN: Adam 3e-4, StepLR(10, 0.1), batch 16; stage 1 12 epochs (METHOD-NOTES), stage 3 40
PRESETS["ma"] = replace(PRESETS["han"], preset="ma", loss="ma", **{"optim.epochs": 12})
PRESETS["ma-retrain"] = replace(PRESETS["han"], preset="ma-retrain", loss="ma-refined")


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
