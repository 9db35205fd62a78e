"""VGGish (Hershey et al. 2017; AudioSet's TF reference `models/research/audioset/vggish`) in torch: 128-d per 0.96 s.

Input: the 16-kHz audio of AVVP-ECCV20's `scripts/extract_audio.py` (moviepy 1.x: the clip at 44.1 kHz, then the
nearest 44.1-kHz sample for each 16-kHz one, no anti-alias filter; valor_core.media.audio.moviepy_16k), then as
`vggish_input.waveform_to_examples` (already at 16 kHz: no resampy): |STFT| with a 25-ms periodic Hann window, 10-ms hop, 512-point FFT, no centering; 64 mel bands
125-7500 Hz with the reference's own HTK-mel triangle matrix (`mel_features.spectrogram_to_mel_matrix`, DC bin zeroed);
log(mel + 0.01); non-overlapping examples of 96 frames x 64 bands. A 10-s clip gives 10 examples (one per segment);
another length gives T examples picked at round(linspace(0, n-1, T)).
Network as the torchvggish / torchaudio ports (torchaudio 2.9 no longer ships `torchaudio.prototype.pipelines.VGGISH`,
so it is built here): conv 64 - pool - 128 - pool - 256 x2 - pool - 512 x2 - pool (3x3, ReLU, 2x2 max-pool), flattened
in TF's NHWC order, fc 4096 - 4096 - 128 with ReLU after each (as both ports). Weights: torchvggish's
`vggish-10086976.pth` (keys features.* / embeddings.*) or a torchaudio-style state dict (features_network.* /
embedding_network.*).
Resampling, log-mel and the network run on the backbone's device (one host copy of the embeddings per call).
Optional PCA postprocessing (torchvggish's `vggish_pca_params-970ea276.pth`: pca_eigen_vectors, pca_means, as tensors
or NumPy arrays; read weights-only with NumPy's array reconstruction allowed, valor_core.checkpoint_io): PCA,
clip to [-2, 2], quantise to 0..255 (kept as float32), as the reference's Postprocessor.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from valor_core.backbones.base import Backbone
from valor_core.backbones.weights import BackboneError, load_into
from valor_core.checkpoint_io import load_weights
from valor_core.media import audio as official_audio
from valor_core.teachers import precision as prec

SAMPLE_RATE = 16000
WINDOW, HOP, FFT, MELS, EXAMPLE = 400, 160, 512, 64, 96  # 25 ms, 10 ms, 2^ceil(log2(400)), bands, frames/example
RELEASES = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
FILENAME, URL = "vggish-10086976.pth", RELEASES + "vggish-10086976.pth"
PCA_FILENAME = "vggish_pca_params-970ea276.pth"
PCA_URL = RELEASES + PCA_FILENAME
OFFICIAL = "AVVP-ECCV20 scripts/extract_audio.py (moviepy 1.x 16 kHz nearest-sample pick from 44.1 kHz); valor 2"


def mel_matrix(num_mel_bins: int = MELS, num_spectrogram_bins: int = FFT // 2 + 1, sample_rate: int = SAMPLE_RATE,
               lower_hz: float = 125.0, upper_hz: float = 7500.0) -> np.ndarray:
    """(spectrogram bins, mel bins) as the reference's mel_features.spectrogram_to_mel_matrix."""
    def hz_to_mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)

    bins_mel = hz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins))
    edges = np.linspace(hz_to_mel(lower_hz), hz_to_mel(upper_hz), num_mel_bins + 2)
    m = np.empty((num_spectrogram_bins, num_mel_bins))
    for i in range(num_mel_bins):
        lo, c, hi = edges[i:i + 3]
        m[:, i] = np.maximum(0.0, np.minimum((bins_mel - lo) / (c - lo), (hi - bins_mel) / (hi - c)))
    m[0, :] = 0.0
    return m.astype(np.float32)


def log_mel(wave16k) -> "np.ndarray":
    """1-D torch float tensor at 16 kHz -> (frames, 64) log-mel (torch, float64 inside, on the wave's device), as
    vggish_input.waveform_to_examples."""
    import torch

    if wave16k.numel() < WINDOW:
        wave16k = torch.nn.functional.pad(wave16k, (0, WINDOW - wave16k.numel()))
    dev = wave16k.device
    frames = wave16k.unfold(0, WINDOW, HOP).double()  # (n, 400), partial frames dropped
    window = 0.5 - 0.5 * torch.cos(2 * np.pi / WINDOW * torch.arange(WINDOW, dtype=torch.float64, device=dev))
    spec = torch.fft.rfft(frames * window, n=FFT).abs()  # periodic Hann above
    mel = spec @ torch.from_numpy(mel_matrix()).double().to(dev)
    return torch.log(mel + 0.01).float()


