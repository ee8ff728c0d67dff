"""Connections service: owns the connections domain (see API.md)."""
