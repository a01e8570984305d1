"""What the mock accounts hold: Salesforce's Contact fields and HubSpot's contact
properties, with the attributes their describe and properties APIs report.

Standard fields and properties as the CRMs ship them, plus the ones crmsync
needs the admin to create: Salesforce ``CrmSync_Id__c`` (text, External ID,
unique), ``Company__c``, ``Status__c``; HubSpot ``crmsync_id`` (unique values)
and ``crmsync_status``. ``id_field`` changes the external id per account, so a
test can see what onboarding finds in a half-configured org: ``missing``,
``not-unique`` or (Salesforce) ``not-external-id``.
"""

from __future__ import annotations

from typing import Any

SF_EXT = "CrmSync_Id__c"
HS_EXT = "crmsync_id"

# name: (type, length, label, flags); flags: r = required (not nillable on create),
# c = createable, u = updateable, x = custom, i = idLookup, k = calculated/system.
_SF: tuple[tuple[str, str, int, str, str], ...] = (
    ("Id", "id", 18, "Contact ID", "ik"),
    ("IsDeleted", "boolean", 0, "Deleted", "k"),
    ("AccountId", "reference", 18, "Account ID", "cu"),
    ("LastName", "string", 80, "Last Name", "rcu"),
    ("FirstName", "string", 40, "First Name", "cu"),
    ("Salutation", "picklist", 40, "Salutation", "cu"),
    ("Name", "string", 121, "Full Name", "k"),
    ("MailingStreet", "textarea", 255, "Mailing Street", "cu"),
    ("MailingCity", "string", 40, "Mailing City", "cu"),
    ("MailingState", "string", 80, "Mailing State/Province", "cu"),
    ("MailingPostalCode", "string", 20, "Mailing Zip/Postal Code", "cu"),
    ("MailingCountry", "string", 80, "Mailing Country", "cu"),
    ("Phone", "phone", 40, "Business Phone", "cu"),
    ("MobilePhone", "phone", 40, "Mobile Phone", "cu"),
    ("Email", "email", 80, "Email", "cui"),
    ("Title", "string", 128, "Title", "cu"),
    ("Department", "string", 80, "Department", "cu"),
    ("LeadSource", "picklist", 255, "Lead Source", "cu"),
    ("Description", "textarea", 32000, "Contact Description", "cu"),
    ("OwnerId", "reference", 18, "Owner ID", "cu"),
    ("CreatedDate", "datetime", 0, "Created Date", "k"),
    ("LastModifiedDate", "datetime", 0, "Last Modified Date", "k"),
    ("SystemModstamp", "datetime", 0, "System Modstamp", "k"),
    ("Company__c", "string", 255, "Company", "cux"),
    ("Status__c", "string", 40, "Status", "cux"),
)
_SOAP = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "datetime": "xsd:dateTime",
}


def _sf_field(name: str, kind: str, length: int, label: str, flags: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": kind,
        "soapType": _SOAP.get(kind, "xsd:string"),
        "length": length,
        "byteLength": length * 3,
        "custom": "x" in flags,
        "createable": "c" in flags,
        "updateable": "u" in flags,
        "nillable": "r" not in flags and name != "Id" and kind != "boolean",
        "defaultedOnCreate": "k" in flags or name == "OwnerId",
        "calculated": name == "Name",
        "externalId": False,
        "unique": False,
        "idLookup": "i" in flags,
        "caseSensitive": False,
        "filterable": kind != "textarea",
        "sortable": kind != "textarea",
        "picklistValues": [],
        "referenceTo": ["Account"]
        if name == "AccountId"
        else (["User"] if name == "OwnerId" else []),
        "relationshipName": {"AccountId": "Account", "OwnerId": "Owner"}.get(name),
    }


def salesforce_fields(id_field: str = "ok", ext: str = SF_EXT) -> dict[str, dict[str, Any]]:
    """Contact's fields by name, the external id field as ``id_field`` says."""
    fields = {row[0]: _sf_field(*row) for row in _SF}
    if id_field != "missing":
        field = _sf_field(ext, "string", 64, "crmsync ID", "cux")
        field["externalId"] = id_field != "not-external-id"
        field["unique"] = id_field == "ok"
        field["idLookup"] = field["externalId"]
        fields[ext] = field
    return fields


def salesforce_describe(fields: dict[str, dict[str, Any]], version: str) -> dict[str, Any]:
    base = f"/services/data/{version}/sobjects/Contact"
    return {
        "name": "Contact",
        "label": "Contact",
        "labelPlural": "Contacts",
        "keyPrefix": "003",
        "custom": False,
        "createable": True,
        "updateable": True,
        "deletable": True,
        "queryable": True,
        "searchable": True,
        "fields": list(fields.values()),
        "childRelationships": [],
        "recordTypeInfos": [],
        "urls": {
            "sobject": base,
            "describe": f"{base}/describe",
            "rowTemplate": f"{base}/{{ID}}",
        },
    }


# name: (type, fieldType, label, group, flags); flags: r = read-only value, u = unique,
# x = custom (not hubspotDefined), e = enumeration with options.
_HS: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("email", "string", "text", "Email", "contactinformation", ""),
    ("firstname", "string", "text", "First Name", "contactinformation", ""),
    ("lastname", "string", "text", "Last Name", "contactinformation", ""),
    ("phone", "string", "phonenumber", "Phone Number", "contactinformation", ""),
    ("mobilephone", "string", "phonenumber", "Mobile Phone Number", "contactinformation", ""),
    ("company", "string", "text", "Company Name", "contactinformation", ""),
    ("jobtitle", "string", "text", "Job Title", "contactinformation", ""),
    ("website", "string", "text", "Website URL", "contactinformation", ""),
    ("address", "string", "text", "Street Address", "contactinformation", ""),
    ("city", "string", "text", "City", "contactinformation", ""),
    ("state", "string", "text", "State/Region", "contactinformation", ""),
    ("zip", "string", "text", "Postal Code", "contactinformation", ""),
    ("country", "string", "text", "Country/Region", "contactinformation", ""),
    ("lifecyclestage", "enumeration", "radio", "Lifecycle Stage", "contactinformation", "e"),
    ("hs_object_id", "number", "number", "Record ID", "contactinformation", "ru"),
    ("createdate", "datetime", "date", "Create Date", "contactinformation", "r"),
    ("lastmodifieddate", "datetime", "date", "Last Modified Date", "contactinformation", "r"),
    ("crmsync_status", "string", "text", "crmsync status", "contactinformation", "x"),
)
LIFECYCLE = (
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
)
EPOCH = "2019-08-06T02:43:14.491Z"  # when HubSpot's standard properties "were created"


def hubspot_property(
    name: str,
    kind: str,
    field_type: str,
    label: str,
    group: str,
    flags: str = "",
    *,
    created: str = EPOCH,
    options: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    if options is None and "e" in flags:
        options = [
            {"label": v.title(), "value": v, "displayOrder": i, "hidden": False}
            for i, v in enumerate(LIFECYCLE)
        ]
    return {
        "name": name,
        "label": label,
        "type": kind,
        "fieldType": field_type,
        "description": "",
        "groupName": group,
        "options": options or [],
        "displayOrder": -1,
        "calculated": False,
        "externalOptions": False,
        "hasUniqueValue": "u" in flags,
        "hidden": False,
        "hubspotDefined": "x" not in flags,
        "formField": "r" not in flags,
        "createdAt": created,
        "updatedAt": created,
        "archived": False,
        "modificationMetadata": {
            "archivable": "x" in flags,
            "readOnlyDefinition": "x" not in flags,
            "readOnlyValue": "r" in flags,
        },
    }


def hubspot_properties(id_field: str = "ok") -> dict[str, dict[str, Any]]:
    """The portal's contact properties by name, ``crmsync_id`` as ``id_field`` says."""
    props = {row[0]: hubspot_property(*row) for row in _HS}
    if id_field != "missing":
        flags = "xu" if id_field == "ok" else "x"
        props[HS_EXT] = hubspot_property(
            HS_EXT, "string", "text", "crmsync ID", "contactinformation", flags
        )
    return props
