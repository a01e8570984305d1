"""crmsync.logs: JSON lines off a terminal, pretty lines on one, stdlib routed too."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from crmsync.logs import configure_logging, get_logger


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


def test_json_when_not_a_terminal() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    get_logger("crmsync.test").info("contact.synced", contact_id="c1", attempts=2)
    [entry] = lines(out)
    assert entry["event"] == "contact.synced"
    assert entry["level"] == "info"
    assert entry["logger"] == "crmsync.test"
    assert entry["contact_id"] == "c1"
    assert entry["attempts"] == 2
    assert entry["timestamp"].endswith("Z")


def test_stdlib_logging_is_routed_as_json() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    logging.getLogger("asyncpg.pool").warning("pool %s is %d%% full", "main", 90)
    [entry] = lines(out)
    assert entry["event"] == "pool main is 90% full"
    assert entry["level"] == "warning"
    assert entry["logger"] == "asyncpg.pool"


def test_level_filters_both_kinds() -> None:
    out = io.StringIO()
    configure_logging("warning", stream=out)
    log = get_logger("crmsync.test")
    log.info("dropped")
    logging.getLogger("other").info("dropped too")
    log.error("kept")
    assert [e["event"] for e in lines(out)] == ["kept"]


def test_exceptions_are_structured_in_json() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("crmsync.test").exception("send.failed")
    [entry] = lines(out)
    assert entry["event"] == "send.failed"
    assert entry["exception"][0]["exc_type"] == "RuntimeError"
    assert entry["exception"][0]["exc_value"] == "boom"


def test_pretty_console_on_a_terminal_and_json_on_request() -> None:
    tty = FakeTty()
    configure_logging("info", stream=tty)
    get_logger("crmsync.test").info("relay.started", batch=5000)
    text = tty.getvalue()
    assert "relay.started" in text and "batch" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)

    forced = FakeTty()
    configure_logging("info", json=True, stream=forced)
    get_logger("crmsync.test").info("relay.started")
    assert lines(forced)[0]["event"] == "relay.started"
    # Reconfiguring replaced the first handler instead of adding a second one.
    assert "relay.started" in text and text == tty.getvalue()


def test_per_request_access_logs_are_quiet_at_info() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    logging.getLogger("aiohttp.access").info("GET / 200")
    assert out.getvalue() == ""


def test_unknown_level_names_the_setting() -> None:
    with pytest.raises(ValueError, match="CRMSYNC_LOG_LEVEL"):
        configure_logging("loud")


@pytest.mark.parametrize(
    "value",
    [{10_000: 100, 2000: 20}, {1.5: "x"}, {None: 1}, {"nested": {3: [1, {4: 5}]}}],
)
def test_a_field_with_non_str_keys_is_written_not_lost(value: dict[Any, Any]) -> None:
    """A window size or bucket index as a key (``redis.healed``) must not turn the
    line into a logging error."""
    out = io.StringIO()
    configure_logging("info", stream=out)
    get_logger("crmsync.test").warning("redis.healed", windows=value)
    [entry] = lines(out)
    assert entry["event"] == "redis.healed"
    assert json.dumps(entry["windows"])  # keys became strings
