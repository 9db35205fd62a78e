"""Output ownership and locks: valor writes only into what it owns, and deletes exactly the files it wrote.

    claim(uri, kind, ...)      before a command writes `uri` (a dir or s3://bucket/prefix): the path must be new,
                               empty, or carry valor's ownership marker `<uri>/_valor.json` of the same kind (a
                               `pipeline` root must also have the same pipeline name); the marker is written then.
                               Only the marker makes a path valor's: a non-empty path without one is an
                               OwnershipError naming what is there, and nothing is touched. A marker of another kind
                               is an error too; `force=True` takes over an output valor made, never foreign files.
    record(uri, files, ...)    the manifest: the marker lists every file (path relative to `uri`) valor wrote there,
                               plus name patterns derived from a recorded run (`part-<run_id>-*.parquet`) for files
                               that Ray workers write, and whole directories valor created for a library that names
                               its own files (a Ray Train run directory while it runs; its file listing once it
                               completes).
    record_file(uri)           record one written file in the marker of the output it lies in (nearest marker above)
    clear_owned(uri, ...)      empty an output for a re-run: delete exactly what its manifest lists (a nested output:
                               what its own manifest lists), keep everything else and report it ("kept 2 files valor
                               did not write: ..."); the marker and lock stay
    remove_owned(uri, ...)     the same for one output named by the layout (a directory, or a file recorded in the
                               manifest above it); a file or directory valor did not write there is an error
    check_removable(uri, ...)  that remove_owned would refuse nothing: called for every output before any is removed
    owned_parts(uri, ...)      the Parquet parts of a dataset that valor wrote (readers never read a stray file)
    lock(uri, holder)          a lock per output root held for a run (context manager): local `<uri>/_valor.lock`
                               under fcntl.flock (released by the kernel when the holder dies); S3 a lease object
                               refreshed by a heartbeat and stale after LEASE_S seconds, or at once when its holder
                               ran on this host and is gone. A second run fails at once naming the holder; a stale
                               lock is taken over.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from typing import Callable, Iterator, Optional

from workflows import objstore

MARKER = "_valor.json"
LOCK = "_valor.lock"
LEASE_S = 60.0  # an S3 lock not refreshed for this long is stale ($VALOR_LOCK_LEASE_S overrides, e.g. in tests)
HEARTBEAT_S = 10.0  # how often the holder renews it (at most a third of the lease)
MARKER_DEPTH = 4  # record_file / remove_owned look this many folders up for the output a file belongs to


class OwnershipError(ValueError):
    """An output path valor may not write into (or delete); the message names it and what is there."""


class LockedError(RuntimeError):
    """Another run holds the output's lock; the message names the holder."""


def _info(uri: str, opts: Optional[dict]):
    fs, path = objstore.fs_for(uri, opts)
    return fs, path, fs.get_file_info(path)


