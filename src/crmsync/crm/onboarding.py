"""Is a connection ready to sync? ``connections test`` and ``connections setup``.

``check`` authenticates through the connection's flow and reads what the CRM
must hold: Salesforce's describe of Contact (the external id field exists, is
an External ID and unique; the mapped fields exist and are writable) and its
``/limits`` (DailyApiRequests); HubSpot's contact properties (the id property
with unique values, the mapped properties writable) and its daily usage headers.
Each finding is one ``Check``: a line with ✓ or ✗ and, when it fails, the fix.
``setup`` creates what an API can (HubSpot's ``crmsync_id`` and
``crmsync_status`` properties) and names the admin's steps for the rest.

Every request takes a permit through ``take_permit`` first (the workers' own
limiter), so onboarding never pushes a connection over its limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crmsync.crm import hubspot, salesforce
from crmsync.crm.base import field_map
from crmsync.crm.http import Headers, JsonClient, auth_error
from crmsync.crm.quota import header_int
from crmsync.errors import AuthFailed, CrmError, TokenRefused, TokenReplaced

if TYPE_CHECKING:
    from crmsync.connections import Connection

TakePermit = Callable[[], Awaitable[None]]
Heard = Callable[[Headers], Awaitable[None]]
SF_FIELDS = "Setup → Object Manager → Contact → Fields & Relationships"
HS_PROPERTIES = "Settings → Data Management → Properties → Contact properties"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "✓" if self.ok else "✗"
        fix = f"\n    fix: {self.fix}" if self.fix and not self.ok else ""
        return f"{mark} {self.name}: {self.detail}{fix}"


class NoAnswer(Exception):
    """A request of the check did not get the answer it needed (already a Check)."""

    def __init__(self, check: Check) -> None:
        super().__init__(check.detail)
        self.check = check


class Onboarding:
    """The checks of one connection, through its adapter's client and token source."""

    def __init__(
        self,
        conn: Connection,
        client: JsonClient,
        take_permit: TakePermit,
        heard: Heard | None = None,
    ) -> None:
        self.conn = conn
        self.client = client
        self.take_permit = take_permit
        self.heard = heard  # every answer's headers (the CRM model learns its budget)
        self.base = client.base

    # -- the exchanges ---------------------------------------------------------------

    async def _ask(self, method: str, url: str, payload: Any = None) -> tuple[int, Headers, Any]:
        """One request on a permit; a token replaced under us is asked for again."""
        for _ in range(3):
            await self.take_permit()
            try:
                status, headers, body = await self.client.request(method, url, payload)
            except TokenReplaced:
                continue
            except AuthFailed as exc:
                raise NoAnswer(self._refused(exc)) from None
            except CrmError as exc:
                raise NoAnswer(Check("CRM answer", False, exc.message, self._reach_fix())) from None
            if self.heard is not None:
                await self.heard(headers)
            if status == 401:
                raise NoAnswer(self._refused(auth_error(status, body)))
            return status, headers, body
        raise NoAnswer(Check("authentication", False, "every new access token expired at once"))

    def _refused(self, exc: AuthFailed) -> Check:
        code = f" {exc.code}" if exc.code else ""
        if isinstance(exc, TokenRefused):
            return Check(
                "authentication",
                False,
                f"the token endpoint refused the credentials ({exc.status}{code}: {exc.message})",
                self._credentials_fix(),
            )
        return Check(
            "authentication",
            False,
            f"the CRM refused the token ({exc.status or 401}{code}: {exc.message})",
            self._credentials_fix(),
        )

    def _credentials_fix(self) -> str:
        cid = self.conn.id
        kind = self.conn.auth.kind
        if kind == "oauth-refresh":
            return (
                f"authorize the app again and give its new refresh token: "
                f"`crmsync connections update {cid} --refresh-token …` (check --client-id and "
                f"--client-secret too)"
            )
        if kind == "jwt":
            return (
                "the connected app must hold the certificate of --private-key, the user "
                "must be pre-authorized (Manage → Edit Policies → Admin approved users), and "
                f"--login-url must be the org's login URL: `crmsync connections update {cid} …`"
            )
        return f"give a valid token: `crmsync connections update {cid} --token …`"

    def _reach_fix(self) -> str:
        flag = "--login-url" if self.conn.auth.refreshes and self.conn.crm == "salesforce" else ""
        return f"check --base-url {flag}".strip() + " and that the CRM answers from here"

    # -- the checks ------------------------------------------------------------------

    async def check(self) -> list[Check]:
        try:
            if self.conn.crm == "salesforce":
                return await self._salesforce()
            return await self._hubspot()
        except NoAnswer as exc:
            return [exc.check]

    async def setup(self) -> list[Check]:
        """Create what the CRM side lacks where an API allows it; the admin's steps
        for the rest (in the failed checks' fixes)."""
        checks = await self.check()
        if self.conn.crm != "hubspot" or not checks[0].ok:
            return checks
        try:
            return await self._hubspot_setup(checks)
        except NoAnswer as exc:
            return [*checks, exc.check]

    def _authenticated(self) -> Check:
        kind = self.conn.auth.kind
        if kind == "bearer":
            return Check("authentication", True, "the bearer token is accepted")
        cred = self.client.auth.cached()
        where = f", instance {cred.base_url}" if cred is not None and cred.base_url else ""
        flow = "OAuth refresh-token flow" if kind == "oauth-refresh" else "JWT bearer flow"
        return Check("authentication", True, f"{flow}: access token obtained{where}")

    # -- Salesforce ------------------------------------------------------------------

    async def _salesforce(self) -> list[Check]:
        settings = self.conn.settings
        version = str(settings.get("api_version") or "v60.0")
        version = version if version.startswith("v") else f"v{version}"
        root = f"{self.base}/services/data/{version}"
        status, _, body = await self._ask("GET", f"{root}/sobjects/Contact/describe")
        checks = [self._authenticated()]
        if status == 404:
            detail = f"Salesforce has no REST API version {version} here"
            fix = "set --settings api_version=v60.0 (or a version the org lists)"
            return [*checks, Check("API version", False, detail, fix)]
        if status != 200 or not isinstance(body, dict):
            detail = f"describe of Contact answered HTTP {status}: {_said(body)}"
            return [*checks, Check("Contact describe", False, detail, _sf_access_fix())]
        fields = {str(f.get("name")): f for f in body.get("fields") or [] if isinstance(f, Mapping)}
        ext = str(settings.get("external_id_field") or "CrmSync_Id__c")
        checks.append(_sf_external_id(ext, fields.get(ext)))
        mapped = field_map(salesforce.DEFAULT_FIELDS, settings.get("field_map"))
        checks.append(_sf_mapped(mapped, fields))
        status, _, body = await self._ask("GET", f"{root}/limits")
        checks.append(_sf_usage(status, body))
        return checks

    # -- HubSpot ---------------------------------------------------------------------

    def _id_property(self) -> str:
        return str(self.conn.settings.get("id_property") or "crmsync_id")

    async def _properties(self) -> tuple[dict[str, Mapping[str, Any]], Headers]:
        status, headers, body = await self._ask("GET", f"{self.base}/crm/v3/properties/contacts")
        if status != 200 or not isinstance(body, dict):
            detail = f"GET /crm/v3/properties/contacts answered HTTP {status}: {_said(body)}"
            fix = "the app (or private app) needs the crm.schemas.contacts.read scope"
            raise NoAnswer(Check("contact properties", False, detail, fix))
        found = body.get("results") or []
        return {str(p.get("name")): p for p in found if isinstance(p, Mapping)}, headers

    async def _hubspot(self) -> list[Check]:
        props, headers = await self._properties()
        key = self._id_property()
        mapped = field_map(hubspot.DEFAULT_PROPERTIES, self.conn.settings.get("field_map"))
        return [
            self._authenticated(),
            _hs_id_property(key, props.get(key)),
            _hs_mapped(mapped, props),
            _hs_usage(headers),
        ]

    async def _hubspot_setup(self, checks: list[Check]) -> list[Check]:
        props, _ = await self._properties()
        key = self._id_property()
        mapped = field_map(hubspot.DEFAULT_PROPERTIES, self.conn.settings.get("field_map"))
        out = [checks[0]]
        wanted = {key: ("crmsync ID", True)}
        status_prop = mapped.get("status")
        if status_prop == "crmsync_status":
            wanted[status_prop] = ("crmsync status", False)
        for name, (label, unique) in wanted.items():
            if name in props:
                continue
            out.append(await self._create_property(name, label, unique=unique))
        props, headers = await self._properties()
        out += [_hs_id_property(key, props.get(key)), _hs_mapped(mapped, props), _hs_usage(headers)]
        return out

    async def _create_property(self, name: str, label: str, *, unique: bool) -> Check:
        body = {
            "name": name,
            "label": label,
            "type": "string",
            "fieldType": "text",
            "groupName": "contactinformation",
            "description": "Written by crmsync.",
            "hasUniqueValue": unique,
        }
        status, _, answer = await self._ask("POST", f"{self.base}/crm/v3/properties/contacts", body)
        what = f"property {name}" + (" (unique values)" if unique else "")
        if status in (200, 201):
            return Check("setup", True, f"created {what}")
        fix = (
            "the app needs the crm.schemas.contacts.write scope, or create it by hand: "
            f"{HS_PROPERTIES} → Create property → Single-line text, internal name {name}"
            + (" → Rules → Require unique values" if unique else "")
        )
        return Check("setup", False, f"could not create {what}: HTTP {status} {_said(answer)}", fix)


