"""MA (Wu & Yang, CVPR 2021, "Exploring heterogeneous clues for weakly-supervised audio-visual video parsing").

Stage 1: the HAN trained with MIL (Eq. 5 of VALOR = the 2020 HAN loss) plus the cross-modal contrastive loss (MA Eq. 8):
each post-HAN audio segment f^a_t must pick the pre-HAN fused visual segment f^v_t of the same time among the video's
T visual segments (cosine / tau, cross-entropy). `MAHAN` is the HAN that also returns those features and L_c.
Stage 2 (METHOD-NOTES "MA"): every train video i gets a partner j sharing no weak label (`draw_partners`); the frozen
model scores (V^i, A^j) (Eq. 4, "changed audio") and (V^j, A^i) (Eq. 5, "changed vision"); per-class error E_c = 1 -
train accuracy of (p > 0.5) against y, normalised by its maximum (`class_error`); a visual label c is dropped when with
the changed audio both p^v_c and p^a_c < 0.5 E_c (Eq. 6: p / E_c < 0.5), an audio label when with the changed vision
both are (Eq. 7) (`refine_labels`).
Stage 3: retrain from scratch on those modality-aware labels (loss "ma-refined", valor_core.losses).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from valor_core.config import HANConfig, MAConfig
from valor_core.han import HAN


def contrastive_loss(audio: Tensor, visual: Tensor, tau: float = 0.2) -> Tensor:
    """MA Eq. 8, mean over (B, T): -log softmax_j(f^v_j . f^a_t / tau)[t] with L2-normalised (B, T, d) features."""
    a = F.normalize(audio, dim=-1)
    v = F.normalize(visual, dim=-1)
    logits = torch.matmul(a, v.transpose(1, 2)) / tau  # (B, T, T): [b, t, j] = f^v_j . f^a_t / tau
    b, t = logits.shape[:2]
    target = torch.arange(t, device=logits.device).expand(b, t)
    return F.cross_entropy(logits.reshape(b * t, t), target.reshape(-1))  # Eq. 8


class MAOutput(NamedTuple):
    """HANOutput's fields (same order) plus what the contrastive loss uses."""

    segment_logits: Tensor
    segment_prob: Tensor
    global_prob: Tensor
    audio_prob: Tensor
    visual_prob: Tensor
    temporal_att: Tensor
    modality_att: Tensor
    audio_embed: Tensor  # (B, T, d) post-HAN audio f^a_t
    visual_embed: Tensor  # (B, T, d) pre-HAN fused visual f^v_t
    contrastive: Tensor  # scalar L_c (Eq. 8); 0 with MAConfig.contrastive = False (Table 2 "Baseline + R")


class MAHAN(HAN):
    """The HAN (same parameters and state_dict) whose forward also returns f^a_t, f^v_t and L_c."""

    def __init__(self, cfg: HANConfig = HANConfig(), ma: MAConfig = MAConfig()):
        super().__init__(cfg)
        self.tau, self.use_contrastive = float(ma.tau), bool(ma.contrastive)
        self._seen: dict = {}
        self.fc_prob.register_forward_pre_hook(self._keep_post_han)  # its input: the stacked post-HAN (a, v)

    def _keep_post_han(self, module, args) -> None:
        self._seen["x"] = args[0]

    def _visual(self, *args) -> Tensor:
        v = super()._visual(*args)
        self._seen["v"] = v  # the fused visual features before the HAN layers
        return v

    def forward(self, audio: Tensor, frames: Optional[Tensor] = None, clips: Optional[Tensor] = None) -> MAOutput:
        out = super().forward(audio, frames, clips)
        seen, self._seen = self._seen, {}
        audio_post, visual_pre = seen["x"][:, :, 0], seen["v"]
        lc = (contrastive_loss(audio_post, visual_pre, self.tau) if self.use_contrastive
              else audio_post.new_zeros(()))
        return MAOutput(*out, audio_embed=audio_post, visual_embed=visual_pre, contrastive=lc)


