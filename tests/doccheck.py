"""The doc-check: run every ```bash block of the README and docs/*.md (and cluster/README.md) so none goes stale.

Conventions (docs/doccheck.md): one HTML comment line per directive, directly above the block's fence:

    <!-- doccheck: skip (needs a GPU) -->                 the block is listed as skipped with its reason, never run
    <!-- doccheck: with WORD=VALUE ... -->                 each placeholder WORD of the block runs as VALUE
    <!-- doccheck: append "valor demo" --epochs 1 -->     these arguments go at the end of each `valor demo` command

Every block runs command by command (a line with its backslash continuations) in doc order in ONE temporary copy of
the checkout (the files git knows, `.venv` linked in and on PATH), so `runs/` outputs never land in the repository and
a block may use what an earlier one wrote.
A failing command is named by file, line and command. `bin/doccheck` runs it; tests/test_docs.py runs it in the suite.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/*.md", "cluster/README.md")
DIRECTIVE = re.compile(r"^<!-- doccheck: (.*) -->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")
COMMENT = re.compile(r"\s+#\s.*$")  # a trailing shell comment (after whitespace)
BLOCK_TIMEOUT_S = 900


@dataclass
class Block:
    path: str                                   # relative to the checkout
    fence: int                                  # line of the opening ```bash (1-based)
    lines: list[str]
    skip: Optional[str] = None                  # the reason, when the block is not run
    subs: dict[str, str] = field(default_factory=dict)
    appends: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.fence + 1}"


@dataclass
class Failure:
    path: str
    line: int
    command: str
    rc: int
    tail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: `{self.command}` failed (exit {self.rc})\n{self.tail}"


def _directive(block: Block, text: str, where: str) -> None:
    words = shlex.split(text)
    if not words:
        raise ValueError(f"{where}: empty doccheck directive")
    kind, rest = words[0], words[1:]
    if kind == "skip":
        reason = text[len("skip"):].strip()
        if not (reason.startswith("(") and reason.endswith(")") and len(reason) > 2):
            raise ValueError(f"{where}: doccheck skip needs a reason in parentheses, e.g. skip (needs a GPU)")
        block.skip = reason[1:-1]
    elif kind == "with":
        for word in rest:
            name, eq, value = word.partition("=")
            if not eq or not name:
                raise ValueError(f"{where}: doccheck with takes WORD=VALUE, got {word!r}")
            block.subs[name] = value
    elif kind == "append":
        if len(rest) < 2:
            raise ValueError(f"{where}: doccheck append takes a command and its arguments")
        block.appends.append((rest[0], rest[1:]))
    else:
        raise ValueError(f"{where}: unknown doccheck directive {kind!r} (skip, with, append)")


def parse(path: Path, root: Path) -> list[Block]:
    """The ```bash blocks of one Markdown file with the directives right above each (a directive above anything else
    is an error: it would silently apply to nothing)."""
    rel = str(path.relative_to(root))
    out: list[Block] = []
    pending: list[tuple[int, str]] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        text = lines[i]
        m = DIRECTIVE.match(text)
        fence = FENCE.match(text)
        if m:
            pending.append((i + 1, m.group(1)))
        elif fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            if fence.group(1) == "bash":
                block = Block(rel, i + 1, lines[i + 1:end])
                for n, d in pending:
                    _directive(block, d, f"{rel}:{n}")
                out.append(block)
            elif pending:
                raise ValueError(f"{rel}:{pending[0][0]}: doccheck directive above a block that is not ```bash")
            pending = []
            i = end
        elif pending:
            raise ValueError(f"{rel}:{pending[0][0]}: doccheck directive not directly above a ```bash block")
        i += 1
    if pending:
        raise ValueError(f"{rel}:{pending[0][0]}: doccheck directive not directly above a ```bash block")
    return out


def collect(root: Path) -> list[Block]:
    files: list[Path] = []
    for pattern in DOCS:
        files += sorted(root.glob(pattern))
    return [b for f in files for b in parse(f, root)]


def _substitute(line: str, subs: dict[str, str]) -> str:
    for word, value in subs.items():
        line = re.sub(rf"(?<![\w]){re.escape(word)}(?![\w])", lambda _m: value, line)
    return line


def script_lines(block: Block) -> list[str]:
    """The block as it runs: placeholders replaced, appended arguments at the end of each logical command line
    that runs the named command (before its trailing comment). Line numbers are unchanged."""
    out = [_substitute(line, block.subs) for line in block.lines]
    for command, args in block.appends:
        pattern = re.compile(rf"(^|[\s/;&|(]){re.escape(command)}(\s|$)")
        start = 0
        for k, line in enumerate(out):
            logical = " ".join(out[start:k + 1])
            if not line.rstrip().endswith("\\"):
                if pattern.search(logical):
                    m = COMMENT.search(line)
                    cut = m.start() if m else len(line.rstrip())
                    out[k] = line[:cut] + " " + " ".join(shlex.quote(a) for a in args) + line[cut:]
                start = k + 1
    return out


