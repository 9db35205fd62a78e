"""Losses against hand-computed values: HAN baseline (Eq. 5), VALOR (Eq. 9), KD (Eq. 8)."""
from __future__ import annotations

import math

import pytest
import torch

from valor_core.han import HANOutput
from valor_core.losses import compute_loss, han_loss, kd_loss, kd_term, valor_loss, video_loss


def bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _out(global_p, audio_p, visual_p, logits=None) -> HANOutput:
    g = torch.tensor([global_p])
    if logits is None:
        logits = torch.zeros(1, 1, 2, g.shape[1])
    z = torch.zeros_like(logits)
    return HANOutput(logits, torch.sigmoid(logits), g, torch.tensor([audio_p]), torch.tensor([visual_p]), z, z)


def test_han_loss_hand_computed():
    y = torch.tensor([[1.0, 0.0]])
    out = _out([0.8, 0.3], [0.6, 0.1], [0.7, 0.2])
    expect = ((bce(0.8, 1) + bce(0.3, 0)) / 2  # video
              + (bce(0.6, 1) + bce(0.1, 0)) / 2  # audio guided, target y
              + (bce(0.7, 0.95) + bce(0.2, 0.05)) / 2)  # visual guided, target 0.9y + 0.05
    assert han_loss(out, y, smoothing=0.1).item() == pytest.approx(expect, rel=1e-6)
    assert compute_loss("han", out, {"weak": y}, 0.1).item() == pytest.approx(expect, rel=1e-6)


def test_probabilities_are_clamped_like_the_official_code():
    y = torch.tensor([[1.0, 0.0]])
    out = _out([0.0, 1.0], [0.5, 0.5], [0.5, 0.5])
    v = video_loss(out, y).item()
    # both terms saturate at about -log(1e-7) = 16.1 (float32 rounds 1 - 1e-7 to 1 - 1.19e-7)
    assert math.isfinite(v) and v == pytest.approx(-math.log(1e-7), rel=0.01)


def test_valor_loss_hand_computed_mean_over_t():
    # one video, T=2 segments, C=2 classes; logits for (t, modality, class)
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 0.0]],
                            [[-3.0, 1.0], [1.5, -2.0]]]])  # (1, 2, 2, 2)
    ya = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, T, C)
    yv = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    y = torch.tensor([[1.0, 1.0]])
    out = _out([0.9, 0.4], [0.5, 0.5], [0.5, 0.5], logits)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    seg_a = sum(bce(sig(logits[0, t, 0, c].item()), ya[0, t, c].item()) for t in range(2) for c in range(2)) / 4
    seg_v = sum(bce(sig(logits[0, t, 1, c].item()), yv[0, t, c].item()) for t in range(2) for c in range(2)) / 4
    vid = (bce(0.9, 1) + bce(0.4, 1)) / 2
    expect = vid + seg_a + seg_v  # official: BCEWithLogits mean over (B, T, C)
    assert valor_loss(out, y, ya, yv).item() == pytest.approx(expect, rel=1e-6)
    batch = {"weak": y, "audio_labels": ya, "visual_labels": yv}
    assert compute_loss("valor", out, batch).item() == pytest.approx(expect, rel=1e-6)


def test_kd_loss_hand_computed():
    zs = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])  # student logits (B=1, T=2, C=3)
    zt = torch.tensor([[[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]])  # teacher logits

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    kl = 0.0
    for t in range(2):
        q_t, q_s = softmax(zt[0, t].tolist()), softmax(zs[0, t].tolist())
        kl += sum(a * math.log(a / b) for a, b in zip(q_t, q_s))  # KL(teacher || student), summed over t
    assert kd_term(zs, zt).item() == pytest.approx(kl, rel=1e-5)
    assert kd_term(zt, zt).item() == pytest.approx(0.0, abs=1e-6)

    logits = torch.stack([zs, zs], dim=2)  # (1, T, 2, C)
    out = _out([0.6, 0.2, 0.5], [0.5] * 3, [0.5] * 3, logits)
    y = torch.tensor([[1.0, 0.0, 1.0]])
    vid = (bce(0.6, 1) + bce(0.2, 0) + bce(0.5, 1)) / 3
    zt_v = torch.zeros_like(zt)
    expect = vid + kl + kd_term(zs, zt_v).item()
    assert kd_loss(out, y, zt, zt_v).item() == pytest.approx(expect, rel=1e-5)
    batch = {"weak": y, "clap_logits": zt, "clip_logits": zt_v}
    assert compute_loss("kd", out, batch).item() == pytest.approx(expect, rel=1e-5)


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss"):
        compute_loss("nope", _out([0.5], [0.5], [0.5]), {"weak": torch.ones(1, 1)})


def test_table4_rows_hand_computed():
    """VALOR Table 4's middle rows: global (BCE of p^m against max_t y^m_t), baseline audio + dense visual, dense audio +
    baseline visual; each against a hand computation on a 2-segment, 2-class video."""
    y = torch.tensor([[1.0, 1.0]])
    logits = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]], [[-0.5, 1.0], [0.0, -2.0]]]])  # (B, T=2, M=2, C=2)
    out = _out([0.8, 0.6], [0.7, 0.4], [0.9, 0.2], logits)
    a_lab = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # class 1 never on in audio
    v_lab = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    video = (bce(0.8, 1) + bce(0.6, 1)) / 2
    dense_a = sum(bce(sig(z), t) for z, t in ((0.5, 1), (-1.0, 0), (-0.5, 0), (1.0, 0))) / 4
    dense_v = sum(bce(sig(z), t) for z, t in ((2.0, 1), (0.0, 1), (0.0, 1), (-2.0, 0))) / 4
    weak_a = (bce(0.7, 1) + bce(0.4, 1)) / 2
    weak_v = (bce(0.9, 0.95) + bce(0.2, 0.95)) / 2
    global_a = (bce(0.7, 1) + bce(0.4, 0)) / 2  # max_t audio labels = [1, 0]
    global_v = (bce(0.9, 1) + bce(0.2, 1)) / 2
    batch = {"weak": y, "audio_labels": a_lab, "visual_labels": v_lab}
    for name, expect in (("valor-global", video + global_a + global_v), ("valor-visual", video + weak_a + dense_v),
                         ("valor-audio", video + dense_a + weak_v), ("valor", video + dense_a + dense_v)):
        assert compute_loss(name, out, batch, 0.1).item() == pytest.approx(expect, rel=1e-5), name
