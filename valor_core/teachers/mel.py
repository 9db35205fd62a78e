"""laion_clap's log-mel spectrogram without torchaudio (used only when torchaudio is not importable).

laion_clap's fusion path (`get_audio_features` -> `get_mel`) builds `torchaudio.transforms.MelSpectrogram` (Hann
window, center=True, reflect padding, power 2, HTK mel scale, no filterbank normalisation) followed by
`AmplitudeToDB(top_db=None)` (10 log10(max(x, 1e-10))). This module computes the same with torch.stft and librosa's
mel filterbank (htk=True, norm=None). `install_if_needed()` swaps it into laion_clap only when torchaudio is missing;
tests check that both agree on the same input where torchaudio exists.
"""
from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def _mel_fb(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=True,
                               norm=None).astype(np.float32)  # (n_mels, n_fft // 2 + 1)


def get_mel(audio_data, audio_cfg: dict):
    """(n,) float tensor -> (frames, n_mels) log-mel, as laion_clap.training.data.get_mel; (B, n) -> (B, frames,
    n_mels)."""
    import torch

    n_fft = int(audio_cfg["window_size"])
    hop = int(audio_cfg["hop_size"])
    window = torch.hann_window(n_fft, device=audio_data.device, dtype=audio_data.dtype)
    spec = torch.stft(audio_data, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    power = spec.abs().pow(2.0)  # ([B,] freq, frames)
    fb = torch.from_numpy(_mel_fb(int(audio_cfg["sample_rate"]), n_fft, int(audio_cfg["mel_bins"]),
                                  float(audio_cfg["fmin"]), float(audio_cfg["fmax"]))).to(power)
    mel = fb @ power  # ([B,] n_mels, frames)
    mel = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
    return mel.transpose(-1, -2)


def torchaudio_available() -> bool:
    try:
        import torchaudio  # noqa: F401
    except Exception:  # noqa: BLE001 - an ABI-broken torchaudio counts as missing too
        return False
    return True


def install_if_needed() -> bool:
    """Point laion_clap at this get_mel when torchaudio is not importable; returns True when it did."""
    if torchaudio_available():
        return False
    from laion_clap.training import data

    data.get_mel = get_mel
    return True


class MelBatch:
    """laion_clap's `get_mel` on a batch: (B, N) float -> (B, frames, 64) log-mel, on the input's device.

    torchaudio's MelSpectrogram + AmplitudeToDB(top_db=None) with the library's parameters when torchaudio imports
    (then equal to the library's per-row result), else `get_mel` above on the batch (torch.stft + librosa's HTK
    filterbank)."""

    def __init__(self, audio_cfg: dict, device):
        self.cfg = dict(audio_cfg)
        self.transforms = None
        if torchaudio_available():
            import warnings

            import torchaudio

            cfg = self.cfg
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchaudio's 'onesided' deprecation
                self.transforms = self._build(torchaudio, cfg, device)

    @staticmethod
    def _build(torchaudio, cfg, device):
        return (torchaudio.transforms.MelSpectrogram(
                sample_rate=cfg["sample_rate"], n_fft=cfg["window_size"], win_length=cfg["window_size"],
                hop_length=cfg["hop_size"], center=True, pad_mode="reflect", power=2.0, norm=None, onesided=True,
                n_mels=64, f_min=cfg["fmin"], f_max=cfg["fmax"]).to(device),
                torchaudio.transforms.AmplitudeToDB(top_db=None).to(device))

    def __call__(self, x):
        if self.transforms is None:
            return get_mel(x, self.cfg)
        import warnings

        spec, to_db = self.transforms
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchaudio's 'onesided' deprecation
            return to_db(spec(x.float())).transpose(-1, -2)
