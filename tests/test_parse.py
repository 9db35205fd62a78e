"""`valor parse` end to end: real mp4 files with known events -> tiny CLIP/CLAP teachers -> a tiny HAN trained on them
-> JSON (schema), PNG, index.html opened by a real headless Chromium; broken files become typed failures."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from valor_core.classes import CLASSES
from valor_core.events import find_events
from valor_core.media.synth import Content, write_broken, write_video

A, B = 3, 12  # the two classes the tiny model learns: A seen (its colour) and heard (its tone), B heard only
N_TRAIN = 12
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"

EVENT = {"type": "object", "additionalProperties": False,
         "required": ["class", "modality", "start", "end", "confidence"],
         "properties": {"class": {"enum": list(CLASSES)}, "modality": {"enum": ["audio", "visual", "audio-visual"]},
                        "start": {"type": "number", "minimum": 0}, "end": {"type": "number", "minimum": 0},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1}}}
ROWS = {"type": "array", "items": {"type": "array", "minItems": 25, "maxItems": 25,
                                   "items": {"type": "number", "minimum": 0, "maximum": 1}}}
SCHEMA = {"type": "object",
          "required": ["video", "duration", "segments", "checkpoint", "events", "segment_prob"],
          "properties": {"video": {"type": "string"}, "duration": {"type": "number", "exclusiveMinimum": 0},
                         "segments": {"type": "integer", "minimum": 1}, "checkpoint": {"type": "string"},
                         "windows": {"type": "integer", "minimum": 1}, "issues": {"type": "array"},
                         "events": {"type": "array", "items": EVENT},
                         "segment_prob": {"type": "object", "required": ["audio", "visual"],
                                          "additionalProperties": False,
                                          "properties": {"audio": ROWS, "visual": ROWS}},
                         # MMIL-pooled as the official network does (sum over t, m of two attentions x prob): >= 0,
                         # and not bounded by 1
                         "global_prob": {"type": "array", "items": {"type": "array", "minItems": 25, "maxItems": 25,
                                                                     "items": {"type": "number", "minimum": 0}}}}}


def _content(rng: np.random.Generator, i: int) -> Content:
    """10 s: class A visible and/or audible, class B audible, each in a random whole-second span; which of the three
    are present runs through all 8 combinations with i."""
    c = Content()
    for bit, (cls, mod) in enumerate(((A, "visual"), (A, "audio"), (B, "audio"))):
        if (i >> bit) & 1:
            n = int(rng.integers(2, 8))
            on = int(rng.integers(0, 10 - n + 1))
            getattr(c, mod).append((cls, float(on), float(on + n)))
    return c


def _dense(content: Content, seconds: int) -> tuple[np.ndarray, np.ndarray]:
    a, v = np.zeros((seconds, 25), np.uint8), np.zeros((seconds, 25), np.uint8)
    for arr, evs in ((a, content.audio), (v, content.visual)):
        for c, on, off in evs:
            arr[int(on):int(off), c] = 1
    return a, v


@pytest.fixture(scope="module")
def trained(tiny_teachers, tmp_path_factory):
    """A tiny clip_clap HAN trained in-process on 16 synth videos' teacher embeddings, with their dense GT as the
    segment targets (the `valor` loss), saved as a `valor train` checkpoint dir."""
    from valor_core.arrays import AVVPArrays
    from valor_core.config import MediaConfig, TeacherConfig, replace, to_dict
    from valor_core.fit import configure_threads, fit
    from valor_core.media import decode
    from valor_core.presets import get_preset
    from valor_core.teachers import load_clap_teacher, load_clip_teacher
    from workflows.checkpoints import save_checkpoint_dir

    configure_threads(1)
    root = tmp_path_factory.mktemp("parse-train")
    rng = np.random.default_rng(0)
    tcfg = TeacherConfig(device="cpu", batch_size=16)
    clip, clap = load_clip_teacher(tiny_teachers["clip"], tcfg), load_clap_teacher(tiny_teachers["clap"], tcfg)
    media = MediaConfig(frame_size=clip.image_size[0])  # as `valor parse` decodes for this CLIP
    frames, audio, ga, gv = [], [], [], []
    for i in range(N_TRAIN):
        content = _content(rng, i)
        d = decode(write_video(root / f"train{i}.mp4", duration=10.0, fps=8, size=(160, 96), content=content,
                               seed=i), f"train{i}", media)
        frames.append(d.frames)
        audio.append(d.audio)
        a, v = _dense(content, 10)
        ga.append(a)
        gv.append(v)
    emb_v = clip.segment_logits(frames)[1]
    emb_a = clap.segment_logits(audio)[1]
    ga, gv = np.stack(ga), np.stack(gv)
    arrays = AVVPArrays(video_ids=np.array([f"train{i}" for i in range(N_TRAIN)]), weak=(ga | gv).max(axis=1),
                        audio=emb_a, frames=emb_v, audio_labels=ga, visual_labels=gv, audio_gt=ga, visual_gt=gv)
    cfg = replace(get_preset("valor"), features="clip_clap", device="cpu", label_smoothing=0.0,
                  **{"model.audio_dim": int(emb_a.shape[-1]), "model.frame_dim": int(emb_v.shape[-1]),
                     "model.frame_steps": 1, "model.clip_dim": 0, "model.hidden": 32, "model.heads": 1,
                     "model.ff": 64, "model.dropout": 0.0, "optim.epochs": 150, "optim.batch_size": 16,
                     "optim.lr_max": 3e-3, "optim.lr_min": 3e-3, "optim.warmup_epochs": 0,
                     "optim.schedule": "constant", "select_metric": "segment.audio"})
    result = fit(arrays, arrays, cfg)
    state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    ckpt = save_checkpoint_dir(str(root / "ckpt"), model_state=state, best_state=state, optimizer_state=None,
                               state={"epoch": cfg.optim.epochs}, config={"train": to_dict(cfg), "data": {}})
    return {"checkpoint": ckpt, "clip": tiny_teachers["clip"], "clap": tiny_teachers["clap"], "root": root}


@pytest.fixture(scope="module")
def parsed(trained, tmp_path_factory):
    """`valor parse` (in-process, no Ray) of a 23-s video with known events, a 10-s one, and broken files."""
    from workflows.cli import main

    vids = tmp_path_factory.mktemp("parse-videos")
    # 23 s = 3 windows: A seen 6..14 s (over the 10-s border) and heard 8..12 s; B heard 2..5 s and 17..22 s
    long = Content(visual=[(A, 6.0, 14.0)], audio=[(A, 8.0, 12.0), (B, 2.0, 5.0), (B, 17.0, 22.0)])
    write_video(vids / "long.mp4", duration=23.0, fps=8, size=(160, 96), content=long, seed=100)
    short = Content(audio=[(B, 1.0, 4.0)])
    write_video(vids / "short.mp4", duration=10.0, fps=8, size=(160, 96), content=short, seed=101)
    for kind in ("empty", "truncated", "not_video", "tiny"):
        write_broken(vids / f"broken-{kind}.mp4", kind)
    out = tmp_path_factory.mktemp("parse-out") / "run"
    argv = ["parse", str(vids), "--checkpoint", trained["checkpoint"], "--clip", trained["clip"], "--clap",
            trained["clap"], "--out", str(out), "--no-ray", "--device", "cpu", "--json"]
    rc = main(argv)
    return {"rc": rc, "out": out, "vids": vids, "truth": {"long": (long, 23), "short": (short, 10)}, "argv": argv}


def _truth_states(content: Content, seconds: int) -> np.ndarray:
    a, v = _dense(content, seconds)
    return a.astype(int) + 2 * v.astype(int)


@pytest.mark.integration  # trains a tiny HAN on real mp4 files through the tiny teachers (CPU minutes)
def test_json_schema_events_and_windows(parsed, capsys):
    import jsonschema

    assert parsed["rc"] == 0
    out = parsed["out"]
    for vid, (content, seconds) in parsed["truth"].items():
        r = json.loads((out / "parsed" / f"{vid}.json").read_text())
        jsonschema.validate(r, SCHEMA)
        assert r["segments"] == seconds and r["windows"] == (3 if vid == "long" else 1)
        assert r["duration"] == pytest.approx(seconds, abs=0.05)
        pa, pv, g = (np.array(r["segment_prob"]["audio"]), np.array(r["segment_prob"]["visual"]),
                     np.array(r["global_prob"]))
        # the events are exactly those of the documented definition on the JSON's own probabilities (official rule
        # per window: segment prob >= 0.5 and that window's video-level prob >= 0.5), merged across windows
        win = np.repeat(g, 10, axis=0)[:seconds] >= 0.5
        on_a, on_v = (pa >= 0.5) & win, (pv >= 0.5) & win
        want = find_events(on_a, on_v, pa, pv, np.arange(seconds + 1.0))
        key = lambda evs: [(e["class"], e["modality"], e["start"], e["end"]) for e in evs]  # noqa: E731
        assert key(r["events"]) == key(want)
        assert [e["confidence"] for e in r["events"]] == pytest.approx([e["confidence"] for e in want], abs=1e-3)
        # and the tiny model has learned the synth content: the segment states agree with the known events
        truth = _truth_states(content, seconds)
        got = on_a.astype(int) + 2 * on_v.astype(int)
        agree = (got[:, [A, B]] == truth[:, [A, B]]).mean()
        assert agree >= 0.8, (vid, agree, got[:, [A, B]].T, truth[:, [A, B]].T)
        heard = (on_a[:, [A, B]] == (truth[:, [A, B]] & 1).astype(bool)).mean()
        assert heard >= 0.9, (vid, heard)  # the tones are the easy part for the random tiny CLAP
        assert not got[:, [c for c in range(25) if c not in (A, B)]].any()
    long = json.loads((out / "parsed" / "long.json").read_text())
    # A is heard 8..12 s (and seen 6..14 s), across the first window border at 10 s: found as runs that do not stop
    # at the border (one event per modality part, the parts of one class abutting)
    parts = sorted((e["start"], e["end"]) for e in long["events"] if e["class"] == CLASSES[A])
    assert any(s < 10 < t for s, t in parts), parts
    assert all(parts[i][1] <= parts[i + 1][0] for i in range(len(parts) - 1))  # one class's events never overlap


@pytest.mark.integration  # trains a tiny HAN on real mp4 files through the tiny teachers (CPU minutes)
def test_png_failures_and_json_line(parsed, capsys):
    from PIL import Image

    out = parsed["out"]
    for vid in ("long", "short"):
        img = Image.open(out / "parsed" / f"{vid}.png").convert("RGB")
        assert img.size[0] >= 600
        colours = {tuple(int(x) for x in p) for p in np.asarray(img).reshape(-1, 3)[::7]}
        assert (31, 119, 180) in colours  # audio bars (both videos have audio-only parts of B)
    fails = {f["video"]: f for f in json.loads((out / "failures.json").read_text())}
    assert {k: f["kind"] for k, f in fails.items()} == {"broken-empty": "empty", "broken-truncated": "truncated",
                                                        "broken-not_video": "not_video", "broken-tiny": "too_short"}
    assert all(f["reason"] and f["stage"] == "decode" for f in fails.values())
    # a re-run into the same output replaces it; the CLI's last line is the JSON contract
    from workflows.cli import main

    capsys.readouterr()
    assert main(parsed["argv"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: last[k] for k in ("videos", "failed", "out")} == {"videos": 2, "failed": 4, "out": str(out)}
    assert set(last["video_s"]) == {"long", "short"} | {f"broken-{k}" for k in ("empty", "truncated", "not_video",
                                                                                 "tiny")}


@pytest.fixture(scope="module")
def bare(tiny_teachers, tmp_path_factory):
    """An untrained clip_clap checkpoint (enough for the checks made before any video is read)."""
    from valor_core.config import replace, to_dict
    from valor_core.fit import build_model
    from valor_core.presets import get_preset
    from workflows.checkpoints import save_checkpoint_dir

    cfg = replace(get_preset("valor"), features="clip_clap", **{"model.audio_dim": 512, "model.frame_dim": 32,
                                                                 "model.frame_steps": 1, "model.clip_dim": 0,
                                                                 "model.hidden": 16, "model.ff": 16})
    state = build_model(cfg).state_dict()
    ckpt = save_checkpoint_dir(str(tmp_path_factory.mktemp("bare") / "ckpt"), model_state=state, best_state=state,
                               optimizer_state=None, state={}, config={"train": to_dict(cfg), "data": {}})
    return {"checkpoint": ckpt, "clip": tiny_teachers["clip"], "clap": tiny_teachers["clap"]}


def test_bad_input_exit_2(bare, tmp_path, capsys):
    trained = bare
    from workflows.cli import main

    ok = ["--checkpoint", trained["checkpoint"], "--clip", trained["clip"], "--clap", trained["clap"]]
    assert main(["parse", str(tmp_path / "missing.mp4"), *ok, "--out", str(tmp_path / "o")]) == 2
    assert "missing.mp4: no such file" in capsys.readouterr().err
    video = tmp_path / "v.mp4"
    write_broken(video, "empty")
    assert main(["parse", str(video), "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["parse", str(video), "--checkpoint", trained["checkpoint"], "--out", str(tmp_path / "o")]) == 2
    assert "pass --clip" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["parse", str(video), *ok, "--out", str(foreign)]) == 2
    assert "notes.txt" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "o").exists()


def test_paper_feature_sets_need_the_backbones(monkeypatch):
    """vggish_resnet_r2p1d / clip_clap_maps checkpoints go through valor_core.backbones; without it, a clear error."""
    import workflows.parse as parse

    monkeypatch.setitem(sys.modules, "valor_core.backbones", None)  # as if the package were not there
    with pytest.raises(parse.ParseError, match=r"features vggish_resnet_r2p1d need the paper backbones "
                                               r"\(valor extract --features vggish,res152,r2plus1d\)"):
        parse._paper_backbones("vggish_resnet_r2p1d", parse.NEEDS["vggish_resnet_r2p1d"][1])


COLOUR = {"audio": (31, 119, 180), "visual": (255, 127, 14), "audio-visual": (44, 160, 44)}


def _over_lane(event: dict) -> np.ndarray:
    """The colour of an event's bar as drawn: its modality's colour at the opacity of its confidence over the lane's
    #f0f0f0."""
    a = event["confidence"]
    return a * np.array(COLOUR[event["modality"]]) + (1 - a) * 240.0


