"""MA (Wu & Yang 2021): contrastive loss (Eq. 8), the track swap and the normalised-error rule (Eq. 4-7), the presets,
and stage 1 -> `valor refine ma` (Ray tasks) -> stage 3 on LLP-sim with Ray Train and MLflow."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import LLP_DIR
from valor_core.config import HANConfig, MAConfig, TrainConfig
from valor_core.han import HAN
from valor_core.losses import compute_loss, han_loss, video_loss
from valor_core.ma import MAHAN, class_error, contrastive_loss, draw_partners, refine_labels, swap_probs
from valor_core.presets import get_preset

SMALL = HANConfig(audio_dim=6, frame_dim=5, frame_steps=1, clip_dim=4, hidden=8, heads=2, ff=16, dropout=0.0)


def test_contrastive_loss_matches_a_hand_computation():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (B=1, T=2, d=2); normalised: e1, e2
    v = torch.tensor([[[3.0, 4.0], [0.0, -1.0]]])  # normalised: (0.6, 0.8), (0, -1)
    tau = 0.2
    # t=0: sims (0.6, 0) -> target 0; t=1: sims (0.8, -1) -> target 1
    l0 = -(0.6 / tau) + math.log(math.exp(0.6 / tau) + math.exp(0.0))
    l1 = -(-1.0 / tau) + math.log(math.exp(0.8 / tau) + math.exp(-1.0 / tau))
    assert float(contrastive_loss(a, v, tau)) == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # a sharper temperature on aligned features lowers the loss (Table 4's tau)
    same = torch.randn(3, 10, 8)
    assert float(contrastive_loss(same, same, 0.1)) < float(contrastive_loss(same, same, 0.5))


def test_mahan_is_the_han_plus_its_features():
    torch.manual_seed(0)
    ma = MAHAN(SMALL, MAConfig(tau=0.2)).eval()
    han = HAN(SMALL).eval()
    han.load_state_dict(ma.state_dict())  # the same parameters: checkpoints load either way
    x = (torch.randn(3, 10, 6), torch.randn(3, 10, 5), torch.randn(3, 10, 4))
    with torch.no_grad():
        out, ref = ma(*x), han(*x)
    for name in ref._fields:
        assert torch.allclose(getattr(out, name), getattr(ref, name), atol=1e-6), name
    assert out.audio_embed.shape == out.visual_embed.shape == (3, 10, 8)
    # visual_embed is the fused visual input of the HAN, before any layer
    fused = ma.fc_fusion(torch.cat((ma.fc_frames(x[1]), ma.fc_clips(x[2])), dim=-1))
    assert torch.allclose(out.visual_embed, fused, atol=1e-6)
    with torch.no_grad():
        want = float(contrastive_loss(out.audio_embed, out.visual_embed, 0.2))
    assert float(out.contrastive) == pytest.approx(want)
    assert float(MAHAN(SMALL, MAConfig(contrastive=False))(*x).contrastive) == 0.0


def test_ma_losses_add_the_contrastive_term():
    torch.manual_seed(1)
    with torch.no_grad():
        out = MAHAN(SMALL)(torch.randn(4, 10, 6), torch.randn(4, 10, 5), torch.randn(4, 10, 4))
    weak = torch.tensor([[1.0] + [0.0] * 24, [0.0, 1.0] + [0.0] * 23] * 2)
    assert float(compute_loss("ma", out, {"weak": weak})) == pytest.approx(
        float(han_loss(out, weak) + out.contrastive), rel=1e-6)
    audio = weak[:, None, :].repeat(1, 10, 1)
    visual = torch.zeros_like(audio)
    visual[:, 3] = weak  # on one segment only: the video-level label is the max over t
    got = compute_loss("ma-refined", out, {"weak": weak, "audio_labels": audio, "visual_labels": visual}, 0.1)
    bce = torch.nn.functional.binary_cross_entropy
    want = (video_loss(out, weak) + bce(out.audio_prob.clamp(1e-7, 1 - 1e-7), weak)
            + bce(out.visual_prob.clamp(1e-7, 1 - 1e-7), 0.9 * weak + 0.05) + out.contrastive)
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_partners_share_no_label():
    rng = np.random.default_rng(0)
    weak = (rng.random((200, 25)) < 0.1).astype(np.uint8)
    weak[np.arange(200), rng.integers(0, 25, 200)] = 1  # every video has a label (as in LLP)
    weak[0] = 1  # every class: no partner possible
    p = draw_partners(weak, seed=3)
    assert p[0] == -1
    ok = p >= 0
    assert ok[1:].all() and not (weak[ok] & weak[p[ok]]).any()
    assert (p == draw_partners(weak, seed=3)).all() and (p != draw_partners(weak, seed=4)).any()


def test_class_error_is_normalised_by_its_maximum():
    weak = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0], [0, 1, 1]])
    prob = np.array([[0.9, 0.1, 0.2], [0.8, 0.2, 0.1], [0.1, 0.1, 0.1], [0.2, 0.9, 0.1]])
    # errors: class 0: 0/4, class 1: 1/4 (video 1), class 2: 2/4 (videos 0, 3) -> / 0.5
    assert class_error(prob, weak) == pytest.approx([0.0, 0.5, 1.0])
    assert (class_error(weak.astype(float), weak) == 0).all()  # nothing wrong: nothing to normalise by


def test_swap_rule_drops_exactly_the_label_it_should():
    weak = np.array([[1, 1, 0], [0, 0, 1]])
    error = np.array([1.0, 0.8, 0.4])  # bounds 0.5 x E_c: 0.5, 0.4, 0.2
    # video 0 with the changed audio: class 1 is low in both streams (0.3, 0.35 < 0.4) -> not visible;
    # class 0 has visual 0.45 < 0.5 but audio 0.7 -> kept
    changed_audio = {"visual": np.array([[0.45, 0.3, 0.0], [0.0, 0.0, 0.3]]),
                     "audio": np.array([[0.7, 0.35, 0.0], [0.0, 0.0, 0.1]])}
    # video 1 with the changed vision: class 2 at 0.1 / 0.19 < 0.2 -> not audible; video 0 keeps its audio labels
    changed_visual = {"visual": np.array([[0.9, 0.9, 0.0], [0.0, 0.0, 0.1]]),
                      "audio": np.array([[0.9, 0.9, 0.0], [0.0, 0.0, 0.19]])}
    audio, visual = refine_labels(weak, changed_audio, changed_visual, error)
    assert visual.tolist() == [[1, 0, 0], [0, 0, 1]]
    assert audio.tolist() == [[1, 1, 0], [0, 0, 0]]
    assert audio.dtype == np.uint8
    # no partner: keep the weak labels; one-modality ablations (Table 3)
    a2, v2 = refine_labels(weak, changed_audio, changed_visual, error, partners=np.array([-1, 0]))
    assert v2.tolist() == [[1, 1, 0], [0, 0, 1]] and a2.tolist() == [[1, 1, 0], [0, 0, 0]]
    a3, v3 = refine_labels(weak, changed_audio, changed_visual, error, refine="visual")
    assert a3.tolist() == weak.tolist() and v3.tolist() == visual.tolist()
    # never adds a label the video does not have
    hi = {"visual": np.zeros((2, 3)), "audio": np.zeros((2, 3))}
    a4, v4 = refine_labels(weak, hi, hi, np.ones(3))
    assert not a4.any() and not v4.any()


def test_swap_probs_feeds_the_partner_tracks():
    torch.manual_seed(2)
    model = HAN(SMALL).eval()
    inputs = {"audio": torch.randn(4, 10, 6), "frames": torch.randn(4, 10, 5), "clips": torch.randn(4, 10, 4)}
    got = swap_probs(model, inputs, np.array([0, 1]), np.array([3, -1]))
    with torch.no_grad():
        ca = model(inputs["audio"][[3, 1]], inputs["frames"][[0, 1]], inputs["clips"][[0, 1]])  # (V^i, A^j)
        cv = model(inputs["audio"][[0, 1]], inputs["frames"][[3, 1]], inputs["clips"][[3, 1]])  # (V^j, A^i)
    assert np.allclose(got["changed_audio"]["visual"], ca.visual_prob.numpy(), atol=1e-6)
    assert np.allclose(got["changed_audio"]["audio"], ca.audio_prob.numpy(), atol=1e-6)
    assert np.allclose(got["changed_visual"]["visual"], cv.visual_prob.numpy(), atol=1e-6)
    assert np.allclose(got["changed_visual"]["audio"], cv.audio_prob.numpy(), atol=1e-6)


def test_presets_are_the_papers():
    s1, s3 = get_preset("ma"), get_preset("ma-retrain")
    for cfg in (s1, s3):
        o = cfg.optim
        assert (o.optimizer, o.lr_max, o.schedule, o.step_size, o.gamma, o.batch_size) == ("adam", 3e-4, "step", 10,
                                                                                            0.1, 16)
        assert cfg.model == get_preset("han").model and cfg.ma.tau == 0.2
    assert (s1.loss, s1.optim.epochs, s3.loss, s3.optim.epochs) == ("ma", 12, "ma-refined", 40)
    from valor_core.fit import build_model

    assert isinstance(build_model(s1), MAHAN) and not isinstance(build_model(TrainConfig()), MAHAN)


def test_stage3_needs_refined_labels():
    from workflows.trainset import DataError, load_training_data

    with pytest.raises(DataError, match="needs --labels"):
        load_training_data("sim:0:frame_dim=8,clip_dim=8", get_preset("ma-retrain"), annotations=str(LLP_DIR),
                           splits=("train",))


# --- end to end -----------------------------------------------------------------------------------------------------

FEATURES = "sim:0:frame_dim=32,clip_dim=16"
SETS = ["model.hidden=32", "model.ff=64", "optim.batch_size=64", "optim.lr_max=0.001"]


@pytest.mark.integration
def test_stage1_refine_stage3_on_llp_sim(tmp_path, capsys):
    from workflows import tracking
    from workflows.cli import main
    from workflows.features import read_labels
    from workflows.runtime import start_ray

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    shutdown = start_ray(num_cpus=2)
    try:
        def cli(argv):
            capsys.readouterr()
            assert main(argv) == 0
            return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

        def train(preset, extra):
            argv = ["train", "--preset", preset, "--features", FEATURES, "--workers", "1", "--epochs", "1",
                    "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--annotations", str(LLP_DIR),
                    "--max-train-videos", "256", "--no-figures", "--json", *extra]
            for s in SETS:
                argv += ["--set", s]
            return cli(argv)

        s1 = train("ma", [])
        labels = str(tmp_path / "ma_labels")
        ref = cli(["refine", "ma", "--checkpoint", s1["run_id"], "--tracking-uri", uri, "--out", labels,
                   "--annotations", str(LLP_DIR), "--videos-per-task", "4096", "--json"])
        s3 = train("ma-retrain", ["--labels", labels])
    finally:
        shutdown()
    # stage 2: every train video, labels only ever removed, provenance recorded
    meta, table = read_labels(labels)
    assert ref["videos"] == table.num_rows == 10000 and set(table.column("split").to_pylist()) == {"train"}
    weak = np.array(table.column("weak").to_pylist())
    va = np.array(table.column("visual_labels").to_pylist())
    aa = np.array(table.column("audio_labels").to_pylist())
    assert (va <= weak[:, None]).all() and (aa <= weak[:, None]).all()
    assert (va == va[:, :1]).all()  # video-level labels on every segment
    assert ref["visual_labels"] == int(va[:, 0].sum()) and ref["weak_labels"] == int(weak.sum())
    assert ref["visual_labels"] + ref["audio_labels"] < 2 * ref["weak_labels"]  # something was refined
    assert meta["checkpoint"] == s1["run_id"] and meta["code_version"] and meta["config"]["tau"] == 0.2
    assert len(meta["class_error"]) == 25 and max(meta["class_error"]) == pytest.approx(1.0)
    # both trainings are MLflow runs with their loss and labels
    c = tracking.client(uri)
    r1, r3 = c.get_run(s1["run_id"]), c.get_run(s3["run_id"])
    assert r1.data.params["loss"] == "ma" and r3.data.params["loss"] == "ma-refined"
    assert r3.data.params["data.labels"] == labels and r3.data.params["ma.tau"] == "0.2"
    assert "final.test.segment.type" in r3.data.metrics and s3["test"]["videos"] == 1200
