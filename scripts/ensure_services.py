#!/usr/bin/env python3
"""Make sure PostgreSQL and Redis answer for crmsync; start private ones if they do not.

Order, for each server: the URL in the environment (or the DESIGN.md default)
when it answers; else a private server from the installed binaries on a spare
port, with its data under the git-ignored ``.crmsync/``; else install the
binaries with apt-get when root; else stop with one sentence saying what is
missing. The chosen URLs go to ``.crmsync/env``, which the Makefile sources,
with a local CRMSYNC_SECRET_KEY (made once, then kept: the local database's
CRM credentials are encrypted under it) that an exported one overrides.

Standard library only: this runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import hashlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/crmsync"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PG_PORT_START = 55432
REDIS_PORT_START = 56379
# PostgreSQL's SSLRequest code: any PostgreSQL answers it with one byte, b"S" or b"N".
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_HINT = (
    "install them (e.g. `apt-get install postgresql redis-server` as root) "
    "or set CRMSYNC_DATABASE_URL / CRMSYNC_REDIS_URL to servers that are running"
)


class SetupError(Exception):
    """A problem the user must fix; the message is one sentence."""


def say(msg: str) -> None:
    print(f"setup: {msg}", flush=True)


# ---------------------------------------------------------------- probes


def pg_address(url: str) -> tuple[str, int]:
    """(host or unix-socket path, port) that a libpq-style URL points at."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or ""])[0]
    port = int(query.get("port", [str(parts.port or 5432)])[0])
    if not host:
        host = "/var/run/postgresql"
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}", port
    return host, port


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    if host.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(host)
        return sock
    return socket.create_connection((host, port), timeout=timeout)


def pg_answers(url: str, timeout: float = 1.0) -> bool:
    """True when a PostgreSQL server (not just any listener) answers at ``url``."""
    host, port = pg_address(url)
    try:
        with _connect(host, port, timeout) as sock:
            sock.sendall(_SSL_REQUEST)
            return sock.recv(1) in (b"S", b"N")
    except OSError:
        return False


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING at ``url`` (an auth error counts as an answer)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        host, port = parts.path, 0
    else:
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with _connect(host, port, timeout) as sock:
            if parts.scheme == "rediss":
                return True  # TLS: a plain PING cannot be read; the client will tell.
            sock.sendall(b"PING\r\n")
            return sock.recv(1) in (b"+", b"-")
    except OSError:
        return False


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: a port in TIME_WAIT from a stopped server is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(start: int, preferred: int | None = None) -> int:
    if preferred and port_is_free(preferred):
        return preferred
    for port in range(start, start + 200):
        if port_is_free(port):
            return port
    raise SetupError(f"no free TCP port between {start} and {start + 199} on 127.0.0.1")


