"""laion_clap's audio pre-processing, batched in torch on the teacher's device.

laion_clap 1.1.7 `CLAP_Module.get_audio_embedding_from_data(x, use_tensor=False)` does, per segment, on the host:
1. `int16_to_float32(float32_to_int16(x))`: clip to [-1, 1], x * 32767 in float32, truncate to int16, / 32767.0
   (numpy: float64 division, then float32);
2. `get_audio_features(.., max_len=480000, data_truncating='fusion' (or 'rand_trunc' without fusion),
   data_filling='repeatpad')`:
   - len < 480000: repeat the segment int(480000 / len) times, zero-pad to 480000; with fusion, mel = `get_mel`
     (torchaudio MelSpectrogram: n_fft = win = window_size, hop_size, center, reflect, power 2, 64 HTK mels without
     norm, fmin..fmax; AmplitudeToDB(top_db=None)), mel_fusion = the mel 4 times, longer = False;
   - len == 480000: as above without padding;
   - len > 480000 with fusion: the mel of the whole input; chunk = 480000 // hop + 1 frames; if the mel has exactly
     `chunk` frames: 4 copies, longer = False; else three random crops (np.random.choice in each third of the valid
     starts: front, middle, back) and the whole mel resized to (chunk, 64) by torchvision's Resize (the global
     view first), longer = True; then the waveform is randomly cropped to 480000 (np.random.randint);
     without fusion ('rand_trunc'): longer = True and the random waveform crop only;
3. the model: `audio_branch({"longer", "mel_fusion", "waveform"})["embedding"]`, `audio_projection`, L2-normalise.

`Frontend.batches` yields the model's input dicts for consecutive runs of equal-length segments (at most `batch_size`
each, in input order): the segments are copied to the device once (one host array, pinned, non_blocking on CUDA)
and everything above runs there in fp32. `longer` stays a host tensor: the tower tests `longer.sum() == 0` in
Python, which on a device tensor would be a host sync per chunk. Random draws (inputs > 10 s only) come from a numpy
RandomState seeded with `seed` at the start of every chunk: the stream the library path draws after
`np.random.seed(seed)` per chunk, so for the same chunks both paths pick the same crops.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from valor_core.teachers import mel as mel_lib
from valor_core.teachers import precision as prec

MAX_LEN = 480000  # 10 s at 48 kHz: laion_clap's max_len in get_audio_embedding_from_data


def quantise(x):
    """laion_clap's int16 round trip, on any device: float32 in, float32 out."""
    import torch

    q = torch.trunc(x.clamp(-1.0, 1.0) * 32767.0)  # float32 product, truncation toward zero as numpy's astype
    return (q.double() / 32767.0).float()


def repeat_pad(x, max_len: int = MAX_LEN):
    """(B, L) with L <= max_len -> (B, max_len): repeated int(max_len / L) times, then zero-padded."""
    import torch.nn.functional as F

    n = x.shape[1]
    if n == max_len:
        return x
    return F.pad(x.repeat(1, int(max_len / n)), (0, max_len - n * int(max_len / n)))


class Frontend:
    """The pre-processing of one CLAP model (audio_cfg, fusion) on one device."""

    def __init__(self, audio_cfg: dict, enable_fusion: bool, device, seed: int = 0):
        self.cfg = dict(audio_cfg)
        self.fusion = bool(enable_fusion)
        self.device = device
        self.seed = int(seed)
        self.hop = int(self.cfg["hop_size"])
        self._mel = mel_lib.MelBatch(self.cfg, device)

    def mel(self, x):
        """(B, N) -> (B, frames, 64) log-mel, as laion_clap's get_mel on each row."""
        return self._mel(x)

    def runs(self, lengths: Sequence[int], batch_size: int) -> Iterator[tuple[int, int]]:
        """[start, stop) of consecutive equal-length items, at most batch_size long."""
        start = 0
        n = len(lengths)
        while start < n:
            stop = start + 1
            while stop < n and stop - start < batch_size and lengths[stop] == lengths[start]:
                stop += 1
            yield start, stop
            start = stop

    def batches(self, segments, batch_size: int, quantised: bool = False) -> Iterator[dict]:
        """The model's input dicts for `segments` ((B, L) array or host tensor, or a list of 1-D float arrays);
        `quantised`: the int16 round trip was done already (VALOR's feature maps), not done again."""
        import torch

        if isinstance(segments, torch.Tensor) and segments.ndim == 2:
            lengths = [int(segments.shape[1])] * len(segments)
            flat = segments.reshape(-1).to(torch.float32)  # no copy for float32 (keeps a pinned buffer pinned)
        elif isinstance(segments, np.ndarray) and segments.ndim == 2:
            lengths = [segments.shape[1]] * len(segments)
            flat = segments.astype(np.float32, copy=False).reshape(-1)
        else:
            arrays = [np.asarray(s, np.float32).reshape(-1) for s in segments]
            lengths = [len(a) for a in arrays]
            flat = np.concatenate(arrays) if arrays else np.zeros(0, np.float32)
        if any(n == 0 for n in lengths):
            raise ValueError("CLAP: an audio segment has no samples")
        on_device = prec.upload(flat, self.device)  # the one host-to-device copy of the batch
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for start, stop in self.runs(lengths, batch_size):
            n = lengths[start]
            x = on_device[offsets[start]:offsets[stop]].view(stop - start, n)
            x = x if quantised else quantise(x)
            if n <= MAX_LEN:
                yield self._short(x)
            else:
                yield self._long(x, np.random.RandomState(self.seed))

    def _short(self, x) -> dict:
        import torch

        x = repeat_pad(x)
        longer = torch.zeros((len(x), 1), dtype=torch.bool)  # host: see the module docstring
        if not self.fusion:
            return {"longer": longer, "waveform": x}
        m = self.mel(x)
        return {"longer": longer, "mel_fusion": m[:, None].expand(-1, 4, -1, -1), "waveform": x}

    def _long(self, x, rng: np.random.RandomState) -> dict:
        """Inputs longer than 10 s, item by item as the library (random crops)."""
        import torch
        import torchvision

        chunk = MAX_LEN // self.hop + 1
        fusions, longers, waves = [], [], []
        for row in x:
            if self.fusion:
                m = self.mel(row[None])[0]  # (frames, 64) of the whole input
                total = m.shape[0]
                if chunk == total:
                    fusions.append(torch.stack([m, m, m, m]))
                    longers.append(False)
                else:
                    ranges = np.array_split(list(range(0, total - chunk + 1)), 3)
                    if len(ranges[1]) == 0:
                        ranges[1] = [0]
                    if len(ranges[2]) == 0:
                        ranges[2] = [0]
                    front, middle, back = (int(rng.choice(r)) for r in ranges)
                    shrink = torchvision.transforms.Resize(size=[chunk, int(self.cfg["mel_bins"])])(m[None])[0]
                    fusions.append(torch.stack([shrink, m[front:front + chunk], m[middle:middle + chunk],
                                                m[back:back + chunk]]))
                    longers.append(True)
            else:
                longers.append(True)
            idx = rng.randint(0, len(row) - MAX_LEN + 1)
            waves.append(row[idx:idx + MAX_LEN])
        out = {"longer": torch.tensor(longers, dtype=torch.bool)[:, None], "waveform": torch.stack(waves)}
        if self.fusion:
            out["mel_fusion"] = torch.stack(fusions)
        return out