@contextlib.contextmanager
def _chromium(tmp_path, height: int):
    """Debian's Chromium, headless, through playwright (a fresh profile; no background network), closed after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            viewport={"width": 1000, "height": height},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.integration  # trains a tiny HAN on real mp4 files through the tiny teachers (CPU minutes)
def test_page_in_a_headless_browser(parsed, tmp_path):
    """index.html opens in real headless Chromium with no console error; the timeline's event bars are drawn (pixel
    colours), a click on an event seeks the video, and the cursor follows."""
    from PIL import Image

    out = parsed["out"]
    long = json.loads((out / "parsed" / "long.json").read_text())
    short = json.loads((out / "parsed" / "short.json").read_text())
    bars = sum(2 if e["modality"] == "audio-visual" else 1 for r in (long, short) for e in r["events"])
    errors: list[str] = []
    shot = tmp_path / "page.png"
    with _chromium(tmp_path, 1100) as browser:
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto((out / "index.html").as_uri())
        page.wait_for_function("document.querySelectorAll('rect.event').length > 0")
        assert page.locator("rect.event").count() == bars
        assert all(u.startswith("file://") for u in requests), requests  # nothing from the network
        first = long["events"][0]
        bar = page.locator("#timeline-0 rect.event").first
        box = bar.bounding_box()
        page.screenshot(path=str(shot), full_page=True)
        img = np.asarray(Image.open(shot).convert("RGB"))
        px = img[int(box["y"] + box["height"] / 2), int(box["x"] + box["width"] - 3)].astype(int)  # clear of its number
        want = _over_lane(first)
        assert np.abs(np.array(px) - want).max() <= 2, (px, want, first)
        # click the last event of the long video: the player seeks to its start, and the cursor moves there
        page.wait_for_function("document.getElementById('video-0').readyState >= 1", timeout=10000)
        last = long["events"][-1]
        page.locator("#timeline-0 rect.event").last.click()
        page.wait_for_function(f"Math.abs(document.getElementById('video-0').currentTime - {last['start']}) < 0.2",
                               timeout=10000)
        page.wait_for_function("Number(document.querySelector('#timeline-0 line.cursor').getAttribute('x1')) > "
                               "Number(document.querySelector('#timeline-0 rect.lane').getAttribute('x'))",
                               timeout=10000)
    assert errors == []


# names that broke the page when it was filled by chained str.replace: the first injected an <img> whose onerror ran
# (the placeholder __DATA__ was replaced inside the heading too), the second left the script unterminated
HOSTILE = {"__DATA__<img src=x onerror=alert(1)>": Content(audio=[(B, 1.0, 4.0)]),
           "<!--<script>": Content(visual=[(A, 2.0, 7.0)], audio=[(A, 3.0, 6.0), (B, 6.0, 9.0)])}
HOSTILE_BROKEN = "<img src=y onerror=window.__pwned=1>"


@pytest.fixture(scope="module")
def hostile(trained, tmp_path_factory):
    """`valor parse` (in-process) of real mp4 files named with markup and script, and a broken one likewise."""
    from workflows.cli import main

    vids = tmp_path_factory.mktemp("hostile-videos")
    for i, (name, content) in enumerate(HOSTILE.items()):
        write_video(vids / f"{name}.mp4", duration=10.0, fps=8, size=(160, 96), content=content, seed=102 + i)
    write_broken(vids / f"{HOSTILE_BROKEN}.mp4", "not_video")
    out = tmp_path_factory.mktemp("hostile-out") / "run"
    rc = main(["parse", str(vids), "--checkpoint", trained["checkpoint"], "--clip", trained["clip"], "--clap",
               trained["clap"], "--out", str(out), "--no-ray", "--device", "cpu", "--json"])
    return {"rc": rc, "out": out}


@pytest.mark.integration  # trains a tiny HAN on real mp4 files through the tiny teachers (CPU minutes)
def test_page_with_hostile_video_names_runs_no_script(hostile, tmp_path):
    """Video names are data: in real headless Chromium no script of theirs runs (no dialog, no injected element,
    window.__pwned unset), each name shows literally, every timeline draws its event bars in their colours, and
    every player finds its file."""
    from PIL import Image

    assert hostile["rc"] == 0
    out = hostile["out"]
    names = sorted(HOSTILE)  # the page's order (list_videos sorts the directory)
    results = [json.loads((out / "parsed" / f"{n}.json").read_text()) for n in names]
    assert [r["video"] for r in results] == names and all(r["events"] for r in results)
    errors: list[str] = []
    dialogs: list[str] = []
    shot = tmp_path / "page.png"
    with _chromium(tmp_path, 900) as browser:
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto((out / "index.html").as_uri())
        page.wait_for_function("document.querySelectorAll('rect.event').length > 0", timeout=10000)
        for i, r in enumerate(results):
            bars = sum(2 if e["modality"] == "audio-visual" else 1 for e in r["events"])
            assert page.locator(f"#timeline-{i} rect.event").count() == bars, (i, r["video"])
            assert page.locator(f"#timeline-{i} rect.lane").count() == 2 * len({e["class"] for e in r["events"]})
            page.wait_for_function(f"document.getElementById('video-{i}').readyState >= 1", timeout=10000)
        assert page.locator("section h2").all_text_contents() == names
        assert page.locator("#failures td").first.text_content() == HOSTILE_BROKEN
        assert page.locator("img").count() == 0 and page.locator("body script").count() == 2
        assert page.evaluate("window.__pwned") is None
        page.screenshot(path=str(shot), full_page=True)
        img = np.asarray(Image.open(shot).convert("RGB"))
        for i, r in enumerate(results):
            box = page.locator(f"#timeline-{i} rect.event").first.bounding_box()
            px = img[int(box["y"] + box["height"] / 2), int(box["x"] + box["width"] - 3)].astype(int)
            assert np.abs(px - _over_lane(r["events"][0])).max() <= 2, (i, px, r["events"][0])
    assert dialogs == [] and errors == []


@pytest.mark.integration  # real local Ray (Ray Data actor pool), started and stopped by the command
def test_many_videos_through_ray_data_give_the_same_parse(parsed, tmp_path, capsys):
    import ray

    from workflows.cli import main

    out = tmp_path / "ray-run"
    argv = [a if a != str(parsed["out"]) else str(out) for a in parsed["argv"] if a != "--no-ray"]
    capsys.readouterr()
    assert main(argv + ["--ray", "--num-cpus", "2"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: last[k] for k in ("videos", "failed", "out")} == {"videos": 2, "failed": 4, "out": str(out)}
    assert last["model_loads"] == 1 and last["load_s"] > 0  # one actor, which loaded the models once
    assert not ray.is_initialized()  # the command stopped the Ray it started
    for vid in ("long", "short"):
        a, b = (json.loads((d / "parsed" / f"{vid}.json").read_text()) for d in (out, parsed["out"]))
        assert a["events"] == b["events"] and a["segment_prob"] == b["segment_prob"]
    # the same failures, by video, stage and kind (PyAV appends its last log line to a reason in some processes only)
    a, b = (json.loads((d / "failures.json").read_text()) for d in (out, parsed["out"]))
    assert [(f["video"], f["stage"], f["kind"]) for f in a] == [(f["video"], f["stage"], f["kind"]) for f in b]


def test_spec_of_a_checkpoint_trained_on_mixed_sources(tmp_path, monkeypatch):
    """A han checkpoint trained on [an imported dataset, an extracted one]: parse takes the media settings and the
    backbone weights the extraction recorded (no --weights needed for what it recorded); --weights wins; a weights
    file the recorded default needs and the hub cache lacks is a ParseError naming it, before any model is built."""
    import workflows.parse as parse
    from tests.test_mix import MEDIA, _made, _write
    from valor_core.config import replace, to_dict
    from valor_core.presets import get_preset
    from workflows.checkpoints import save_checkpoint_dir

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    imported, extracted = tmp_path / "imported", tmp_path / "extracted"
    _write(imported, ["a"])
    _write(extracted, ["b"], made=_made(res152="hub cache"))
    cfg = replace(get_preset("han"), **{"model.hidden": 16, "model.ff": 16})
    ckpt = save_checkpoint_dir(str(tmp_path / "ckpt"), model_state={}, best_state={}, optimizer_state=None, state={},
                               config={"train": to_dict(cfg), "data": {"features": [str(imported), str(extracted)]}})
    monkeypatch.setattr(parse, "Parser", lambda spec: pytest.fail("a model was built"))
    with pytest.raises(parse.ParseError, match="resnet152-394f9c45.pth' not found"):
        parse.make_spec(ckpt)
    spec = parse.make_spec(ckpt, weights={"res152": "random"})
    assert spec.weights == {"vggish": "random", "res152": "random", "r2plus1d": "random"}
    assert spec.media == MEDIA and spec.clip is None and spec.clap is None
    assert parse.recorded_teachers("sim:0") == {} and parse.recorded_teachers([str(imported)]) == {}


@pytest.mark.integration  # uses the module's trained tiny HAN (CPU minutes)
def test_reserved_names_and_foreign_files_survive_a_rerun(trained, tmp_path, capsys):
    """Safety items 2-3: videos named `_valor` and `failures` cannot overwrite valor's marker or failures file (their
    files go into parsed/), and a re-run into the same --out deletes exactly what valor wrote there: the user's
    notes, holiday video and a file inside parsed/ stay byte-identical and are reported as kept."""
    from workflows.cli import main
    from workflows.outputs import read_marker

    vids = tmp_path / "videos"
    vids.mkdir()
    for i, name in enumerate(("_valor", "failures", "index")):
        write_video(vids / f"{name}.mp4", duration=10.0, fps=8, size=(160, 96), content=Content(audio=[(B, 1.0, 4.0)]),
                    seed=200 + i)
    out = tmp_path / "out"
    argv = ["parse", str(vids), "--checkpoint", trained["checkpoint"], "--clip", trained["clip"], "--clap",
            trained["clap"], "--out", str(out), "--no-ray", "--device", "cpu", "--json"]
    assert main(argv) == 0
    assert read_marker(str(out))["kind"] == "parse" and json.loads((out / "failures.json").read_text()) == []
    assert {json.loads((out / "parsed" / f"{n}.json").read_text())["video"] for n in ("_valor", "failures", "index")} \
        == {"_valor", "failures", "index"}
    planted = {out / "my_notes.txt": b"notes", out / "my_holiday.mp4": (vids / "index.mp4").read_bytes(),
               out / "parsed" / "mine.json": b"{}"}
    for path, data in planted.items():
        path.write_bytes(data)
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "kept 3 files valor did not write" in err and "my_holiday.mp4" in err
    assert all(path.read_bytes() == data for path, data in planted.items())
    assert read_marker(str(out))["kind"] == "parse" and (out / "index.html").read_text().startswith("<!")


# --- issue 24 items 9-13: parse shows what it knows -------------------------------------------------------------------

LONG35 = Content(visual=[(A, 3.0, 12.0), (A, 20.0, 31.0)], audio=[(A, 5.0, 9.0), (B, 14.0, 18.0), (B, 26.0, 33.0)])
# the ground truth written for the 35-s clip (LLP format, seconds past 10 allowed): what it shows, less B's last part
GT35 = {"audio": [(A, 5, 9), (B, 14, 18)], "visual": [(A, 3, 12), (A, 20, 31)]}


def _blank_video(path: Path, tone_class: int) -> Path:
    """10 s of black frames (no usable picture) with class `tone_class`'s tone throughout, made by ffmpeg."""
    import subprocess

    from valor_core.media.synth import class_tone

    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=black:s=160x96:r=8:d=10",
                    "-f", "lavfi", "-i", f"sine=frequency={class_tone(tone_class):.3f}:sample_rate=48000:duration=10",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def showcase(trained, tmp_path_factory):
    """`valor parse --gt` (in-process) of a normal 10-s clip, one without an audio track, one of black frames, and a
    35-s clip with LLP-format ground truth; the console and the --json line kept."""
    from workflows.cli import main

    vids = tmp_path_factory.mktemp("showcase-videos")
    write_video(vids / "a_normal.mp4", duration=10.0, fps=8, size=(160, 96), seed=300,
                content=Content(visual=[(A, 2.0, 8.0)], audio=[(A, 3.0, 6.0), (B, 6.0, 9.0)]))
    write_video(vids / "b_no_audio.mp4", duration=10.0, fps=8, size=(160, 96), seed=301, audio=False,
                content=Content(visual=[(A, 1.0, 7.0)]))
    _blank_video(vids / "c_blank.mp4", B)
    write_video(vids / "d_long35.mp4", duration=35.0, fps=8, size=(160, 96), seed=302, content=LONG35)
    gt = tmp_path_factory.mktemp("showcase-gt")
    for lane, rows in GT35.items():
        (gt / f"{lane}.csv").write_text("filename\tonset\toffset\tevent_labels\n" + "".join(
            f"d_long35\t{on}\t{off}\t{CLASSES[c]}\n" for c, on, off in rows))
    out = tmp_path_factory.mktemp("showcase-out") / "run"
    import io
    from contextlib import redirect_stderr, redirect_stdout

    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        rc = main(["parse", str(vids), "--checkpoint", trained["checkpoint"], "--clip", trained["clip"], "--clap",
                   trained["clap"], "--out", str(out), "--no-ray", "--device", "cpu", "--json",
                   "--gt", f"audio={gt / 'audio.csv'}", "--gt", f"visual={gt / 'visual.csv'}"])
    names = ["a_normal", "b_no_audio", "c_blank", "d_long35"]
    return {"rc": rc, "out": out, "names": names, "console": stderr.getvalue(),
            "last": json.loads(stdout.getvalue().strip().splitlines()[-1]),
            "json": {n: json.loads((out / "parsed" / f"{n}.json").read_text()) for n in names}}


