"""CLAP teacher through laion_clap (audio modality).

Spec syntax (`--clap`, `TeacherConfig.clap`):
- `PATH`                       a laion_clap checkpoint, HTSAT-tiny with fusion (the paper's `630k-fusion-best.pt`, as
                               VALOR's clap_preprocess.py loads it: `CLAP_Module(enable_fusion=True)`, laion_clap's
                               default audio tower).
- `AMODEL:PATH`                another audio tower (e.g. `HTSAT-tiny:/ckpt.pt`), fusion on.
- `AMODEL:nofusion:PATH`       ... with fusion off (`fusion` turns it on explicitly).
- `SPEC.json`                  {"checkpoint": PATH, "amodel": "HTSAT-base", "enable_fusion": true,
                                "hf_hub_cache": DIR or null} -- relative paths are relative to the JSON; this is what
                               `valor teachers tiny` writes, and it carries the hub cache holding the text tower.
- `random` / `AMODEL:random`   random init (benchmarks).

The model is the library's: `CLAP_Module(enable_fusion, amodel)` + the checkpoint, text embedded as
`get_text_embedding` does (fp32 text tower); logits = logit_scale_a.exp() x cosine with the Table-6
"This is a sound of ..." captions. Audio segments go through one of two pre-processing paths
(`TeacherConfig.clap_preprocess`):
- "device" (default): laion_clap's `get_audio_embedding_from_data` pre-processing re-done batched in torch on the
  teacher's device (valor_core.teachers.clap_input): float -> int16 -> float round trip, repeat-padding each segment
  to 10 s (480000 samples at 48 kHz), the fusion mel (4 identical views for inputs <= 10 s, `longer` False, as the
  library's deterministic branch; for longer inputs the library's random front/middle/back crops and the resized
  global view, drawn from a numpy RandomState seeded with `TeacherConfig.seed` per forward chunk, the same stream the
  library draws from the global numpy RNG after `np.random.seed(seed)`), then the audio tower and projection. The
  audio tower and projection hold weights in the teacher's precision (bf16 on CUDA by default; norms fp32).
  Embeddings equal the library path's within 1e-5 (fp32, CPU; tests/test_teachers_fast.py).
- "library": laion_clap's own `get_audio_embedding_from_data`, per segment on the host, fp32 weights (bf16 autocast
  on CUDA when the precision asks for bf16), as before; kept selectable for checks.

laion_clap needs roberta-base (tokenizer + model config; the checkpoint then overwrites the weights) and the
bert-base-uncased / facebook/bart-base tokenizers from the Hugging Face cache: valor imports it with HF_HUB_OFFLINE=1
(see valor_core.teachers.hf), so those must be cached beforehand.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from valor_core.checkpoint_io import load_weights
from valor_core.classes import CLAP_CAPTIONS
from valor_core.config import TeacherConfig
from valor_core.teachers import clap_input, mel
from valor_core.teachers import precision as prec
from valor_core.teachers.base import MissingCheckpoint, Teacher, TeacherError
from valor_core.teachers.hf import TOKENIZER_REPOS, hub_cache_dir, missing_hub_repos, offline_hub

OFFICIAL = ("VALOR utils/clap_preprocess.py get_audio_embedding (librosa 0.10 soxr_hq 48 kHz, "
            "round(linspace(0, L, 11)) cuts of L // 10); valor 2")  # the segments' source: valor_core.media.decode
DEFAULT_AMODEL = "HTSAT-tiny"  # laion_clap's default, the tower of the 630k checkpoints
KNOWN_BUFFERS = ("text_branch.embeddings.position_ids", "text_branch.embeddings.token_type_ids")
HOW_TO_GET_HUB_FILES = (
    "laion_clap loads the roberta-base, bert-base-uncased and facebook/bart-base tokenizers (and the roberta-base "
    "config) from the Hugging Face cache. On a machine with network: `huggingface-cli download roberta-base; "
    "huggingface-cli download bert-base-uncased; huggingface-cli download facebook/bart-base` (or "
    "`python -c \"import laion_clap; laion_clap.CLAP_Module(enable_fusion=True)\"`), then copy the cache here and set "
    "HF_HUB_CACHE. For a smoke test without any weights use `valor teachers tiny`.")


def parse_clap_spec(spec: str) -> dict:
    """spec -> {"checkpoint": path or None (random), "amodel", "enable_fusion", "hf_hub_cache"}."""
    spec = spec.strip()
    if not spec:
        raise TeacherError("empty CLAP spec; expected a checkpoint path such as 630k-fusion-best.pt")
    out = {"checkpoint": None, "amodel": DEFAULT_AMODEL, "enable_fusion": True, "hf_hub_cache": None}
    if spec.endswith(".json"):
        p = Path(spec)
        if not p.is_file():
            raise MissingCheckpoint(f"CLAP spec file {spec!r} not found")
        d = json.loads(p.read_text())
        unknown = set(d) - set(out)
        if unknown:
            raise TeacherError(f"CLAP spec {spec!r}: unknown keys {sorted(unknown)}; known {sorted(out)}")
        out.update(d)
        for key in ("checkpoint", "hf_hub_cache"):
            if out[key] and not os.path.isabs(out[key]):
                out[key] = str((p.parent / out[key]).resolve())
        return out
    parts = spec.split(":")
    path = parts[-1] if len(parts) <= 3 else ":".join(parts[2:])
    head = parts[:-1] if len(parts) <= 3 else parts[:2]
    if head and not head[0].startswith(("HTSAT", "PANN")):  # a path with ':' in it
        path, head = spec, []
    if head:
        out["amodel"] = head[0]
    if len(head) > 1:
        if head[1] not in ("fusion", "nofusion"):
            raise TeacherError(f"CLAP spec {spec!r}: expected AMODEL:fusion|nofusion:PATH")
        out["enable_fusion"] = head[1] == "fusion"
    out["checkpoint"] = None if path in ("random", "none") else path
    return out


def import_laion_clap(hf_hub_cache: Optional[str] = None):
    """Import laion_clap offline (HF_HUB_OFFLINE=1, optional HF_HUB_CACHE); a clear TeacherError if hub files lack."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "laion_clap" in sys.modules:
        return sys.modules["laion_clap"]
    with offline_hub(hf_hub_cache):
        missing = missing_hub_repos(hf_hub_cache)
        if missing:
            raise MissingCheckpoint(f"Hugging Face cache {hf_hub_cache or hub_cache_dir()} lacks "
                                    f"{', '.join(missing)}. {HOW_TO_GET_HUB_FILES}")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import laion_clap
            except OSError as err:
                raise MissingCheckpoint(f"importing laion_clap failed: {err}. {HOW_TO_GET_HUB_FILES}") from None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass
    mel.install_if_needed()
    return laion_clap