def working_copy(root: Path, dest: Path) -> Path:
    """The files git knows (tracked, and untracked ones it does not ignore) copied to dest, `.venv` linked in."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = root / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / ".venv").symlink_to(root / ".venv")
    return dest


def commands(lines: list[str]) -> list[tuple[int, str]]:
    """(index of its first line, text) of each command: a line with its `\\` continuations; blank lines and comments
    are not commands."""
    out, start = [], None
    for k, line in enumerate(lines):
        if start is None:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = k
        if not line.rstrip().endswith("\\"):
            out.append((start, "\n".join(lines[start:k + 1])))
            start = None
    if start is not None:
        out.append((start, "\n".join(lines[start:])))
    return out


def _script(block: Block, failed: Path) -> str:
    """Each command in turn in one shell (so `eval`, `export` and `cd` carry over); the first that exits non-zero
    (also the first part of an `a && b` list) writes its doc line and text to `failed` and ends the block."""
    body = []
    for k, text in commands(script_lines(block)):
        line, shown = block.fence + 1 + k, " ".join(block.lines[k].split())
        body += [text, f"__rc=$?; if [ $__rc -ne 0 ]; then printf '%s\\t%s\\n' {line} {shlex.quote(shown)} "
                       f"> {shlex.quote(str(failed))}; exit $__rc; fi"]
    return "\n".join(body) + "\n"


def run_block(block: Block, cwd: Path, env: dict, log) -> Optional[Failure]:
    failed = cwd / ".doccheck-failed"
    failed.unlink(missing_ok=True)
    body = _script(block, failed)
    t0 = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", body], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        rc = 124
        output += f"\ndoccheck: the block ran past {BLOCK_TIMEOUT_S} s and was stopped"
    log(f"doccheck: {block.where} exit {rc} in {time.monotonic() - t0:.0f} s")
    log(output)
    if rc == 0:
        return None
    line, command = block.fence + 1, "(the block)"
    if failed.exists():
        lineno, _, command = failed.read_text().rstrip("\n").partition("\t")
        line = int(lineno)
    tail = "\n".join(output.splitlines()[-15:])
    return Failure(block.path, line, command.strip(), rc, tail)


def _require_setup(root: Path) -> None:
    """The copy links this checkout's .venv: if bin/setup would reinstall (its stamp is stale), the copy's
    `bash bin/setup` would point the editable install at the temporary copy; refuse instead."""
    if not (root / "bin" / "setup").exists():
        return
    digest = hashlib.sha1(b"".join((root / n).read_bytes() for n in ("pyproject.toml", "constraints.txt", "bin/setup")))
    if not (root / ".venv" / f".valor-setup-{digest.hexdigest()[:12]}").exists():
        raise RuntimeError("doccheck: .venv is not set up for this checkout: run `bash bin/setup` first")


def check(root: Path = REPO, log=print, keep: Optional[Path] = None) -> tuple[list[Block], list[Failure]]:
    """Run every block not marked skip; returns (skipped blocks, failures)."""
    blocks = collect(root)
    _require_setup(root)
    skipped = [b for b in blocks if b.skip]
    for b in skipped:
        log(f"doccheck: skipped {b.where}: {b.skip}")
    tmp = Path(tempfile.mkdtemp(prefix="valor-doccheck-")) if keep is None else keep
    cwd = working_copy(root, tmp)
    env = dict(os.environ, PATH=f"{cwd / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    failures: list[Failure] = []
    try:
        for block in blocks:
            if not block.skip:
                failure = run_block(block, cwd, env, log)
                if failure:
                    failures.append(failure)
    finally:
        valor = cwd / ".venv" / "bin" / "valor"
        if valor.exists():  # a block that stopped between `storage up` and `storage down` leaves no server behind
            subprocess.run([str(valor), "storage", "down"], cwd=cwd, env=env, capture_output=True)
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return skipped, failures


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="bin/doccheck", description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list the blocks and what runs, run nothing")
    ap.add_argument("--keep", metavar="DIR", type=Path, help="run in this new directory and keep it")
    args = ap.parse_args(argv)
    if args.list:
        for b in collect(REPO):
            print(f"{b.where}: " + (f"skip ({b.skip})" if b.skip else "run"))
            if not b.skip:
                print("\n".join("    " + line for line in script_lines(b)))
        return 0
    if args.keep:
        args.keep.mkdir(parents=True)
    skipped, failures = check(keep=args.keep)
    print(f"doccheck: {len(skipped)} blocks skipped:")
    for b in skipped:
        print(f"  {b.where}: {b.skip}")
    for f in failures:
        print(f"doccheck: FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