# -- what each answer means (pure) ---------------------------------------------------


def _said(body: Any) -> str:
    item = body[0] if isinstance(body, list) and body else body
    if isinstance(item, Mapping):
        code = item.get("errorCode") or item.get("category") or ""
        message = item.get("message") or ""
        return f"{code}: {message}".strip(": ") or "no message"
    return "no message"


def _sf_access_fix() -> str:
    return "the integration user needs API Enabled and read access to Contact"


def _sf_new_field(name: str, extra: str = "") -> str:
    label = name.removesuffix("__c")
    return (
        f"an admin creates it: {SF_FIELDS} → New → Text (length 64) → Field Label "
        f"{label.replace('_', ' ')}, Field Name {label}{extra} → visible to the "
        "integration user's profile → Save"
    )


def _sf_external_id(name: str, f: Mapping[str, Any] | None) -> Check:
    check = "external id field"
    if f is None:
        fix = _sf_new_field(name, " → check Unique and External ID")
        return Check(check, False, f"Contact has no field {name}", fix)
    flags = (("an External ID", f.get("externalId")), ("unique", f.get("unique")))
    wrong = [w for w, ok in flags if not ok]
    if wrong:
        fix = (
            f"an admin edits it: {SF_FIELDS} → {name} → Edit → check "
            + " and ".join(w.removeprefix("an ") for w in wrong)
            + " → Save"
        )
        return Check(check, False, f"{name} is not {' and not '.join(wrong)}", fix)
    if not f.get("createable") or not f.get("updateable"):
        fix = f"give the integration user edit access: {SF_FIELDS} → {name} → Field-Level Security"
        return Check(check, False, f"{name} is not writable by this user", fix)
    return Check(check, True, f"{name}: External ID, unique")


