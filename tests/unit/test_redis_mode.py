"""CRMSYNC_REDIS_MODE and the URL shown in messages."""

from __future__ import annotations

import pytest

from crmsync.cli.common import settings_from
from crmsync.errors import UserError
from crmsync.redis_client import safe_url, seed_urls
from crmsync.settings import Settings


@pytest.mark.parametrize(
    ("given", "mode"),
    [("standalone", "standalone"), ("cluster", "cluster"), (" Cluster ", "cluster")],
)
def test_the_two_modes(given: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_REDIS_MODE", given)
    assert Settings().redis_mode == mode


def test_standalone_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMSYNC_REDIS_MODE", raising=False)
    assert Settings().redis_mode == "standalone"


@pytest.mark.parametrize("bad", ["sentinel", "", "clusters", "1"])
def test_another_mode_is_one_sentence_naming_the_setting(bad: str) -> None:
    with pytest.raises(UserError) as caught:
        settings_from(redis_mode=bad)
    message = str(caught.value)
    assert "CRMSYNC_REDIS_MODE must be standalone" in message and "\n" not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:1/2", "redis://:***@h:1/2"),
        ("rediss://user:p%40ss@cache.example/0", "rediss://user:***@cache.example/0"),
        ("redis://user@h:1", "redis://user@h:1"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert safe_url(url) == shown


@pytest.mark.parametrize(
    ("url", "seeds", "shown"),
    [
        ("redis://a:7000", ["redis://a:7000"], "redis://a:7000"),
        ("redis://a:7000,b:7001, c:7002", ["redis://a:7000", "redis://b:7001", "redis://c:7002"],
         "redis://a:7000,redis://b:7001,redis://c:7002"),
        ("redis://:pw@a:1,b:2/0", ["redis://:pw@a:1", "redis://:pw@b:2"],
         "redis://:***@a:1,redis://:***@b:2"),
        ("rediss://u:p@a:1,rediss://x:y@b:2", ["rediss://u:p@a:1", "rediss://x:y@b:2"],
         "rediss://u:***@a:1,rediss://x:***@b:2"),
    ],
)  # fmt: skip
def test_a_cluster_url_may_list_several_seed_nodes(url: str, seeds: list[str], shown: str) -> None:
    assert seed_urls(url) == seeds
    assert safe_url(url) == shown
