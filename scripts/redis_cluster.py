#!/usr/bin/env python3
"""A private Redis Cluster for tests and benchmarks: 3 masters with a replica each.

Started from the installed ``redis-server`` on spare ports of 127.0.0.1, with
its files under the git-ignored ``.crmsync/redis-cluster/`` (one folder per
node). The cluster is formed with plain commands (CLUSTER ADDSLOTSRANGE, MEET,
REPLICATE), so only ``redis-server`` (7.0 or newer) is needed.

    scripts/redis_cluster.py start   # idempotent; prints the seed URL last
    scripts/redis_cluster.py status  # one line per node
    scripts/redis_cluster.py stop [--purge]

``start`` reuses a running cluster, restarts nodes that died (they rejoin, a
replaced master as a replica), and builds a fresh cluster when that fails.
Tests import this file for ``kill_master`` / ``wait_promoted``.

Standard library only, like ensure_services.py, which it borrows helpers from.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ensure_services as es

MASTERS = 3
NODES = 2 * MASTERS
SLOTS = 16384
# A cluster bus listens on port + 10000, which must stay below 65536 and clear of
# the private PostgreSQL (55432...) and Redis (56379...) ranges of ensure_services.
PORT_START = 47000
BUS_OFFSET = 10000
# How long a master may be unreachable before its replica takes over (Redis
# default 15 s): short for tests, long enough for a busy 2-core machine.
NODE_TIMEOUT_MS = 2000

Reply = str | int | bytes | None | list["Reply"]


class ReplyError(Exception):
    """An error answer (``-ERR ...``) from a node."""


# ---------------------------------------------------------------- RESP


def _encode(args: Sequence[str | int]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read(f: io.BufferedReader) -> Reply:
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return str(rest.decode())
    if kind == b"-":
        raise ReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        return f.read(n + 2)[:n]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply {line[:40]!r}")


def command(port: int, *args: str | int, timeout: float = 2.0) -> Reply:
    """One command to the node on ``port``; OSError when it does not answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(_encode(args))
        with sock.makefile("rb") as f:
            return _read(f)


def text(port: int, *args: str | int) -> str:
    reply = command(port, *args)
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def fields(port: int, *args: str | int) -> dict[str, str]:
    """``key:value`` lines of CLUSTER INFO or INFO."""
    out = {}
    for line in text(port, *args).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Node:
    home: Path
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return es._read_int(self.home / "redis.pid")

    def alive(self) -> bool:
        pid = self.pid
        return bool(pid and es._alive(pid)) and es.redis_answers(f"{self.url}/0", timeout=0.5)

    def node_id(self) -> str:
        return text(self.port, "CLUSTER", "MYID")

    def role(self) -> str:
        return fields(self.port, "INFO", "replication").get("role", "")


def _nodes(home: Path) -> list[Node]:
    out = []
    for i in range(NODES):
        port = es._read_int(home / f"n{i}" / "port")
        if port is not None:
            out.append(Node(home / f"n{i}", port))
    return out


def _bus_free(port: int) -> bool:
    return es.port_is_free(port) and es.port_is_free(port + BUS_OFFSET)


def _pick_ports(n: int) -> list[int]:
    ports: list[int] = []
    port = PORT_START
    while len(ports) < n:
        if port + BUS_OFFSET > 65535:
            raise es.SetupError(f"no {n} free port pairs (p, p+{BUS_OFFSET}) from {PORT_START}")
        if _bus_free(port):
            ports.append(port)
        port += 1
    return ports


def _launch(binary: str, node: Node, node_timeout_ms: int) -> None:
    node.home.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "--port", str(node.port), "--bind", "127.0.0.1", "--daemonize", "yes"]
    cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    cmd += ["--cluster-node-timeout", str(node_timeout_ms)]
    # Throwaway data: no snapshots, no AOF (a restarted node resyncs from its master).
    cmd += ["--dir", str(node.home), "--save", "", "--appendonly", "no"]
    cmd += ["--repl-diskless-sync-delay", "0"]  # a rejoining replica syncs at once
    cmd += ["--pidfile", str(node.home / "redis.pid"), "--logfile", str(node.home / "redis.log")]
    (node.home / "port").write_text(f"{node.port}\n")
    es._run(cmd, "redis-server", node.home / "redis.log")