@pytest.mark.integration  # uses the module's trained tiny HAN (CPU minutes)
def test_a_missing_modality_leaves_its_lane_empty_and_says_so(showcase):
    """Item 9: a video without an audio track has no audio or audio-visual events, no audio probabilities, and says
    "no audio track" in its JSON, the console and its PNG; black frames do the same for the visual lane."""
    from PIL import Image

    from workflows.timeline import timeline_figure

    assert showcase["rc"] == 0
    silent, blank, normal = (showcase["json"][n] for n in ("b_no_audio", "c_blank", "a_normal"))
    assert silent["missing"] == {"audio": "no audio track"} and silent["segment_prob"]["audio"] is None
    assert blank["missing"] == {"visual": "no usable frames"} and blank["segment_prob"]["visual"] is None
    for r, lane in ((silent, "visual"), (blank, "audio")):  # the events are those of the lane it has, by definition
        p, win = np.array(r["segment_prob"][lane]), np.array(r["global_prob"])[0] >= 0.5
        on, off = (p >= 0.5) & win, np.zeros_like(p, bool)
        want = find_events(*((off, on) if lane == "visual" else (on, off)), p, p, np.arange(11.0))
        assert [(e["class"], e["modality"], e["start"], e["end"]) for e in r["events"]] == [
            (e["class"], e["modality"], e["start"], e["end"]) for e in want]
        assert {e["modality"] for e in r["events"]} <= {lane}
    # B's tone plays throughout the black clip: heard, and only heard
    assert [(e["class"], e["modality"], e["start"], e["end"]) for e in blank["events"]] == [
        (CLASSES[B], "audio", 0.0, 10.0)]
    assert normal["missing"] == {} and len(normal["segment_prob"]["audio"]) == 10
    assert "b_no_audio: 10.0 s" in showcase["console"] and "no audio track: audio lane empty" in showcase["console"]
    assert "no usable frames: visual lane empty" in showcase["console"]
    fig = timeline_figure(silent)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "no audio track" in fig.axes[0].get_title() and texts.count("no audio track") == max(1, len(
        {e["class"] for e in silent["events"]}))
    img = np.asarray(Image.open(showcase["out"] / "parsed" / "b_no_audio.png").convert("RGB")).reshape(-1, 3)
    assert ((img == (217, 217, 217)).all(axis=1)).sum() > 1000  # the hatched grey audio lanes


