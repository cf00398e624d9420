"""Tier 2 · optimization: every module in this package declares components; the app factory imports them all."""
