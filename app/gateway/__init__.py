"""The gateway (port 8000): authenticates and routes /api/... to the services."""
