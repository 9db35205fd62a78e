"""Any video in, with the paper's features: checkpoints of the presets that take VGGish / ResNet-152 / R(2+1)D
(han, valor, valor+) or CLAP maps / CLIP / R(2+1)D (valor++) parse a generated mp4, and the features `valor parse`
computes are exactly those `valor extract` writes (the JSON's segment_prob is the model's prediction on the extracted
dataset's columns). Every backbone is built through its real library with random weights (torchvision resnet152 and
r2plus1d_18, the torch VGGish, laion_clap's HTSAT-tiny, an open_clip ViT with 768-d embeddings as ViT-L/14's).

The han chain mixes sources: released-layout files -> `valor import llp`, a generated mp4 -> `valor extract
--features vggish,res152,r2plus1d`, both -> `valor train --preset han --features A --features B` (one epoch, Ray Train)
-> `valor parse` of the extracted video with that checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import annotation_subset
from tests.test_parse import SCHEMA
from workflows.features import RELEASED

PICKS = {"train": 4, "val": 2, "test": 2}
HAN_COLUMNS = {"audio": "vggish", "frames": "res152", "clips": "r2plus1d"}
NARROW = ["--set", "model.hidden=32", "--set", "model.ff=64", "--set", "optim.batch_size=4",
          "--set", "optim.warmup_epochs=0"]


def _main(argv, capsys) -> tuple[int, str, str]:
    from workflows.cli import main

    capsys.readouterr()
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _parse_json(out: Path, vid: str) -> dict:
    import jsonschema

    r = json.loads((out / "parsed" / f"{vid}.json").read_text())
    jsonschema.validate(r, SCHEMA)
    return r


def _predicted(checkpoint: str, arrays) -> tuple[np.ndarray, np.ndarray]:
    """(audio, visual) segment probabilities (T, 25) of the checkpoint's model on one video's arrays."""
    from valor_core.fit import predict_probs
    from workflows.checkpoints import load_checkpoint_model

    model, _, _ = load_checkpoint_model(checkpoint)
    seg, _ = predict_probs(model, arrays)
    return seg[0, :, 0], seg[0, :, 1]


# --- han: imported + extracted -> valor train -> valor parse ------------------------------------------------------


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Annotations (the first rows of each real split file) and the AVVP-ECCV20 feats/ folders for those videos."""
    d = tmp_path_factory.mktemp("release")
    ann = d / "annotations"
    ids = annotation_subset(ann, PICKS)
    rng = np.random.default_rng(0)
    for vid in [v for vs in ids.values() for v in vs]:
        for col in HAN_COLUMNS.values():
            folder, shape = RELEASED[col]
            path = d / folder / f"{vid[:11]}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.abs(rng.normal(size=shape)).astype(np.float32))
    return {"ann": ann, "feats": d / "feats", "ids": ids}



@pytest.fixture(scope="module")
def mixed(release, ray_local, tmp_path_factory):
    """The imported dataset, the extracted one (one generated 10-s mp4, random-weight backbones on local Ray) and the
    han checkpoint `valor train` made from both."""
    from valor_core.media.synth import synth_corpus
    from workflows.cli import main

    root = tmp_path_factory.mktemp("mixed")
    imported = root / "llp" / "features"
    assert main(["import", "llp", "--feats", str(release["feats"]), "--annotations", str(release["ann"]),
                 "--out", str(imported), "--json"]) == 0
    videos = root / "videos"
    manifest = synth_corpus(videos, 1, seed=7, size=(160, 96), fps=8)
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join([rows[0] + "\tsplit"] + [r + "\ttrain" for r in rows[1:]]) + "\n")
    vid = rows[1].split("\t")[0]
    extracted = root / "mine" / "features"
    assert main(["extract", "--manifest", str(manifest), "--videos", str(videos), "--out", str(extracted),
                 "--features", "vggish,res152,r2plus1d", "--vggish-weights", "random", "--res152-weights", "random",
                 "--r2plus1d-weights", "random", "--device", "cpu", "--json"]) == 0
    storage = root / "ray"
    argv = ["train", "--preset", "han", "--features", str(imported), "--features", str(extracted), "--annotations",
            str(release["ann"]), "--workers", "1", "--epochs", "1", "--tracking-uri", f"sqlite:///{root}/m.db",
            "--storage", str(storage), "--no-figures", "--json", *NARROW]
    return {"imported": str(imported), "extracted": str(extracted), "video": vid,
            "mp4": str(videos / f"{vid}.mp4"), "train_argv": argv, "root": root}


