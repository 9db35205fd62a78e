"""The CLI as documented (issue 24, items 1-8): each command as the README writes it, through `python -m workflows.cli`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def valor(*args: str, cwd: Path = ROOT, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`valor ARGS` as a user runs it: a fresh process, text output, the exit code."""
    base = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**base, **(env or {})})


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


# --- 1. numbers as Python and YAML 1.2 users write them ---------------------------------------------------------------


@pytest.mark.parametrize("written, value", [("2e-4", 2e-4), ("1E-3", 1e-3), (".5", 0.5), ("1_000", 1000.0),
                                            ("+.5e-1", 0.05)])
def test_train_set_reads_scientific_notation(written, value):
    out = valor("train", "--preset", "valor", "--dry-run", "--json", "--set", f"optim.lr_max={written}")
    assert out.returncode == 0, out.stderr
    assert last_json(out.stdout)["config"]["optim"]["lr_max"] == pytest.approx(value)


def test_run_override_reads_scientific_notation(tmp_path):
    out = valor("run", "--config", "configs/local.yaml", "--print-config", f"paths.output={tmp_path}/out",
                "ave.lr=1e-3", "train.optim.lr_max=2E-4", "train.optim.epochs=1_0")
    assert out.returncode == 0, out.stderr
    import yaml

    cfg = yaml.safe_load(out.stdout)
    assert cfg["ave"]["lr"] == pytest.approx(1e-3)
    assert cfg["train"]["optim"]["lr_max"] == pytest.approx(2e-4)
    assert cfg["train"]["optim"]["epochs"] == 10



# --- 7. one flag name per concept ---------------------------------------------------------------------------------------

OLD_NAMES = {"--address": "--ray-address", "--mlflow": "--tracking-uri", "--use-gpu": "--gpu"}


