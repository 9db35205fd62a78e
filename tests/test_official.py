"""The official checkpoints: faithful copies of the official networks (YapengTian/AVVP-ECCV20 nets/net_audiovisual.py,
Franklin905/VALOR main_network.py) written here with their own forward, their state dicts loaded into valor's HAN with
every key accounted for, and the same probabilities out; bad state dicts refused by name; `valor predict`."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import LLP_DIR
from valor_core.arrays import AVVPArrays
from valor_core.config import replace, to_dict
from valor_core.fit import decide, predict_probs
from valor_core.han import HAN, count_trainable
from valor_core.official import LAYOUTS, OfficialCheckpointError, convert, load_official, load_official_state
from valor_core.presets import get_preset
from workflows.checkpoints import config_from_dict, save_checkpoint_dir
from workflows.cli import main

B = 3
COUNT_2020 = 4_569_675  # what the 2020 forward uses: fc_a, fc_v, fc_st, fc_fusion, hat_encoder.layers.0, 3 heads


# --- the official networks, as their repositories define them (parameter names and shapes, forward) ----------------


class OfficialHANLayer(nn.Module):
    """HANLayer of both repositories (post-norm), sequence-first attention as there."""

    def __init__(self, d: int, nhead: int, ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead, dropout=0.1)
        self.cm_attn = nn.MultiheadAttention(d, nhead, dropout=0.1)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, q, kv):
        q, kv = q.permute(1, 0, 2), kv.permute(1, 0, 2)
        q = self.norm1(q + self.cm_attn(q, kv, kv)[0] + self.self_attn(q, q, q)[0])
        q = self.norm2(q + self.linear2(F.relu(self.linear1(q))))
        return q.permute(1, 0, 2)


class CMTLayer(nn.Module):
    """2020 CMTLayer: built, never called by MMIL_Net.forward."""

    def __init__(self, d: int = 512):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, 1)
        self.linear1, self.linear2, self.norm1, self.norm2 = nn.Linear(d, d), nn.Linear(d, d), nn.LayerNorm(d), nn.LayerNorm(d)


class OfficialEncoder(nn.Module):
    """2020 Encoder (norm1/norm2, unused: norm=None; every layer reads the encoder's inputs) or VALOR's
    (final_norm_a/v, unused with post_norm; sequential)."""

    def __init__(self, layer: nn.Module, layers: int, year: int, d: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(layers))
        self.year = year
        names = ("norm1", "norm2") if year == 2020 else ("final_norm_a", "final_norm_v")
        for name in names:
            setattr(self, name, nn.LayerNorm(d))

    def forward(self, a, v):
        out_a, out_v = a, v
        for layer in self.layers:
            if self.year == 2020:
                out_a, out_v = layer(a, v), layer(v, a)
            else:
                out_a = layer(out_a, out_v)
                out_v = layer(out_v, out_a)
        return out_a, out_v


class OfficialMMIL(nn.Module):
    """MMIL_Net: the 2020 one (year=2020, fixed sizes) or VALOR's (its argparse sizes; post_norm)."""

    def __init__(self, year: int, a_dim=128, v_dim=2048, d=512, nhead=1, ff=512, layers=1):
        super().__init__()
        self.fc_prob, self.fc_frame_att, self.fc_av_att = nn.Linear(d, 25), nn.Linear(d, 25), nn.Linear(d, 25)
        self.fc_a, self.fc_v, self.fc_st, self.fc_fusion = (nn.Linear(a_dim, d), nn.Linear(v_dim, d),
                                                            nn.Linear(512, d), nn.Linear(2 * d, d))
        if year == 2020:
            def transformer():
                return nn.TransformerEncoder(nn.TransformerEncoderLayer(d_model=512, nhead=1, dim_feedforward=512),
                                             num_layers=1, enable_nested_tensor=False)
            self.audio_encoder, self.visual_encoder = transformer(), transformer()
            self.cmt_encoder = OfficialEncoder(CMTLayer(), 1, 2020, 512)
        self.hat_encoder = OfficialEncoder(OfficialHANLayer(d, nhead, ff), layers, year, d)
        self.a_dim, self.d = a_dim, d

    def forward(self, audio, visual, visual_st):
        if audio.size(1) == 64:  # VALOR main_network.py: CLAP HTSAT feature maps
            x1 = audio.permute(0, 2, 1).contiguous().view(-1, self.a_dim, 2, 32)
            up = F.interpolate(x1, size=(2, 1024), mode="bicubic")
            up = self.fc_a(up.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).mean(dim=2)
            x1 = F.adaptive_avg_pool1d(up, 10).view(-1, self.d, 10).permute(0, 2, 1)
        else:
            x1 = self.fc_a(audio)
        vid_s = self.fc_v(visual)
        if visual.size(1) == 80:  # ResNet-152 at 8 fps
            vid_s = F.avg_pool2d(vid_s.permute(0, 2, 1).unsqueeze(-1), (8, 1)).squeeze(-1).permute(0, 2, 1)
        x2 = self.fc_fusion(torch.cat((vid_s, self.fc_st(visual_st)), dim=-1))
        x1, x2 = self.hat_encoder(x1, x2)
        x = torch.cat([x1.unsqueeze(-2), x2.unsqueeze(-2)], dim=-2)
        frame_prob = torch.sigmoid(self.fc_prob(x))
        temporal = torch.softmax(self.fc_frame_att(x), dim=1) * frame_prob
        global_prob = (temporal * torch.softmax(self.fc_av_att(x), dim=2)).sum(dim=2).sum(dim=1)
        return global_prob, temporal[:, :, 0].sum(dim=1), temporal[:, :, 1].sum(dim=1), frame_prob


# the official scripts' sizes (scripts/train_valor*.sh; main_avvp.py resets the input dims for CLAP/CLIP dirs)
OFFICIAL = {
    "han": dict(year=2020),
    "valor": dict(year=2023, d=512, nhead=8, ff=1024, layers=1),
    "valor+": dict(year=2023, d=256, nhead=8, ff=1024, layers=4),
    "valor++": dict(year=2023, a_dim=768, v_dim=768, d=256, nhead=8, ff=1024, layers=4),
}
INPUTS = {"han": (10, 128, 80, 2048), "valor": (10, 128, 80, 2048), "valor+": (10, 128, 80, 2048),
          "valor++": (64, 768, 10, 768)}  # audio steps, audio dim, frame steps, frame dim; clips (10, 512)


def official_model(preset: str, seed: int = 0) -> OfficialMMIL:
    torch.manual_seed(seed)
    return OfficialMMIL(**OFFICIAL[preset]).eval()


def official_inputs(preset: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    a_steps, a_dim, v_steps, v_dim = INPUTS[preset]
    return (torch.randn(B, a_steps, a_dim, generator=g), torch.randn(B, v_steps, v_dim, generator=g),
            torch.randn(B, 10, 512, generator=g))


@pytest.fixture(scope="module")
def han_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "MMIL_Net.pt"
    torch.save(official_model("han").state_dict(), path)
    return str(path)


# --- the mapping ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(OFFICIAL))
def test_official_state_dict_loads_and_predicts_the_same(preset, tmp_path):
    ref = official_model(preset)
    state = ref.state_dict()
    mine = HAN(get_preset(preset).model)
    converted = convert(state, LAYOUTS[preset], mine.state_dict())
    ignored = [k for k in state if k.startswith(LAYOUTS[preset].unused)]
    assert len(converted) + len(ignored) == len(state)  # every official tensor is placed or ignored by name
    assert set(converted) == set(mine.state_dict())  # and every valor tensor is filled
    if preset == "han":
        assert {k.split(".")[0] for k in ignored} == {"audio_encoder", "visual_encoder", "cmt_encoder", "hat_encoder"}
        assert sum(t.numel() for t in converted.values()) == COUNT_2020 == count_trainable(mine)
        assert sum(state[k].numel() for k in ignored) == 4_738_048  # 2 x TransformerEncoder, cmt_encoder, 2 norms
    torch.save(state, tmp_path / "checkpoint_best.pt")
    model, cfg = load_official(str(tmp_path / "checkpoint_best.pt"), preset)
    assert cfg.preset == preset and not model.training
    inputs = official_inputs(preset)
    with torch.no_grad():
        g_ref, a_ref, v_ref, seg_ref = ref(*inputs)
        out = model(*inputs)
    for got, want in ((out.global_prob, g_ref), (out.audio_prob, a_ref), (out.visual_prob, v_ref),
                      (out.segment_prob, seg_ref)):
        assert torch.allclose(got, want, atol=2e-5, rtol=1e-4), (got - want).abs().max()
    pa, pv = decide(out.segment_prob.numpy(), out.global_prob.numpy())
    ra, rv = decide(seg_ref.numpy(), g_ref.numpy())
    clear = np.abs(seg_ref.numpy() - 0.5).min() > 1e-4 and np.abs(g_ref.numpy() - 0.5).min() > 1e-4
    assert not clear or (np.array_equal(pa, ra) and np.array_equal(pv, rv))


def test_update_order_matters():
    """The 2020 weights in VALOR's sequential update give other numbers: the parallel update is what matches."""
    ref = official_model("han")
    seq = replace(get_preset("han"), **{"model.update": "sequential"}).model
    model = load_official_state(HAN(seq), ref.state_dict(), "han")
    inputs = official_inputs("han")
    with torch.no_grad():
        got, want = model(*inputs).segment_prob, ref(*inputs)[3]
    assert torch.allclose(got[:, :, 0], want[:, :, 0], atol=2e-5)  # audio: updated from (a, v) either way
    assert not torch.allclose(got[:, :, 1], want[:, :, 1], atol=1e-3)  # visual: from the original or the new audio


def test_audio_maps_resampled_once_in_to_tensors():
    """predict_probs resamples (N, 64, 768) maps before batching; the same numbers as the model on the raw maps."""
    torch.manual_seed(0)
    cfg = replace(get_preset("valor++"), **{"model.hidden": 32, "model.heads": 4, "model.ff": 64, "model.layers": 2})
    model = HAN(cfg.model).eval()
    audio, frames, clips = official_inputs("valor++")
    arrays = AVVPArrays(video_ids=np.array(["a", "b", "c"]), weak=np.zeros((B, 25), np.uint8), audio=audio.numpy(),
                        frames=frames.numpy(), clips=clips.numpy())
    seg, glob = predict_probs(model, arrays)
    with torch.no_grad():
        out = model(audio, frames, clips)
    assert np.allclose(seg, out.segment_prob.numpy(), atol=1e-5) and np.allclose(glob, out.global_prob.numpy(), atol=1e-5)


@pytest.mark.parametrize("edit, named", [
    (lambda s: s.__setitem__("fc_probs.weight", s.pop("fc_prob.weight")), ["'fc_probs.weight'", "'fc_prob.weight'"]),
    (lambda s: s.__setitem__("hat_encoder.layers.0.linear1.weight", torch.zeros(1024, 512)),
     ["'hat_encoder.layers.0.linear1.weight'", "(1024, 512)", "(512, 512)"]),
    (lambda s: s.pop("hat_encoder.layers.0.cm_attn.in_proj_weight"), ["missing key "
                                                                       "'hat_encoder.layers.0.cm_attn.in_proj_weight'"]),
])
def test_bad_state_dicts_are_refused_naming_the_key(edit, named):
    state = official_model("han").state_dict()
    edit(state)
    with pytest.raises(OfficialCheckpointError) as err:
        load_official_state(HAN(get_preset("han").model), state, "han")
    for text in named:
        assert text in str(err.value)


def test_wrong_architecture_is_refused():
    """A 2020 state dict is not a VALOR one: its unused encoders are unknown there and its FFN is 512 wide."""
    with pytest.raises(OfficialCheckpointError, match=r"unknown key 'audio_encoder\.") as err:
        load_official_state(HAN(get_preset("valor").model), official_model("han").state_dict(), "valor")
    assert "'hat_encoder.layers.0.linear1.weight': shape (512, 512)" in str(err.value)


# --- the commands --------------------------------------------------------------------------------------------------


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_dry_run_reports_the_2020_count(capsys):
    assert main(["train", "--preset", "han", "--dry-run", "--json"]) == 0
    out = _last_json(capsys)
    assert out["trainable_params"] == COUNT_2020
    assert (out["config"]["model"]["heads"], out["config"]["model"]["ff"], out["config"]["model"]["update"]) == \
        (1, 512, "parallel")
    assert main(["train", "--preset", "han-valor", "--dry-run", "--json"]) == 0
    assert _last_json(capsys)["trainable_params"] == 5_094_475  # VALOR's HAN with the 2020 optimiser


def test_predict_then_evaluate(han_checkpoint, tmp_path, capsys):
    spec, out = f"official:han:{han_checkpoint}", str(tmp_path / "preds.npz")
    assert main(["predict", "--checkpoint", spec, "--features", "sim:0", "--split", "val", "--out", out,
                 "--annotations", str(LLP_DIR), "--json"]) == 0
    assert _last_json(capsys) == {"videos": 649, "out": out, "split": "val"}
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z.files) == ["audio", "global_prob", "segment_prob", "video_ids", "visual"]
        ids, audio, visual, seg, glob = (z[k] for k in ("video_ids", "audio", "visual", "segment_prob", "global_prob"))
    assert ids.shape == (649,) and ids.dtype.kind == "U"
    assert audio.shape == visual.shape == (649, 10, 25) and audio.dtype == visual.dtype == np.uint8
    assert seg.shape == (649, 10, 2, 25) and seg.dtype == np.float32 and glob.shape == (649, 25)
    pa, pv = decide(seg, glob)
    assert np.array_equal(audio, pa) and np.array_equal(visual, pv)
    assert main(["evaluate", "--split", "val", "--predictions", out, "--annotations", str(LLP_DIR), "--json"]) == 0
    from_file = _last_json(capsys)
    assert main(["evaluate", "--split", "val", "--checkpoint", spec, "--features", "sim:0", "--annotations",
                 str(LLP_DIR), "--json"]) == 0
    assert _last_json(capsys) == from_file  # the same predictions either way


def test_official_checkpoint_needs_features(han_checkpoint, tmp_path, capsys):
    assert main(["predict", "--checkpoint", f"official:han:{han_checkpoint}", "--split", "val",
                 "--out", str(tmp_path / "p.npz")]) == 1
    assert "pass --features" in capsys.readouterr().err
    assert main(["evaluate", "--split", "val", "--checkpoint", f"official:nope:{han_checkpoint}"]) == 1
    assert "official:PRESET:PATH" in capsys.readouterr().err
    state = official_model("han").state_dict()
    state["fc_av_att.bias"] = torch.zeros(26)
    torch.save(state, tmp_path / "bad.pt")
    assert main(["evaluate", "--split", "val", "--checkpoint", f"official:han:{tmp_path / 'bad.pt'}", "--features",
                 "sim:0", "--annotations", str(LLP_DIR)]) == 1
    assert "'fc_av_att.bias': shape (26,)" in capsys.readouterr().err


def test_predict_from_a_valor_checkpoint(tmp_path, capsys):
    """A checkpoint of `valor train` predicts from the features it records; an old config (no `update`) stays
    sequential."""
    cfg = replace(get_preset("valor"), **{"model.hidden": 32, "model.heads": 4, "model.ff": 64, "model.frame_steps": 1})
    state = HAN(cfg.model).state_dict()
    save_checkpoint_dir(str(tmp_path / "ckpt"), model_state=state, best_state=state, optimizer_state=None,
                        state={}, config={"train": to_dict(cfg), "data": {"features": "sim:0"}})
    out = str(tmp_path / "p.npz")
    assert main(["predict", "--checkpoint", str(tmp_path / "ckpt"), "--split", "test", "--out", out,
                 "--annotations", str(LLP_DIR), "--json"]) == 0
    assert _last_json(capsys)["videos"] == 1200
    old = to_dict(get_preset("han-valor"))
    old["preset"] = "han"
    del old["model"]["update"], old["model"]["audio_steps"]
    assert config_from_dict(old).model == get_preset("han-valor").model


@pytest.mark.integration  # real S3 (SeaweedFS on loopback)
def test_official_checkpoint_on_s3(han_checkpoint, tmp_path, monkeypatch, capsys):
    """`official:han:s3://…` predicts what the local file does; a missing object is a one-line error naming it."""
    from workflows import objstore, s3server as storage

    local = str(tmp_path / "local.npz")
    assert main(["predict", "--checkpoint", f"official:han:{han_checkpoint}", "--features", "sim:0", "--split", "val",
                 "--out", local, "--annotations", str(LLP_DIR), "--json"]) == 0
    capsys.readouterr()
    with storage.running(tmp_path / "s3") as s3:
        for k, v in s3.env().items():
            monkeypatch.setenv(k, v)
        uri = f"s3://{s3.bucket}/models/model_HAN/checkpoint_best.pt"
        objstore.write_bytes(uri, open(han_checkpoint, "rb").read(), objstore.s3_options(s3.config()))
        remote = str(tmp_path / "remote.npz")
        assert main(["predict", "--checkpoint", f"official:han:{uri}", "--features", "sim:0", "--split", "val",
                     "--out", remote, "--annotations", str(LLP_DIR), "--json"]) == 0
        assert _last_json(capsys)["videos"] == 649
        with np.load(local) as a, np.load(remote) as b:
            for key in ("segment_prob", "global_prob", "audio", "visual"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        missing = f"s3://{s3.bucket}/models/nope.pt"
        assert main(["predict", "--checkpoint", f"official:han:{missing}", "--features", "sim:0", "--split", "val",
                     "--out", str(tmp_path / "x.npz"), "--annotations", str(LLP_DIR)]) == 1
        err = capsys.readouterr().err
        assert missing in err and len(err.strip().splitlines()) == 1