@pytest.mark.integration  # uses the module's trained tiny HAN (CPU minutes)
def test_a_long_video_says_how_it_was_cut(showcase):
    """Item 10: a 35-s clip parsed as 4 windows of 10 one-second segments says so, not the uniform cut of the first
    look at it."""
    r = showcase["json"]["d_long35"]
    assert (r["windows"], r["segments_per_window"], r["segments"], r["segment_seconds"]) == (4, 10, 35, 1.0)
    assert "long_clip: 35.00 s vs 10 s nominal; parsed as 4 windows of 10 x 1 s segments, 35 kept" in r["issues"]
    assert not any("uniform" in line for line in r["issues"]), r["issues"]
    assert len(r["segment_prob"]["audio"]) == 35 and len(r["global_prob"]) == 4


@pytest.mark.integration  # uses the module's trained tiny HAN (CPU minutes)
def test_png_legend_clear_of_title_and_lanes_confidence_shown(showcase):
    """Item 12: the legend's box overlaps neither the title nor the axes (the lanes); every bar is drawn at the
    opacity of its confidence, and bars wide enough carry the number."""
    from workflows.timeline import timeline_figure

    for name, r in showcase["json"].items():
        fig = timeline_figure(r)
        fig.canvas.draw()
        rd = fig.canvas.get_renderer()
        ax, legend = fig.axes[0], fig.legends[0].get_window_extent(rd)
        for part in (ax.title.get_window_extent(rd), ax.get_window_extent(rd), ax.xaxis.label.get_window_extent(rd)):
            assert not legend.overlaps(part), (name, legend, part)
        drawn = sorted(round(float(c.get_alpha()), 4) for c in ax.collections if c.get_alpha() is not None)
        want = sorted(e["confidence"] for e in r["events"] for _ in range(2 if e["modality"] == "audio-visual" else 1))
        assert drawn == pytest.approx(want, abs=1e-4), name
        numbers = [t.get_text() for t in ax.texts if t.get_gid() == "confidence"]
        wide = [e for e in r["events"] if e["end"] - e["start"] >= 2.0 * r["duration"] / 10]
        assert all(f"{e['confidence']:.2f}" in numbers for e in wide), (name, numbers)


