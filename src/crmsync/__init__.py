"""crmsync: keep PostgreSQL contacts in sync with external CRMs."""

__version__ = "0.1.0"