def _sf_mapped(mapped: Mapping[str, str], fields: Mapping[str, Mapping[str, Any]]) -> Check:
    missing = [n for n in mapped.values() if n not in fields]
    locked = [
        n
        for n in mapped.values()
        if n in fields and not (fields[n].get("createable") and fields[n].get("updateable"))
    ]
    names = ", ".join(mapped.values())
    if not missing and not locked:
        return Check("mapped fields", True, f"{names} exist and are writable")
    problems = []
    fixes = []
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
        custom = [n for n in missing if n.endswith("__c")]
        if custom:
            fixes.append(_sf_new_field(custom[0]) + ", the same for each missing one")
        fixes.append("or map the contact field elsewhere: --settings 'field_map={\"company\": …}'")
    if locked:
        problems.append(f"not writable: {', '.join(locked)}")
        fixes.append(f"give the integration user edit access ({SF_FIELDS} → Field-Level Security)")
    return Check("mapped fields", False, "; ".join(problems), "; ".join(f.strip() for f in fixes))


def _sf_usage(status: int, body: Any) -> Check:
    daily = body.get("DailyApiRequests") if isinstance(body, Mapping) else None
    if status != 200 or not isinstance(daily, Mapping):
        return Check("daily API usage", True, f"not reported (/limits answered HTTP {status})")
    return _usage(daily.get("Max"), daily.get("Remaining"), "the org's rolling 24-hour allocation")


