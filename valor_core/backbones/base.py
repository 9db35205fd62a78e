"""The backbone interface: a frozen torch network that turns one video's frames or audio into a (a, b) feature array.

    bb(items) -> (n, a, b) float32      items: frame backbones take (n, 8T, S, S, 3) uint8 (the 8-fps stack);
                                        audio backbones take a list of n mono waveforms (1-D float) at `sample_rate`.

One host sync per call: inputs are copied to the device once (uint8 frames from pinned memory, non_blocking on
CUDA), pre-processed there chunk by chunk (`batch_size` network inputs per forward), the outputs concatenated on the
device and copied back once. Precision (`precision` option): "auto" = bf16 weights on CUDA (BatchNorm parameters and
statistics fp32; 2-D/3-D conv nets in channels-last layout on CUDA), fp32 on CPU; "bf16" runs the same path on CPU
(valor_core.teachers.precision). batch_size 0 = automatic: the backbone's CPU default on CPU, by free memory on CUDA.
"""
from __future__ import annotations

from typing import Callable, Optional

from valor_core.teachers import precision as prec


def resolve_device(device: Optional[str] = "auto"):
    return prec.resolve_device(device)


class Backbone:
    name = ""
    column = ""
    input = ""  # "frames" | "audio"
    cpu_batch = 32  # batch_size 0 on CPU
    per_item_mib = 32.0  # activation memory per network input, for batch_size 0 on CUDA
    max_batch = 512
    memory_format = ""  # "2d" | "3d": channels-last layout on CUDA

    def __init__(self, net, device, weights: Optional[str], batch_size: int, precision: str = "auto",
                 compile: bool = False):
        import torch

        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.precision = prec.resolve_precision(precision, self.device)
        self.dtype = prec.torch_dtype(self.precision)
        net = net.to(self.device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        prec.cast_tower(net, self.precision)
        self.layout = torch.contiguous_format
        if self.device.type == "cuda" and self.memory_format:
            self.layout = torch.channels_last if self.memory_format == "2d" else torch.channels_last_3d
            net = net.to(memory_format=self.layout)
        self.net = net
        self._forward = prec.maybe_compile(net, compile)
        self.checkpoint = weights or "random"
        batch_size = int(batch_size)
        if batch_size == 0 and self.device.type != "cuda":
            batch_size = self.cpu_batch
        self.batch_size = max(1, prec.auto_batch_size(batch_size, self.device, self.per_item_mib, self.max_batch))

    def run(self, x, prepare: Optional[Callable] = None):
        """The network over the first axis of `x` (a tensor, ideally already on the device) in chunks of batch_size;
        `prepare(chunk)` turns a chunk into network input on the device. Returns a device tensor (no host sync)."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                chunk = x[start:start + self.batch_size]
                chunk = prepare(chunk) if prepare is not None else prec.upload(chunk, self.device)
                chunk = chunk.to(self.dtype)
                if self.layout is not torch.contiguous_format:  # CUDA: channels-last convolutions
                    chunk = chunk.contiguous(memory_format=self.layout)
                out.append(self._forward(chunk).float())
        return torch.cat(out) if len(out) > 1 else out[0]

    def forward_chunks(self, x, prepare: Optional[Callable] = None):
        """`run`, then one copy to the host: float32 numpy."""
        import numpy as np

        if len(x) == 0:
            return np.zeros((0,), np.float32)
        return self.run(x, prepare).cpu().numpy()

    def describe(self) -> dict:
        return {"name": self.name, "column": self.column, "checkpoint": self.checkpoint, "device": str(self.device),
                "precision": self.precision, "batch_size": self.batch_size}


def resample(wave, sample_rate: int, target: int, device=None):
    """1-D float waveform -> float32 torch tensor at `target` Hz (torchaudio's band-limited sinc resampler), on
    `device` (None = CPU)."""
    import numpy as np
    import torch

    if device is None or getattr(device, "type", device) == "cpu":
        x = torch.from_numpy(np.array(wave, np.float32))  # a copy: the input may be a read-only buffer
    else:
        x = prec.upload(np.asarray(wave, np.float32), device)
    if int(sample_rate) == int(target):
        return x
    import torchaudio.functional as AF

    return AF.resample(x, int(sample_rate), int(target))
