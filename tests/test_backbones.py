"""The paper's feature extractors (valor_core.backbones): each network built through its real library with random
weights, its input pipeline against the reference's, its output shapes/dtypes, and `valor extract --features` writing
the `valor import llp` columns (quick: the stages in-process; integration: real local Ray on real mp4 files, then the
HAN preset's training data from the extracted dataset)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from valor_core import backbones as bb
from valor_core.backbones import vggish
from workflows.features import RELEASED, fixed_list


def _reference_examples(wave16k: np.ndarray) -> np.ndarray:
    """The TF reference's vggish_input.waveform_to_examples (mel_features.py) on 16-kHz audio, in plain NumPy."""
    def frame(x, n, hop):
        k = 1 + (len(x) - n) // hop
        return np.stack([x[i * hop:i * hop + n] for i in range(k)])

    window = 0.5 - 0.5 * np.cos(2 * np.pi / 400 * np.arange(400))
    spec = np.abs(np.fft.rfft(frame(wave16k, 400, 160) * window, 512))

    def hz_to_mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    bins = hz_to_mel(np.linspace(0, 8000, 257))
    edges = np.linspace(hz_to_mel(125.0), hz_to_mel(7500.0), 66)
    m = np.zeros((257, 64))
    for i in range(64):
        lo, c, hi = edges[i:i + 3]
        m[:, i] = np.maximum(0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    m[0] = 0
    log_mel = np.log(spec @ m + 0.01)
    return frame(log_mel, 96, 96)


def test_vggish_input_matches_reference_and_gives_one_example_per_segment():
    """VGGish's input is AVVP-ECCV20 scripts/extract_audio.py's 16-kHz wave: moviepy 1.x reads the clip at 44.1 kHz
    (ffmpeg; valor: soxr HQ as librosa from another native rate) and writes 16 kHz by taking the nearest 44.1-kHz
    sample for each 16-kHz one, with no anti-alias filter (tests.test_extract_audio._moviepy_16k, moviepy's own chunked
    loop); then the TF reference's waveform_to_examples on that wave (already 16 kHz, no resampy)."""
    import soxr

    from tests.test_extract_audio import _moviepy_16k

    rng = np.random.default_rng(0)
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(441000) / 44100) + 0.05 * rng.standard_normal(441000))
    ours = vggish.examples(wave.astype(np.float32), 44100, 10)
    ref = _reference_examples(_moviepy_16k(wave.astype(np.float32).astype(np.float64)))
    assert ours.shape == (10, 1, 96, 64) and ref.shape == (10, 96, 64)
    np.testing.assert_allclose(ours[:, 0].numpy(), ref, atol=2e-3)
    # 48 kHz input: to 44.1 kHz first (soxr HQ, librosa's resampler), then the same 16-kHz pick
    wave48 = np.sin(2 * np.pi * 440 * np.arange(480000) / 48000).astype(np.float32)
    ex48 = vggish.examples(wave48, 48000, 10)[:, 0].numpy()
    ref48 = _reference_examples(_moviepy_16k(soxr.resample(wave48, 48000, 44100, quality="HQ").astype(np.float64)))
    np.testing.assert_allclose(ex48, ref48, atol=2e-3)
    # the pick has no anti-alias filter: a 10-kHz tone folds to 6 kHz (a sinc resampler would remove it)
    tone = np.sin(2 * np.pi * 10000 * np.arange(441000) / 44100).astype(np.float32)
    bands = vggish.examples(tone, 44100, 10)[:, 0].numpy().mean(axis=(0, 1))
    sinc = _reference_examples(soxr.resample(tone, 44100, 16000, quality="HQ").astype(np.float64)).mean(axis=(0, 1))
    assert bands.max() > 0 > np.log(0.01) + 1 > sinc.max()
    # a shorter clip still gives T examples, spread over it
    assert vggish.examples(wave[:220500].astype(np.float32), 44100, 10).shape == (10, 1, 96, 64)


