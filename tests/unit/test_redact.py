"""Secrets never leave: the masking rules, and every log line going through them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from crmsync import redact
from crmsync.logs import configure_logging, get_logger

TOKEN = "00Dxx0000001gPz!AQ4AQFtoken-abcdef-9876"
SECRET = "cs_live_4f8a9b2c1d0e"


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    redact.forget_all()
    yield
    redact.forget_all()
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


# (text in, secret that must not survive, text that must survive)
TEXT_CASES = [
    (f"Authorization: Bearer {TOKEN}", TOKEN, "Bearer …9876"),
    (f"headers={{'Authorization': 'Bearer {TOKEN}'}}", TOKEN, "…9876"),
    ("GET https://admin:hunter2hunter2@crm.example.com/x", "hunter2hunter2", "admin:***@crm"),
    ("redis://:s3cretpassword@127.0.0.1:6379/0", "s3cretpassword", "127.0.0.1:6379"),
    (f"POST /token grant_type=refresh_token&refresh_token={TOKEN}", TOKEN, "grant_type"),
    (f'{{"access_token": "{TOKEN}", "instance_url": "https://x"}}', TOKEN, "instance_url"),
    (f"client_secret={SECRET}&client_id=abc", SECRET, "client_id=abc"),
    ("nothing secret here: contact c1 synced", "", "contact c1 synced"),
]


@pytest.mark.parametrize(("raw", "secret", "kept"), TEXT_CASES)
def test_text_masks_secrets_it_can_recognise(raw: str, secret: str, kept: str) -> None:
    out = redact.text(raw)
    if secret:
        assert secret not in out
    assert kept in out


def test_remembered_secrets_are_masked_anywhere() -> None:
    plain = "opaque-token-without-any-marker-1234"
    assert plain in redact.text(f"CRM said: {plain} is not valid")
    redact.remember([plain, "short", None])
    assert redact.text(f"CRM said: {plain} is not valid") == "CRM said: …1234 is not valid"
    assert redact.text("short words stay") == "short words stay"


def test_sensitive_keys_are_masked_whatever_they_hold() -> None:
    got = redact.value(
        {"token": "abcdefghijkl", "nested": [{"Authorization": "Basic Zm9vOmJhcg=="}], "n": 3}
    )
    assert got == {"token": "…ijkl", "nested": [{"Authorization": "…cg=="}], "n": 3}


def test_mask_shows_at_most_the_last_four() -> None:
    assert redact.mask("sk-live-abcdef-a1b2") == "…a1b2"
    assert redact.mask("abcdefg") == "…"
    assert redact.mask("") == "…"


def _fail_with_secret_in_locals() -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}  # noqa: F841 - a frame local on purpose
    raise RuntimeError("boom")


@pytest.mark.parametrize("as_json", [True, False])
def test_a_logged_traceback_carries_no_locals_and_no_secret(as_json: bool) -> None:
    out = io.StringIO()
    configure_logging("info", json=as_json, stream=out)
    redact.remember([SECRET])
    log = get_logger("crmsync.test")
    try:
        _fail_with_secret_in_locals()
    except RuntimeError:
        log.exception("worker.crashed", base_url=f"https://u:{SECRET}@h", token=TOKEN)
    logging.getLogger("aiohttp.client").error("request failed with Bearer %s", TOKEN)
    text = out.getvalue()
    assert "boom" in text and "_fail_with_secret_in_locals" in text
    for secret in (TOKEN, SECRET, "AQ4AQF"):
        assert secret not in text
    if as_json:
        entries: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines() if line]
        frames = entries[0]["exception"][0]["frames"]
        assert all("locals" not in f or not f["locals"] for f in frames)


def test_no_repr_of_a_connection_or_adapter_shows_its_token() -> None:
    from typing import cast

    import aiohttp

    from crmsync.connections import Connection
    from crmsync.crm import make_adapter

    token = "00Dxx0000001gPF!AQ4AQFnz-very-secret"
    conn = Connection("sf", "default", "salesforce", "acme", "https://x.example", token, ())
    session = cast(aiohttp.ClientSession, object())  # never used: no request is sent
    shown = [repr(conn), str(conn)]
    for crm in ("salesforce", "hubspot"):
        adapter = make_adapter(crm, base_url=conn.base_url, token=token, settings={},
                               session=session)  # fmt: skip
        shown += [repr(adapter), str(adapter), repr(vars(adapter).keys())]
    for text in shown:
        assert token not in text and "very-secret" not in text, text