def examples(wave, sample_rate: int, segments: int, device=None):
    """A waveform -> (segments, 1, 96, 64) float tensor of VGGish examples (computed on `device`; None = CPU); the
    16-kHz wave is AVVP-ECCV20 extract_audio.py's (valor_core.media.audio.moviepy_16k)."""
    import torch

    wave16k = official_audio.moviepy_16k(np.asarray(wave, np.float32), int(sample_rate))
    if device is None or getattr(device, "type", device) == "cpu":
        x = torch.from_numpy(wave16k)
    else:
        x = prec.upload(wave16k, device)
    lm = log_mel(x)
    n = max(1, lm.shape[0] // EXAMPLE)
    if lm.shape[0] < EXAMPLE:
        lm = torch.nn.functional.pad(lm, (0, 0, 0, EXAMPLE - lm.shape[0]))
    ex = lm[:n * EXAMPLE].reshape(n, EXAMPLE, MELS)
    if n != segments:
        ex = ex[np.round(np.linspace(0, n - 1, segments)).astype(np.int64)]
    return ex.unsqueeze(1)


def build_net():
    import torch.nn as nn

    layers, c = [], 1
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v

    class VGGish(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                            nn.ReLU(True), nn.Linear(4096, 128), nn.ReLU(True))

        def forward(self, x):  # (B, 1, 96, 64)
            x = self.features(x)  # (B, 512, 6, 4)
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten, as TF
            return self.embeddings(x)

    return VGGish()


def _portable(state: dict) -> dict:
    """torchaudio-style keys -> torchvggish's."""
    return {k.replace("features_network.", "features.").replace("embedding_network.", "embeddings."): v
            for k, v in state.items() if not k.startswith("pproc.")}


class VGGishBackbone(Backbone):
    name = column = "vggish"
    input = "audio"
    cpu_batch = 64
    per_item_mib = 8.0  # one 96 x 64 example through VGG in bf16
    max_batch = 1024
    memory_format = "2d"

    def __init__(self, device, weights: Optional[str], segments: int = 10, pca: Optional[str] = None,
                 batch_size: int = 0, seed: int = 0, precision: str = "auto", compile: bool = False):
        import torch

        torch.manual_seed(seed)
        net = build_net()
        if weights:
            load_into(net, weights, "vggish", _portable)
        super().__init__(net, device, weights, batch_size, precision, compile)
        self.segments = int(segments)
        self.pca = None
        if pca:
            p = load_weights(pca, error=BackboneError, numpy=True)  # the published params may hold NumPy arrays
            if not isinstance(p, dict):
                raise BackboneError(f"{pca}: expected a dict with pca_eigen_vectors and pca_means")
            if "pca_eigen_vectors" not in p or "pca_means" not in p:
                raise BackboneError(f"{pca}: expected pca_eigen_vectors and pca_means (torchvggish's PCA params)")
            self.pca = (np.asarray(p["pca_eigen_vectors"], np.float64), np.asarray(p["pca_means"], np.float64))

    def postprocess(self, emb: np.ndarray) -> np.ndarray:
        """The reference Postprocessor: PCA, clip to [-2, 2], quantise to 0..255."""
        e, m = self.pca
        x = (e @ (emb.astype(np.float64).T - m.reshape(-1, 1))).T
        x = np.clip(x, -2.0, 2.0)
        return np.round((x + 2.0) * (255.0 / 4.0)).astype(np.float32)

    def __call__(self, waves, sample_rate) -> np.ndarray:
        """n whole-clip mono waveforms at sample_rate (one rate, or one per clip) -> (n, segments, 128)."""
        import torch

        if not len(waves):
            return np.zeros((0, self.segments, 128), np.float32)
        rates = [sample_rate] * len(waves) if np.ndim(sample_rate) == 0 else list(sample_rate)
        x = torch.cat([examples(w, r, self.segments, self.device) for w, r in zip(waves, rates)])  # on the device
        emb = self.forward_chunks(x)
        if self.pca is not None:
            emb = self.postprocess(emb)
        return emb.reshape(len(waves), self.segments, 128)


def build(weights: Optional[str], device, segments: int = 10, pca: Optional[str] = None, **kw) -> VGGishBackbone:
    return VGGishBackbone(device, weights, segments=segments, pca=pca, **kw)