def _stop_node(node: Node, *, hard: bool = False) -> None:
    pid = node.pid
    if not pid or not es._alive(pid):
        return
    os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + 10
    while es._alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _binary() -> str:
    """``redis-server`` 7.0 or newer (ADDSLOTSRANGE, sharded pub/sub), installed if we may."""
    binary = es.find_redis_server()
    if binary is None and es.apt_install(["redis-server"]):
        binary = es.find_redis_server()
    if binary is None:
        raise es.SetupError(
            "redis-server is missing; install it (e.g. `apt-get install redis-server` as root)"
        )
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v=(\d+)\.(\d+)", out)
    if found is None or int(found[1]) < 7:
        raise es.SetupError(
            f"{binary} is not Redis 7.0 or newer ({out.strip() or 'no version'}); "
            "a Redis Cluster for crmsync needs sharded pub/sub"
        )
    return binary


# ---------------------------------------------------------------- cluster state


def _healthy(nodes: Sequence[Node]) -> bool:
    """Every node up, sees the whole cluster, every slot served, every replica in sync."""
    if len(nodes) != NODES:
        return False
    try:
        masters = 0
        for node in nodes:
            info = fields(node.port, "CLUSTER", "INFO")
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            if info.get("cluster_known_nodes") != str(NODES):
                return False
            repl = fields(node.port, "INFO", "replication")
            if repl.get("role") == "master":
                masters += 1
            elif repl.get("master_link_status") != "up":
                return False
        return masters == MASTERS
    except (OSError, ReplyError):
        return False


