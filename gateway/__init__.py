"""API gateway: token checks, routing to the services, health, and live notifications."""
