"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright,
against the whole system (mock CRMs, `crmsync up`, real PostgreSQL and Redis).

Read as an operator would: sign in, the overview's figures match /v1/status, the
chart moves, a paused connection is resumed from its page and syncs, a dead letter
(a CRM validation error) is replayed and syncs, a contact is found by email with
its history, sign out. Screenshots of every page are kept under
``.crmsync/artifacts/dashboard/<run>/`` (the path is printed).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import Fault, Hit, ProxiedCluster, wait_until
from playwright.async_api import Browser, Page, async_playwright

from crmsync_lab.harness import contacts
from crmsync_lab.harness.cluster import ClusterConfig

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
# Debian's browser, never a downloaded build; quiet, no network of its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TENANT = "ui"
WAIT = 60.0  # seconds for anything the system has to do
UI_WAIT_MS = 15_000  # for what the page shows after it


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert shutil.which(CHROMIUM), (
        f"{CHROMIUM} is missing: `make setup` installs Debian's chromium package"
    )
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def shots() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(".crmsync") / "artifacts" / "dashboard" / stamp
    folder.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {folder.resolve()}")
    return folder


async def on_a_phone(page: Page, shot: Path) -> None:
    """The page at 375 px: no sideways scrolling; screenshot; back to a laptop."""
    await page.set_viewport_size({"width": 375, "height": 800})
    await page.wait_for_timeout(300)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"{page.url} scrolls sideways on a phone ({width}px)"
    await page.screenshot(path=shot, full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 900})


def invalid_email(hit: Hit, target: str) -> Fault | None:
    """Salesforce's validation error for the first attempt of ``target`` on sf-01."""
    if hit.account == "sf-01" and hit.contact == target and hit.attempt == 1:
        body = [
            {
                "message": "Email: invalid email address: rejected by a validation rule",
                "errorCode": "INVALID_EMAIL_ADDRESS",
                "fields": ["Email"],
            }
        ]
        return Fault(status=400, body=body)
    return None


async def status(cluster: ProxiedCluster) -> dict[str, Any]:
    async with cluster.http.get(f"{cluster.api_url}/v1/status") as r:
        assert r.status == 200
        out: dict[str, Any] = await r.json()
        return out


async def card_figures(page: Page, cid: str) -> dict[str, str]:
    card = page.locator(f'article[data-connection="{cid}"]')
    out = {}
    for field in ("state", "dead_letters", "synced", "queued", "rate_limited", "requests"):
        out[field] = (await card.locator(f'[data-field="{field}"]').inner_text()).strip()
    return out


def expected_figures(c: dict[str, Any]) -> dict[str, str]:
    queued = sum(c["queue"][k] for k in ("ready", "leased", "delayed", "requeue"))
    state = "paused" if c["paused"] else ("sending" if queued else "idle")
    if not c["paused"] and c["breaker"] != "closed":
        state = "breaker open" if c["breaker"] == "open" else "breaker half-open"
    return {
        "state": state,
        "dead_letters": f"{c['dead_letters']:,}",
        "synced": f"{c['sync'].get('synced', 0):,}",
        "queued": f"{queued:,}",
        "rate_limited": f"{c['counters'].get('crm_rate_limited', 0):,}",
        "requests": f"{c['counters'].get('requests', 0):,}",
    }


def cluster_config(database_url: str, redis_url: str) -> ClusterConfig:
    return ClusterConfig(
        database_url=database_url,
        redis_url=redis_url,
        tenant=TENANT,
        mock_scenario="demo",
        concurrency=50,
        # An outage opens a breaker that recovers within seconds; its changes are
        # retried, not dead-lettered.
        env={
            "CRMSYNC_BREAKER_RECOVERY_SECONDS": "3",
            "CRMSYNC_RETRY_ATTEMPTS": "30",
            "CRMSYNC_RETRY_BASE_SECONDS": "0.5",
            "CRMSYNC_RETRY_CAP_SECONDS": "2",
        },
    )


