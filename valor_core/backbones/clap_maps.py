"""CLAP HTSAT feature maps of the whole clip (VALOR++'s CLAP features): the laion_clap audio tower's token sequence
after its final LayerNorm (`audio_branch.norm`), (64, width) -- the 8 x 8 Swin token grid of the 256 x 256 mel
"image", in the tower's own token order, before the tscam head and pooling.

Each clip is embedded as a whole through the CLAP teacher's path (valor_core.teachers.clap: laion_clap's
`get_audio_embedding_from_data` pre-processing -- int16 quantisation, repeat-padding to 10 s, fusion mel at 48 kHz --
batched on the device by default, or the library's own with preprocess="library"; the audio is resampled to the
model's rate first when media.sample_rate differs); all clips of a call go through in forwards of `batch_size` and
the maps are read with a forward hook, kept on the device and copied back once. Precision as the teacher's (bf16
tower weights on CUDA by default). width is the tower's: 768 for HTSAT-tiny
(laion_clap's `630k-fusion-best.pt`, and the tiny test CLAP of `valor teachers tiny`), 1024 for HTSAT-base.
The CLAP spec is the teacher's (`--clap`, valor_core.teachers.clap).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from valor_core.backbones.base import resample
from valor_core.config import TeacherConfig
from valor_core.teachers.precision import resolve_device

TOKENS = 64


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

    def __call__(self, waves, sample_rate: int) -> np.ndarray:
        """n whole-clip mono waveforms at sample_rate -> (n, 64, width) float32 (all clips through the teacher's
        batched path: the hook sees each forward's maps in input order; one host copy at the end)."""
        import torch

        if not len(waves):
            return np.zeros((0, TOKENS, self.width), np.float32)
        sr = self.teacher.sample_rate
        clips = [resample(w, sample_rate, sr).numpy() for w in waves]
        self._maps.clear()
        with torch.no_grad():
            self.teacher.embed(clips)
            maps = torch.cat(self._maps) if len(self._maps) > 1 else self._maps[0]
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