def _wait(check: Callable[[], bool], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise es.SetupError(f"{what} within {seconds:.0f} s")


def _form(nodes: Sequence[Node]) -> None:
    """Slots to the first MASTERS nodes in three ranges, everyone meets, the rest replicate."""
    masters, replicas = nodes[:MASTERS], nodes[MASTERS:]
    per = SLOTS // MASTERS
    for i, node in enumerate(masters):
        lo, hi = i * per, (SLOTS - 1 if i == MASTERS - 1 else (i + 1) * per - 1)
        command(node.port, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
        # Distinct epochs: no collision round to settle before the cluster is OK.
        command(node.port, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
    for node in nodes[1:]:
        command(node.port, "CLUSTER", "MEET", "127.0.0.1", nodes[0].port)

    def everyone_met() -> bool:
        return all(
            fields(n.port, "CLUSTER", "INFO").get("cluster_known_nodes") == str(NODES)
            for n in nodes
        )

    _wait(everyone_met, "the cluster's nodes did not all meet", 30)
    ids = [m.node_id() for m in masters]
    for replica, master_id in zip(replicas, ids, strict=True):

        def knows_master(r: Node = replica, m: str = master_id) -> bool:
            return m in text(r.port, "CLUSTER", "NODES")

        # The replica must have heard of its master through gossip first.
        _wait(knows_master, "a replica did not learn of its master", 30)
        command(replica.port, "CLUSTER", "REPLICATE", master_id)


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One start/stop at a time per cluster folder (test runs may race)."""
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f".{home.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def start(home: Path, *, node_timeout_ms: int = NODE_TIMEOUT_MS) -> str:
    """A healthy cluster under ``home`` (reused, repaired or new); its seed URL."""
    with _locked(home):
        nodes = _nodes(home)
        if _healthy(nodes):
            return nodes[0].url
        binary = _binary()
        if len(nodes) == NODES and all((n.home / "nodes.conf").exists() for n in nodes):
            dead = [n for n in nodes if not n.alive()]
            if all(_bus_free(n.port) for n in dead):
                for node in dead:
                    _launch(binary, node, node_timeout_ms)
                with contextlib.suppress(es.SetupError):
                    _wait(lambda: _healthy(nodes), "", 30)
                    es.say(f"Redis Cluster on {nodes[0].url} (restarted {len(dead)} node(s))")
                    return nodes[0].url
            es.say("the Redis Cluster could not be repaired; building a new one")
        for node in nodes:
            _stop_node(node)
        shutil.rmtree(home, ignore_errors=True)
        nodes = [Node(home / f"n{i}", port) for i, port in enumerate(_pick_ports(NODES))]
        for node in nodes:
            _launch(binary, node, node_timeout_ms)
        for node in nodes:
            es.wait_until(node.alive, f"the cluster node on port {node.port}")
        _form(nodes)
        _wait(lambda: _healthy(nodes), "the Redis Cluster did not become healthy", 60)
        ports = ", ".join(str(n.port) for n in nodes)
        es.say(f"started a Redis Cluster of {MASTERS} masters + {MASTERS} replicas on {ports}")
        return nodes[0].url


def stop(home: Path, *, purge: bool = False) -> None:
    with _locked(home):
        nodes = _nodes(home)
        for node in nodes:
            _stop_node(node)
        if nodes and any(n.pid for n in nodes):
            es.say(f"stopped the Redis Cluster in {home}")
        if purge:
            shutil.rmtree(home, ignore_errors=True)


def seed_list(home: Path) -> str:
    """Every node of the cluster in ``home`` as one seed list (CRMSYNC_REDIS_URL)."""
    return ",".join(f"127.0.0.1:{n.port}" for n in _nodes(home)).join(("redis://", ""))


def seed_url(home: Path) -> str | None:
    """URL of a live node of the cluster in ``home`` (any node serves as a seed)."""
    for node in _nodes(home):
        if node.alive():
            return node.url
    return None


# ---------------------------------------------------------------- failover


def master_of(home: Path, slot: int) -> Node:
    """The node that serves ``slot`` now, as a live node of the cluster sees it."""
    for node in _nodes(home):
        with contextlib.suppress(OSError, ReplyError):
            entries = command(node.port, "CLUSTER", "SLOTS")
            assert isinstance(entries, list)
            for entry in entries:
                assert isinstance(entry, list)
                lo, hi, master = entry[0], entry[1], entry[2]
                assert isinstance(lo, int) and isinstance(hi, int) and isinstance(master, list)
                if lo <= slot <= hi:
                    port = master[1]
                    return next(n for n in _nodes(home) if n.port == port)
    raise es.SetupError(f"no live node of the cluster in {home} knows slot {slot}")


def kill_master(home: Path, slot: int) -> Node:
    """SIGKILL the master serving ``slot`` (no shutdown: writes its replica has
    not received are lost, as in a crash); the killed node."""
    node = master_of(home, slot)
    _stop_node(node, hard=True)
    return node


def replica_of(home: Path, master: Node) -> Node:
    """A replica of ``master``, as ``master`` sees it."""
    me = master.node_id()
    for line in text(master.port, "CLUSTER", "NODES").splitlines():
        parts = line.split()
        if len(parts) > 3 and "slave" in parts[2] and parts[3] == me:
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            return next(n for n in _nodes(home) if n.port == port)
    raise es.SetupError(f"the master on port {master.port} has no replica")


def kill_master_unreplicated(home: Path, slot: int, seconds: float = 1.0) -> Node:
    """SIGKILL the master serving ``slot`` after ``seconds`` of writes its replica
    never receives: the replica is frozen (SIGSTOP) and its link cut (CLIENT KILL
    TYPE replica), the master goes on serving clients, dies, and the replica thaws
    (SIGCONT) to take over without those writes. Keep ``seconds`` under the node
    timeout, or the cluster marks the frozen replica failed too."""
    master = master_of(home, slot)
    replica = replica_of(home, master)
    pid = replica.pid
    if not pid:
        raise es.SetupError(f"no pid for the replica on port {replica.port}")
    os.kill(pid, signal.SIGSTOP)
    try:
        command(master.port, "CLIENT", "KILL", "TYPE", "replica")
        time.sleep(seconds)
        _stop_node(master, hard=True)
    finally:
        os.kill(pid, signal.SIGCONT)
    return master


def wait_promoted(home: Path, slot: int, dead: Node, seconds: float = 30.0) -> Node:
    """Wait until every live node agrees that a node other than ``dead`` serves
    ``slot`` and the cluster is OK again; the new master."""
    live = [n for n in _nodes(home) if n.port != dead.port]

    def promoted() -> bool:
        try:
            new = master_of(home, slot)
            return new.port != dead.port and all(
                fields(n.port, "CLUSTER", "INFO").get("cluster_state") == "ok" for n in live
            )
        except (OSError, ReplyError, es.SetupError):
            return False

    _wait(promoted, f"no replica took over slot {slot}", seconds)
    return master_of(home, slot)


def restart(home: Path, node: Node, *, node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
    """Start a killed node again; it rejoins (as a replica when it was replaced)
    and this returns once the cluster is whole and in sync."""
    _launch(_binary(), node, node_timeout_ms)
    _wait(lambda: _healthy(_nodes(home)), "the restarted node did not rejoin", 60)


# ---------------------------------------------------------------- CLI


def default_home() -> Path:
    return Path(__file__).resolve().parent.parent / ".crmsync" / "redis-cluster"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=default_home(), help="cluster folder")
    parser.add_argument("--purge", action="store_true", help="with stop: delete its data")
    parser.add_argument("--node-timeout-ms", type=int, default=NODE_TIMEOUT_MS)
    args = parser.parse_args(argv)
    home = args.dir.resolve()
    try:
        if args.action == "start":
            print(start(home, node_timeout_ms=args.node_timeout_ms), flush=True)
        elif args.action == "stop":
            stop(home, purge=args.purge)
        else:
            nodes = _nodes(home)
            if not nodes:
                print(f"no Redis Cluster in {home}")
                return 1
            for node in nodes:
                state = node.role() if node.alive() else "down"
                print(f"127.0.0.1:{node.port} {state}")
            return 0 if _healthy(nodes) else 1
    except es.SetupError as exc:
        print(f"redis-cluster: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