# --- stage 2: swapping tracks and the normalised-error rule ----------------------------------------------------


def draw_partners(weak: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N,) index of a video sharing no weak label with each video (uniform among them, seeded); -1 where none."""
    y = np.asarray(weak) > 0
    sets, which = np.unique(y, axis=0, return_inverse=True)
    which = which.reshape(-1)
    disjoint = ~(sets.astype(np.int32) @ sets.T.astype(np.int32)).astype(bool)  # (K, K) label sets with no overlap
    rng = np.random.default_rng([seed, 0x3A])
    partners = np.full(len(y), -1, np.int64)
    for k in range(len(sets)):
        members = np.flatnonzero(which == k)
        pool = np.flatnonzero(disjoint[k][which])
        if pool.size:
            partners[members] = rng.choice(pool, size=members.size)
    return partners


def class_error(global_prob: np.ndarray, weak: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """E_c (C,): 1 - accuracy of (p > threshold) against y over the videos, divided by max_c (all 0 if max is 0)."""
    err = 1.0 - ((np.asarray(global_prob) > threshold) == (np.asarray(weak) > 0)).mean(axis=0)
    top = float(err.max()) if err.size else 0.0
    return err / top if top > 0 else np.zeros_like(err)


def refine_labels(weak: np.ndarray, changed_audio: dict, changed_visual: dict, error: np.ndarray,
                  partners: Optional[np.ndarray] = None, threshold: float = 0.5,
                  refine: str = "both") -> tuple[np.ndarray, np.ndarray]:
    """(audio_labels, visual_labels) (N, C) uint8 from the weak labels y (N, C). `changed_audio` / `changed_visual` hold
    the video-level {"audio", "visual"} probabilities (N, C) of (V^i, A^j) / (V^j, A^i); p / E_c < threshold is
    p < threshold * E_c (Eq. 6, 7). Videos without a partner (-1) keep y. `refine`: both | audio | visual (Table 3)."""
    y = np.asarray(weak) > 0
    bound = threshold * np.asarray(error, np.float64)[None, :]
    has = np.ones(len(y), bool) if partners is None else np.asarray(partners) >= 0
    drop_v = (changed_audio["visual"] < bound) & (changed_audio["audio"] < bound) & has[:, None]  # Eq. 6
    drop_a = (changed_visual["visual"] < bound) & (changed_visual["audio"] < bound) & has[:, None]  # Eq. 7
    visual = y & ~drop_v if refine in ("both", "visual") else y
    audio = y & ~drop_a if refine in ("both", "audio") else y
    return audio.astype(np.uint8), visual.astype(np.uint8)


@torch.no_grad()
def swap_probs(model: HAN, inputs: dict[str, Tensor], index: np.ndarray, partners: np.ndarray) -> dict:
    """Video-level probabilities of videos `index` (own tracks), with the audio of `partners` (Eq. 4) and with their
    visual streams (Eq. 5): {"global": (n, C), "changed_audio": {audio, visual}, "changed_visual": {audio, visual}}.
    `inputs`: audio / frames / clips tensors of the whole set (fit.to_tensors); partners -1 use the video itself."""
    model.eval()
    device = next(model.parameters()).device
    idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
    par = torch.as_tensor(np.where(np.asarray(partners) >= 0, partners, index), dtype=torch.long)

    def run(audio_rows: Tensor, visual_rows: Tensor):
        get = (lambda name, rows: None if inputs.get(name) is None  # noqa: E731
               else inputs[name].index_select(0, rows).to(device).float())
        return model(get("audio", audio_rows), get("frames", visual_rows), get("clips", visual_rows))

    def both(out) -> dict:
        return {"audio": out.audio_prob.float().cpu().numpy(), "visual": out.visual_prob.float().cpu().numpy()}

    own = run(idx, idx)
    return {"global": own.global_prob.float().cpu().numpy(), "own": both(own),
            "changed_audio": both(run(par, idx)),  # (V^i, A^j), Eq. 4
            "changed_visual": both(run(idx, par))}  # (V^j, A^i), Eq. 5