def _entries(uri: str, opts: Optional[dict]) -> list[str]:
    """Names directly under `uri` (empty list when it does not exist); OwnershipError when `uri` is a file."""
    import pyarrow.fs as pafs

    fs, path, info = _info(uri, opts)
    if info.type == pafs.FileType.File:
        raise OwnershipError(f"{uri} is a file, not a directory valor can write an output into")
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def _tree(uri: str, opts: Optional[dict]) -> tuple[list[str], list[str]]:
    """(files, directories) under `uri`, as paths relative to it (both empty when it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = objstore.fs_for(uri, opts)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return [], []
    base = path.rstrip("/") + "/"
    rel = lambda p: p[len(base):] if p.startswith(base) else p  # noqa: E731
    files = sorted(rel(i.path) for i in infos if i.type == pafs.FileType.File)
    dirs = sorted(rel(i.path.rstrip("/")) for i in infos if i.type == pafs.FileType.Directory)
    return files, dirs


def _shown(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def read_marker(uri: str, opts: Optional[dict] = None) -> Optional[dict]:
    try:
        marker = json.loads(objstore.read_bytes(objstore.join(uri, MARKER), opts))
    except (FileNotFoundError, OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("owner") == "valor" else None


def _write_marker(uri: str, marker: dict, opts: Optional[dict]) -> None:
    objstore.write_bytes(objstore.join(uri, MARKER), (json.dumps(marker, indent=1) + "\n").encode(), opts)


def claim(uri: str, kind: str, *, name: Optional[str] = None, opts: Optional[dict] = None, force: bool = False,
          meta: Optional[dict] = None, write: bool = True) -> dict:
    """Make sure valor may write `uri` as an output of `kind` (see the module doc); returns the marker (with
    write=False only checked: nothing is created)."""
    names = _entries(uri, opts)
    marker = read_marker(uri, opts) if MARKER in names else None
    if marker is None and [n for n in names if n != LOCK]:
        raise OwnershipError(f"{uri} is not empty and has no valor marker ({MARKER}): it holds "
                             f"{_shown(names)}; valor writes only into a new or empty path or one it made: choose "
                             "another output path")
    if marker is not None:
        other = marker.get("kind")
        if other != kind and not force:
            raise OwnershipError(f"{uri} is a {other} output of valor, not a {kind} output: choose another path "
                                 "(or --force to take it over)")
        if kind == "pipeline" and name is not None and marker.get("name") not in (None, name) and not force:
            raise OwnershipError(f"{uri} holds the outputs of pipeline {marker.get('name')!r}, not {name!r}: "
                                 "choose another paths.output (or --force to take it over)")
        if other == kind and (name is None or marker.get("name") in (None, name)):
            return marker
        # --force: the new kind/name takes over what valor wrote there (its manifest is kept: still valor's files)
        marker = {**marker, "kind": kind, "name": name, **(meta or {})}
    else:
        marker = {"owner": "valor", "kind": kind, "name": name, "id": uuid.uuid4().hex, "created": time.time(),
                  "wrote": [], "patterns": [], **(meta or {})}
    if write:
        _write_marker(uri, marker, opts)
    return marker


def record(uri: str, files: tuple[str, ...] | list[str] = (), opts: Optional[dict] = None,
           patterns: tuple[str, ...] | list[str] = ()) -> None:
    """Add files (paths relative to `uri`; a trailing '/' = a whole directory valor created) and name patterns to
    the manifest of the output `uri` (claimed before: its marker exists)."""
    marker = read_marker(uri, opts)
    if marker is None:
        raise OwnershipError(f"{uri} has no valor marker: claim it before writing into it")
    wrote, pats = list(marker.get("wrote", [])), list(marker.get("patterns", []))
    new_files = [f for f in files if f not in wrote]
    new_pats = [p for p in patterns if p not in pats]
    if new_files or new_pats:
        _write_marker(uri, {**marker, "wrote": wrote + new_files, "patterns": pats + new_pats}, opts)


def record_run(uri: str, run_id: str, opts: Optional[dict] = None) -> None:
    """A dataset run's files, whose names derive from its id (Ray workers write them): its parts, staged parts and
    run record."""
    record(uri, opts=opts, patterns=(f"part-{run_id}-*.parquet", f"_staging/part-{run_id}-*.parquet",
                                     f"_runs/{run_id}.json"))


def record_listing(uri: str, sub: str, opts: Optional[dict] = None, written: Optional[Callable[[str], bool]] = None
                   ) -> None:
    """A directory valor created for a library (a Ray Train run) has completed: from now on only the files it holds
    now are valor's (a file added to it later is the user's); `written(path relative to sub)`: which of them the
    library wrote (a file the user put there while it ran stays the user's), default all."""
    marker = read_marker(uri, opts)
    if marker is None:
        raise OwnershipError(f"{uri} has no valor marker: claim it before writing into it")
    sub = sub.strip("/")
    files = [posixpath.join(sub, f) for f in _tree(objstore.join(uri, sub), opts)[0] if written is None or written(f)]
    wrote = [w for w in marker.get("wrote", []) if w != sub + "/"]
    _write_marker(uri, {**marker, "wrote": wrote + [f for f in files if f not in wrote]}, opts)


def _owner_of(uri: str, opts: Optional[dict]) -> Optional[tuple[str, dict, str]]:
    """(output root, its marker, `uri` relative to it) of the nearest valor output above `uri`, or None."""
    parent, rel = uri.rstrip("/"), ""
    for _ in range(MARKER_DEPTH):
        parent, base = posixpath.split(parent)
        if not base or parent in ("", "/") or parent.endswith(":/"):
            return None
        rel = posixpath.join(base, rel) if rel else base
        marker = read_marker(parent, opts)
        if marker is not None:
            return parent, marker, rel
    return None


def record_file(uri: str, opts: Optional[dict] = None) -> None:
    """Record the file valor wrote at `uri` in the manifest of the output it lies in (nothing when none)."""
    owner = _owner_of(uri, opts)
    if owner is not None:
        record(owner[0], [owner[2]], opts)


def reserve(uri: str, opts: Optional[dict] = None) -> None:
    """Before valor writes the file `uri`: record it in the manifest of the output it lies in (so that a kill while
    writing still leaves it valor's); a file already there that valor did not write is an OwnershipError -- valor
    never overwrites the user's files."""
    check_removable(uri, opts)
    record_file(uri, opts)


def write_file(uri: str, data: bytes, opts: Optional[dict] = None) -> None:
    """Write a whole file into an output valor owns, recorded in its manifest (see reserve)."""
    reserve(uri, opts)
    objstore.write_bytes(uri, data, opts)


def owns(marker: dict, rel: str) -> bool:
    """Whether valor wrote the file `rel` (relative to the output whose marker this is)."""
    if rel in (MARKER, LOCK):
        return True
    wrote = marker.get("wrote", [])
    if rel in wrote or any(w.endswith("/") and rel.startswith(w) for w in wrote):
        return True
    return any(fnmatch.fnmatchcase(rel, p) for p in marker.get("patterns", []))


def owned_parts(uri: str, opts: Optional[dict] = None) -> list[str]:
    """Paths (in the filesystem) of the Parquet parts directly under `uri` that valor wrote (an output without a
    marker: every part-*.parquet there)."""
    marker = read_marker(uri, opts)
    fs, path = objstore.fs_for(uri, opts)
    names = [posixpath.basename(p) for p in objstore.list_files(uri, opts, suffix=".parquet")]
    keep = [n for n in names if (owns(marker, n) if marker is not None else fnmatch.fnmatchcase(n, "part-*.parquet"))]
    return [posixpath.join(path, n) for n in keep if n not in (MARKER, LOCK)]


def _delete_owned(uri: str, marker: dict, opts: Optional[dict]) -> list[str]:
    """Delete what the manifest of `uri` lists (nested outputs by their own manifest); returns what was kept."""
    import pyarrow.fs as pafs

    fs, path = objstore.fs_for(uri, opts)
    files, dirs = _tree(uri, opts)
    markers = {d: read_marker(objstore.join(uri, d), opts) for d in dirs if posixpath.join(d, MARKER) in files}
    nested = sorted((d for d, m in markers.items() if m is not None), key=len)  # outputs of their own inside
    kept: list[str] = []
    for sub in nested:
        if any(sub.startswith(n + "/") for n in nested if n != sub):
            continue  # inside another nested output: that one handles it
        kept += [posixpath.join(sub, k) for k in _delete_owned(objstore.join(uri, sub), markers[sub], opts)]
    inside = lambda f: any(f.startswith(n + "/") for n in nested)  # noqa: E731
    for f in files:
        if inside(f) or f in (MARKER, LOCK):
            continue
        if owns(marker, f):
            fs.delete_file(posixpath.join(path, f))
        else:
            kept.append(f)
    for d in sorted(dirs, key=lambda d: -d.count("/")):  # folders emptied by the deletes, deepest first
        if any(k == d or k.startswith(d + "/") for k in kept) or d in nested:
            continue
        with contextlib.suppress(OSError):
            if fs.get_file_info(pafs.FileSelector(posixpath.join(path, d), recursive=True)) == []:
                fs.delete_dir(posixpath.join(path, d))
    return kept


def _report(uri: str, kept: list[str], log: Optional[Callable[[str], None]]) -> None:
    """Say what was kept (on stderr unless `log` is given: stdout may carry a command's JSON contract)."""
    if kept:
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(f"{uri}: kept {len(kept)} file{'s' if len(kept) != 1 else ''} valor did not write: {_shown(kept)}")


def clear_owned(uri: str, opts: Optional[dict] = None, log: Optional[Callable[[str], None]] = None) -> list[str]:
    """Empty a claimed output for a re-run (see the module doc); returns (and reports) the files kept."""
    marker = read_marker(uri, opts)
    if marker is None:
        raise OwnershipError(f"refusing to clear {uri}: it has no valor marker ({MARKER})")
    kept = _delete_owned(uri, marker, opts)
    _write_marker(uri, {**marker, "wrote": [], "patterns": []}, opts)
    _report(uri, kept, log)
    return kept


def check_removable(uri: str, opts: Optional[dict] = None) -> None:
    """OwnershipError when remove_owned(uri) would refuse: a file there valor did not record, or a non-empty
    directory without a marker that no manifest above lists."""
    import pyarrow.fs as pafs

    _, _, info = _info(uri, opts)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type == pafs.FileType.File:
        owner = _owner_of(uri, opts)
        if owner is None or not owns(owner[1], owner[2]):
            raise OwnershipError(f"{uri} exists and valor did not write it: move it away (valor never overwrites "
                                 "or deletes a file it did not write)")
        return
    files = _tree(uri, opts)[0] if read_marker(uri, opts) is None else []
    if files:
        owner = _owner_of(uri, opts)
        if owner is None or not all(owns(owner[1], posixpath.join(owner[2], f)) for f in files):
            raise OwnershipError(f"{uri} holds files valor did not write ({_shown(files)}) and has no valor marker: "
                                 "move them away")


def remove_owned(uri: str, opts: Optional[dict] = None, log: Optional[Callable[[str], None]] = None) -> list[str]:
    """Delete the output at `uri` (a directory output: what its manifest lists, see clear_owned; a file: when the
    manifest above it lists it); returns the files kept. A directory left empty is removed with its marker."""
    import pyarrow.fs as pafs

    check_removable(uri, opts)
    fs, path, info = _info(uri, opts)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        fs.delete_file(path)
        return []
    own = read_marker(uri, opts)
    # without a marker: a folder whose files the manifest above records (e.g. demo/; check_removable made sure)
    marker = own if own is not None else {"wrote": _tree(uri, opts)[0]}
    kept = _delete_owned(uri, marker, opts)
    if kept:
        if own is not None:
            _write_marker(uri, {**own, "wrote": [], "patterns": []}, opts)
        _report(uri, kept, log)
        return kept
    fs.delete_dir_contents(path, missing_dir_ok=True)  # only the marker and lock are left
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_dir(path)
    return []


# --- locks ---------------------------------------------------------------------------------------------------------


def _holder(what: str) -> dict:
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time(),
            "what": what, "since": time.time(), "token": uuid.uuid4().hex}


