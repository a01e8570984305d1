"""The fresh-machine set-up (scripts/ensure_services.py, Makefile): real servers, no mocks,
except where a branch would install packages or needs binaries to be absent."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "ensure_services", ROOT / "scripts" / "ensure_services.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


es = _load()


def _unused_port() -> int:
    port: int = es.free_port(59990)
    return port


def _env_file(project: Path) -> dict[str, str]:
    out = {}
    for line in (project / ".crmsync" / "env").read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            out[key] = value
    return out


def test_probes_tell_postgres_from_redis() -> None:
    pg = os.environ.get("CRMSYNC_DATABASE_URL", es.DEFAULT_DATABASE_URL)
    redis = os.environ.get("CRMSYNC_REDIS_URL", es.DEFAULT_REDIS_URL)
    assert es.pg_answers(pg)
    assert es.redis_answers(redis)
    pg_host, pg_port = es.pg_address(pg)
    redis_port = int(redis.rsplit(":", 1)[1].split("/")[0])
    # Each probe speaks its own protocol: the other server on a live port is not enough.
    assert not es.pg_answers(f"postgresql://127.0.0.1:{redis_port}/x", timeout=0.5)
    assert not es.redis_answers(f"redis://{pg_host}:{pg_port}/0", timeout=0.5)
    assert not es.pg_answers(f"postgresql://127.0.0.1:{_unused_port()}/x")


def test_address_forms() -> None:
    assert es.pg_address("postgresql://u@db.example:6543/crmsync") == ("db.example", 6543)
    assert es.pg_address("postgresql:///crmsync?host=/run/pg") == ("/run/pg/.s.PGSQL.5432", 5432)
    assert es.pg_address("postgresql://127.0.0.1/crmsync") == ("127.0.0.1", 5432)


@pytest.mark.skipif(
    es.find_pg_bindir() is None or es.find_redis_server() is None,
    reason="needs initdb/pg_ctl and redis-server installed",
)
def test_private_servers_when_nothing_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRMSYNC_DATABASE_URL", f"postgresql://127.0.0.1:{_unused_port()}/crmsync")
    monkeypatch.setenv("CRMSYNC_REDIS_URL", f"redis://127.0.0.1:{_unused_port() + 1}/0")
    project = tmp_path / "project"
    project.mkdir()
    try:
        assert es.main(["--project", str(project)]) == 0
        chosen = _env_file(project)
        assert chosen["CRMSYNC_DATABASE_URL"].endswith("/crmsync")
        assert es.pg_answers(chosen["CRMSYNC_DATABASE_URL"])
        assert es.redis_answers(chosen["CRMSYNC_REDIS_URL"])
        assert (project / ".crmsync" / "pg").resolve().joinpath("data", "PG_VERSION").exists()

        # Re-running reuses the same servers and leaves the env file untouched.
        stamp = (project / ".crmsync" / "env").stat().st_mtime_ns
        assert es.main(["--project", str(project)]) == 0
        assert _env_file(project) == chosen
        assert (project / ".crmsync" / "env").stat().st_mtime_ns == stamp
    finally:
        pg_home = (project / ".crmsync" / "pg").resolve()
        assert es.main(["--project", str(project), "--stop", "--purge"]) == 0
    assert not es.pg_answers(chosen["CRMSYNC_DATABASE_URL"])
    assert not es.redis_answers(chosen["CRMSYNC_REDIS_URL"])
    assert not (project / ".crmsync").exists()
    assert not pg_home.exists()


def test_missing_binaries_end_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRMSYNC_DATABASE_URL", f"postgresql://127.0.0.1:{_unused_port()}/crmsync")
    monkeypatch.setattr(es, "find_pg_bindir", lambda: None)
    monkeypatch.setattr(es, "apt_install", lambda packages: False)
    assert es.main(["--project", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "PostgreSQL is missing" in err
    assert "apt-get install postgresql redis-server" in err
    assert "CRMSYNC_DATABASE_URL" in err


def test_apt_get_only_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_run(cmd: list[str], env: dict[str, str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 0)

    # Installing for real is not something a test may do: record the commands instead.
    monkeypatch.setattr(es.subprocess, "run", fake_run)
    monkeypatch.setattr(es.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(es.os, "geteuid", lambda: 1000)
    assert es.apt_install(["postgresql"]) is False
    assert calls == []

    monkeypatch.setattr(es.os, "geteuid", lambda: 0)
    monkeypatch.setattr(es, "_apt_updated", False)
    assert es.apt_install(["postgresql", "redis-server"]) is True
    assert [c[0][:2] for c in calls] == [["apt-get", "update"], ["apt-get", "install"]]
    assert calls[1][0][-2:] == ["postgresql", "redis-server"]
    assert "-y" in calls[1][0]
    assert calls[1][1]["DEBIAN_FRONTEND"] == "noninteractive"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_fails_when_pytest_collects_nothing() -> None:
    # -o setup: the set-up already ran (it started this very test run).
    args = "-k no_such_test_zzz -p no:cacheprovider tests/unit/test_logs.py"
    done = subprocess.run(
        ["make", "-o", "setup", "test", "WITH_ENV=", f"PYTEST_ARGS={args}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "pytest collected no tests" in done.stderr
