"""`valor storage up|down|status` against a real SeaweedFS on 127.0.0.1, and workflows.objstore on it (no S3 mocks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflows.config import StorageConfig
from workflows import objstore, s3server as storage

pytestmark = pytest.mark.integration  # real Ray / S3 / MLflow or minutes of CPU training

ROOT = Path(__file__).resolve().parents[1]


def valor(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120, check=check)


def test_storage_cli_up_status_down(tmp_path):
    d = tmp_path / "s3"
    try:
        out = valor("storage", "up", "--dir", str(d), "--json")
        info = json.loads(out.stdout.strip().splitlines()[-1])
        assert set(info) == {"endpoint", "access_key", "secret_key", "bucket"}
        assert info["endpoint"].startswith("http://127.0.0.1:") and info["bucket"] == "valor"
        state = storage.read_state(d)
        assert state is not None and storage._pid_is_weed(state.pid)
        # every listener of that pid is on loopback, logs and sockets stay in the dir
        conns = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        mine = [line for line in conns.splitlines() if f"pid={state.pid}," in line]
        assert mine and all(" 127.0.0.1:" in line for line in mine), mine
        assert (d / "logs").is_dir() and (d / "s3.json").is_file()

        # idempotent: a second `up` reports the same server
        again = json.loads(valor("storage", "up", "--dir", str(d), "--json").stdout.strip().splitlines()[-1])
        assert again == info and storage.read_state(d).pid == state.pid

        st = json.loads(valor("storage", "status", "--dir", str(d), "--json").stdout)
        assert st["running"] and st["healthy"] and st["pid"] == state.pid

        # a real round trip through pyarrow with the printed keys, via the standard AWS variables
        env = {"AWS_ENDPOINT_URL": info["endpoint"], "AWS_ACCESS_KEY_ID": info["access_key"],
               "AWS_SECRET_ACCESS_KEY": info["secret_key"]}
        opts = objstore.s3_options(StorageConfig(**{"endpoint": info["endpoint"], "access_key": info["access_key"],
                                                    "secret_key": info["secret_key"]}))
        objstore.write_bytes("s3://valor/t/a.bin", b"hello", opts)
        assert objstore.read_bytes("s3://valor/t/a.bin", opts) == b"hello"
        assert objstore.list_files("s3://valor/t", opts) == ["valor/t/a.bin"]
        code = ("from workflows import objstore; import sys; "
                "sys.stdout.write(objstore.read_bytes('s3://valor/t/a.bin').decode())")
        got = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=60)
        assert got.stdout == "hello", got.stderr
        # wrong keys are refused
        bad = objstore.s3_options(StorageConfig(endpoint=info["endpoint"], access_key=info["access_key"],
                                                secret_key="wrong"))
        with pytest.raises(OSError):
            objstore.read_bytes("s3://valor/t/a.bin", bad)
    finally:
        valor("storage", "down", "--dir", str(d), check=False)
    assert state is not None and not storage._alive(state.pid)
    st = valor("storage", "status", "--dir", str(d), "--json", check=False)
    assert st.returncode == 3 and json.loads(st.stdout)["running"] is False
    assert not any(p.name.endswith(f"-{state.ports['s3.port']}.sock") for p in Path("/tmp").glob("seaweedfs-*"))


def test_storage_restart_keeps_keys_and_data(tmp_path):
    d = tmp_path / "s3"
    with storage.running(d) as first:
        objstore.write_bytes("s3://valor/keep.txt", b"x", objstore.s3_options(first.config()))
    assert not storage._alive(first.pid)
    with storage.running(d) as second:
        assert (second.access_key, second.secret_key) == (first.access_key, first.secret_key)
        assert second.endpoint == first.endpoint  # a stable endpoint: exported variables stay valid
        assert objstore.read_bytes("s3://valor/keep.txt", objstore.s3_options(second.config())) == b"x"
    assert storage.status(d)["running"] is False


def test_storage_up_env_exports_for_eval(tmp_path):
    """`eval "$(valor storage up --env)"` (the README's line) sets what the next command needs."""
    d = tmp_path / "s3"
    script = (f'eval "$({sys.executable} -m workflows.cli storage up --dir {d} --env)" && '
              'printf "%s\\n" "$AWS_ENDPOINT_URL" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"')
    try:
        r = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        endpoint, key, secret = r.stdout.split()
        info = storage.read_state(d)
        assert (endpoint, key, secret) == (info.endpoint, info.access_key, info.secret_key)
        objstore.write_bytes("s3://valor/e.txt", b"e", objstore.s3_options(
            StorageConfig(endpoint=endpoint, access_key=key, secret_key=secret)))
    finally:
        valor("storage", "down", "--dir", str(d), check=False)


def test_objstore_local_paths(tmp_path):
    fs, path = objstore.fs_for(str(tmp_path / "a"))
    assert path == str(tmp_path / "a")
    objstore.write_bytes(f"file://{tmp_path}/a/b.bin", b"1")
    assert objstore.read_bytes(str(tmp_path / "a" / "b.bin")) == b"1"
    assert objstore.list_files(str(tmp_path / "a"), suffix=".bin") == [str(tmp_path / "a" / "b.bin")]
    assert objstore.list_files(str(tmp_path / "missing")) == []
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_s3_options_precedence(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert objstore.s3_options() == {"endpoint": "http://127.0.0.1:1", "access_key": "envkey",
                                     "secret_key": "envsecret", "region": "eu-west-1"}
    cfg = StorageConfig(endpoint="http://127.0.0.1:2", access_key="k", secret_key="s", region="us-west-2")
    assert objstore.s3_options(cfg) == {"endpoint": "http://127.0.0.1:2", "access_key": "k", "secret_key": "s",
                                        "region": "us-west-2"}
    fs, path = objstore.fs_for("s3://bucket/a/b/", objstore.s3_options(cfg))
    assert path == "bucket/a/b" and type(fs).__name__ == "S3FileSystem"
