"""The audio features as the official scripts made them (issue 22, audio side): VALOR's clap_preprocess.py CLAP
segments and feature maps (librosa.load at 48 kHz, the 480,000-sample squeeze, clap_utils' token order) and
AVVP-ECCV20's extract_audio.py 16-kHz wave before VGGish; the VGGish PCA file with NumPy arrays."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.media_fixtures import media_dir, tiny_teachers  # noqa: F401 - fixtures
from valor_core import backbones as bb
from valor_core.backbones import vggish
from valor_core.backbones.weights import BackboneError
from valor_core.media import decode
from valor_core.media.synth import write_video


def _librosa_load(path, sr=None):
    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # audioread fallback for mp4
        return librosa.load(str(path), sr=sr)


def _valor_clap_maps_reference(tower, audio_cfg, wave48k: np.ndarray) -> np.ndarray:
    """VALOR utils/clap_preprocess.py get_audio_feature_maps + utils/clap_utils.py htsat_forward(_features), on
    laion_clap's own get_audio_features: (64, C)."""
    from laion_clap.training.data import float32_to_int16, get_audio_features, int16_to_float32

    samples = np.round(np.linspace(0, len(wave48k) - 1, 480000)).astype(np.int32)
    audio = torch.from_numpy(int16_to_float32(float32_to_int16(wave48k[samples]))).float()
    d = get_audio_features({}, audio, 480000, data_truncating="fusion", data_filling="repeatpad", audio_cfg=audio_cfg)
    assert not bool(d["longer"].any())
    with torch.no_grad():
        x = d["mel_fusion"][None].transpose(1, 3)
        x = tower.bn0(x).transpose(1, 3)
        x = tower.reshape_wav2img(x)
        frames_num = x.shape[2]
        x = tower.patch_embed(x, longer_idx=[])
        if tower.ape:
            x = x + tower.absolute_pos_embed
        x = tower.pos_drop(x)
        for layer in tower.layers:
            x, _ = layer(x)
        x = tower.norm(x)
        B, N, C = x.shape
        SF = frames_num // (2 ** (len(tower.depths) - 1)) // tower.patch_stride[0]
        ST = frames_num // (2 ** (len(tower.depths) - 1)) // tower.patch_stride[1]
        x = x.permute(0, 2, 1).contiguous().reshape(B, C, SF, ST)
        B, C, F, T = x.shape
        c_freq_bin = F // tower.freq_ratio
        x = x.reshape(B, C, F // c_freq_bin, c_freq_bin, T)
        x = x.permute(0, 1, 3, 2, 4).contiguous().reshape(B, C, c_freq_bin, -1)
        temp = torch.flatten(x, 2)
    return temp.permute(0, 2, 1).contiguous()[0].numpy()


@pytest.mark.parametrize("seconds", [9.9, 10.0, 10.01])
def test_clap_maps_are_valor_get_audio_feature_maps(tiny_teachers, media_dir, seconds):
    """A 44.1-kHz clip through decode -> clap_maps equals VALOR's maps (laion_clap's get_audio_features, clap_utils'
    token order) of the same audio read as librosa.load(sr=48000) reads it, within 1e-5."""
    import librosa

    path = write_video(media_dir / f"clapmaps-{seconds}.mp4", duration=seconds, fps=25, size=(64, 64),
                       sample_rate=44100, channels=2)
    v = decode(path)
    assert v.wave_rate == 44100
    maps = bb.build_backbone("clap_maps", tiny_teachers["clap"], "cpu")
    got = maps([v.wave], v.wave_rate)[0]
    wave48k = librosa.resample(v.wave, orig_sr=44100, target_sr=48000, res_type="soxr_hq")
    module = maps.teacher.module
    want = _valor_clap_maps_reference(module.model.audio_branch, module.model_cfg["audio_cfg"], wave48k)
    assert got.shape == want.shape == (64, 768)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_decoded_audio_is_librosa_load_cut_as_valor_clap_preprocess(media_dir):
    """decode's T CLAP segments are VALOR's cuts (round(linspace(0, L, 11)) starts, L // 10 long) of
    librosa.load(path, sr=48000), AAC tail included; FFmpeg CLI vs PyAV int16 rounding may differ by one LSB."""
    path = write_video(media_dir / "cuts.mp4", duration=10.03, fps=25, size=(64, 64), sample_rate=44100, channels=2)
    ref, _ = _librosa_load(path, 48000)
    samples = np.round(np.linspace(0, ref.shape[0], 11)).astype(np.int32)
    step = ref.shape[0] // 10
    want = np.stack([ref[s:s + step] for s in samples[:10]])
    v = decode(path)
    assert v.audio.shape == want.shape and len(ref) % 10  # a length where the cuts matter
    assert np.abs(v.audio - want).max() <= 1.01 / 32768


def _moviepy_16k(wave44k: np.ndarray) -> np.ndarray:
    """moviepy 1.0.3 AudioClip.write_audiofile(fps=16000) of an AudioFileClip at 44.1 kHz (iter_chunks,
    FFMPEG_AudioReader.get_frame), chunk by chunk as moviepy does."""
    fps, src_fps = 16000, 44100
    duration = len(wave44k) / src_fps
    totalsize = int(fps * duration)
    chunksize = 2000
    nchunks = totalsize // chunksize + 1
    pospos = np.linspace(0, totalsize, nchunks + 1, endpoint=True, dtype=int)
    out = []
    for i in range(nchunks):
        tt = (1.0 / fps) * np.arange(pospos[i], pospos[i + 1])
        in_time = (tt >= 0) & (tt < duration)
        frames = np.round(src_fps * tt).astype(int)[in_time]
        res = np.zeros(len(tt))
        res[in_time] = np.concatenate([wave44k, np.zeros(1)])[np.minimum(frames, len(wave44k))]
        out.append(res)
    return np.concatenate(out)


def test_vggish_input_is_avvp_extract_audio_16k(media_dir):
    path = write_video(media_dir / "vggish.mp4", duration=10.0, fps=25, size=(64, 64), sample_rate=44100)
    v = decode(path)
    ref16k = _moviepy_16k(v.wave.astype(np.float64))
    want = vggish.log_mel(torch.from_numpy(ref16k.astype(np.float32)))[:960].reshape(10, 1, 96, 64)
    got = vggish.examples(v.wave, v.wave_rate, 10)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_vggish_pca_file_with_numpy_arrays(tmp_path):
    rng = np.random.default_rng(0)
    vecs, means = rng.standard_normal((128, 128)), rng.standard_normal((128, 1))
    path = tmp_path / "pca_numpy.pth"
    torch.save({"pca_eigen_vectors": vecs, "pca_means": means}, path)
    model = bb.build_backbone("vggish", "random", "cpu", pca=str(path))
    emb = rng.standard_normal((3, 128)).astype(np.float32)
    want = np.round((np.clip((vecs @ (emb.T.astype(np.float64) - means)).T, -2, 2) + 2) * 255 / 4)
    np.testing.assert_array_equal(model.postprocess(emb), want.astype(np.float32))
    bad = tmp_path / "pca_code.pth"
    torch.save({"pca_eigen_vectors": vecs, "pca_means": means, "hook": warnings.WarningMessage}, bad)
    with pytest.raises(BackboneError, match=r"pca_code\.pth: refused: .*WarningMessage") as err:
        bb.build_backbone("vggish", "random", "cpu", pca=str(bad))
    assert "\n" not in str(err.value)


def test_datasets_of_other_audio_preprocessing_are_not_mixed(tmp_path):
    """An extraction recording the official audio preprocessing of its vggish column (as valor extract now records
    it) and one from before (none recorded) are refused together, naming the column; two new ones mix."""
    from tests.test_mix import _made, _write
    from workflows.extract import AUDIO_PREPROCESSING
    from workflows.features import MixError, check_mix

    new = dict(_made(), preprocessing={"vggish": AUDIO_PREPROCESSING["vggish"]})
    _write(tmp_path / "old", ["a_0"], made=_made())
    _write(tmp_path / "new", ["b_0"], made=new)
    _write(tmp_path / "new2", ["c_0"], made=new)
    cols = [["vggish", "res152", "r2plus1d"]] * 2
    with pytest.raises(MixError, match=r"extracted with different vggish preprocessing \(None vs 'AVVP-ECCV20 "
                                       r"scripts/extract_audio.py .*'\)") as err:
        check_mix([str(tmp_path / "old"), str(tmp_path / "new")], cols)
    assert "\n" not in str(err.value)
    check_mix([str(tmp_path / "new"), str(tmp_path / "new2")], cols)