@pytest.mark.integration  # uses the module's trained tiny HAN (CPU minutes)
def test_models_load_once_and_a_failing_batch_never_loads_them(showcase, bare, tmp_path, capsys):
    """Item 13: --json reports the models' load time apart from each video's time; four videos load them once; a
    batch whose videos all fail is decoded first and never loads them (its checkpoint's weights file is garbage, so
    a load would fail the videos as `parse` errors instead of their decode kinds)."""
    from workflows.cli import main

    last = showcase["last"]
    assert last["model_loads"] == 1 and last["load_s"] > 0
    assert set(last["video_s"]) == set(showcase["names"]) and all(s > 0 for s in last["video_s"].values())
    ckpt = tmp_path / "ckpt"
    shutil.copytree(bare["checkpoint"], ckpt)
    for weights in ckpt.glob("*.pt"):
        weights.write_bytes(b"not a checkpoint")
    vids = tmp_path / "videos"
    vids.mkdir()
    for kind in ("empty", "not_video", "tiny"):
        write_broken(vids / f"{kind}.mp4", kind)
    capsys.readouterr()
    assert main(["parse", str(vids), "--checkpoint", str(ckpt), "--clip", bare["clip"], "--clap", bare["clap"],
                 "--out", str(tmp_path / "out"), "--no-ray", "--device", "cpu", "--json"]) == 1
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (last["videos"], last["failed"], last["model_loads"], last["load_s"]) == (0, 3, 0, 0.0)
    fails = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert {f["kind"] for f in fails} == {"empty", "not_video", "too_short"}


