"""Tier 1 · core learning loop.

Every module in this package declares components; the app factory imports them all.
"""
