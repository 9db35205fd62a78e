"""The fast teacher/backbone path (GPU issue 13), tested on CPU: the same code runs on CUDA.

Stated tolerances (tiny random-init models, CPU):
- CLAP "device" pre-processing vs laion_clap's get_audio_embedding_from_data (fp32): embeddings within 1e-5 (seen:
  1.5e-8), for 1-s segments, ragged lengths, clipped samples and > 10-s inputs (random fusion crops).
- bf16 weights vs fp32: CLIP logits within 0.15 (logit_scale 14.3, i.e. cosine within 0.01; seen 0.05) and top-1
  agreement >= 0.9 (seen 1.0); CLAP embeddings within 5e-3 (seen 1e-3); backbones relative L2 error < 5 %.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.media_fixtures import (  # noqa: F401 - fixtures
    clap_teacher,
    clip_teacher,
    media_dir,
    synth_clips,
    tiny_teachers,
)
from valor_core import backbones as bb
from valor_core.classes import CLIP_THRESHOLDS
from valor_core.config import TeacherConfig
from valor_core.media import decode
from valor_core.teachers import load_clap_teacher, load_clip_teacher
from valor_core.teachers import precision as prec
from valor_core.teachers.agreement import compare_logits, precision_agreement
from valor_core.teachers.clip import attention_fast_path

CLIP_LOGIT_TOL, CLAP_EMB_TOL, LIB_TOL = 0.15, 5e-3, 1e-5


@pytest.fixture(scope="module")
def frames(synth_clips):
    return [decode(synth_clips[(10.0, 25)]).frames, decode(synth_clips[(9.5, 30)]).frames]  # 2 x (10, 224, 224, 3)


@pytest.fixture(scope="module")
def clip_bf16(tiny_teachers):
    return load_clip_teacher(tiny_teachers["clip"], TeacherConfig(device="cpu", precision="bf16", batch_size=8))


@pytest.fixture(scope="module")
def audio():
    rng = np.random.default_rng(0)
    seg = (0.3 * rng.standard_normal((3, 48000))).astype(np.float32)
    seg[0, :200] = 1.7  # clipped by the int16 round trip
    long = (0.3 * rng.standard_normal(48000 * 12)).astype(np.float32)  # > 10 s: the random fusion crops
    return seg, long


@pytest.fixture(autouse=True)
def cuda_norm_rule(monkeypatch):
    """Every test here runs with CUDA's rule for layer and group norms, which CPU's kernels do not enforce: the input
    and the affine parameters of one dtype (pytorch#138128). A bf16 tower that breaks it would fail on every GPU."""
    import torch.nn.functional as F

    def strict(name):
        orig = getattr(F, name)

        def norm(x, *args, **kwargs):
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            autocast = torch.is_autocast_enabled("cpu")  # CUDA's autocast runs these norms in fp32 (its cast list)
            assert autocast or weight is None or weight.dtype == x.dtype, \
                f"{name}: {x.dtype} input, {weight.dtype} weight"
            return orig(x, *args, **kwargs)
        monkeypatch.setattr(F, name, norm)
    strict("layer_norm")
    strict("group_norm")


class _Syncs:
    """Counts device-to-host copies (.cpu / .item / .tolist) made by torch tensors within the block."""

    def __init__(self, monkeypatch):
        self.calls = []
        for name in ("cpu", "item", "tolist"):
            orig = getattr(torch.Tensor, name)

            def wrapper(t, *a, _orig=orig, _name=name, **k):
                self.calls.append(_name)
                return _orig(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapper)


def test_clip_bf16_weights_agree_with_fp32(clip_teacher, clip_bf16, frames):
    visual = clip_bf16.model.visual
    assert visual.conv1.weight.dtype == torch.bfloat16 and visual.ln_pre.weight.dtype == torch.float32  # norms fp32
    assert next(clip_bf16.model.transformer.parameters()).dtype == torch.float32  # the text tower stays fp32
    np.testing.assert_allclose(clip_bf16.encode_text(), clip_teacher.encode_text(), atol=1e-6)
    ref, emb_ref = clip_teacher.segment_logits(frames)
    low, emb = clip_bf16.segment_logits(frames)
    assert low.dtype == emb.dtype == np.float32 and low.shape == ref.shape == (2, 10, 25)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1, atol=1e-5)
    assert np.abs(low - ref).max() < CLIP_LOGIT_TOL
    assert (low.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    rec = compare_logits(ref, low, "clip")
    assert rec["max_abs_diff"] == pytest.approx(float(np.abs(low - ref).max())) and rec["cells"] == 500
    # both precisions take MHA's fused fast path (SDPA inside); autocast would have disabled it
    assert attention_fast_path(clip_teacher) and attention_fast_path(clip_bf16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not attention_fast_path(clip_teacher)


def test_one_host_sync_per_batch(clip_bf16, clap_teacher, frames, audio, monkeypatch):
    clip_bf16.encode_text(), clap_teacher.encode_text()  # the cached captions
    clip_bf16._text_tensor(), clap_teacher._text_tensor()
    syncs = _Syncs(monkeypatch)
    clip_bf16.segment_logits(frames)  # 20 frames in 3 forwards of batch_size 8
    assert syncs.calls == ["cpu"]
    syncs.calls.clear()
    clap_teacher.segment_logits([audio[0][:2], audio[0][1:]])  # 4 segments, one forward
    assert syncs.calls == ["cpu"]


def test_auto_batch_size(monkeypatch):
    assert prec.auto_batch_size(0, torch.device("cpu"), 16, 512) == 64
    assert prec.auto_batch_size(24, torch.device("cpu"), 16, 512) == 24
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2 ** 30, 80 * 2 ** 30))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 1.0)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    assert prec.auto_batch_size(0, cuda, 16, 512) == 512  # 20 GiB / 16 MiB = 1280 -> the cap
    assert prec.auto_batch_size(0, cuda, 64, 4096) == 256  # 20 GiB / 64 MiB = 320 -> 256 (a power of two)
    # an actor capped at a quarter of the 80 GiB device, 4 GiB of it in use: (20 - 4) / 2 GiB / 16 MiB = 512 ...
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 0.25)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 4 * 2 ** 30)
    assert prec.auto_batch_size(0, cuda, 32, 4096) == 256  # ... 8 GiB / 32 MiB = 256, not 20 GiB / 32 MiB = 640
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 ** 30, 80 * 2 ** 30))
    assert prec.auto_batch_size(0, cuda, 16, 512) == 64  # never below the CPU size
    with pytest.raises(ValueError, match="batch_size -1"):
        prec.auto_batch_size(-1, cuda, 16, 512)
    assert prec.resolve_precision("auto", cuda) == "bf16" and prec.resolve_precision("auto", torch.device("cpu")) \
        == "fp32" and prec.resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_host_stack_is_one_concatenated_copy():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8) for n in (3, 1, 2)]
    out = prec.host_stack(arrays, torch.device("cpu"))  # on CUDA the same buffer is page-locked
    assert out.dtype == torch.uint8 and not out.is_pinned()
    np.testing.assert_array_equal(out.numpy(), np.concatenate(arrays))
    assert prec.upload(out, torch.device("cpu")).data_ptr() == out.data_ptr()  # no further copy on the CPU