def test_vggish_net_weights_and_postprocess(tmp_path):
    import torch

    model = bb.build_backbone("vggish", "random", "cpu", segments=10)
    n_params = sum(p.numel() for p in model.net.parameters())
    assert n_params == 72_141_184  # the VGGish of the reference (conv 64-128-256x2-512x2, fc 4096-4096-128)
    waves = [np.sin(np.arange(48000 * 10) * f).astype(np.float32) for f in (0.01, 0.05)]
    out = model(waves, 48000)
    assert out.shape == (2, 10, 128) and out.dtype == np.float32 and (out >= 0).all()
    # a torchvggish-keyed file and a torchaudio-keyed one load into the same network
    state = model.net.state_dict()
    torch.save(state, tmp_path / "tv.pth")
    torch.save({k.replace("features.", "features_network.").replace("embeddings.", "embedding_network."): v
                for k, v in state.items()}, tmp_path / "ta.pth")
    for name in ("tv.pth", "ta.pth"):
        again = bb.build_backbone("vggish", str(tmp_path / name), "cpu", segments=10, seed=1)
        np.testing.assert_array_equal(again(waves, 48000), out)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(bb.BackboneError, match="do not match"):
        bb.build_backbone("vggish", str(tmp_path / "bad.pth"), "cpu")
    # PCA postprocess as the reference: identity PCA -> clip to [-2, 2] -> 0..255
    torch.save({"pca_eigen_vectors": torch.eye(128), "pca_means": torch.zeros(128, 1)}, tmp_path / "pca.pth")
    pp = bb.build_backbone("vggish", str(tmp_path / "tv.pth"), "cpu", pca=str(tmp_path / "pca.pth"))
    got = pp(waves, 48000)
    np.testing.assert_array_equal(got, np.round((np.clip(out, -2, 2) + 2) * 255 / 4))


def test_r2plus1d_one_snippet_per_segment():
    model = bb.build_backbone("r2plus1d", "random", "cpu", segments=2)
    assert model.net.__class__.__name__ == "VideoResNet"
    rng = np.random.default_rng(0)
    dense = rng.integers(0, 255, (1, 16, 64, 64, 3), dtype=np.uint8)  # 2 segments x 8 frames (resized to 112)
    out = model(dense)
    assert out.shape == (1, 2, 512) and out.dtype == np.float32 and np.isfinite(out).all()
    changed = dense.copy()
    changed[0, 8:] = 255 - changed[0, 8:]  # the second snippet only
    out2 = model(changed)
    np.testing.assert_array_equal(out2[0, 0], out[0, 0])
    assert not np.allclose(out2[0, 1], out[0, 1])
    with pytest.raises(ValueError, match="do not split"):
        model(dense[:, :15])


def test_res152_per_frame_features_and_weights_file(tmp_path):
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet152(weights=None)
    torch.save(net.state_dict(), tmp_path / "r.pth")
    model = bb.build_backbone("res152", str(tmp_path / "r.pth"), "cpu", batch_size=1)
    assert sum(p.numel() for p in model.net.parameters()) == 60_192_808 - (2048 * 1000 + 1000)  # resnet152 - fc
    rng = np.random.default_rng(1)
    dense = rng.integers(0, 255, (1, 2, 64, 64, 3), dtype=np.uint8)  # resized to 224
    out = model(dense)
    assert out.shape == (1, 2, 2048) and out.dtype == np.float32 and (out >= 0).all()  # pooled after ReLU
    np.testing.assert_allclose(model(dense[:, 1:])[0, 0], out[0, 1], rtol=1e-4, atol=1e-5)  # frames independent
    frame = rng.integers(0, 255, (1, 1, 224, 224, 3), dtype=np.uint8)
    net.fc = torch.nn.Identity()
    x = torch.from_numpy(frame[0]).permute(0, 3, 1, 2).float() / 255  # the reference: ToTensor + ImageNet Normalize
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    np.testing.assert_allclose(model(frame)[0], ref, rtol=1e-4, atol=1e-5)


def test_missing_weights_name_the_file_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    for name, file in (("res152", "resnet152-394f9c45.pth"), ("r2plus1d", "r2plus1d_18-91a641e6.pth"),
                       ("vggish", "vggish-10086976.pth")):
        with pytest.raises(bb.MissingWeights, match=file) as err:
            bb.weights_path(name, "")
        assert str(tmp_path / "th" / "hub" / "checkpoints" / file) in str(err.value) and "https://" in str(err.value)
    with pytest.raises(bb.MissingWeights, match="/nope/x.pth"):
        bb.build_backbone("res152", "/nope/x.pth", "cpu")
    assert bb.weights_path("res152", "random") is None
    with pytest.raises(ValueError, match="unknown vgg"):
        bb.parse_features("clip,vgg")
    assert bb.parse_features("clip, vggish,clip") == ("clip", "vggish")