def _parsers(parser, path=()):
    """(command words, parser) of every (sub-)command."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_one_flag_name_per_concept_old_names_hidden():
    import argparse

    from workflows.cli import build_parser

    seen = {}
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            shown = [o for o in action.option_strings if action.help is not argparse.SUPPRESS]
            old = [o for o in shown if o in OLD_NAMES]
            assert not old, f"valor {' '.join(path)} shows {old[0]}; the CLI's name is {OLD_NAMES[old[0]]}"
            for o in action.option_strings:
                if o in OLD_NAMES:
                    seen.setdefault(o, []).append(" ".join(path))
    assert set(seen) == set(OLD_NAMES)  # the old names still parse (hidden), e.g. in scripts
    for cmd in ("tune thresholds", "extract", "import llp", "parse"):
        assert cmd in seen["--address"]


def test_old_flag_names_parse_to_the_new_ones():
    from workflows.cli import build_parser

    p = build_parser()
    base = ["tune", "thresholds", "--logits", "sim:0"]
    new = p.parse_args([*base, "--ray-address", "auto", "--tracking-uri", "sqlite:///x.db"])
    old = p.parse_args([*base, "--address", "auto", "--mlflow", "sqlite:///x.db"])
    assert (new.address, new.mlflow) == (old.address, old.mlflow) == ("auto", "sqlite:///x.db")
    assert p.parse_args(["ave", "train", "--use-gpu"]).use_gpu is p.parse_args(["ave", "train", "--gpu"]).use_gpu is True


def test_parse_names_its_own_weights_flag(tmp_path, synth_clips):
    state = tmp_path / "han.pt"
    state.write_bytes(b"not read before the weights are checked")
    video = next(iter(synth_clips.values()))
    home = tmp_path / "home"  # an empty torch hub cache: no paper backbone weights
    out = valor("parse", str(video), "--checkpoint", f"official:han:{state}", "--out", str(tmp_path / "out"),
                env={"TORCH_HOME": str(home), "XDG_CACHE_HOME": str(home)})
    assert out.returncode == 2, out.stderr
    assert "--weights vggish=PATH" in out.stderr and "`--weights vggish=random`" in out.stderr
    assert "--vggish-weights" not in out.stderr


# --- 3. a bare command that would start an hour of work asks first ------------------------------------------------------


def test_bare_train_asks_for_features_and_starts_nothing(tmp_path):
    out = valor("train", cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("usage: valor train")
    assert "--features sim" in out.stderr.splitlines()[-1]
    assert not (tmp_path / "runs").exists()  # no MLflow store, no checkpoints: nothing started


# --- 8. discoverability -----------------------------------------------------------------------------------------------


def test_presets_lists_every_preset_with_paper_inputs_loss_schedule():
    from valor_core.presets import PRESETS

    out = valor("presets")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["preset", "paper", "inputs", "loss"]
    assert [ln.split()[0] for ln in lines[1:]] == list(PRESETS)
    assert max(map(len, lines)) <= 120
    row = {ln.split()[0]: ln for ln in lines[1:]}
    assert "HAN (Tian 2020)" in row["han"] and "StepLR(10, 0.1), b16, 40 ep" in row["han"]
    assert "CLAP maps+CLIP+R(2+1)D" in row["valor++"] and "3e-4->3e-6 cosine, 10 warm-up, b64, 60 ep" in row["valor++"]
    listed = last_json(valor("train", "--list", "--json").stdout)
    assert listed["lsld"] == {"paper": "LSLD (Fan 2023)", "inputs": "CLIP/CLAP embeddings", "features": "clip_clap",
                              "loss": "lsld", "schedule": "adam 2e-4 StepLR(6, 0.25), b32, 20 ep"}


# --- 6 and 8. valor compare: a typo names the experiments; the text fits 120 columns --------------------------------------


def test_compare_typo_names_experiments_and_text_fits_120_columns(tmp_path):
    from tests.test_compare import _fake_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    a = _fake_run(uri, "han-run", "han", "runs/local/labels-with-a-long-name", 40.0)
    out = valor("compare", "--tracking-uri", uri, "--experiment", "valr", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == f"valor compare: error: --experiment 'valr': no such experiment in {uri} (it has: " \
                                 "Default, valor)"
    table = valor("compare", "--tracking-uri", uri, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert max(map(len, lines)) <= 120
    rows = [ln for ln in lines if ln.startswith(a[:8])]
    assert len(rows) == 2  # val, then test
    assert rows[0].split()[-10:] == ["40.00", "41.00", "42.00", "43.00", "44.00", "30.00", "31.00", "32.00", "33.00",
                                     "34.00"]
    assert rows[1].split()[-1] == "35.00"  # test event-level Event@AV


# --- 6 and 8. valor run lists what this config's stages wrote and ends with its scores ------------------------------------


def _scored(base: float) -> dict:
    keys = ("audio", "visual", "av", "type", "event")
    return {split: {"segment": {k: base + i for i, k in enumerate(keys)},
                    "event": {k: base - 10 + i for i, k in enumerate(keys)}} for split in ("val", "test")}


def test_run_lists_only_its_outputs_and_ends_with_the_scores(tmp_path, monkeypatch, capsys):
    from tests.test_pipeline import FakeStages
    from workflows.cli import main
    from workflows.pipeline import stages

    runners = FakeStages().runners()
    fake_evaluate = runners["evaluate"]

    def evaluate(ctx):  # writes eval.json as the stage does; its result is the scores
        fake_evaluate(ctx)
        return {"runs": {"valor-paper-han": _scored(40.0), "valor-paper-valor": _scored(50.0)}}

    runners["evaluate"] = evaluate
    monkeypatch.setattr(stages, "RUNNERS", runners)
    monkeypatch.setattr(stages, "prepare_inputs", lambda c, log, create=True: (c, {}))
    monkeypatch.setattr(stages, "start_pipeline_ray", lambda c, env: (lambda: None))
    released = {k: tmp_path / k for k in ("feats", "clip", "clap")}
    for d in released.values():
        d.mkdir()
    assert main(["run", "--config", "configs/paper.yaml", f"paths.output={tmp_path / 'out'}",
                 *[f"released.{k}={d}" for k, d in released.items()]]) == 0
    out = capsys.readouterr().out
    listed = out.split("valor run: outputs")[1]
    assert "harvested labels" not in listed and "thresholds" not in listed  # the paper pipeline writes neither
    assert f"checkpoints       {tmp_path / 'out' / 'train'}" in listed and "evaluation" in listed
    tail = out.strip().splitlines()[-3:]  # the Table 1 rows, last
    assert tail[0].split()[:2] == ["run", "A"]
    assert tail[1].split() == ["valor-paper-han", "40.00", "41.00", "42.00", "43.00", "44.00", "30.00", "31.00",
                               "32.00", "33.00", "34.00"]
    assert tail[2].split()[0] == "valor-paper-valor" and tail[2].split()[-1] == "44.00"


# --- 5. what `valor run` prints is accepted by every command that takes a checkpoint -------------------------------------


def _pipeline_like_output(root: Path) -> tuple[Path, str]:
    """runs/local as `valor run` leaves it: train/<trial>/epoch_00N/ checkpoints and mlflow.db holding the run with its
    `checkpoint/` artifact (a HAN for LLP-sim features, untrained: the resolution is what is checked)."""
    from valor_core.config import to_dict
    from valor_core.fit import build_model
    from valor_core.presets import get_preset
    from workflows import tracking
    from workflows.checkpoints import save_checkpoint_dir
    from workflows.trainset import adapt_model, load_eval_split

    out = root / "runs" / "local"
    cfg = get_preset("valor")
    cfg, _ = adapt_model(cfg, load_eval_split("sim:0", "val", cfg))
    state = build_model(cfg).state_dict()
    meta = {"train": to_dict(cfg), "data": {"features": "sim:0"}}
    trial = out / "train" / "valor-local-valor"
    for epoch in (1, 2):
        save_checkpoint_dir(str(trial / f"epoch_{epoch:03d}"), model_state=state, best_state=state,
                            optimizer_state=None, state={"epoch": epoch}, config=meta)
    uri = f"sqlite:///{out}/mlflow.db"
    run_id = tracking.start_run(uri, "valor-local", "valor-local-valor", {"preset": "valor"}, {})
    tracking.log_dir(uri, run_id, str(trial / "epoch_002"), "checkpoint")
    tracking.end_run(uri, run_id)
    return out, run_id


def test_checkpoint_refs_that_valor_run_prints_are_accepted(tmp_path):
    out, run_id = _pipeline_like_output(tmp_path)
    base = ("evaluate", "--split", "val", "--json", "--checkpoint")
    by_dir = valor(*base, "runs/local/train", cwd=tmp_path)  # the path of the outputs list
    assert by_dir.returncode == 0, by_dir.stderr
    scores = last_json(by_dir.stdout)
    assert scores["videos"] == 649 and set(scores["segment"]) == {"audio", "visual", "av", "type", "event"}
    for ref in (run_id, run_id[:8]):  # the run id of eval.json, or as `valor compare` shows it
        by_id = valor(*base, ref, cwd=tmp_path)  # no --tracking-uri: found in runs/local/mlflow.db
        assert by_id.returncode == 0, by_id.stderr
        assert last_json(by_id.stdout) == scores
    explicit = valor(*base, run_id, "--tracking-uri", f"sqlite:///{out}/mlflow.db")  # from anywhere
    assert explicit.returncode == 0 and last_json(explicit.stdout) == scores


def test_ambiguous_checkpoint_refs_list_the_candidates(tmp_path):
    out, run_id = _pipeline_like_output(tmp_path)
    (out / "train" / "valor-local-valor").rename(out / "train" / "a")
    import shutil

    shutil.copytree(out / "train" / "a", out / "train" / "b")
    two = valor("evaluate", "--split", "val", "--checkpoint", "runs/local/train", cwd=tmp_path, timeout=120)
    assert two.returncode == 1
    assert "2 training runs there; pass one of: runs/local/train/a, runs/local/train/b" in two.stderr
    shutil.copytree(out, tmp_path / "runs" / "copy")  # the same run id in two pipeline stores
    both = valor("evaluate", "--split", "val", "--checkpoint", run_id[:8], cwd=tmp_path, timeout=120)
    assert both.returncode == 1
    assert f"matches 2 runs" in both.stderr
    assert f"{run_id} in sqlite:///{tmp_path}/runs/copy/mlflow.db" in both.stderr
    assert f"{run_id} in sqlite:///{tmp_path}/runs/local/mlflow.db" in both.stderr
    none = valor("evaluate", "--split", "val", "--checkpoint", "0123456789abcdef", cwd=tmp_path, timeout=120)
    assert none.returncode == 1 and "pass --tracking-uri sqlite:///OUTPUT/mlflow.db, or --checkpoint OUTPUT/train" \
        in none.stderr


def test_harvest_by_run_id_records_where_the_checkpoint_lives(tmp_path):
    import tempfile
    from urllib.parse import urlparse

    out, run_id = _pipeline_like_output(tmp_path)
    res = valor("harvest", "--labeler", f"han:{run_id}", "--split", "val", "--out", str(tmp_path / "labels"),
                "--json", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "labels" / "_harvest.json").read_text())
    where = urlparse(meta["checkpoint_dir"]).path if "://" in meta["checkpoint_dir"] else meta["checkpoint_dir"]
    assert not where.startswith(tempfile.gettempdir() + "/tmp")  # not the download mlflow made and removed
    assert (Path(where) / "best_model.pt").is_file() and (Path(where) / "config.json").is_file()
    assert meta["checkpoint"] == run_id


# --- 8. help text on every option, no internals ---------------------------------------------------------------------------

INTERNALS = ("register()", "main(args)", "RAY_THRESHOLD", "TeacherConfig", "ExtractConfig")


def test_every_option_has_help_and_no_help_names_internals():
    import argparse

    from workflows.cli import build_parser

    for path, parser in _parsers(build_parser()):
        where = "valor " + " ".join(path)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{where}: {(action.option_strings or [action.dest])[0]} has no help text"
        text = parser.format_help()
        assert not [w for w in INTERNALS if w in text], f"{where} --help names internals"


def test_run_overrides_after_an_option_are_overrides(tmp_path):
    """`valor run --config X a=b --print-config c=d` (as the docs write `--stage s` between overrides): both overrides
    apply; an unknown option after them is still argparse's one-line error."""
    out = valor("run", "--config", str(ROOT / "configs" / "local.yaml"), f"paths.output={tmp_path / 'o'}",
                "--print-config", "train.optim.epochs=3", cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["train"]["optim"]["epochs"] == 3 and printed["paths"]["output"] == str(tmp_path / "o")
    bad = valor("run", "--config", str(ROOT / "configs" / "local.yaml"), "a.b=1", "--bogus", cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr
