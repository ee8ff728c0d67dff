"""Test suite: unit, integration against real processes, and end to end."""