def _gt_cells(r: dict, lane: str) -> int:
    """The heat-map cells the ground truth covers in one lane (segments overlapping a GT span, per class)."""
    edges = [min(j * r["segment_seconds"], r["duration"]) for j in range(r["segments"] + 1)]
    return sum(1 for c in CLASSES for j in range(r["segments"])
               if any(CLASSES[g] == c and g_on < edges[j + 1] and g_off > edges[j] for g, g_on, g_off in GT35[lane]))


@pytest.fixture(scope="module")
def twelve(trained, tmp_path_factory):
    """`valor parse` (in-process) of 12 short videos: the page's index."""
    from workflows.cli import main

    vids = tmp_path_factory.mktemp("twelve-videos")
    for i in range(12):
        write_video(vids / f"clip{i:02d}.mp4", duration=10.0, fps=8, size=(160, 96), seed=400 + i,
                    content=Content(audio=[(B, float(i % 5), float(i % 5 + 3))]))
    out = tmp_path_factory.mktemp("twelve-out") / "run"
    rc = main(["parse", str(vids), "--checkpoint", trained["checkpoint"], "--clip", trained["clip"], "--clap",
               trained["clap"], "--out", str(out), "--no-ray", "--device", "cpu"])
    return {"rc": rc, "out": out}


@pytest.mark.integration  # uses the module's trained tiny HAN (CPU minutes)
def test_page_shows_lanes_confidence_heat_map_table_gt_and_index(showcase, twelve, tmp_path):
    """Item 11 in real headless Chromium: each player sits beside its timeline; lanes are labelled audio / visual
    and a missing one is greyed and named; every bar's opacity is its confidence; the heat map has a cell per class
    and segment of each lane the video has, shaded by the JSON's segment_prob; ticks every second (5 s on the 35-s
    clip); the event table has a row per event and sorts by confidence; the 35-s clip's ground truth is outlined on
    its timeline and heat map; the 12-video page opens with an index. The screenshots are the docs' (docs/parse/)."""
    results = [showcase["json"][n] for n in showcase["names"]]
    errors: list[str] = []
    shots = {}
    with _chromium(tmp_path, 1000) as browser:
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((showcase["out"] / "index.html").as_uri())
        page.wait_for_function("document.querySelectorAll('rect.heat').length > 0", timeout=10000)
        assert page.locator("#index tr").count() == 1 + len(results)
        assert page.locator("#index a").all_text_contents() == showcase["names"]
        for i, r in enumerate(results):
            tl, pl = f"#timeline-{i}", page.locator(f"#video-{i}").bounding_box()
            box = page.locator(tl).bounding_box()
            assert pl["x"] + pl["width"] <= box["x"] and pl["y"] < box["y"] + box["height"], (i, pl, box)
            classes = list(dict.fromkeys([e["class"] for e in r["events"]] + (
                [CLASSES[c] for lane in ("audio", "visual") for c, _, _ in GT35[lane]] if i == 3 else [])))
            classes = classes or ["(no events)"]
            assert page.locator(f"{tl} text.class-label").all_text_contents() == classes
            assert page.locator(f"{tl} text.lane-label").all_text_contents() == ["audio", "visual"] * len(classes)
            missing = r["missing"]
            assert page.locator(f"{tl} rect.missing").count() == len(missing) * len(classes)
            assert page.locator(f"{tl} text.missing-label").all_text_contents() == [
                why for _ in classes for lane, why in missing.items()]
            opacity = page.eval_on_selector_all(f"{tl} rect.event", "es => es.map(e => +e.getAttribute("
                                                                   "'fill-opacity'))")
            assert sorted(opacity) == pytest.approx(sorted(
                e["confidence"] for e in r["events"] for _ in range(2 if e["modality"] == "audio-visual" else 1)))
            ticks = page.locator(f"{tl} text.tick-label").all_text_contents()
            step = 5 if r["duration"] > 30 else 1
            assert ticks == [f"{t}s" for t in range(0, int(r["duration"]) + 1, step)], (i, ticks)
            assert page.locator(f"#heat-{i} text.missing-label").all_text_contents() == list(missing.values())
            heat = np.array(page.eval_on_selector_all(f"#heat-{i} rect.heat", "es => es.map(e => +e.dataset.p)"))
            want = np.concatenate([np.array(r["segment_prob"][lane]).T.ravel() for lane in ("audio", "visual")
                                   if lane not in missing])
            assert heat.shape == (25 * r["segments"] * (2 - len(missing)),) and np.allclose(heat, want), i
            rows = page.locator(f"#events-{i} tbody tr")
            assert rows.count() == len(r["events"])
            page.locator(f"#events-{i} th[data-key=confidence]").click()
            shown = [float(t) for t in page.locator(f"#events-{i} tbody tr td:nth-child(5)").all_text_contents()]
            assert shown == sorted((round(e["confidence"], 3) for e in r["events"]), reverse=True)
        # the 35-s clip's ground truth: one dashed outline per GT span on the timeline, outlined heat-map cells
        assert page.locator("#timeline-3 rect.gt").count() == sum(len(v) for v in GT35.values())
        assert page.locator("#heat-3 rect.gt-cell").count() == _gt_cells(results[3], "audio") + _gt_cells(
            results[3], "visual")
        assert page.locator("#timeline-0 rect.gt").count() == 0
        for i, name in enumerate(("normal", "no-audio", "blank-frames", "long-35s-gt")):
            shots[name] = tmp_path / f"{name}.png"
            page.locator(f"#v{i}").screenshot(path=str(shots[name]))
        page.goto((twelve["out"] / "index.html").as_uri())
        page.wait_for_function("document.querySelectorAll('rect.heat').length > 0", timeout=10000)
        assert twelve["rc"] == 0 and page.locator("#index tr").count() == 13
        assert page.locator("#index a").all_text_contents() == [f"clip{i:02d}" for i in range(12)]
        assert page.locator("#index a").nth(11).get_attribute("href") == "#v11"
        shots["index-12"] = tmp_path / "index-12.png"
        page.screenshot(path=str(shots["index-12"]))
    assert errors == []
    target = os.environ.get("VALOR_PARSE_DOCS")  # docs/parse/*.png are made this way (README)
    if target:
        for name, shot in shots.items():
            shutil.copyfile(shot, Path(target) / f"{name}.png")


