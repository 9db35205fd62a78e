"""CLAP HTSAT feature maps of the whole clip (VALOR++'s CLAP features): the laion_clap audio tower's token sequence
after its final LayerNorm (`audio_branch.norm`), (64, width) -- the 8 x 8 Swin token grid of the 256 x 256 mel
"image", in the tower's own token order, before the tscam head and pooling.

The clip is embedded once as a whole through the teacher's own path (`CLAP_Module.get_audio_embedding_from_data`:
int16 quantisation, repeat-padding to 10 s, fusion mel at 48 kHz; the audio is resampled to the model's rate first
when media.sample_rate differs) and the maps are read with a forward hook. width is the tower's: 768 for HTSAT-tiny
(laion_clap's `630k-fusion-best.pt`, and the tiny test CLAP of `valor teachers tiny`), 1024 for HTSAT-base.
The CLAP spec is the teacher's (`--clap`, valor_core.teachers.clap).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from valor_core.backbones.base import resample
from valor_core.config import TeacherConfig

TOKENS = 64


class ClapMapsBackbone:
    name = column = "clap_maps"
    input = "audio"

    def __init__(self, device, spec: str, batch_size: int = 8, seed: int = 0):
        from valor_core.teachers import load_clap_teacher

        cfg = TeacherConfig(device=str(device), batch_size=batch_size, precision="fp32", seed=seed)
        self.teacher = load_clap_teacher(spec, cfg)
        self.device = self.teacher.device
        self.checkpoint = self.teacher.checkpoint
        tower = self.teacher.module.model.audio_branch
        self.width = int(tower.num_features)
        self._maps: list = []
        tower.norm.register_forward_hook(lambda mod, inp, out: self._maps.append(out.detach().float().cpu()))

    @property
    def shape(self) -> tuple[int, int]:
        return TOKENS, self.width

    def __call__(self, waves, sample_rate: int) -> np.ndarray:
        """n whole-clip mono waveforms at sample_rate -> (n, 64, width) float32."""
        import torch

        out = np.zeros((len(waves), TOKENS, self.width), np.float32)
        sr = self.teacher.sample_rate
        for i, w in enumerate(waves):  # one clip per forward: the hook sees exactly its maps
            x = resample(w, sample_rate, sr).numpy()
            self._maps.clear()
            with torch.no_grad():
                self.teacher.encode([x])
            maps = self._maps[-1]
            if maps.shape[1:] != (TOKENS, self.width):
                raise ValueError(f"clap_maps: the audio tower gave maps of shape {tuple(maps.shape[1:])}")
            out[i] = maps[0].numpy()
        return out

    def describe(self) -> dict:
        return {"name": self.name, "column": self.column, "checkpoint": self.checkpoint, "device": str(self.device)}


def build(weights: Optional[str], device, **kw) -> ClapMapsBackbone:
    """weights: the CLAP spec (`random` = a random laion_clap model of the default tower, HTSAT-tiny)."""
    return ClapMapsBackbone(device, weights or "random", **kw)
