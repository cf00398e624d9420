"""Tier 3 · evaluation.

Every module in this package declares components; the app factory imports them all.
"""
