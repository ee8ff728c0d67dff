"""Plumbing shared by every service and the gateway; no domain logic lives here."""
