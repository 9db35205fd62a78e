"""Hybrid Attention Network (Tian et al., ECCV 2020) with attentive MMIL pooling: the 2020 network and VALOR's.

Shapes (B = batch, T = 10 segments, C = 25 classes, d = hidden):
    audio  (B, T, Da)        VGGish 128 | CLAP embeddings; or (B, A, Da) with A = cfg.audio_steps (CLAP HTSAT feature
                             maps (64, 768), the official VALOR++ input), resampled to T (`resample_audio`)
    frames (B, T*S, Df)      ResNet-152 2048 at S=8 steps per segment | CLIP 768 at S=1 (VALOR++); optional;
                             (B, T, Df) is accepted as already segment-pooled (what `fit.to_tensors` hands in)
    clips  (B, T, Dc)        R(2+1)D-18 512; optional
  -> HANOutput: segment_logits / segment_prob (B, T, 2, C) with modality 0 = audio, 1 = visual; global_prob,
     audio_prob, visual_prob (B, C); temporal_att, modality_att (B, T, 2, C) for inspection.

Architecture (METHOD-NOTES "HAN as trained in VALOR"; VALOR Table 7; AVVP-ECCV20 nets/net_audiovisual.py):
- input projections: audio Linear(Da, d); frames Linear(Df, d) then average-pooled over the S steps of each segment;
  clips Linear(Dc, d); with both visual streams, concat and fuse with Linear(2d, d).
  Implementation note: an affine map commutes with any average (weights summing to 1), so the frame steps are averaged
  and the audio maps resampled *before* the projection -- the same function at a fraction of the cost.
- audio maps (VALOR main_network.py, `audio.size(1) == 64`): the A steps are laid out as 2 rows of A/2, each row
  bicubically upsampled to 1024, the 2 rows averaged, then adaptive average pooling to T. All of it is linear in the
  steps, so it is one (T, A) matrix (`audio_resampler`), built by running those very ops on the identity.
- L HAN layers; each layer is ONE module applied to both modalities (shared weights, as in the official code), post-norm:
  q = LN(q + CrossAtt(q, other) + SelfAtt(q)); q = LN(q + FFN(q)) (Eq. 1, 2). `update="sequential"` (VALOR): audio is
  updated first and the visual stream then attends to the *updated* audio; `update="parallel"` (the 2020 HAN): both
  are updated from the layer's original inputs, a' = L(a, v), v' = L(v, a).
- heads: segment logits Linear(d, C); MMIL pooling with softmax over time of Linear(d, C) and softmax over the two
  modalities of Linear(d, C): global p = sum_t sum_m beta * alpha * p_t^m (Eq. 4), p^m = sum_t alpha * p_t^m (Eq. 3).
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from valor_core.config import HANConfig


class HANOutput(NamedTuple):
    segment_logits: Tensor  # (B, T, 2, C) pre-sigmoid, modality 0 = audio, 1 = visual
    segment_prob: Tensor  # (B, T, 2, C) sigmoid(segment_logits)
    global_prob: Tensor  # (B, C) MMIL-pooled video-level probability (Eq. 4)
    audio_prob: Tensor  # (B, C) audio video-level probability (Eq. 3)
    visual_prob: Tensor  # (B, C) visual video-level probability (Eq. 3)
    temporal_att: Tensor  # (B, T, 2, C) alpha: softmax over T
    modality_att: Tensor  # (B, T, 2, C) beta: softmax over the 2 modalities


class HANLayer(nn.Module):
    """One post-norm hybrid-attention layer; the same instance updates audio and visual (Eq. 1, 2)."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.drop_cross = nn.Dropout(dropout)
        self.drop_self = nn.Dropout(dropout)
        self.drop_ff = nn.Dropout(dropout)
        self.drop_out = nn.Dropout(dropout)

    def forward(self, q: Tensor, other: Tensor) -> Tensor:
        cross = self.cross_attn(q, other, other, need_weights=False)[0]
        self_ = self.self_attn(q, q, q, need_weights=False)[0]
        q = self.norm1(q + self.drop_cross(cross) + self.drop_self(self_))
        ff = self.linear2(self.drop_ff(F.relu(self.linear1(q))))
        return self.norm2(q + self.drop_out(ff))


UPSAMPLED = 1024  # the length each row of an audio map is bicubically upsampled to (VALOR main_network.py)