def wait_until(check: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise SetupError(f"{what} did not answer within {seconds:.0f} s")


# ---------------------------------------------------------------- binaries


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_pg_bindir() -> Path | None:
    """Directory holding both ``initdb`` and ``pg_ctl``: PATH first, then distro folders."""
    on_path = shutil.which("pg_ctl")
    candidates = [str(Path(on_path).resolve().parent)] if on_path else []
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin"):
        candidates += sorted(glob.glob(pattern), key=_version_key, reverse=True)
    for folder in candidates:
        if all(os.access(Path(folder, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    for path in (found, "/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if path and os.access(path, os.X_OK):
            return path
    return None


_apt_updated = False


def apt_install(packages: list[str]) -> bool:
    """Install Debian packages when we are root and apt-get exists; False if we cannot try."""
    global _apt_updated
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    say(f"installing {' '.join(packages)} with apt-get")
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
        _apt_updated = True
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env
    )
    if done.returncode != 0:
        raise SetupError(f"`apt-get install {' '.join(packages)}` failed; {_HINT}")
    return True


# ---------------------------------------------------------------- PostgreSQL


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def service_user() -> str | None:
    """As root, the unprivileged account that owns the private cluster (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "crmsync"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "crmsync"],
        check=True,
    )
    return "crmsync"


def as_user(user: str | None, cmd: list[str]) -> list[str]:
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    return ["su", "-s", "/bin/sh", user, "-c", shlex.join(cmd)]


def _can_use(user: str | None, folder: Path) -> bool:
    if user is None:
        return True
    test = as_user(user, ["test", "-w", str(folder), "-a", "-x", str(folder)])
    return subprocess.run(test, capture_output=True).returncode == 0


def pg_home(state: Path, user: str | None) -> Path:
    """Where the private cluster lives: ``.crmsync/pg``, or a linked folder in /var/tmp
    when the service account cannot reach the project (e.g. a checkout under /root)."""
    link = state / "pg"
    if link.is_symlink() or link.exists():
        home = link.resolve()
        home.mkdir(parents=True, exist_ok=True)
        return home
    link.mkdir(parents=True)
    if user is not None:
        shutil.chown(link, user)
        if not _can_use(user, link):
            link.rmdir()
            digest = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:10]
            home = Path("/var/tmp") / f"crmsync-pg-{digest}"
            home.mkdir(exist_ok=True)
            shutil.chown(home, user)
            link.symlink_to(home)
            return home
    return link


def socket_dir(home: Path) -> Path:
    """Unix sockets must fit in 107 bytes: fall back to /tmp for deep project paths."""
    sock = home / "run"
    if len(str(sock)) > 80:
        digest = hashlib.sha256(str(home).encode()).hexdigest()[:10]
        sock = Path("/tmp") / f"crmsync-pg-{digest}"
    return sock


def _postmaster_port(data: Path) -> int | None:
    """Port of the running postmaster of ``data`` (line 4 of postmaster.pid)."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        return int(lines[3])
    except (OSError, IndexError, ValueError):
        return None


def ensure_private_pg(state: Path) -> str:
    bindir = find_pg_bindir()
    if bindir is None and apt_install(["postgresql"]):
        bindir = find_pg_bindir()
    if bindir is None:
        raise SetupError(
            "PostgreSQL is missing: nothing answers at CRMSYNC_DATABASE_URL and no "
            f"initdb/pg_ctl is on PATH or in /usr/lib/postgresql/*/bin; {_HINT}"
        )
    user = service_user()
    superuser = current_user()
    home = pg_home(state, user)
    data, sock = home / "data", socket_dir(home)
    pg_ctl = str(bindir / "pg_ctl")
    if not (data / "PG_VERSION").exists():
        say(f"creating a private PostgreSQL cluster in {data}")
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", superuser]
        initdb += ["--auth=trust", "-E", "UTF8", "--no-sync"]
        _run(as_user(user, initdb), "initdb", home / "initdb.log")
    sock.mkdir(exist_ok=True)
    if user is not None:
        shutil.chown(sock, user)
    status = as_user(user, [pg_ctl, "status", "-D", str(data)])
    running = subprocess.run(status, capture_output=True)
    port = _postmaster_port(data) if running.returncode == 0 else None
    if port is None:
        port = free_port(PG_PORT_START, _read_int(home / "port"))
        # Throwaway developer data: durability settings off for speed.
        opts = f"-p {port} -k {shlex.quote(str(sock))} -c listen_addresses=127.0.0.1"
        opts += " -c max_connections=300"
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        cmd = [pg_ctl, "-D", str(data), "-o", opts, "-l", str(home / "pg.log"), "-w", "-t", "60"]
        _run(as_user(user, [*cmd, "start"]), "pg_ctl start", home / "pg.log")
        (home / "port").write_text(f"{port}\n")
        say(f"started a private PostgreSQL on 127.0.0.1:{port} (log: {home / 'pg.log'})")
    url = f"postgresql://{superuser}@127.0.0.1:{port}/crmsync"
    wait_until(lambda: pg_answers(url), f"the private PostgreSQL on port {port}")
    return url


def stop_private_pg(state: Path) -> None:
    link = state / "pg"
    data = link.resolve() / "data"
    bindir = find_pg_bindir()
    if not (data / "postmaster.pid").exists() or bindir is None:
        return
    cmd = as_user(service_user(), [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"])
    subprocess.run(cmd, check=False, capture_output=True)
    say(f"stopped the private PostgreSQL in {data}")


# ---------------------------------------------------------------- Redis


def ensure_private_redis(state: Path) -> str:
    binary = find_redis_server()
    if binary is None and apt_install(["redis-server"]):
        binary = find_redis_server()
    if binary is None:
        raise SetupError(
            "Redis is missing: nothing answers at CRMSYNC_REDIS_URL and no redis-server "
            f"is on PATH; {_HINT}"
        )
    home = state / "redis"
    home.mkdir(parents=True, exist_ok=True)
    pid, port = _read_int(home / "redis.pid"), _read_int(home / "port")
    if pid and port and _alive(pid) and redis_answers(f"redis://127.0.0.1:{port}/0"):
        return f"redis://127.0.0.1:{port}/0"
    port = free_port(REDIS_PORT_START, port)
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes"]
    cmd += ["--dir", str(home), "--save", "", "--appendonly", "no"]
    cmd += ["--pidfile", str(home / "redis.pid"), "--logfile", str(home / "redis.log")]
    _run(cmd, "redis-server", home / "redis.log")
    (home / "port").write_text(f"{port}\n")
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_answers(url), f"the private Redis on port {port}")
    say(f"started a private Redis on 127.0.0.1:{port} (log: {home / 'redis.log'})")
    return url


def stop_private_redis(state: Path) -> None:
    pidfile = state / "redis" / "redis.pid"
    pid = _read_int(pidfile)
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        say(f"stopped the private Redis (pid {pid})")


# ---------------------------------------------------------------- helpers


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(cmd: list[str], what: str, log: Path) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SetupError(f"{what} failed (exit {done.returncode}); see the output above and {log}")


_LOCAL_KEY = re.compile(r"CRMSYNC_SECRET_KEY:-([A-Za-z0-9+/=]{44})\}")


def local_secret_key(path: Path) -> str:
    """The local key an earlier run wrote to ``path``, else a new one (base64 of 32
    bytes). Never replaced: what the local database holds is encrypted under it."""
    if path.exists():
        found = _LOCAL_KEY.search(path.read_text())
        if found:
            return found.group(1)
    return base64.b64encode(os.urandom(32)).decode()


def write_env(state: Path, database_url: str, redis_url: str) -> bool:
    """Write ``.crmsync/env`` only when it changes; True if it did."""
    path = state / "env"
    key = local_secret_key(path)
    text = (
        "# Written by scripts/ensure_services.py (make setup): the servers crmsync uses,\n"
        "# and the local key CRM credentials are encrypted with (an exported one wins).\n"
        f"export CRMSYNC_DATABASE_URL={shlex.quote(database_url)}\n"
        f"export CRMSYNC_REDIS_URL={shlex.quote(redis_url)}\n"
        f'export CRMSYNC_SECRET_KEY="${{CRMSYNC_SECRET_KEY:-{key}}}"\n'
    )
    if path.exists() and path.read_text() == text:
        return False
    path.touch(mode=0o600)
    path.chmod(0o600)  # it holds a key
    path.write_text(text)
    return True


def ensure(state: Path, env: dict[str, str]) -> tuple[str, str]:
    state.mkdir(parents=True, exist_ok=True)
    db_url = env.get("CRMSYNC_DATABASE_URL") or DEFAULT_DATABASE_URL
    if not pg_answers(db_url):
        say(f"no PostgreSQL answers at {db_url}; using a private one")
        db_url = ensure_private_pg(state)
    redis_url = env.get("CRMSYNC_REDIS_URL") or DEFAULT_REDIS_URL
    if not redis_answers(redis_url):
        say(f"no Redis answers at {redis_url}; using a private one")
        redis_url = ensure_private_redis(state)
    if write_env(state, db_url, redis_url):
        say(f"PostgreSQL {db_url}, Redis {redis_url} (written to {state / 'env'})")
    return db_url, redis_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--project",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="project folder (default: the one holding this script)",
    )
    parser.add_argument("--stop", action="store_true", help="stop the private servers")
    parser.add_argument("--purge", action="store_true", help="with --stop: delete their data")
    args = parser.parse_args(argv)
    state = args.project.resolve() / ".crmsync"
    try:
        if args.stop:
            stop_private_pg(state)
            stop_private_redis(state)
            if args.purge:
                pg = state / "pg"
                if pg.is_symlink():
                    shutil.rmtree(pg.resolve(), ignore_errors=True)
                shutil.rmtree(state, ignore_errors=True)
            return 0
        ensure(state, dict(os.environ))
    except SetupError as exc:
        print(f"setup: error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"setup: error: `{shlex.join(map(str, exc.cmd))}` failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
