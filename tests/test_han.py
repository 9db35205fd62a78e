"""HAN shapes, the MMIL pooling sums (Eq. 3, 4), the hybrid-attention ordering and the Table 7 parameter counts."""
from __future__ import annotations

import pytest
import torch

from valor_core.config import HANConfig
from valor_core.han import HAN, count_trainable
from valor_core.presets import get_preset

B, T, C = 3, 10, 25


def _inputs(cfg: HANConfig, batch: int = B, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, T, cfg.audio_dim, generator=g)
    frames = torch.randn(batch, T * cfg.frame_steps, cfg.frame_dim, generator=g) if cfg.frame_dim else None
    clips = torch.randn(batch, T, cfg.clip_dim, generator=g) if cfg.clip_dim else None
    return audio, frames, clips


SMALL = HANConfig(audio_dim=12, frame_dim=20, frame_steps=8, clip_dim=6, hidden=32, layers=2, heads=4, ff=48)


@pytest.mark.parametrize("cfg", [
    SMALL,
    HANConfig(audio_dim=12, frame_dim=20, frame_steps=1, clip_dim=0, hidden=32, layers=1, heads=4, ff=48),  # VALOR++
    HANConfig(audio_dim=12, frame_dim=0, clip_dim=6, hidden=32, layers=3, heads=8, ff=48),  # clips only
])
def test_shapes(cfg):
    torch.manual_seed(0)
    out = HAN(cfg).eval()(*_inputs(cfg))
    assert out.segment_logits.shape == out.segment_prob.shape == (B, T, 2, C)
    assert out.temporal_att.shape == out.modality_att.shape == (B, T, 2, C)
    for p in (out.global_prob, out.audio_prob, out.visual_prob):
        assert p.shape == (B, C)
        assert torch.all((p >= 0) & (p <= 1))
    assert torch.allclose(out.segment_prob, torch.sigmoid(out.segment_logits))


def test_pooling_sums():
    torch.manual_seed(0)
    out = HAN(SMALL).eval()(*_inputs(SMALL))
    ones = torch.ones(B, 2, C)
    assert torch.allclose(out.temporal_att.sum(dim=1), ones, atol=1e-6)  # softmax over time (Eq. 3)
    assert torch.allclose(out.modality_att.sum(dim=2), torch.ones(B, T, C), atol=1e-6)  # softmax over modalities
    a, p, b = out.temporal_att, out.segment_prob, out.modality_att
    assert torch.allclose(out.audio_prob, (a[:, :, 0] * p[:, :, 0]).sum(1), atol=1e-6)  # Eq. 3, m = a
    assert torch.allclose(out.visual_prob, (a[:, :, 1] * p[:, :, 1]).sum(1), atol=1e-6)  # Eq. 3, m = v
    assert torch.allclose(out.global_prob, (b * a * p).sum(dim=(1, 2)), atol=1e-6)  # Eq. 4
    # the global prob is a convex combination of per-segment probs, so it lies within their range
    lo, hi = p.amin(dim=(1, 2)), p.amax(dim=(1, 2))
    assert torch.all(out.global_prob >= lo - 1e-6) and torch.all(out.global_prob <= hi + 1e-6)


def test_frames_pooled_per_segment():
    """S frame steps per segment are averaged: a (B, T*S, D) input equals its segment means as (B, T, D)."""
    torch.manual_seed(0)
    model = HAN(SMALL).eval()
    audio, frames, clips = _inputs(SMALL)
    pooled = frames.reshape(B, T, SMALL.frame_steps, -1).mean(2)
    assert torch.allclose(model(audio, frames, clips).global_prob, model(audio, pooled, clips).global_prob, atol=1e-6)
    # the order of the steps inside a segment does not matter, across segments it does
    within = frames.reshape(B, T, SMALL.frame_steps, -1).flip(2).reshape(B, T * SMALL.frame_steps, -1)
    assert torch.allclose(model(audio, within, clips).segment_prob, model(audio, frames, clips).segment_prob, atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        model(audio, frames[:, :-1], clips)


def test_audio_updated_first():
    """Within a layer the visual stream attends to the *updated* audio (official Encoder order)."""
    torch.manual_seed(0)
    cfg = HANConfig(audio_dim=12, frame_dim=20, frame_steps=1, clip_dim=0, hidden=32, layers=1, heads=4, ff=48)
    model = HAN(cfg).eval()
    audio, frames, _ = _inputs(cfg)
    layer = model.layers[0]
    x_a, x_v = model.fc_audio(audio), model.fc_frames(frames)
    new_a = layer(x_a, x_v)
    expect_v = layer(x_v, new_a)
    stale_v = layer(x_v, x_a)
    got = model(audio, frames)
    logits_v = model.fc_prob(expect_v)
    assert torch.allclose(got.segment_logits[:, :, 1], logits_v, atol=1e-5)
    assert not torch.allclose(model.fc_prob(stale_v), logits_v, atol=1e-4)


def test_modalities_share_each_layer():
    model = HAN(SMALL)
    assert len(model.layers) == SMALL.layers  # one module per layer, applied to both audio and visual


def test_missing_streams_are_errors():
    with pytest.raises(ValueError, match="visual stream"):
        HAN(HANConfig(frame_dim=0, clip_dim=0))
    model = HAN(SMALL)
    audio, frames, clips = _inputs(SMALL)
    with pytest.raises(ValueError, match="no clips"):
        model(audio, frames, None)
    with pytest.raises(ValueError, match="no frames"):
        model(audio, None, clips)


@pytest.mark.parametrize("preset, expected, paper", [("valor", 5_094_475, 5.1e6), ("valor+", 5_051_211, 5.05e6)])
def test_table7_parameter_counts(preset, expected, paper):
    """VALOR Table 7: ~5.1M (512 x 1) and ~5.05M (256 x 4) trainable parameters with the real input dims."""
    n = count_trainable(HAN(get_preset(preset).model))
    assert n == expected
    assert abs(n - paper) / paper < 0.01


def test_deterministic_init():
    from valor_core.fit import build_model

    cfg = get_preset("valor")
    a, b = build_model(cfg), build_model(cfg)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
