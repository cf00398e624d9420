"""The gateway: registry of services and components, router, docs, metrics."""
