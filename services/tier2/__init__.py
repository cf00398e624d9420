"""Tier 2 · optimization.

Every module in this package declares components; the app factory imports them all.
"""
