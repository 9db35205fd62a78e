"""URIs to pyarrow filesystems: local paths (`/x`, `rel/x`, `file:///x`) and `s3://bucket/prefix`.

S3 endpoint and keys come from a `StorageConfig` when its fields are set, else from the standard AWS environment
(`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` /
`AWS_DEFAULT_REGION`); with neither, pyarrow's own AWS resolution (profiles, instance roles) applies. Filesystems are
built from plain picklable options, so Ray tasks and actors rebuild them on their node (`fs_for(uri, opts)`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import posixpath
from typing import Optional

from workflows.config import StorageConfig


class StorageError(OSError):
    """Object storage that does not answer, or refuses the credentials; the message names the endpoint."""


REACH_TIMEOUT_S = 10.0


def is_s3(uri: str) -> bool:
    return str(uri).startswith(("s3://", "s3a://"))


def s3_options(cfg: Optional[StorageConfig] = None) -> dict:
    """Plain, picklable S3 options: config fields first, then the standard AWS variables."""
    cfg = cfg or StorageConfig()
    env = os.environ
    region = cfg.region
    if region == StorageConfig.region:  # the default: the environment may name another
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or region
    return {
        "endpoint": cfg.endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
        "access_key": cfg.access_key or env.get("AWS_ACCESS_KEY_ID"),
        "secret_key": cfg.secret_key or env.get("AWS_SECRET_ACCESS_KEY"),
        "region": region,
    }


@functools.lru_cache(maxsize=16)
def _s3fs(endpoint: Optional[str], access_key: Optional[str], secret_key: Optional[str], region: str):
    import pyarrow.fs as pafs

    kw: dict = {"region": region}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        if not host:  # bare host:port
            scheme, host = "http", endpoint
        kw.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    if access_key and secret_key:
        kw.update(access_key=access_key, secret_key=secret_key)
    return pafs.S3FileSystem(**kw)


def fs_for(uri: str, opts: Optional[dict] = None):
    """(pyarrow FileSystem, path inside it) for a URI. `opts` = `s3_options(...)`; None = from the environment."""
    import pyarrow.fs as pafs

    uri = str(uri)
    if is_s3(uri):
        o = opts or s3_options()
        return _s3fs(o.get("endpoint"), o.get("access_key"), o.get("secret_key"), o.get("region") or "us-east-1"), \
            uri.split("://", 1)[1].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def check_reachable(uri: str, opts: Optional[dict] = None, timeout: float = REACH_TIMEOUT_S) -> None:
    """StorageError within ~`timeout` s when the S3 store of `uri` does not answer or refuses the keys (a no-op for
    local paths): the preflight of every command that writes to S3."""
    import pyarrow.fs as pafs

    if not is_s3(uri):
        return
    o = opts or s3_options()
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    kw: dict = {"region": o.get("region") or "us-east-1", "connect_timeout": timeout / 2, "request_timeout": timeout,
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1)}
    endpoint = o.get("endpoint")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        if not host:
            scheme, host = "http", endpoint
        kw.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    if o.get("access_key") and o.get("secret_key"):
        kw.update(access_key=o["access_key"], secret_key=o["secret_key"])
    where = endpoint or "AWS S3"
    try:
        info = pafs.S3FileSystem(**kw).get_file_info(bucket)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StorageError(f"S3 at {where} does not answer for s3://{bucket} ({first[:200]})") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"S3 at {where}: bucket {bucket!r} does not exist")


def join(uri: str, *parts: str) -> str:
    """Join URI parts with '/' (URIs are POSIX-style on every filesystem here)."""
    return posixpath.join(str(uri).rstrip("/"), *parts)


def read_bytes(uri: str, opts: Optional[dict] = None) -> bytes:
    fs, path = fs_for(uri, opts)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes, opts: Optional[dict] = None) -> None:
    """Write a whole object. On S3 one PUT: the object appears complete or not at all. Local: temp file + rename."""
    fs, path = fs_for(uri, opts)
    put_atomic(fs, path, data)


def put_atomic(fs, path: str, data: bytes) -> None:
    import pyarrow.fs as pafs

    parent = posixpath.dirname(path)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{os.getpid()}.tmp")
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)  # atomic on POSIX
    else:
        with fs.open_output_stream(path) as f:  # one buffered write, one upload: visible only once complete
            f.write(data)


def exists(uri: str, opts: Optional[dict] = None) -> bool:
    import pyarrow.fs as pafs

    fs, path = fs_for(uri, opts)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str, opts: Optional[dict] = None) -> bool:
    import pyarrow.fs as pafs

    fs, path = fs_for(uri, opts)
    return fs.get_file_info(path).type == pafs.FileType.File


def list_files(uri: str, opts: Optional[dict] = None, suffix: str = "", recursive: bool = False) -> list[str]:
    """Paths (inside the filesystem) of the files directly under `uri` (or below, with recursive) ending in suffix."""
    import pyarrow.fs as pafs

    fs, path = fs_for(uri, opts)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def storage_config_from(opts: dict) -> StorageConfig:
    return dataclasses.replace(StorageConfig(), **{k: v for k, v in opts.items() if k in
                                                  ("endpoint", "access_key", "secret_key", "region") and v})
