"""Mock Salesforce and HubSpot servers (``crmsync mock-crm``; ``server.start_mock`` in-process)."""

from __future__ import annotations