def read_clap_state(path: str) -> dict:
    """The state dict of a laion_clap checkpoint (`{"state_dict": ...}` as laion's training saves it, with its
    `epoch`/`optimizer`/... entries, or a bare state dict), `module.` prefixes stripped. Read weights-only: NumPy
    arrays and scalars are allowed, anything else that unpickling would build or run is a one-line TeacherError."""
    ckpt = load_weights(path, error=TeacherError, numpy=True)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    if not isinstance(state, dict) or not state:
        raise TeacherError(f"{path}: not a laion_clap checkpoint (no state_dict)")
    if next(iter(state)).startswith("module."):
        state = {k[7:]: v for k, v in state.items()}
    return state


def load_clap_state(state: dict, model, path: str) -> None:
    """Load `state` (read_clap_state of `path`) into `model` (the CLAP inside CLAP_Module).

    Like `CLAP_Module.load_ckpt` (module. prefixes stripped, the text position_ids buffer dropped), but tolerant of
    checkpoints without that buffer and strict about real parameters: any missing or unexpected weight is an error.
    """
    own = model.state_dict()
    for key in KNOWN_BUFFERS:
        if key in state and key not in own:
            state.pop(key)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in KNOWN_BUFFERS]
    if missing or result.unexpected_keys:
        raise TeacherError(f"{path} does not match the model: missing {missing[:5]}"
                           f"{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}")


def check_clap_files(spec: str) -> dict:
    """MissingCheckpoint when the spec's checkpoint file is not there (cheap: no model is built); the parsed spec."""
    opts = parse_clap_spec(spec)
    ckpt = opts["checkpoint"]
    if ckpt is not None and not Path(ckpt).is_file():
        raise MissingCheckpoint(
            f"CLAP checkpoint {ckpt!r} not found (spec {spec!r}). The paper's teacher is laion_clap's "
            f"630k-fusion-best.pt (HTSAT-tiny, fusion; NOT the AudioSet one, which overlaps LLP val/test): "
            f"download https://huggingface.co/lukewys/laion_clap/resolve/main/630k-fusion-best.pt on a machine "
            f"with network access and copy it here.")
    return opts


def clap_files(spec: str) -> list[str]:
    """The local files a CLAP spec reads (its spec JSON, its checkpoint), for the provenance record
    (valor_core.provenance); none for random init."""
    ckpt = check_clap_files(spec)["checkpoint"]
    return [f for f in (spec.strip() if spec.strip().endswith(".json") else None, ckpt) if f]