def _hs_id_property(name: str, p: Mapping[str, Any] | None) -> Check:
    check = "id property"
    if p is None:
        fix = (
            "`crmsync connections setup` creates it, or by hand: "
            f"{HS_PROPERTIES} → Create property → Single-line text, internal name {name} → "
            "Rules → Require unique values"
        )
        return Check(check, False, f"the portal has no contact property {name}", fix)
    if not p.get("hasUniqueValue"):
        fix = (
            "HubSpot cannot make an existing property unique: create another one with "
            f"unique values ({HS_PROPERTIES} → Create property → Rules → Require unique "
            "values) and set --settings id_property=<its name>"
        )
        return Check(check, False, f"{name} does not require unique values", fix)
    return Check(check, True, f"{name}: unique values")


def _hs_mapped(mapped: Mapping[str, str], props: Mapping[str, Mapping[str, Any]]) -> Check:
    missing = [n for n in mapped.values() if n not in props]
    locked = [
        n
        for n in mapped.values()
        if n in props and (props[n].get("modificationMetadata") or {}).get("readOnlyValue")
    ]
    names = ", ".join(mapped.values())
    if not missing and not locked:
        return Check("mapped properties", True, f"{names} exist and are writable")
    problems = [f"missing: {', '.join(missing)}"] if missing else []
    if locked:
        problems.append(f"read-only: {', '.join(locked)}")
    fix = (
        f"create them ({HS_PROPERTIES} → Create property; `crmsync connections setup` creates "
        "crmsync_status) or map the contact fields elsewhere: --settings 'field_map={…}'"
    )
    return Check("mapped properties", False, "; ".join(problems), fix)


def _hs_usage(headers: Headers) -> Check:
    h = {k.lower(): v for k, v in headers.items()}
    most = header_int(h.get("x-hubspot-ratelimit-daily"))
    left = header_int(h.get("x-hubspot-ratelimit-daily-remaining"))
    if most is None or left is None:
        detail = "not reported (HubSpot sends its daily headers to private apps only)"
        return Check("daily API usage", True, detail)
    return _usage(most, left, "the portal's daily limit, reset at its midnight")


def _usage(most: Any, left: Any, what: str) -> Check:
    try:
        most_i, left_i = int(most), int(left)
    except (TypeError, ValueError):
        return Check("daily API usage", True, "not reported")
    used = max(0, most_i - left_i)
    share = f" ({used * 100 // most_i}%)" if most_i else ""
    detail = f"{used:,} of {most_i:,} requests used{share}, {left_i:,} left ({what})"
    if left_i <= 0:
        return Check("daily API usage", False, detail, "wait until the allocation frees")
    return Check("daily API usage", True, detail)
