"""Training losses: the HAN baseline (Eq. 5), VALOR (Eq. 9) and knowledge distillation (Eq. 8) of the VALOR paper.

All take a `HANOutput` and return a scalar tensor. Reductions follow the official code (Franklin905/VALOR,
main_avvp.py): nn.BCELoss (mean over batch and classes) on the video-level probability after clamping it to
[1e-7, 1 - 1e-7], and F.binary_cross_entropy_with_logits with its default *mean* over (batch, time, class) for the
segment terms -- not the sum over t that Eq. 9 writes. The KD loss follows Eq. 8 as written (KL summed over segments,
then averaged over the batch); the paper publishes no code for it.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from valor_core.han import HANOutput
from valor_core.lsld import lsld_loss

EPS = 1e-7  # the official clamp of pooled probabilities before BCE


def _bce_prob(prob: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy(prob.clamp(EPS, 1 - EPS), target)


def video_loss(out: HANOutput, weak: Tensor) -> Tensor:
    """L_video = BCE(p, y) on the MMIL-pooled global probability (Eq. 5)."""
    return _bce_prob(out.global_prob, weak)


def han_loss(out: HANOutput, weak: Tensor, smoothing: float = 0.1) -> Tensor:
    """HAN baseline: BCE(p, y) + BCE(p^a, y) + BCE(p^v, (1-s) y + s/2) (Eq. 5; label smoothing on the visual target only,
    as in the 2020 code: a = 1.0, v = 0.9)."""
    visual_target = (1.0 - smoothing) * weak + 0.5 * smoothing
    return video_loss(out, weak) + _bce_prob(out.audio_prob, weak) + _bce_prob(out.visual_prob, visual_target)  # Eq. 5


def valor_loss(out: HANOutput, weak: Tensor, audio_labels: Tensor, visual_labels: Tensor) -> Tensor:
    """L_VALOR = L_video + BCE(z^a_t, y^a_t) + BCE(z^v_t, y^v_t), segment BCE on logits, mean over (B, T, C) (Eq. 9)."""
    loss_a = F.binary_cross_entropy_with_logits(out.segment_logits[:, :, 0], audio_labels)
    loss_v = F.binary_cross_entropy_with_logits(out.segment_logits[:, :, 1], visual_labels)
    return video_loss(out, weak) + loss_a + loss_v  # Eq. 9


def kd_term(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """sum_t KL(softmax_c(z^P_t) || softmax_c(z^m_t)), mean over the batch. Logits (B, T, C)."""
    log_q_student = F.log_softmax(student_logits, dim=-1)
    log_q_teacher = F.log_softmax(teacher_logits, dim=-1)
    kl = F.kl_div(log_q_student, log_q_teacher, reduction="none", log_target=True)  # q^P (log q^P - log q^m)
    return kl.sum(dim=(1, 2)).mean()


def kd_loss(out: HANOutput, weak: Tensor, clap_logits: Tensor, clip_logits: Tensor) -> Tensor:
    """L_KD = L_video + L_KD^a (CLAP teacher) + L_KD^v (CLIP teacher) (Eq. 8)."""
    loss_a = kd_term(out.segment_logits[:, :, 0], clap_logits)
    loss_v = kd_term(out.segment_logits[:, :, 1], clip_logits)
    return video_loss(out, weak) + loss_a + loss_v  # Eq. 8


def ma_refined_loss(out, weak: Tensor, audio_labels: Tensor, visual_labels: Tensor, smoothing: float = 0.1) -> Tensor:
    """MA stage 3: BCE(p, y) + BCE(p^a, y^a) + BCE(p^v, (1-s) y^v + s/2) + L_c, y^m = max_t of the refined (B, T, C)
    modality labels (`valor refine ma`); `out` a valor_core.ma.MAOutput (L_c, MA Eq. 8)."""
    y_a, y_v = audio_labels.amax(dim=1), visual_labels.amax(dim=1)
    visual_target = (1.0 - smoothing) * y_v + 0.5 * smoothing
    return video_loss(out, weak) + _bce_prob(out.audio_prob, y_a) + _bce_prob(out.visual_prob, visual_target) \
        + out.contrastive  # Eq. 5 on modality-aware labels + MA Eq. 8


def modality_term(out: HANOutput, modality: int, target: str, weak: Tensor, labels: Tensor,
                  smoothing: float = 0.1) -> Tensor:
    """One modality's term of VALOR Table 4 (modality 0 audio, 1 visual): `weak` the HAN baseline's (Eq. 5; the visual
    target smoothed), `global` BCE of the pooled p^m against the refined weak label max_t y^m_t, `dense` the segment
    BCE of Eq. 9 against the harvested (B, T, C) labels."""
    if target == "dense":
        return F.binary_cross_entropy_with_logits(out.segment_logits[:, :, modality], labels)  # Eq. 9
    prob = out.audio_prob if modality == 0 else out.visual_prob
    if target == "global":
        return _bce_prob(prob, labels.amax(dim=1))
    if target == "weak":
        return _bce_prob(prob, weak if modality == 0 else (1.0 - smoothing) * weak + 0.5 * smoothing)  # Eq. 5
    raise ValueError(f"unknown Table 4 target {target!r}")


# VALOR Table 4's rows between the baseline and VALOR: (audio term, visual term) of modality_term
TABLE4 = {"valor-global": ("global", "global"), "valor-visual": ("weak", "dense"), "valor-audio": ("dense", "weak")}


def table4_loss(name: str, out: HANOutput, weak: Tensor, audio_labels: Tensor, visual_labels: Tensor,
                smoothing: float = 0.1) -> Tensor:
    """L_video + the audio and visual terms of Table 4 row `name` (TABLE4)."""
    audio, visual = TABLE4[name]
    return video_loss(out, weak) + modality_term(out, 0, audio, weak, audio_labels, smoothing) \
        + modality_term(out, 1, visual, weak, visual_labels, smoothing)


LOSSES = ("han", "valor", "kd", "lsld", "ma", "ma-refined", *TABLE4)


def compute_loss(name: str, out: HANOutput, batch: dict[str, Tensor], smoothing: float = 0.1) -> Tensor:
    """Dispatch on TrainConfig.loss; `batch` holds float tensors `weak` and, per loss, `audio_labels`/`visual_labels`
    (valor) or `clap_logits`/`clip_logits` (kd)."""
    weak = batch["weak"]
    if name == "han":
        return han_loss(out, weak, smoothing)
    if name == "valor":
        return valor_loss(out, weak, batch["audio_labels"], batch["visual_labels"])
    if name == "kd":
        return kd_loss(out, weak, batch["clap_logits"], batch["clip_logits"])
    if name == "lsld":  # LSLD Eq. 2 on segment labels (valor_core.lsld), weights 3:1:1
        return lsld_loss(out, weak, batch["audio_labels"], batch["visual_labels"])
    if name == "ma":  # MA stage 1: the HAN loss (Eq. 5) + L_c (MA Eq. 8, computed by valor_core.ma.MAHAN)
        return han_loss(out, weak, smoothing) + out.contrastive
    if name == "ma-refined":  # MA stage 3 on `valor refine ma` labels
        return ma_refined_loss(out, weak, batch["audio_labels"], batch["visual_labels"], smoothing)
    if name in TABLE4:  # VALOR Table 4 ablation rows
        return table4_loss(name, out, weak, batch["audio_labels"], batch["visual_labels"], smoothing)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
