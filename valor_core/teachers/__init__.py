"""Teachers: CLIP (open_clip, frames) and CLAP (laion_clap, audio segments) behind one interface.

    from valor_core.teachers import load_clip_teacher, load_clap_teacher
    clip = load_clip_teacher("ViT-L-14:openai", cfg)      # spec syntax: valor_core.teachers.clip
    clap = load_clap_teacher("630k-fusion-best.pt", cfg)  # spec syntax: valor_core.teachers.clap
    logits, emb = clip.segment_logits(videos)             # (n, T, 25), (n, T, d) from DecodedVideo objects

Heavy libraries (torch, open_clip, laion_clap) are imported when a teacher is built, not when this package is.

Speed (valor_core.teachers.precision): on CUDA the image / audio towers hold bf16 weights (norms fp32, no autocast),
inputs are copied up once per batch and pre-processed on the device (CLAP: valor_core.teachers.clap_input), and a
batch costs one host sync; `TeacherConfig(precision="bf16")` runs the same path on CPU. bf16-vs-fp32 agreement of
logits and harvested labels: valor_core.teachers.agreement.
"""
from valor_core.config import TeacherConfig
from valor_core.teachers import clap as _clap
from valor_core.teachers import clip as _clip
from valor_core.teachers.base import MissingCheckpoint, Teacher, TeacherError


def load_clip_teacher(spec, cfg=None):
    """CLIP teacher from an open_clip spec (MODEL:TAG, MODEL:/ckpt, MODEL:random, CFG.json[:CKPT])."""
    return _clip.load_clip_teacher(spec, cfg or TeacherConfig())


def load_clap_teacher(spec, cfg=None):
    """CLAP teacher from a laion_clap spec (PATH, AMODEL:[no]fusion:PATH, SPEC.json, random)."""
    return _clap.load_clap_teacher(spec, cfg or TeacherConfig())


def check_teacher_files(clip_spec: str, clap_spec: str) -> None:
    """Before heavy work: MissingCheckpoint / TeacherError when a spec is malformed or names a checkpoint that is not
    there (no model is built, nothing is imported beyond the spec parsers)."""
    _clip.check_clip_files(clip_spec)
    _clap.check_clap_files(clap_spec)


def teacher_files(kind: str, spec: str) -> list[str]:
    """The local files the `kind` ("clip" | "clap") teacher spec reads (config / spec JSON, checkpoint): what its
    provenance digests cover (valor_core.provenance)."""
    return _clip.clip_files(spec) if kind == "clip" else _clap.clap_files(spec)


def load_teachers(clip_spec, clap_spec, cfg=None):
    """Both teachers: (clip, clap)."""
    return load_clip_teacher(clip_spec, cfg), load_clap_teacher(clap_spec, cfg)


__all__ = ["Teacher", "TeacherError", "MissingCheckpoint", "load_clip_teacher", "load_clap_teacher", "load_teachers",
           "check_teacher_files", "teacher_files"]