@lru_cache(maxsize=8)
def audio_resampler(steps_in: int, steps_out: int) -> Tensor:
    """(steps_out, steps_in) float64 matrix R with resample(x) = R @ x for the official audio-map resampling (module
    doc); each row sums to 1, so R commutes with the affine audio projection."""
    if steps_in < 2 or steps_in % 2:
        raise ValueError(f"audio maps need an even number of steps (2 rows of A/2), got {steps_in}")
    basis = torch.eye(steps_in, dtype=torch.float64).reshape(steps_in, 1, 2, steps_in // 2)  # one map per step
    up = F.interpolate(basis, size=(2, UPSAMPLED), mode="bicubic")  # (A, 1, 2, 1024)
    pooled = F.adaptive_avg_pool1d(up.mean(dim=2), steps_out)  # (A, 1, T): mean of the 2 rows, pooled to T
    return pooled[:, 0].T.contiguous()


def resample_audio(audio: Tensor, steps: int) -> Tensor:
    """(B, A, D) audio maps -> (B, steps, D), as the official VALOR network resamples CLAP HTSAT maps."""
    r = audio_resampler(audio.shape[1], steps).to(device=audio.device, dtype=audio.dtype)
    return torch.matmul(r, audio)


def segment_count(cfg: HANConfig, audio_steps: int, frame_steps: Optional[int], clip_steps: Optional[int]) -> int:
    """T for inputs with these step counts: the audio's, unless the audio arrives as `cfg.audio_steps` maps; then the
    clip stream's, else the frames' when they have one step per segment."""
    if not cfg.audio_steps or audio_steps != cfg.audio_steps:
        return audio_steps
    if clip_steps is not None:
        return clip_steps
    if frame_steps is not None and cfg.frame_steps == 1:
        return frame_steps
    raise ValueError(f"audio with {audio_steps} steps (audio_steps) is resampled to the segments of the clip stream, "
                     f"or of one-step frames; give clips, or resample the audio first (han.resample_audio)")


def _steps(x: Optional[Tensor]) -> Optional[int]:
    return None if x is None else int(x.shape[1])


class HAN(nn.Module):
    def __init__(self, cfg: HANConfig = HANConfig()):
        super().__init__()
        if cfg.frame_dim <= 0 and cfg.clip_dim <= 0:
            raise ValueError("HANConfig needs at least one visual stream (frame_dim > 0 or clip_dim > 0)")
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden size {cfg.hidden} is not divisible by {cfg.heads} heads")
        if cfg.frame_steps < 1:
            raise ValueError(f"frame_steps must be >= 1, got {cfg.frame_steps}")
        if cfg.audio_steps % 2:
            raise ValueError(f"audio_steps must be 0 or even (2 rows of A/2 steps), got {cfg.audio_steps}")
        if cfg.update not in ("sequential", "parallel"):
            raise ValueError(f"update must be 'sequential' or 'parallel', got {cfg.update!r}")
        self.cfg = cfg
        d, c = cfg.hidden, cfg.num_classes
        self.fc_audio = nn.Linear(cfg.audio_dim, d)
        self.fc_frames = nn.Linear(cfg.frame_dim, d) if cfg.frame_dim > 0 else None
        self.fc_clips = nn.Linear(cfg.clip_dim, d) if cfg.clip_dim > 0 else None
        self.fc_fusion = nn.Linear(2 * d, d) if (cfg.frame_dim > 0 and cfg.clip_dim > 0) else None
        self.layers = nn.ModuleList(HANLayer(d, cfg.heads, cfg.ff, cfg.dropout) for _ in range(cfg.layers))
        self.parallel = cfg.update == "parallel"
        self.fc_prob = nn.Linear(d, c)
        self.fc_frame_att = nn.Linear(d, c)
        self.fc_av_att = nn.Linear(d, c)

    def _visual(self, frames: Optional[Tensor], clips: Optional[Tensor], batch: int, steps: int) -> Tensor:
        streams = []
        if self.fc_frames is not None:
            if frames is None:
                raise ValueError("this HAN has a frame stream (frame_dim > 0) but no frames were given")
            s = self.cfg.frame_steps
            if frames.shape[1] == steps * s and s > 1:
                # average-pool S steps per segment; done before the (affine) projection, see module doc
                frames = frames.reshape(batch, steps, s, frames.shape[-1]).mean(dim=2)
            elif frames.shape[1] != steps:
                raise ValueError(f"frames have {frames.shape[1]} steps, expected {steps} segments x {s} = {steps * s}"
                                 f" (or {steps} already pooled)")
            streams.append(self.fc_frames(frames))
        if self.fc_clips is not None:
            if clips is None:
                raise ValueError("this HAN has a clip stream (clip_dim > 0) but no clips were given")
            streams.append(self.fc_clips(clips))
        if self.fc_fusion is not None:
            return self.fc_fusion(torch.cat(streams, dim=-1))
        return streams[0]

    def forward(self, audio: Tensor, frames: Optional[Tensor] = None, clips: Optional[Tensor] = None) -> HANOutput:
        batch, steps = audio.shape[0], segment_count(self.cfg, audio.shape[1], _steps(frames), _steps(clips))
        if audio.shape[1] != steps:
            audio = resample_audio(audio, steps)  # before the projection: the same function (module doc)
        x_a = self.fc_audio(audio)
        x_v = self._visual(frames, clips, batch, steps)
        for layer in self.layers:
            new_a = layer(x_a, x_v)  # audio first ...
            x_v = layer(x_v, x_a if self.parallel else new_a)  # ... visual from the original (2020) or updated audio
            x_a = new_a
        x = torch.stack((x_a, x_v), dim=2)  # (B, T, 2, d)
        logits = self.fc_prob(x)
        prob = torch.sigmoid(logits)
        temporal_att = torch.softmax(self.fc_frame_att(x), dim=1)  # Eq. 3: softmax over time
        modality_att = torch.softmax(self.fc_av_att(x), dim=2)  # Eq. 4: softmax over modalities
        temporal_prob = temporal_att * prob
        global_prob = (temporal_prob * modality_att).sum(dim=(1, 2))  # Eq. 4
        audio_prob = temporal_prob[:, :, 0].sum(dim=1)  # Eq. 3, m = a
        visual_prob = temporal_prob[:, :, 1].sum(dim=1)  # Eq. 3, m = v
        return HANOutput(logits, prob, global_prob, audio_prob, visual_prob, temporal_att, modality_att)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
