"""The doc-check (docs/doccheck.md): its conventions on small Markdown files, then every ```bash block of the README
and docs/ run for real (integration, docs)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.doccheck import REPO, check, collect, parse, script_lines


def _repo(tmp_path: Path, readme: str) -> Path:
    root = tmp_path / "repo"
    root.mkdir(parents=True)
    (root / "README.md").write_text(readme)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def test_directives_substitute_placeholders_and_append_overrides(tmp_path):
    root = _repo(tmp_path, "\n".join([
        "# x",
        "<!-- doccheck: with SPEC=a.json:b.pt DIR=runs/demo -->",
        """<!-- doccheck: append "valor run" corpus.videos=8 'demo.args=["--epochs","1"]' -->""",
        "```bash",
        "valor run --config c.yaml          # the main job",
        "valor teach --clip SPEC --annotations DIR --json",
        "valor run --config c.yaml \\",
        "    paths.output=s3://b/x",
        "valor runner DIRS",
        "```",
    ]))
    (block,) = parse(root / "README.md", root)
    assert (block.fence, block.skip) == (4, None)
    assert script_lines(block) == [
        "valor run --config c.yaml corpus.videos=8 'demo.args=[\"--epochs\",\"1\"]'          # the main job",
        "valor teach --clip a.json:b.pt --annotations runs/demo --json",
        "valor run --config c.yaml \\",
        "    paths.output=s3://b/x corpus.videos=8 'demo.args=[\"--epochs\",\"1\"]'",
        "valor runner DIRS",
    ]


def test_a_directive_must_sit_on_a_bash_block(tmp_path):
    root = _repo(tmp_path, "<!-- doccheck: skip (needs a GPU) -->\n\n```bash\ntrue\n```\n")
    with pytest.raises(ValueError, match=r"README.md:1: doccheck directive not directly above a ```bash block"):
        parse(root / "README.md", root)
    root = _repo(tmp_path / "b", "<!-- doccheck: skip -->\n```bash\ntrue\n```\n")
    with pytest.raises(ValueError, match=r"README.md:1: doccheck skip needs a reason in parentheses"):
        parse(root / "README.md", root)


def test_a_failing_command_is_named_by_file_and_line_and_skips_are_listed(tmp_path):
    root = _repo(tmp_path, "\n".join([
        "# x",
        "```bash",
        "mkdir -p runs && echo one > runs/a.txt",
        "```",
        "text",
        "<!-- doccheck: skip (needs a GPU) -->",
        "```bash",
        "nvidia-smi",
        "```",
        "```bash",
        "grep -q one runs/a.txt     # the earlier block's output, same working copy",
        "test -s runs/missing.txt && echo never",
        "```",
        "```python",
        "not run",
        "```",
    ]))
    logged: list[str] = []
    skipped, failures = check(root, log=logged.append)
    assert [(b.where, b.skip) for b in skipped] == [("README.md:8", "needs a GPU")]
    assert [(f.path, f.line, f.command, f.rc) for f in failures] == [
        ("README.md", 12, "test -s runs/missing.txt && echo never", 1)]
    assert "doccheck: skipped README.md:8: needs a GPU" in logged
    assert not (root / "runs").exists(), "blocks run in a temporary copy, never in the checkout"


@pytest.mark.integration
@pytest.mark.docs
def test_every_doc_block_runs():
    skipped, failures = check(REPO)
    print("skipped blocks:\n" + "\n".join(f"  {b.where}: {b.skip}" for b in skipped))
    assert all(b.skip.strip() for b in skipped)
    assert len(collect(REPO)) - len(skipped) >= 10, "most blocks run"
    assert not failures, "\n\n".join(map(str, failures))