def test_clip_compile_option_wraps_the_tower(tiny_teachers):
    t = load_clip_teacher(tiny_teachers["clip"], TeacherConfig(device="cpu", compile=True))
    assert t.batch_size == 64 and t.describe()["compile"] is True
    assert type(t.visual).__name__ == "OptimizedModule" and t.visual._orig_mod is t.model.visual


def test_clap_device_preprocessing_equals_the_library(tiny_teachers, clap_teacher, audio):
    seg, long = audio
    lib = load_clap_teacher(tiny_teachers["clap"], TeacherConfig(device="cpu", batch_size=8,
                                                                 clap_preprocess="library"))
    assert clap_teacher.preprocess_path == "device" and lib.preprocess_path == "library"
    ragged = [seg[0], seg[1], seg[2, :30000]]  # two runs of equal lengths
    np.testing.assert_allclose(clap_teacher.encode_audio(ragged), lib.encode_audio(ragged), atol=LIB_TOL)
    # the library's own call (a 12-s input: random crops drawn after np.random.seed(seed), as the teacher seeds)
    np.random.seed(0)
    ref = lib.module.get_audio_embedding_from_data([long], use_tensor=False)
    np.testing.assert_allclose(clap_teacher.encode_audio([long]), ref, atol=LIB_TOL)


def test_clap_bf16_weights_agree_with_fp32(tiny_teachers, clap_teacher, audio):
    seg, long = audio
    t = load_clap_teacher(tiny_teachers["clap"], TeacherConfig(device="cpu", precision="bf16", batch_size=8))
    branch = t.module.model.audio_branch
    assert branch.patch_embed.proj.weight.dtype == torch.bfloat16 and branch.bn0.weight.dtype == torch.float32
    items = [seg[0], seg[1], long]  # the long one goes through the fusion of the local views (an fp32 island)
    ref, low = clap_teacher.encode_audio(items), t.encode_audio(items)
    assert low.dtype == np.float32 and np.abs(low - ref).max() < CLAP_EMB_TOL
    assert (np.sum(low * ref, axis=1) > 0.999).all()


def test_compare_logits_counts_label_flips():
    a = np.tile(CLIP_THRESHOLDS + 0.5, (2, 4, 1)).astype(np.float32)  # (2 videos, 4 segments, 25): all on
    top = int(a[0, 0].argmax())
    other = 5 if top != 5 else 6
    b = a.copy()
    b[0, 0, 7] = CLIP_THRESHOLDS[7] - 0.5  # one cell falls below its threshold: one label flips
    b[1, 2, other] = a[1, 2, top] + 1.0  # one row's top-1 changes, its labels do not
    rec = compare_logits(a, b, "clip")
    assert rec["cells"] == 200 and rec["items"] == 8
    assert rec["max_abs_diff"] == pytest.approx(max(1.0, float(b[1, 2, other] - a[1, 2, other])))
    assert rec["top1_agreement"] == pytest.approx(7 / 8)
    assert rec["label_agreement"] == pytest.approx(199 / 200) and rec["labels_on"] == 1.0
    weak = np.zeros((2, 25), np.uint8)
    weak[:, top] = 1  # only the top class in the videos: the flipped class-7 cell is harvested as 0 either way
    assert compare_logits(a, b, "clip", weak=weak)["label_agreement"] == 1.0
    b[1] = np.nan  # a video without input is left out
    assert compare_logits(a, b, "clip")["items"] == 4
    with pytest.raises(ValueError, match="equal shapes"):
        compare_logits(a, b[:, :2], "clip")


def test_precision_agreement_builds_both_teachers(tiny_teachers, frames):
    rec = precision_agreement("clip", tiny_teachers["clip"], frames[:1], TeacherConfig(device="cpu"))
    assert rec["reference"] == "fp32" and rec["low"] == "bf16" and rec["cells"] == 250
    assert rec["max_abs_diff"] < CLIP_LOGIT_TOL and rec["top1_agreement"] >= 0.9 and rec["label_agreement"] >= 0.9


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def test_backbones_bf16_on_cpu_agree_with_fp32(monkeypatch):
    rng = np.random.default_rng(0)
    dense = rng.integers(0, 255, (2, 16, 64, 64, 3), dtype=np.uint8)  # 2 videos x 2 segments x 8 frames
    ref = bb.build_backbone("r2plus1d", "random", "cpu", segments=2, batch_size=3)
    low = bb.build_backbone("r2plus1d", "random", "cpu", segments=2, batch_size=3, precision="bf16")
    assert low.describe()["precision"] == "bf16" and next(low.net.parameters()).dtype == torch.bfloat16
    a = ref(dense)
    syncs = _Syncs(monkeypatch)
    b = low(dense)  # 4 snippets in 2 forwards, one copy back
    assert syncs.calls == ["cpu"]
    assert b.shape == a.shape == (2, 2, 512) and b.dtype == np.float32 and _rel(a, b) < 0.05
    waves = [(0.1 * rng.standard_normal(48000 * 3)).astype(np.float32) for _ in range(2)]
    v_ref = bb.build_backbone("vggish", "random", "cpu", segments=3)
    v_low = bb.build_backbone("vggish", "random", "cpu", segments=3, precision="bf16")
    assert v_ref.batch_size == 64  # batch_size 0 on CPU: the backbone's CPU default
    a, b = v_ref(waves, 48000), v_low(waves, 48000)
    assert b.shape == a.shape == (2, 3, 128) and _rel(a, b) < 0.05


def test_clap_maps_batched_equals_one_clip_at_a_time(tiny_teachers):
    rng = np.random.default_rng(1)
    waves = [(0.2 * rng.standard_normal(48000 * 10)).astype(np.float32),
             (0.2 * rng.standard_normal(48000 * 10)).astype(np.float32)]
    maps = bb.build_backbone("clap_maps", tiny_teachers["clap"], "cpu")
    assert maps.batch_size == 8 and maps.precision == "fp32"
    both = maps(waves, 48000)
    assert both.shape == (2, 64, 768) and both.dtype == np.float32
    np.testing.assert_allclose(maps(waves[1:], 48000)[0], both[1], atol=1e-5)
    lib = bb.build_backbone("clap_maps", tiny_teachers["clap"], "cpu", preprocess="library")
    np.testing.assert_allclose(lib(waves[:1], 48000)[0], both[0], atol=1e-4)
