"""The tier services: a shared component framework and one package per tier."""