class CLAPTeacher(Teacher):
    name = "clap"
    modality = "audio"
    per_item_mib = 64.0  # HTSAT-tiny on a 10-s fusion mel (256 x 256 "image") in bf16; generous
    max_batch = 256

    def __init__(self, spec: str, cfg: TeacherConfig = TeacherConfig(), captions: Sequence[str] = CLAP_CAPTIONS):
        opts = check_clap_files(spec)
        ckpt = opts["checkpoint"]
        super().__init__(spec, ckpt or "random", cfg, captions)
        state = None if ckpt is None else read_clap_state(ckpt)  # refused before any model is built
        laion_clap = import_laion_clap(opts["hf_hub_cache"])
        self.amodel, self.enable_fusion = opts["amodel"], bool(opts["enable_fusion"])
        import warnings

        with offline_hub(opts["hf_hub_cache"]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = laion_clap.CLAP_Module(enable_fusion=self.enable_fusion, amodel=self.amodel, device="cpu")
            except OSError as err:
                raise MissingCheckpoint(f"building CLAP failed: {err}. {HOW_TO_GET_HUB_FILES}") from None
            except RuntimeError as err:
                raise TeacherError(f"building CLAP {self.amodel!r} failed (spec {spec!r}): {err}") from None
        if state is not None:
            load_clap_state(state, module.model, ckpt)
        self.module = module.to(self.device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        model = module.model
        self.logit_scale = float(model.logit_scale_a.detach().exp().item())
        self.sample_rate = int(module.model_cfg["audio_cfg"]["sample_rate"])
        self.audio_cfg = dict(module.model_cfg["audio_cfg"])
        self.preprocess_path = cfg.clap_preprocess
        if self.preprocess_path not in ("device", "library"):
            raise TeacherError(f"clap_preprocess {self.preprocess_path!r}: choose device or library")
        if self.preprocess_path == "device":
            branch = model.audio_branch
            # fp32 islands: the tower's own spectrogram front end (used without fusion); bn0, the BatchNorm over
            # mel bins that first sees the fp32 log-mel (dB values need more than bf16's 8 bits of
            # mel mantissa); and the fusion of the local views (laion_clap pads them with fp32 zeros)
            islands = [getattr(branch, k) for k in ("spectrogram_extractor", "logmel_extractor", "bn0")
                       if hasattr(branch, k)]
            fusion = getattr(getattr(branch, "patch_embed", None), "fusion_model", None)
            islands += [fusion] if fusion is not None else []
            prec.cast_tower(branch, self.precision, keep_fp32=islands)
            prec.cast_tower(model.audio_projection, self.precision)
            self.audio_tower = prec.maybe_compile(branch, self.compiled)
            self.frontend = clap_input.Frontend(self.audio_cfg, self.enable_fusion, self.device, cfg.seed)
        elif self.compiled:
            raise TeacherError("TeacherConfig.compile needs clap_preprocess='device'")
        self.dim = int(model.audio_projection[-1].out_features) if hasattr(
            model.audio_projection[-1], "out_features") else int(self.encode_text(["a"]).shape[1])

    @property
    def dtype(self):
        import torch

        return self.tower_dtype if self.preprocess_path == "device" else torch.float32

    @property
    def tower_dtype(self):
        return prec.torch_dtype(self.precision)

    def _embed(self, segments):
        if self.preprocess_path == "library":
            return self._embed_library(segments)
        import torch

        model = self.module.model
        out = []
        for inputs in self.frontend.batches(segments, self.batch_size):
            feats = self.audio_tower(inputs, mixup_lambda=None, device=self.device)["embedding"]
            out.append(model.audio_projection(feats.to(self.tower_dtype)))
        return torch.cat(out) if len(out) > 1 else out[0]

    def _embed_library(self, segments):
        """laion_clap's own path, chunk by chunk (one host round trip per chunk)."""
        import contextlib
        import warnings

        import torch

        x_all = [np.ascontiguousarray(np.asarray(s, dtype=np.float32)) for s in segments]
        out = []
        for start in range(0, len(x_all), self.batch_size):
            np.random.seed(self.cfg.seed)  # laion_clap's random crops/fusion views (segments longer than 10 s only)
            cast = torch.autocast("cuda", dtype=self.tower_dtype) if (
                self.device.type == "cuda" and self.precision != "fp32") else contextlib.nullcontext()
            with warnings.catch_warnings(), cast:
                warnings.simplefilter("ignore")  # torchaudio's 'onesided' deprecation, once per segment
                emb = self.module.get_audio_embedding_from_data(x_all[start:start + self.batch_size], use_tensor=False)
            out.append(torch.as_tensor(emb))
        return torch.cat(out).to(self.device)

    def _encode_text(self, prompts):
        return self.module.model.get_text_embedding(self.module.tokenizer(list(prompts)))

    def encode_audio(self, segments) -> np.ndarray:
        """Segments (a (B, L) array or a list of 1-D float arrays at 48 kHz) -> (B, d) L2-normalised embeddings."""
        if isinstance(segments, np.ndarray) and segments.ndim == 1:
            raise ValueError("encode_audio takes a batch of segments: (B, L) or a list of 1-D arrays")
        return self.encode(list(segments) if not isinstance(segments, np.ndarray) else segments)

    def _items_of(self, video):
        if hasattr(video, "frames"):  # a DecodedVideo
            return None if video.audio is None else video.audio
        return None if video is None else video


def load_clap_teacher(spec: str, cfg: TeacherConfig = TeacherConfig()) -> CLAPTeacher:
    """Build the CLAP teacher named by `spec` (syntax in this module's docstring)."""
    return CLAPTeacher(spec, cfg)


__all__ = ["CLAPTeacher", "load_clap_teacher", "parse_clap_spec", "import_laion_clap", "read_clap_state",
           "load_clap_state", "TOKENIZER_REPOS"]