def test_config_features_are_the_registry():
    import typing

    from workflows.config import ConfigError, ExtractConfig, load_config

    hint = typing.get_type_hints(ExtractConfig)["features"]  # tuple[Literal[...], ...]
    assert typing.get_args(typing.get_args(hint)[0]) == bb.FEATURES
    assert load_config(None, ["extract.features=[clip, res152]"]).extract.features == ("clip", "res152")
    with pytest.raises(ConfigError, match="extract.features.*'vgg' is not one of"):
        load_config(None, ["extract.features=[vgg]"])
    for name, e in bb.BACKBONES.items():  # the registry's columns and shapes are the import's
        assert RELEASED[e.column][1] == e.shape == bb.column_shape(name), name


def test_extract_refuses_missing_weights_before_ray(tmp_path, monkeypatch, capsys):
    from workflows import cli, extract

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(extract, "start_ray", lambda *a, **k: pytest.fail("Ray started"))
    manifest = tmp_path / "m.csv"
    manifest.write_text("filename\tevent_labels\na_0_10\tSpeech\n")
    base = ["extract", "--manifest", str(manifest), "--videos", str(tmp_path), "--out", str(tmp_path / "o")]
    assert cli.main(base + ["--features", "vggish,res152"]) == 2
    msg = capsys.readouterr().err
    assert "vggish-10086976.pth" in msg and msg.count("\n") == 1
    assert cli.main(base + ["--features", "res152", "--res152-weights", str(tmp_path / "w.pth")]) == 2
    assert "w.pth' not found" in capsys.readouterr().err
    assert cli.main(base + ["--features", "clip,res152", "--res152-weights", "random"]) == 2
    assert "--clip" in capsys.readouterr().err
    assert cli.main(base + ["--features", "r2p1d"]) == 2
    assert "unknown r2p1d" in capsys.readouterr().err


def test_compute_features_one_video_without_ray(synth_clips):
    from valor_core.config import MediaConfig
    from valor_core.media import decode

    d = decode(str(synth_clips[(10.0, 25)]), "v", MediaConfig(dense_frames=True, frame_size=112))
    models = {"vggish": bb.build_backbone("vggish", "random", "cpu"),
              "r2plus1d": bb.build_backbone("r2plus1d", "random", "cpu")}
    feats = bb.compute_features(["vggish", "r2plus1d"], d.dense_frames, d.audio, 48000, models)
    assert {k: (v.shape, v.dtype) for k, v in feats.items()} == {
        "vggish": ((10, 128), np.float32), "r2plus1d": ((10, 512), np.float32)}
    batch = bb.compute_features(["vggish"], None, [d.audio.reshape(-1)] * 2, 48000, models)
    np.testing.assert_allclose(batch["vggish"][1], feats["vggish"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs frames_dense"):
        bb.compute_features(["r2plus1d"], None, d.audio, 48000, models)


class _StubTeacher:
    name, checkpoint, dim = "stub", "none", 4

    def segment_logits(self, batch):
        n, T = len(batch), len(batch[0])
        return np.zeros((n, T, 25), np.float32), np.full((n, T, 4), 0.5, np.float32)


def test_stages_write_the_import_columns(synth_corpus, tmp_path):
    """Decode -> BackboneStage (vggish) -> ClipStage (a stub) -> Write in-process: the column has the imported schema;
    a video without audio gets NaN vggish and is partial (r2plus1d / res152 / clap_maps: the integration test below)."""
    import pyarrow.dataset as pads

    from valor_core.config import MediaConfig, TeacherConfig
    from workflows.extract import BackboneStage, ClipStage, Decode, Write, WriteSpec
    from workflows.features import column_array
    from workflows.manifest import read_manifest

    entries = [e for e in read_manifest(str(synth_corpus), str(Path(synth_corpus).parent))
               if not e.video_id.startswith("broken-") or "no_audio" in e.video_id]
    batch = {"video_id": np.array([e.video_id for e in entries], object),
             "source": np.array([e.source for e in entries], object),
             "split": np.array([e.split for e in entries], object),
             "labels": np.array([e.labels for e in entries], object),
             "weak": np.stack([np.asarray(e.weak, np.uint8) for e in entries])}
    dec = Decode(MediaConfig(dense_frames=True, frame_size=112), None)(batch)
    dec = BackboneStage("vggish", "random", {}, 1, "cpu", 48000, 10, drop=("audio", "audio_len"))(dec)
    assert "audio" not in dec and "dense" in dec
    dec = ClipStage("s", TeacherConfig(), 1, loader=lambda spec, cfg: _StubTeacher())(dec)
    out = str(tmp_path / "features")
    Write(WriteSpec(out=out, failures=out + "_failures", opts=None, run_id="r", segments=10, dense=False,
                    features=("clip", "vggish")))(dec)
    table = pads.dataset(out, format="parquet").to_table()
    assert "clap_logits" not in table.column_names and "clip_logits" in table.column_names
    assert table.schema.field("vggish").type == fixed_list(np.zeros((1, 10, 128), np.float32)).type
    rows = {r["video_id"]: r for r in table.select(["video_id", "status", "error"]).to_pylist()}
    ids = table.column("video_id").to_pylist()
    vgg = column_array(table, "vggish", (10, 128))
    silent = [i for i, v in enumerate(ids) if "no_audio" in v]
    assert len(silent) == 1 and np.isnan(vgg[silent[0]]).all() and rows[ids[silent[0]]]["status"] == "partial"
    good = [i for i in range(len(ids)) if i not in silent]
    assert good and np.isfinite(vgg[good]).all() and all(rows[ids[i]]["status"] == "ok" for i in good)


# --- integration: `valor extract` on real local Ray, then training data for the HAN preset ------------------------


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_teachers):
    from tests.loopback import kill_session, loopback_env
    from valor_core.media.synth import synth_corpus

    d = tmp_path_factory.mktemp("bbcorpus")
    manifest = synth_corpus(d, 2, seed=3)
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join([rows[0] + "\tsplit"] + [r + "\ttrain" for r in rows[1:]]) + "\n")
    out = str(d / "run" / "features")
    cmd = [sys.executable, "-m", "workflows.cli", "extract", "--manifest", str(manifest), "--videos", str(d),
           "--out", out, "--clip", tiny_teachers["clip"], "--clap", tiny_teachers["clap"], "--json",
           "--features", "clip,clap,vggish,res152,r2plus1d,clap_maps", "--vggish-weights", "random",
           "--res152-weights", "random", "--r2plus1d-weights", "random", "--num-cpus", "2", "--object-store-mb", "800",
           "--clip-actors", "1,1", "--clap-actors", "1,1", "--device", "cpu"]
    env = loopback_env(tiny_teachers["env"])
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=900)
    finally:
        kill_session(proc.pid)
    assert proc.returncode == 0, log[-4000:]
    return {"out": out, "result": json.loads(log.strip().splitlines()[-1]), "log": log}


