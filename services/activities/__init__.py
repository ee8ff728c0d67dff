"""Activities service: owns the activities domain (see API.md)."""
