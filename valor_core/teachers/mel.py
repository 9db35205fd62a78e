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
    """(n,) float tensor -> (frames, n_mels) log-mel, as laion_clap.training.data.get_mel."""
    import torch

    n_fft = int(audio_cfg["window_size"])
    hop = int(audio_cfg["hop_size"])
    window = torch.hann_window(n_fft, device=audio_data.device, dtype=audio_data.dtype)
    spec = torch.stft(audio_data, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    power = spec.abs().pow(2.0)  # (freq, frames)
    fb = torch.from_numpy(_mel_fb(int(audio_cfg["sample_rate"]), n_fft, int(audio_cfg["mel_bins"]),
                                  float(audio_cfg["fmin"]), float(audio_cfg["fmax"]))).to(power)
    mel = fb @ power  # (n_mels, frames)
    mel = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
    return mel.T


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
