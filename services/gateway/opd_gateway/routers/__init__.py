"""The gateway's routers, one per resource: support (scoring), info, health, metrics."""