@pytest.mark.integration
def test_extract_features_columns_like_import(extracted):
    import pyarrow.dataset as pads

    from workflows.features import column_array

    assert extracted["result"]["done"] == 2 and extracted["result"]["failed"] == 0, extracted["log"][-3000:]
    table = pads.dataset(extracted["out"], format="parquet").to_table()
    assert table.num_rows == 2 and set(table.column("status").to_pylist()) == {"ok"}
    for col in ("vggish", "res152", "r2plus1d", "clap_maps"):  # tiny CLAP = HTSAT-tiny: 768 wide, as the paper's
        want = fixed_list(np.zeros((1, *RELEASED[col][1]), np.float32)).type
        assert table.schema.field(col).type == want, (col, table.schema.field(col).type)
        values = column_array(table, col, RELEASED[col][1])
        assert np.isfinite(values).all() and values.std() > 0, col
    assert column_array(table, "clip_logits", (10, 25)).shape == (2, 10, 25)  # the teachers still run beside them
    runs = list((Path(extracted["out"]) / "_runs").glob("*.json"))
    record = json.loads(runs[0].read_text())
    assert record["extract"]["features"] == ["clip", "clap", "vggish", "res152", "r2plus1d", "clap_maps"]
    assert record["precision"] == "fp32"  # auto on CPU actors, resolved and recorded (valor parse builds with it)
    from workflows.features import recorded_precision

    assert recorded_precision(extracted["out"]) == "fp32"


@pytest.mark.integration
def test_extracted_dataset_trains_the_han_preset(extracted):
    import torch

    from valor_core.fit import build_model, build_optimizer, iterate_batches, to_tensors, train_epoch
    from valor_core.presets import PRESETS
    from workflows.trainset import load_training_data

    cfg = PRESETS["han"]
    assert cfg.features == "vggish_resnet_r2p1d"
    data, cfg2, meta = load_training_data(extracted["out"], cfg, splits=("train",))
    a = data["train"]
    assert len(a) == 2 and meta["adapted"] == {} and meta["labels"] == "on the fly"
    model = build_model(cfg2)
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_epoch(model, build_optimizer(model, cfg2), iterate_batches(to_tensors(a, cfg2), 2,
                                                                           torch.Generator().manual_seed(0)), cfg2, 5)
    assert np.isfinite(loss) and loss > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