async def test_dashboard_as_an_operator_reads_it(
    browser: Browser, shots: Path, database_url: str, redis_url: str
) -> None:
    people = contacts.generate(40, seed=7, tenant=TENANT, id_prefix="ui")
    target = next(c for c in people if c.last_name and c.company)
    config = cluster_config(database_url, redis_url)
    cluster = ProxiedCluster(config)
    async with cluster:
        cluster.proxy.plan = lambda hit: invalid_email(hit, target.id)
        async with cluster.http.post(
            f"{cluster.api_url}/v1/connections/sf-02/pause",
            json={"reason": "CRM maintenance until the admin confirms the field mapping"},
        ) as r:
            assert r.status == 200
        await cluster.put_contacts(people)

        async def others_settled() -> bool:
            unsettled = await cluster.unsettled()
            return all(n == 0 for cid, n in unsettled.items() if cid != "sf-02")

        await wait_until(others_settled, WAIT, "every connection but the paused one synced",
                         cluster=cluster)  # fmt: skip
        letters = await cluster.pool.fetch("SELECT * FROM dead_letters")
        assert [(d["connection_id"], d["contact_id"]) for d in letters] == [("sf-01", target.id)]

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        # -- sign in: a wrong key is refused, the right one opens the overview ------
        await page.goto(f"{cluster.api_url}/ui")
        await page.fill("#key", "not-the-key")
        await page.click("#signin")
        await page.wait_for_selector("text=That key was refused.", timeout=UI_WAIT_MS)
        errors.clear()  # the refused sign-in's 401 is logged by the browser, as it should
        await page.screenshot(path=shots / "1-sign-in.png", full_page=True)
        await page.fill("#key", cluster.api_key)
        await page.click("#signin")
        await page.wait_for_selector('article[data-connection="sf-02"]', timeout=UI_WAIT_MS)
        assert await page.locator("article[data-connection]").count() == 4

        # -- the overview's figures are those of /v1/status ---------------------------
        async def overview_matches() -> bool:
            report = await status(cluster)
            for c in report["connections"]:
                if await card_figures(page, c["id"]) != expected_figures(c):
                    return False
            return True

        await wait_until(overview_matches, 20, "overview figures equal to /v1/status")
        sf02 = page.locator('article[data-connection="sf-02"]')
        assert "CRM maintenance" in await sf02.locator('[data-field="reason"]').inner_text()
        assert await page.locator('[data-total="dead_letters"]').inner_text() == "1"

        # -- the chart moves: new samples every second --------------------------------
        async def chart(cid: str, attr: str) -> int:
            svg = page.locator(f'article[data-connection="{cid}"] svg.chart')
            return int(await svg.get_attribute(attr) or 0)

        first = await chart("hs-01", "data-last")
        t0 = time.monotonic()
        while await chart("hs-01", "data-last") <= first:  # the page redraws it
            assert time.monotonic() - t0 < 10, "the chart did not update within 10 s"
            await page.wait_for_timeout(250)
        assert await chart("sf-01", "data-points") >= 2
        await page.screenshot(path=shots / "2-overview.png", full_page=True)
        await on_a_phone(page, shots / "3-overview-phone.png")

        # -- a paused connection is resumed from its page and syncs --------------------
        await sf02.locator("h3 a").click()
        await page.wait_for_selector("#resume", timeout=UI_WAIT_MS)
        head = page.locator("#connection-head")
        assert "paused" in await head.locator('[data-field="state"]').inner_text()
        assert "CRM maintenance" in await head.locator('[data-field="reason"]').inner_text()
        settings = page.locator("#connection-settings dl.kv")  # after /v1/connections answers
        await settings.wait_for(timeout=UI_WAIT_MS)
        settings_text = await settings.inner_text()
        assert "100/s" in settings_text and "token" not in settings_text.lower()
        await page.screenshot(path=shots / "4-connection-paused.png", full_page=True)
        await page.click("#resume")
        await page.wait_for_selector("#pause", timeout=UI_WAIT_MS)

        async def sf02_synced() -> bool:
            return "sf-02" not in await cluster.unsettled()  # only unsettled ones are listed

        await wait_until(sf02_synced, WAIT, "sf-02 synced after Resume", cluster=cluster)
        assert (
            await cluster.pool.fetchval("SELECT paused_reason FROM connections WHERE id = 'sf-02'")
            is None
        )

        # -- a CRM outage opens hs-02's breaker, as the overview shows -----------------
        await cluster.set_faults("hs-02", "hubspot", outage_seconds=12)
        more = contacts.generate(30, seed=8, tenant=TENANT, id_prefix="uo")
        await cluster.put_contacts(more)
        await page.goto(f"{cluster.api_url}/ui#/")
        await page.wait_for_selector('article[data-connection="hs-02"]', timeout=UI_WAIT_MS)

        async def breaker_shown() -> bool:
            report = await status(cluster)
            hs = next(c for c in report["connections"] if c["id"] == "hs-02")
            shown = await card_figures(page, "hs-02")
            return hs["breaker"] == "open" and shown == expected_figures(hs)

        await wait_until(breaker_shown, 30, "hs-02 shown with its breaker open", cluster=cluster)
        await page.screenshot(path=shots / "5-overview-outage.png", full_page=True)
        assert await cluster.wait_synced(WAIT), await cluster.unsettled()

        # -- the requests each card counts are those the CRMs counted ------------------
        mock = (await cluster.mock_stats())["accounts"]
        answered_by_proxy = {"sf-01": 1}  # the validation error never reached the CRM
        await wait_until(overview_matches, 20, "overview figures equal to /v1/status")
        for c in cluster.connections:
            shown = (await card_figures(page, c.id))["requests"]
            crm_count = mock[f"{c.crm}/{c.account}"]["requests"] + answered_by_proxy.get(c.id, 0)
            assert shown == f"{crm_count:,}", (c.id, shown, crm_count)
        assert mock["hubspot/hs-02"]["by_status"].get("503", 0) >= 5

        # -- a dead letter is replayed from its connection's page and syncs ------------
        await page.goto(f"{cluster.api_url}/ui#/connection/sf-01")
        row = page.locator(f'tr[data-dead-letter="{letters[0]["id"]}"]')
        await row.wait_for(timeout=UI_WAIT_MS)
        assert "INVALID_EMAIL_ADDRESS" in await row.inner_text()
        assert "400" in await row.inner_text()
        await page.screenshot(path=shots / "6-connection-dead-letter.png", full_page=True)
        await on_a_phone(page, shots / "6-connection-dead-letter-phone.png")
        await row.locator("input[type=checkbox]").check()
        await page.click("#replay-selected")
        dialog = page.locator("dialog#confirm")
        await dialog.wait_for(state="visible", timeout=UI_WAIT_MS)
        assert "Replay 1 dead letter" in await dialog.inner_text()
        await page.click("#confirm-ok")
        await page.wait_for_selector("#no-dead-letters", timeout=UI_WAIT_MS)

        async def target_synced() -> bool:
            s = await cluster.pool.fetchval(
                "SELECT status FROM sync_state WHERE connection_id = 'sf-01' AND contact_id = $1",
                target.id,
            )
            return bool(s == "synced")

        await wait_until(target_synced, WAIT, "the replayed contact synced", cluster=cluster)
        assert (await cluster.verify()).ok

        # -- a contact found by email, with its history per connection -----------------
        await page.click('nav a[href="#/contact"]')
        await page.fill("#contact-query", target.email.upper())
        await page.click("#contact-search")
        ledger = page.locator(f'article[data-contact="{target.id}"] tr[data-ledger="sf-01"]')
        await ledger.wait_for(timeout=UI_WAIT_MS)

        async def contact_shows_synced() -> bool:
            return (await ledger.locator('[data-field="status"]').inner_text()) == "synced"

        await wait_until(contact_shows_synced, 20, "the contact page shows sf-01 synced")
        external = await cluster.pool.fetchval(
            "SELECT external_id FROM sync_state WHERE connection_id = 'sf-01' AND contact_id = $1",
            target.id,
        )
        assert await ledger.locator('[data-field="external_id"]').inner_text() == external
        card = page.locator(f'article[data-contact="{target.id}"]')
        assert await card.locator("tr[data-ledger]").count() == 4
        await page.screenshot(path=shots / "7-contact.png", full_page=True)
        await on_a_phone(page, shots / "7-contact-phone.png")

        # -- sign out: the key is forgotten ----------------------------------------------
        await page.click("#signout")
        await page.wait_for_selector("#key", timeout=UI_WAIT_MS)
        assert await page.evaluate("sessionStorage.getItem('crmsync.key')") is None
        assert not errors, errors


async def test_demo_address_signs_in(
    browser: Browser, shots: Path, database_url: str, redis_url: str
) -> None:
    """`crmsync demo` prints /ui#key=...: the page keeps the key and drops it from the address."""
    cluster = ProxiedCluster(cluster_config(database_url, redis_url))
    async with cluster:
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(f"{cluster.api_url}/ui#key={cluster.api_key}")
        await page.wait_for_selector('article[data-connection="hs-01"]', timeout=UI_WAIT_MS)
        assert "key=" not in page.url
        assert await page.evaluate("sessionStorage.getItem('crmsync.key')") == cluster.api_key
        # The page itself is served with a strict content policy and holds no data.
        async with cluster.http.get(f"{cluster.api_url}/ui", headers={"Authorization": ""}) as r:
            assert r.status == 200
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        await page.screenshot(path=shots / "8-demo-link.png", full_page=True)
