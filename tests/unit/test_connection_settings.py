"""`--settings` of a connection: every known key with its type and range, as a table
of cases through the flag parser (what `connections add/update` store or refuse)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync import connection_settings
from crmsync.connections import parse_settings
from crmsync.errors import UserError

SF, HS = "salesforce", "hubspot"

# (crm, the --settings flags, what is stored)
ACCEPTED: list[tuple[str, list[str], dict[str, Any]]] = [
    (SF, ["batch_size=200"], {"batch_size": 200}),
    (HS, ["batch_size=100"], {"batch_size": 100}),
    (SF, ["batch_size=1", "max_in_flight=25"], {"batch_size": 1, "max_in_flight": 25}),
    (SF, ["timeout_seconds=2.5"], {"timeout_seconds": 2.5}),
    (SF, ["api_version=v61.0"], {"api_version": "v61.0"}),
    (SF, ["api_version=59.0"], {"api_version": "v59.0"}),
    (SF, ["external_id_field=My_Id__c"], {"external_id_field": "My_Id__c"}),
    (HS, ["id_property=acme_id"], {"id_property": "acme_id"}),
    (
        SF,
        ['field_map={"company": "Account_Name__c", "status": null}'],
        {"field_map": {"company": "Account_Name__c", "status": None}},
    ),
    (HS, ['field_map={"company": ""}'], {"field_map": {"company": None}}),
    (SF, ["token_max_age_seconds=3600"], {"token_max_age_seconds": 3600}),
    (HS, [], {}),
]

KNOWN = (
    "api_version, batch_size, concurrency, daily_limit, day_seconds, external_id_field, "
    "field_map, id_property, limit_model, max_in_flight, tier, time_zone, timeout_seconds, "
    "token_max_age_seconds"
)

# (crm, the --settings flags, the one sentence refusing them)
REFUSED: list[tuple[str, list[str], str]] = [
    (
        SF,
        ["batch_size=500"],
        "--settings batch_size (records per CRM request) must be a whole number from 1 to 200.",
    ),
    (
        HS,
        ["batch_size=200"],
        "--settings batch_size (records per CRM request) must be a whole number from 1 to 100.",
    ),
    (
        SF,
        ["batch_size=abc"],
        "--settings batch_size (records per CRM request) must be a whole number from 1 to 200.",
    ),
    (
        SF,
        ["batch_size=2.5"],
        "--settings batch_size (records per CRM request) must be a whole number from 1 to 200.",
    ),
    (
        SF,
        ["batch_size=true"],
        "--settings batch_size (records per CRM request) must be a whole number from 1 to 200.",
    ),
    (
        HS,
        ["max_in_flight=0"],
        "--settings max_in_flight (requests in flight per worker process) must be a whole "
        "number from 1 to 10000.",
    ),
    (
        SF,
        ["timeout_seconds=-1"],
        "--settings timeout_seconds (seconds to wait for one CRM answer) must be a number of "
        "seconds from 0.1 to 300.",
    ),
    (
        SF,
        ["api_version=60"],
        "--settings api_version (the Salesforce REST API version) must be a Salesforce API "
        "version like v60.0.",
    ),
    (
        SF,
        ["external_id_field=crmsync id"],
        "--settings external_id_field (the Contact external id field) must be a Salesforce "
        "field API name (letters, digits, _; e.g. CrmSync_Id__c).",
    ),
    (
        HS,
        ["id_property=CrmSync-Id"],
        "--settings id_property (the unique contact property) must be a HubSpot property name "
        "(lower-case letters, digits, _; e.g. crmsync_id).",
    ),
    (
        SF,
        ["field_map=notjson"],
        "--settings field_map (contact fields to CRM fields) must be a JSON object such as "
        '{"company": "Account_Name__c"}.',
    ),
    (
        SF,
        ['field_map={"compnay": "X__c"}'],
        "--settings field_map (contact fields to CRM fields) names contact field 'compnay', "
        "which does not exist; did you mean 'company'? (contact fields: email, first_name, "
        "last_name, company, status).",
    ),
    (
        HS,
        ['field_map={"company": "Company Name"}'],
        "--settings field_map (contact fields to CRM fields) maps company to 'Company Name', "
        "which is not a HubSpot property name (lower-case letters, digits, _; e.g. "
        "crmsync_id).",
    ),
    (
        HS,
        ["tier=200"],
        "--settings tier (the HubSpot portal's API tier) must be 100, 190 or 250 (requests per "
        "10 s) or one of free, starter, professional, enterprise, capacity.",
    ),
    (
        HS,
        ["time_zone=Mars/Olympus"],
        "--settings time_zone (the HubSpot portal's time zone, where its day ends) must be an "
        "IANA time zone such as UTC or America/New_York.",
    ),
    (
        SF,
        ["limit_model=sliding"],
        "--settings limit_model (which limits the connection holds) must be crm (the CRM's own "
        "limits: docs/LIMITS.md) or windows (the --rate-limit windows).",
    ),
    (
        SF,
        ["daily_limit=0"],
        "--settings daily_limit (the CRM's daily request budget until one is learnt) must be a "
        "whole number from 1 to 1000000000.",
    ),
    (
        SF,
        ["concurrency=abc"],
        "--settings concurrency (requests in flight across every worker) must be a whole number "
        "from 1 to 10000.",
    ),
    (SF, ["tier=190"], "--settings tier applies to hubspot only."),
    (
        HS,
        ["api_version=v60.0"],
        "--settings api_version applies to salesforce only.",
    ),
    (
        SF,
        ["id_property=crmsync_id"],
        "--settings id_property applies to hubspot only.",
    ),
    (
        SF,
        ["batchsize=50"],
        "--settings 'batchsize' is not a setting crmsync knows; did you mean 'batch_size'? "
        f"(known: {KNOWN}).",
    ),
    (
        SF,
        ["colour=blue"],
        f"--settings 'colour' is not a setting crmsync knows (known: {KNOWN}).",
    ),
    (
        SF,
        ["batch_size=0", "api_version=x"],
        "--settings batch_size (records per CRM request) must be a whole number from 1 to 200. "
        "--settings api_version (the Salesforce REST API version) must be a Salesforce API "
        "version like v60.0.",
    ),
]


@pytest.mark.parametrize(("crm", "flags", "stored"), ACCEPTED)
def test_accepted_settings_are_stored_as_their_type(
    crm: str, flags: list[str], stored: dict[str, Any]
) -> None:
    assert connection_settings.validate(crm, parse_settings(flags)) == stored


@pytest.mark.parametrize(("crm", "flags", "sentence"), REFUSED)
def test_each_problem_is_one_sentence_naming_the_key(
    crm: str, flags: list[str], sentence: str
) -> None:
    with pytest.raises(UserError) as exc:
        connection_settings.validate(crm, parse_settings(flags))
    assert str(exc.value) == sentence


def test_stored_settings_are_listed_not_refused_on_load() -> None:
    old = {"batch": True, "batch_size": 500}
    assert connection_settings.problems(SF, old) == [
        "--settings 'batch' is not a setting crmsync knows; did you mean 'batch_size'? "
        f"(known: {KNOWN}).",
        "--settings batch_size (records per CRM request) must be a whole number from 1 to 200.",
    ]


@given(st.sampled_from([SF, HS]), st.integers(-5, 1000))
def test_batch_size_is_accepted_exactly_up_to_the_crms_batch_maximum(crm: str, n: int) -> None:
    top = 200 if crm == SF else 100
    problems = connection_settings.problems(crm, {"batch_size": n})
    assert (problems == []) == (1 <= n <= top)


def test_a_new_key_is_one_more_row() -> None:
    key = connection_settings.Key("tier", "the HubSpot API tier", lambda v, crm: str(v), (HS,))
    connection_settings.register(key)
    try:
        assert connection_settings.validate(HS, {"tier": "professional"}) == {
            "tier": "professional"
        }
    finally:
        del connection_settings.KEYS["tier"]
