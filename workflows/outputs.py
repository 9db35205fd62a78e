"""Output ownership and locks: valor writes only inside what it owns, one run at a time.

    claim(uri, kind, ...)      before a command writes `uri` (a dir or s3://bucket/prefix): the path must be new, empty,
                               or carry valor's ownership marker `<uri>/_valor.json` of the same kind (a `pipeline`
                               root must also have the same pipeline name); the marker is written then. A path holding
                               anything else is an OwnershipError naming what is there -- valor never deletes it.
                               A marker of another kind (e.g. `--out` of harvest = a features dataset) is an error;
                               `force=True` takes over an output valor made, never foreign files.
    remove_owned(uri, ...)     delete an output valor made (its marker, or only files valor writes), else refuse
    clear_owned(uri, ...)      empty a claimed output for a re-run, keeping its marker and lock
    lock(uri, holder)          a lock per output root held for a run (context manager): local `<uri>/_valor.lock`
                               under fcntl.flock (released by the kernel when the holder dies); S3 a lease object
                               refreshed by a heartbeat and stale after LEASE_S seconds, or at once when its holder
                               ran on this host and is gone. A second run fails at once naming the holder; a stale
                               lock is taken over.

Outputs of earlier valor versions carry no marker: a path whose every entry is something valor writes (part-*.parquet,
_runs/, _staging/, _harvest.json, _pipeline/, features/, ...) is adopted (the marker is written).
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Iterator, Optional

from workflows import objstore

MARKER = "_valor.json"
LOCK = "_valor.lock"
LEASE_S = 60.0  # an S3 lock not refreshed for this long is stale ($VALOR_LOCK_LEASE_S overrides, e.g. in tests)
HEARTBEAT_S = 10.0  # how often the holder renews it (at most a third of the lease)
# What valor itself writes under an output root (anything else there is someone else's).
VALOR_ENTRIES = ("_valor.json", "_valor.lock", "part-*.parquet", "_runs", "_staging", "_harvest.json", "_pipeline",
                 "features", "failures", "labels", "train", "thresholds.json", "eval.json", "config.yaml", "demo",
                 "mlflow.db", "mlartifacts", "epoch_*", "checkpoint_manager_snapshot.json", "*.lock", ".*.tmp",
                 "*_failures", "*_labels")


class OwnershipError(ValueError):
    """An output path valor may not write into; the message names it and what is there."""


class LockedError(RuntimeError):
    """Another run holds the output's lock; the message names the holder."""


def _entries(uri: str, opts: Optional[dict]) -> list[str]:
    """Names directly under `uri` (empty list when it does not exist); a file at `uri` itself is [<its name>]."""
    import pyarrow.fs as pafs

    fs, path = objstore.fs_for(uri, opts)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise OwnershipError(f"{uri} is a file, not a directory valor can write an output into")
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def _foreign(names: list[str], uri: str, opts: Optional[dict]) -> list[str]:
    """The entries of `uri` valor did not write: not a name valor uses, nor a Ray Train trial dir of `valor train`."""
    out = []
    for n in names:
        if any(fnmatch.fnmatch(n, pat) for pat in VALOR_ENTRIES):
            continue
        sub = objstore.join(uri, n)
        try:
            if objstore.is_file(objstore.join(sub, "checkpoint_manager_snapshot.json"), opts):
                continue
            if not objstore.is_file(sub, opts) and not objstore.list_files(sub, opts, recursive=True):
                continue  # an empty directory (S3 stores may keep one after its files are deleted): nothing there
        except OSError:
            pass
        out.append(n)
    return out


def _valor_made(names: list[str], uri: str, opts: Optional[dict]) -> bool:
    return not _foreign(names, uri, opts)


def _legacy_kind(names: list[str]) -> Optional[str]:
    """What an output of an earlier valor (no marker) is, from what it holds."""
    if "_pipeline" in names:
        return "pipeline"
    if "_harvest.json" in names:
        return "labels"
    if "_runs" in names or "_staging" in names:
        return "features"
    return None


def read_marker(uri: str, opts: Optional[dict] = None) -> Optional[dict]:
    try:
        return json.loads(objstore.read_bytes(objstore.join(uri, MARKER), opts))
    except (FileNotFoundError, OSError, ValueError):
        return None


def claim(uri: str, kind: str, *, name: Optional[str] = None, opts: Optional[dict] = None, force: bool = False,
          meta: Optional[dict] = None, write: bool = True) -> dict:
    """Make sure valor may write `uri` as an output of `kind` (see the module doc); returns the marker (with
    write=False only checked: nothing is created)."""
    names = _entries(uri, opts)
    marker = read_marker(uri, opts) if MARKER in names else None
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
    elif names and not _valor_made(names, uri, opts):
        foreign = _foreign(names, uri, opts)
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise OwnershipError(f"{uri} already holds files valor did not make ({shown}); valor writes only into a new "
                             "or empty path or one it made: choose another output path")
    elif names and _legacy_kind(names) not in (None, kind) and not force:
        raise OwnershipError(f"{uri} is a {_legacy_kind(names)} output of valor, not a {kind} output: choose another "
                             "path (or --force to take it over)")
    marker = {"owner": "valor", "kind": kind, "name": name, "id": uuid.uuid4().hex, "created": time.time(),
              **(meta or {})}
    if not write:
        return marker
    objstore.write_bytes(objstore.join(uri, MARKER), (json.dumps(marker, indent=1) + "\n").encode(), opts)
    return marker


def clear_owned(uri: str, opts: Optional[dict] = None) -> None:
    """Empty a claimed output for a re-run (its marker and lock stay): it never mixes old and new."""
    for name in _entries(uri, opts):
        if name in (MARKER, LOCK):
            continue
        remove_owned(objstore.join(uri, name), opts)


def remove_owned(uri: str, opts: Optional[dict] = None) -> None:
    """Delete the output at `uri` when valor made it (its marker, or only valor's entries); OwnershipError if not."""
    import pyarrow.fs as pafs

    fs, path = objstore.fs_for(uri, opts)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        fs.delete_file(path)  # a single-file output (thresholds.json, eval.json) named by the layout
        return
    names = _entries(uri, opts)
    if not names:
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        return
    if MARKER not in names and not _valor_made(names, uri, opts):
        shown = ", ".join(_foreign(names, uri, opts)[:5])
        raise OwnershipError(f"refusing to delete {uri}: it holds files valor did not make ({shown})")
    fs.delete_dir_contents(path, missing_dir_ok=True)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_dir(path)


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
