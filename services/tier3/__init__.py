"""Tier 3 · evaluation: every module in this package declares components; the app factory imports them all."""
