"""CLAP HTSAT feature maps of the whole clip (VALOR++'s CLAP features), as VALOR's `utils/clap_preprocess.py`
`get_audio_feature_maps` makes them: (64, width) float32 per clip.

Input (valor_core.media.audio): the clip at 48 kHz as librosa.load(sr=48000) reads it (soxr HQ from the native
rate), squeezed to exactly 480,000 samples by wave[round(linspace(0, L - 1, 480000))], laion_clap's int16 round trip
once, then laion_clap's `get_audio_features(.., 480000, 'fusion', 'repeatpad')`: the fusion mel 4 times,
`longer` False (valor_core.teachers.clap_input, batched on the device).
Output: the audio tower's tokens after its final LayerNorm (`audio_branch.norm`, read with a forward hook),
regrouped as VALOR's `utils/clap_utils.py` (and HTSAT's own forward_features) does: the 8 x 8 token grid
(freq-major) -> (4 time chunks x 2 freq halves x 8) -> (2 freq halves x 32 time steps), flattened: the order the
VALOR++ network's resampler assumes and the released `CLAP/features` hold.

Precision as the teacher's (bf16 tower weights on CUDA by default). width is the tower's: 768 for HTSAT-tiny
(laion_clap's `630k-fusion-best.pt`, and the tiny test CLAP of `valor teachers tiny`), 1024 for HTSAT-base.
The CLAP spec is the teacher's (`--clap`, valor_core.teachers.clap).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from valor_core.config import TeacherConfig
from valor_core.media import audio as official_audio
from valor_core.teachers import clap_input
from valor_core.teachers.precision import resolve_device

TOKENS = 64
OFFICIAL = ("VALOR utils/clap_preprocess.py get_audio_feature_maps + utils/clap_utils.py token regroup "
            "(librosa 0.10 soxr_hq 48 kHz, 480000-sample squeeze); valor 2")


def regroup(x, freq_ratio: int):
    """(B, N, C) tokens after `audio_branch.norm` -> (B, N, C) in VALOR clap_utils' order (its reshapes, verbatim)."""
    B, N, C = x.shape
    side = int(round(N ** 0.5))
    x = x.permute(0, 2, 1).contiguous().reshape(B, C, side, side)  # (B, C, F, T)
    c_freq_bin = side // freq_ratio
    x = x.reshape(B, C, side // c_freq_bin, c_freq_bin, side)
    x = x.permute(0, 1, 3, 2, 4).contiguous().reshape(B, C, c_freq_bin, -1)
    return x.flatten(2).permute(0, 2, 1).contiguous()


class ClapMapsBackbone:
    name = column = "clap_maps"
    input = "audio"

    def __init__(self, device, spec: str, batch_size: int = 0, seed: int = 0, precision: str = "auto",
                 compile: bool = False, preprocess: str = "device"):
        from valor_core.teachers import load_clap_teacher

        if int(batch_size) == 0 and resolve_device(str(device)).type != "cuda":
            batch_size = 8  # whole clips on CPU: 8 per forward (CUDA: by free memory)
        cfg = TeacherConfig(device=str(device), batch_size=batch_size, precision=precision, seed=seed,
                            compile=compile, clap_preprocess=preprocess)
        self.teacher = load_clap_teacher(spec, cfg)
        self.device = self.teacher.device
        self.precision = self.teacher.precision
        self.batch_size = self.teacher.batch_size
        self.checkpoint = self.teacher.checkpoint
        tower = self.teacher.module.model.audio_branch
        self.width = int(tower.num_features)
        self._maps: list = []
        tower.norm.register_forward_hook(lambda mod, inp, out: self._maps.append(out.detach()))

    @property
    def shape(self) -> tuple[int, int]:
        return TOKENS, self.width

    def inputs(self, waves, sample_rate) -> np.ndarray:
        """(n, 480000) float32: each clip at 48 kHz (librosa's resampler), squeezed, int16 round trip."""
        import torch

        rates = [int(sample_rate)] * len(waves) if np.ndim(sample_rate) == 0 else [int(r) for r in sample_rate]
        sr = self.teacher.sample_rate
        x = np.stack([official_audio.squeeze(official_audio.librosa_resample(w, r, sr)) for w, r in zip(waves, rates)])
        return clap_input.quantise(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    def _batches(self, x: np.ndarray):
        """The tower's input dicts: batched on the device (`preprocess="device"`), or laion_clap's own
        get_audio_features clip by clip on the host (`"library"`)."""
        if self.teacher.preprocess_path == "device":
            yield from self.teacher.frontend.batches(x, self.batch_size, quantised=True)
            return
        import torch
        from laion_clap.training.data import get_audio_features

        for start in range(0, len(x), self.batch_size):
            items = [get_audio_features({}, torch.from_numpy(row), clap_input.MAX_LEN,
                                        "fusion" if self.teacher.enable_fusion else "rand_trunc", "repeatpad",
                                        self.teacher.audio_cfg) for row in x[start:start + self.batch_size]]
            yield {k: torch.stack([d[k] for d in items]).to(self.device) if k != "longer" else
                   torch.stack([d[k] for d in items]) for k in items[0]}

    @property
    def _tower(self):
        return self.teacher.audio_tower if self.teacher.preprocess_path == "device" else \
            self.teacher.module.model.audio_branch

    def __call__(self, waves, sample_rate) -> np.ndarray:
        """n whole-clip mono waveforms at sample_rate (one rate, or one per clip) -> (n, 64, width) float32."""
        import torch

        if not len(waves):
            return np.zeros((0, TOKENS, self.width), np.float32)
        x = self.inputs(waves, sample_rate)
        tower = self.teacher.module.model.audio_branch
        out = []
        self._maps.clear()
        with torch.no_grad():
            for batch in self._batches(x):
                self._tower(batch, mixup_lambda=None, device=self.device)
                out.append(regroup(self._maps.pop(), int(tower.freq_ratio)))
            maps = torch.cat(out) if len(out) > 1 else out[0]
        self._maps.clear()
        if tuple(maps.shape) != (len(waves), TOKENS, self.width):
            raise ValueError(f"clap_maps: the audio tower gave maps of shape {tuple(maps.shape)}")
        return maps.float().cpu().numpy()

    def describe(self) -> dict:
        return {"name": self.name, "column": self.column, "checkpoint": self.checkpoint, "device": str(self.device),
                "precision": self.precision, "batch_size": self.batch_size}


def build(weights: Optional[str], device, **kw) -> ClapMapsBackbone:
    """weights: the CLAP spec (`random` = a random laion_clap model of the default tower, HTSAT-tiny)."""
    return ClapMapsBackbone(device, weights or "random", **kw)
