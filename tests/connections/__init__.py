"""Integration tests of the connections service, through the gateway, on both backends."""