def _dead_here(h: dict) -> bool:
    """The holder ran on this host and its process is gone (a killed run): its lease need not be waited out."""
    import psutil

    if h.get("host") != socket.gethostname():
        return False
    try:
        return abs(psutil.Process(int(h["pid"])).create_time() - float(h.get("pid_started", 0))) > 1e-3
    except (psutil.Error, KeyError, TypeError, ValueError):
        return True


def _describe(h: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("since", 0)))
    return f"{h.get('what', '?')} (pid {h.get('pid')} on {h.get('host')}, since {since})"


@contextlib.contextmanager
def lock(uri: str, what: str, opts: Optional[dict] = None) -> Iterator[dict]:
    """Hold the lock of the output root `uri` for the block (LockedError at once when another run holds it)."""
    if objstore.is_s3(uri):
        with _s3_lease(uri, what, opts) as h:
            yield h
    else:
        with _local_lock(objstore.fs_for(uri)[1], what) as h:
            yield h


@contextlib.contextmanager
def _local_lock(root: str, what: str) -> Iterator[dict]:
    import fcntl

    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with contextlib.suppress(OSError, ValueError):
                other = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
                raise LockedError(f"{root} is in use by {_describe(other)}; wait for it or stop it") from None
            raise LockedError(f"{root} is in use by another valor run") from None
        holder = _holder(what)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield holder
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the flock (the kernel does the same when the holder dies)


