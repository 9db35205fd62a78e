"""Teachers through open_clip and laion_clap themselves (tiny random-init models, offline).

Tolerances: logits are compared with atol 1e-4 (fp32 CPU; chunking changes BLAS blocking, i.e. the last bits only);
embeddings' norms with 1e-5.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.media_fixtures import (  # noqa: F401 - fixtures
    clap_teacher,
    clip_teacher,
    media_dir,
    synth_clips,
    tiny_teachers,
)
from valor_core.classes import CLAP_CAPTIONS, CLIP_CAPTIONS
from valor_core.config import MediaConfig, TeacherConfig
from valor_core.media import decode
from valor_core.teachers import MissingCheckpoint, TeacherError, load_clap_teacher, load_clip_teacher
from valor_core.teachers.clap import parse_clap_spec
from valor_core.teachers.clip import parse_clip_spec

ATOL = 1e-4
CLAP_SEGMENTS = 4  # CLAP repeat-pads every segment to 10 s, so fewer segments = a cheaper test, same code path


@pytest.fixture(scope="module")
def videos(synth_clips):
    return [decode(synth_clips[(10.0, 25)]), decode(synth_clips[(9.5, 30)])]


@pytest.fixture(scope="module")
def audio_videos(synth_clips):
    cfg = MediaConfig(segments=CLAP_SEGMENTS)
    return [decode(synth_clips[(10.0, 25)], cfg=cfg), decode(synth_clips[(12.0, 30)], cfg=cfg)]


def test_clip_shapes_norms_and_scale_times_cosine(clip_teacher, videos):
    import torch

    t = clip_teacher
    text = t.encode_text()
    assert text.shape == (25, t.dim) and t.encode_text() is text  # cached
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    logits, emb = t.segment_logits(videos)
    assert logits.shape == (2, 10, 25) and emb.shape == (2, 10, t.dim) and logits.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(logits, t.logit_scale * emb @ text.T, atol=ATOL)
    # ... and equal to open_clip's own forward (logit_scale.exp() x normalised image @ text features)
    with torch.no_grad():
        img, txt, scale = t.model(t.preprocess(videos[0].frames), t.tokenizer(list(CLIP_CAPTIONS)))
    np.testing.assert_allclose(logits[0], (scale * img @ txt.T).numpy(), atol=ATOL)
    assert t.logit_scale == pytest.approx(float(t.model.logit_scale.detach().exp()))


def test_clip_batched_equals_one_by_one(clip_teacher, videos):
    batched, emb = clip_teacher.segment_logits(videos)  # batch_size 8: chunks straddle the two videos
    for i, v in enumerate(videos):
        one, e1 = clip_teacher.segment_logits([v])
        np.testing.assert_allclose(batched[i], one[0], atol=ATOL)
        np.testing.assert_allclose(emb[i], e1[0], atol=1e-5)
    np.testing.assert_allclose(clip_teacher.encode_frames(videos[0].frames[:3]), emb[0, :3], atol=1e-5)


def test_clip_resizes_without_crop(clip_teacher):
    frames = np.zeros((1, 224, 224, 3), np.uint8)
    frames[:, :, :8] = 255  # a white stripe at the left edge survives a resize, a centre crop would drop it
    x = clip_teacher.preprocess(frames)
    assert tuple(x.shape[-2:]) == clip_teacher.image_size
    assert float(x[0, :, :, 0].mean()) > float(x[0, :, :, -1].mean()) + 1.0


def test_clap_shapes_norms_and_library_path(clap_teacher, audio_videos):
    t = clap_teacher
    text = t.encode_text()
    assert text.shape == (25, t.dim) and t.dim == 512
    logits, emb = t.segment_logits(audio_videos)  # segments of 2.5 s and 3 s: a list path (lengths differ)
    assert logits.shape == (2, CLAP_SEGMENTS, 25) and emb.shape == (2, CLAP_SEGMENTS, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(logits, t.logit_scale * emb @ text.T, atol=ATOL)
    # the library's own calls, as METHOD-NOTES describes the paper's run
    lib_audio = t.module.get_audio_embedding_from_data(list(audio_videos[0].audio), use_tensor=False)
    lib_text = t.module.get_text_embedding(list(CLAP_CAPTIONS), use_tensor=False)
    scale = float(t.module.model.logit_scale_a.exp())
    np.testing.assert_allclose(logits[0], scale * lib_audio @ lib_text.T, atol=ATOL)
    # one by one (chunking and video grouping do not matter)
    one, _ = t.segment_logits([audio_videos[1]])
    np.testing.assert_allclose(one[0], logits[1], atol=ATOL)


def test_clap_missing_audio_gives_nan_rows(clap_teacher, audio_videos):
    import dataclasses

    silent = dataclasses.replace(audio_videos[0], audio=None, audio_missing=True)
    logits, emb = clap_teacher.segment_logits([silent, audio_videos[0]])
    assert np.isnan(logits[0]).all() and np.isnan(emb[0]).all() and np.isfinite(logits[1]).all()


def test_mel_fallback_matches_torchaudio():
    import torch
    from laion_clap.training import data

    from valor_core.teachers import mel

    cfg = {"sample_rate": 48000, "window_size": 1024, "hop_size": 480, "mel_bins": 64, "fmin": 50, "fmax": 14000}
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(48000 * 2).astype(np.float32) * 0.1)
    ref = data.get_mel(x, cfg)  # torchaudio
    ours = mel.get_mel(x, cfg)
    assert ours.shape == ref.shape == (201, 64)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=2e-3)  # dB


def test_mel_fallback_gives_the_same_embeddings(clap_teacher, audio_videos, monkeypatch):
    seg = audio_videos[0].audio[:2]
    ref = clap_teacher.encode_audio(seg)
    assert clap_teacher.frontend._mel.transforms is not None  # torchaudio here
    monkeypatch.setattr(clap_teacher.frontend._mel, "transforms", None)  # the device path without torchaudio
    np.testing.assert_allclose(clap_teacher.encode_audio(seg), ref, atol=1e-4)


def test_spec_parsing(tmp_path):
    assert parse_clip_spec("ViT-L-14:openai") == ("ViT-L-14", "openai", None)
    assert parse_clip_spec("ViT-L-14:/m/ckpt.pt") == ("ViT-L-14", "/m/ckpt.pt", None)
    assert parse_clip_spec("ViT-B-32:random") == ("ViT-B-32", None, None)
    with pytest.raises(TeacherError, match="pretrained"):
        parse_clip_spec("ViT-L-14")
    # a bare path is laion_clap's default tower, HTSAT-tiny, as VALOR loads 630k-fusion-best.pt (CLAP_Module(True))
    assert parse_clap_spec("/w/630k-fusion-best.pt") == {"checkpoint": "/w/630k-fusion-best.pt",
                                                         "amodel": "HTSAT-tiny", "enable_fusion": True,
                                                         "hf_hub_cache": None}
    assert parse_clap_spec("HTSAT-base:nofusion:/w/c.pt")["enable_fusion"] is False
    assert parse_clap_spec("HTSAT-base:/w/c.pt")["amodel"] == "HTSAT-base"
    assert parse_clap_spec("random")["checkpoint"] is None


def test_missing_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(MissingCheckpoint, match="nowhere/ViT-L-14.pt"):
        load_clip_teacher("ViT-B-32:/nowhere/ViT-L-14.pt", TeacherConfig(device="cpu"))
    with pytest.raises(MissingCheckpoint, match="(?s)nowhere/630k-fusion-best.pt.*630k-fusion-best.pt"):
        load_clap_teacher("/nowhere/630k-fusion-best.pt", TeacherConfig(device="cpu"))
    with pytest.raises(TeacherError, match="no pretrained tag"):
        load_clip_teacher("ViT-B-32:no-such-tag", TeacherConfig(device="cpu"))


def test_pretrained_tag_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: the tag's weights are not here
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MissingCheckpoint, match="(?s)ViT-B-32:openai.*HF_HUB_CACHE"):
        load_clip_teacher("ViT-B-32:openai", TeacherConfig(device="cpu"))


def test_tiny_clip_is_deterministic(tiny_teachers, tmp_path):
    import torch

    from valor_core.teachers.tiny import write_tiny_clip

    again = write_tiny_clip(tmp_path, seed=0).split(":")[1]
    a = torch.load(tiny_teachers["clip"].split(":")[1])["state_dict"]
    b = torch.load(again)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
