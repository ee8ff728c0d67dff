"""Live notifications: the WebSocket at /api/ws and the log at /api/notifications."""