@pytest.mark.integration  # real local Ray: import, extract (ResNet-152 on CPU), Ray Train
def test_imported_and_extracted_videos_train_han(mixed, release, capsys):
    from valor_core.presets import get_preset
    from workflows.features import column_array, read_features
    from workflows.trainset import load_training_data

    # the training data: the imported videos and the extracted one, each with its own source's values
    data, cfg, meta = load_training_data([mixed["imported"], mixed["extracted"]], get_preset("han"),
                                         annotations=str(release["ann"]))
    assert meta["adapted"] == {} and cfg.model == get_preset("han").model
    assert sorted(data["train"].video_ids) == sorted(release["ids"]["train"] + [mixed["video"]])
    assert len(data["val"]) == PICKS["val"] and data["val"].audio_gt is not None
    for uri in (mixed["imported"], mixed["extracted"]):
        table = read_features(uri)
        ids = table.column("video_id").to_pylist()
        rows = [data["train"].video_ids.tolist().index(v) for v in ids if v in data["train"].video_ids]
        for field, col in HAN_COLUMNS.items():
            want = column_array(table, col, RELEASED[col][1])[[ids.index(v) for v in data["train"].video_ids[rows]]]
            np.testing.assert_array_equal(getattr(data["train"], field)[rows], want, err_msg=f"{uri} {col}")
    # one short epoch of Ray Train on the mixture
    rc, stdout, err = _main(mixed["train_argv"], capsys)
    assert rc == 0, err[-3000:]
    trained = json.loads(stdout.strip().splitlines()[-1])
    assert trained["epochs"] == 1 and trained["val"]["videos"] == PICKS["val"]
    config = json.loads((Path(trained["checkpoint"]) / "config.json").read_text())
    assert config["data"]["features"] == [mixed["imported"], mixed["extracted"]]
    assert config["data"]["videos"]["train"] == PICKS["train"] + 1
    mixed["checkpoint"] = trained["checkpoint"]
    # the checkpoint's recorded sources (a list) serve `valor predict` without --features
    npz = mixed["root"] / "val.npz"
    rc, stdout, err = _main(["predict", "--checkpoint", trained["checkpoint"], "--annotations", str(release["ann"]),
                             "--split", "val", "--out", str(npz), "--json"], capsys)
    assert rc == 0, err[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["videos"] == PICKS["val"]
    assert sorted(np.load(npz)["video_ids"]) == sorted(release["ids"]["val"])


@pytest.mark.integration  # ResNet-152 on CPU (about 20 s a video)
def test_parse_with_the_han_checkpoint_is_the_extract_path(mixed, tmp_path, capsys):
    """`valor parse` of the extracted mp4 with the checkpoint trained on the mixture: it computes the backbones the
    extraction recorded (random weights here, no --weights given) and its segment probabilities are the model's on
    the extracted dataset's columns."""
    from valor_core.arrays import AVVPArrays
    from workflows.features import column_array, read_features

    if "checkpoint" not in mixed:
        pytest.fail("needs the checkpoint of test_imported_and_extracted_videos_train_han (run the module)")
    out = tmp_path / "parsed"
    rc, stdout, err = _main(["parse", mixed["mp4"], "--checkpoint", mixed["checkpoint"], "--out", str(out),
                             "--no-ray", "--device", "cpu", "--json"], capsys)
    assert rc == 0, err[-3000:]
    last = json.loads(stdout.strip().splitlines()[-1])
    assert {k: last[k] for k in ("videos", "failed", "out")} == {"videos": 1, "failed": 0, "out": str(out)}
    r = _parse_json(out, mixed["video"])
    assert r["features"] == "vggish_resnet_r2p1d" and r["segments"] == 10 and r["windows"] == 1
    table = read_features(mixed["extracted"])
    arrays = AVVPArrays(video_ids=np.array([mixed["video"]]), weak=np.zeros((1, 25), np.uint8),
                        **{role: column_array(table, col, RELEASED[col][1]) for role, col in HAN_COLUMNS.items()})
    pa, pv = _predicted(mixed["checkpoint"], arrays)
    np.testing.assert_allclose(np.array(r["segment_prob"]["audio"]), pa, atol=6e-6)
    np.testing.assert_allclose(np.array(r["segment_prob"]["visual"]), pv, atol=6e-6)
    assert (out / "parsed" / f"{mixed['video']}.png").stat().st_size > 0 and (out / "index.html").is_file()


# --- valor++: CLAP maps, CLIP, R(2+1)D --------------------------------------------------------------------------------


def _clip768(root: Path) -> str:
    """An open_clip ViT teacher (random, tiny towers) whose embeddings are 768-d as ViT-L/14's; its spec."""
    import open_clip
    import torch

    from valor_core.teachers.tiny import TINY_CLIP_CONFIG

    d = root / "clip768"
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "tiny-clip768.json"
    cfg.write_text(json.dumps({**TINY_CLIP_CONFIG, "embed_dim": 768}))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip768", pretrained=None, device="cpu")
    torch.save({"state_dict": model.state_dict()}, d / "tiny-clip768.pt")
    return f"{cfg}:{d / 'tiny-clip768.pt'}"


@pytest.mark.integration  # laion_clap, R(2+1)D and CLIP twice on CPU (about 30 s)
def test_parse_with_a_valor_pp_checkpoint_is_the_extract_path(tiny_teachers, tmp_path, capsys, monkeypatch):
    """A valor++ checkpoint (its HAN narrowed, its inputs the preset's: clap_maps (64, 768), CLIP (10, 768), r2plus1d
    (10, 512)) parses a generated mp4; the same video through the extraction stages (decode -> clap_maps and r2plus1d
    backbones -> CLIP teacher -> the features dataset writer), read back as valor++ training data, gives the model the
    same segment probabilities."""
    from valor_core.config import MediaConfig, TeacherConfig, replace, to_dict
    from valor_core.fit import build_model
    from valor_core.media.synth import Content, write_video
    from valor_core.presets import get_preset
    from workflows.checkpoints import save_checkpoint_dir
    from workflows.extract import BackboneStage, ClipStage, Decode, Write, WriteSpec
    from workflows.trainset import load_training_data

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: default weights are missing
    clip = _clip768(tmp_path)
    cfg = replace(get_preset("valor++"), **{"model.hidden": 32, "model.ff": 64, "model.layers": 1})
    state = build_model(cfg).state_dict()
    ckpt = save_checkpoint_dir(str(tmp_path / "ckpt"), model_state=state, best_state=state, optimizer_state=None,
                               state={}, config={"train": to_dict(cfg), "data": {}})
    video = write_video(tmp_path / "v" / "pp.mp4", duration=10.0, fps=8, size=(160, 96),
                        content=Content(audio=[(12, 2.0, 6.0)], visual=[(3, 4.0, 9.0)]), seed=3)
    # the extraction stages, in-process
    batch = {"video_id": np.array(["pp"], object), "source": np.array([str(video)], object),
             "split": np.array(["train"], object), "labels": np.array(["Speech"], object),
             "weak": np.eye(25, dtype=np.uint8)[[0]]}
    dec = Decode(MediaConfig(dense_frames=True), None)(batch)
    dec = BackboneStage("clap_maps", tiny_teachers["clap"], {}, 1, "cpu", 48000, 10)(dec)
    dec = BackboneStage("r2plus1d", "random", {}, 1, "cpu", 48000, 10)(dec)
    dec = ClipStage(clip, TeacherConfig(device="cpu"), 1)(dec)
    feats = str(tmp_path / "extracted")
    Write(WriteSpec(out=feats, failures=feats + "_failures", opts=None, run_id="r", segments=10, dense=False,
                    features=("clip", "clap_maps", "r2plus1d")))(dec)
    # read back as training inputs (loss "han": the weak labels suffice; valor++'s own loss would need harvested labels)
    data, cfg2, meta = load_training_data(feats, replace(cfg, loss="han"), splits=("train",))
    assert meta["adapted"] == {} and cfg2.model == cfg.model  # the preset's inputs, not re-shaped
    arrays = data["train"]
    assert arrays.audio.shape == (1, 64, 768) and arrays.frames.shape == (1, 10, 768) and arrays.clips.shape == (
        1, 10, 512)
    pa, pv = _predicted(ckpt, arrays)
    # valor parse: no features dataset recorded, so the teachers and the r2plus1d weights are given
    out = tmp_path / "parsed"
    argv = ["parse", str(video), "--checkpoint", ckpt, "--out", str(out), "--clip", clip, "--clap",
            tiny_teachers["clap"], "--no-ray", "--device", "cpu", "--json"]
    rc, _, err = _main(argv, capsys)
    assert rc == 2 and "r2plus1d_18-91a641e6.pth" in err and err.count("\n") == 1  # hub cache empty: named file
    narrow = [tiny_teachers["clip"] if a == clip else a for a in argv]  # a CLIP of 32-d embeddings
    rc, _, err = _main(narrow + ["--weights", "r2plus1d=random"], capsys)
    assert rc == 2 and "its HAN takes frames of width 768; the CLIP teacher" in err and "gives 32" in err, err[-2000:]
    rc, stdout, err = _main(argv + ["--weights", "r2plus1d=random"], capsys)
    assert rc == 0, err[-3000:]
    r = _parse_json(out, "pp")
    assert r["features"] == "clip_clap_maps"
    np.testing.assert_allclose(np.array(r["segment_prob"]["audio"]), pa, atol=6e-6)
    np.testing.assert_allclose(np.array(r["segment_prob"]["visual"]), pv, atol=6e-6)
    assert np.ptp(pa) > 0 or np.ptp(pv) > 0  # the probabilities depend on the input (not a constant model)
