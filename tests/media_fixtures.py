"""Reusable pytest fixtures for media and teachers (session-scoped; expensive artefacts are built once per process).

Expose them to every test module with, in tests/conftest.py:

    from tests.media_fixtures import *  # noqa: F401,F403

Fixtures:
- `synth_clips`   {(duration, fps): path} timing-coded 320x180 clips for 10 / 9.5 / 12 s at 25 and 30 fps
- `broken_files`  {kind: path} one file per `valor_core.media.synth.BROKEN_KINDS`
- `synth_corpus`  manifest path of a 3-video LLP-style corpus with every broken kind (`valor media synth` format)
- `tiny_teachers` {"clip": SPEC, "clap": SPEC, "env": {...}} written by `valor_core.teachers.tiny` (HTSAT-tiny)
- `clip_teacher`, `clap_teacher`  the tiny teachers, loaded (CPU, fp32, batch_size 8)
"""
from __future__ import annotations

import os

import pytest

_CACHE: dict = {}

DURATIONS = (10.0, 9.5, 12.0)
FPS = (25, 30)


def _once(key, build):
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return _once("media_dir", lambda: tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def synth_clips(media_dir):
    from valor_core.media.synth import write_video

    def build():
        out = {}
        for d in DURATIONS:
            for fps in FPS:
                out[(d, fps)] = write_video(media_dir / f"clip-{d:g}s-{fps}fps.mp4", duration=d, fps=fps,
                                            size=(320, 180))
        return out

    return _once("synth_clips", build)


@pytest.fixture(scope="session")
def broken_files(media_dir):
    from valor_core.media.synth import BROKEN_KINDS, write_broken

    return _once("broken_files", lambda: {k: write_broken(media_dir / f"broken-{k}.mp4", k) for k in BROKEN_KINDS})


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    from valor_core.media.synth import synth_corpus as make

    return _once("synth_corpus", lambda: make(tmp_path_factory.mktemp("corpus"), 3, broken=True, seed=0))


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory):
    from valor_core.teachers.tiny import write_tiny_teachers

    def build():
        specs = write_tiny_teachers(tmp_path_factory.mktemp("teachers"), seed=0)
        os.environ.update(specs["env"])  # later imports of laion_clap in this process see the tiny hub cache
        return specs

    return _once("tiny_teachers", build)


@pytest.fixture(scope="session")
def clip_teacher(tiny_teachers):
    from valor_core.config import TeacherConfig
    from valor_core.teachers import load_clip_teacher

    return _once("clip_teacher", lambda: load_clip_teacher(tiny_teachers["clip"],
                                                           TeacherConfig(device="cpu", batch_size=8)))


@pytest.fixture(scope="session")
def clap_teacher(tiny_teachers):
    from valor_core.config import TeacherConfig
    from valor_core.teachers import load_clap_teacher

    return _once("clap_teacher", lambda: load_clap_teacher(tiny_teachers["clap"],
                                                           TeacherConfig(device="cpu", batch_size=8)))