def _lease_s() -> float:
    return float(os.environ.get("VALOR_LOCK_LEASE_S") or LEASE_S)


@contextlib.contextmanager
def _s3_lease(uri: str, what: str, opts: Optional[dict]) -> Iterator[dict]:
    lease = _lease_s()
    beat_every = min(HEARTBEAT_S, lease / 3)
    key = objstore.join(uri, LOCK)
    try:
        other = json.loads(objstore.read_bytes(key, opts))
    except (FileNotFoundError, OSError, ValueError):
        other = None
    if other and time.time() - float(other.get("beat", 0)) < lease and not _dead_here(other):
        raise LockedError(f"{uri} is in use by {_describe(other)} (lease renewed "
                          f"{time.time() - float(other['beat']):.0f} s ago); wait for it, or for the lease to expire "
                          f"({lease:.0f} s after its holder stops)")
    holder = {**_holder(what), "beat": time.time()}
    objstore.write_bytes(key, json.dumps(holder).encode(), opts)
    time.sleep(0.2)  # two writers racing for a free lease: the last PUT wins, the other sees a foreign token
    now = json.loads(objstore.read_bytes(key, opts))
    if now.get("token") != holder["token"]:
        raise LockedError(f"{uri} is in use by {_describe(now)}")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(beat_every):
            with contextlib.suppress(OSError):
                objstore.write_bytes(key, json.dumps({**holder, "beat": time.time()}).encode(), opts)

    t = threading.Thread(target=beat, name="valor-lock-heartbeat", daemon=True)
    t.start()
    try:
        yield holder
    finally:
        stop.set()
        t.join(timeout=5)
        with contextlib.suppress(FileNotFoundError, OSError):
            fs, path = objstore.fs_for(key, opts)
            fs.delete_file(path)