def test_gt_files_are_checked_before_any_video_is_read(bare, tmp_path, capsys):
    """--gt: the shipped LLP labels are found for an LLP id; a class outside the 25, a bad time, or labels for none of
    the videos exit 2 with one line naming the file (and line), and nothing is written."""
    from workflows.cli import main
    from workflows.parse_gt import load_gt

    llp = load_gt(["llp"], ["KSRjje7GH44_60_70", "mine"])
    assert set(llp) == {"KSRjje7GH44_60_70"} and ["Speech", 0.0, 8.0] in llp["KSRjje7GH44_60_70"]["audio"]
    video = tmp_path / "clip.mp4"
    write_broken(video, "tiny")
    ok = ["parse", str(video), "--checkpoint", bare["checkpoint"], "--clip", bare["clip"], "--clap", bare["clap"],
          "--out", str(tmp_path / "o")]
    for rows, message in ((["clip\t0\t4\tUnicorn"], ":2: 'Unicorn' is not one of the 25 LLP classes"),
                          (["clip\t0\t4\tSpeech", "clip\tsoon\t4\tSpeech"], ":3: onset 'soon' is not a number"),
                          (["other\t0\t4\tSpeech"], "no rows for any of the 1 video(s) (clip)")):
        gt = tmp_path / "audio.csv"
        gt.write_text("filename\tonset\toffset\tevent_labels\n" + "\n".join(rows) + "\n")
        capsys.readouterr()
        assert main(ok + ["--gt", f"audio={gt}"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_gt_llp_means_the_annotations_the_run_trained_with(bare, tmp_path):
    """Issue 24 item 2 for parse: `--gt llp` reads the LLP annotations the checkpoint's run recorded (a demo corpus's
    GT), else the ones shipped with valor."""
    from workflows.checkpoints import read_best_weights, read_meta, save_checkpoint_dir
    from workflows.parse import make_spec
    from workflows.parse_gt import load_gt

    ann = tmp_path / "corpus"
    ann.mkdir()
    (ann / "AVVP_eval_audio.csv").write_text("filename\tonset\toffset\tevent_labels\nmine_0_10\t1\t4\tDog\n")
    (ann / "AVVP_eval_visual.csv").write_text("filename\tonset\toffset\tevent_labels\nmine_0_10\t2\t5\tCat\n")
    meta = read_meta(bare["checkpoint"])
    state = read_best_weights(bare["checkpoint"])
    ckpt = save_checkpoint_dir(str(tmp_path / "ckpt"), model_state=state, best_state=state, optimizer_state=None,
                               state={}, config={"train": meta["train"], "data": {"annotations": str(ann)}})
    spec = make_spec(ckpt, clip=bare["clip"], clap=bare["clap"])
    assert spec.annotations == str(ann)
    assert load_gt(["llp"], ["mine_0_10"], llp=spec.annotations) == {
        "mine_0_10": {"audio": [["Dog", 1.0, 4.0]], "visual": [["Cat", 2.0, 5.0]]}}
    shipped = make_spec(bare["checkpoint"], clip=bare["clip"], clap=bare["clap"])
    assert shipped.annotations is None  # the shipped LLP files: an LLP id finds its labels there
    assert load_gt(["llp"], ["4YdbENYcIyE_23_33"], llp=shipped.annotations)["4YdbENYcIyE_23_33"]["audio"]
