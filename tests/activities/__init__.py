"""Integration tests of the activities service, through the gateway."""
