"""The backbone interface: a frozen torch network that turns one video's frames or audio into a (a, b) feature array.

    bb(items) -> (n, a, b) float32      items: frame backbones take (n, 8T, S, S, 3) uint8 (the 8-fps stack);
                                        audio backbones take a list of n mono waveforms (1-D float) at `sample_rate`.
Forwards run in chunks of `batch_size` network inputs, in float32, under torch.no_grad, on `device`.
"""
from __future__ import annotations

from typing import Optional


def resolve_device(device: Optional[str] = "auto"):
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Backbone:
    name = ""
    column = ""
    input = ""  # "frames" | "audio"

    def __init__(self, net, device, weights: Optional[str], batch_size: int):
        self.net = net.to(device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.device = device
        self.checkpoint = weights or "random"
        self.batch_size = max(1, int(batch_size))

    def forward_chunks(self, x):
        """Run the network over the first axis of `x` (a torch tensor on CPU) in chunks; float32 numpy out."""
        import numpy as np
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                y = self.net(x[start:start + self.batch_size].to(self.device, non_blocking=True))
                out.append(y.float().cpu().numpy())
        return np.concatenate(out, axis=0).astype(np.float32) if out else np.zeros((0,), np.float32)

    def describe(self) -> dict:
        return {"name": self.name, "column": self.column, "checkpoint": self.checkpoint, "device": str(self.device)}


def resample(wave, sample_rate: int, target: int):
    """1-D float waveform -> float32 torch tensor at `target` Hz (torchaudio's band-limited sinc resampler)."""
    import numpy as np
    import torch

    x = torch.from_numpy(np.array(wave, np.float32))  # a copy: the input may be a read-only buffer
    if int(sample_rate) == int(target):
        return x
    import torchaudio.functional as AF

    return AF.resample(x, int(sample_rate), int(target))
