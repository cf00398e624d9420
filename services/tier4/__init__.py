"""Tier 4 · performance, infrastructure, security.

Every module in this package declares components; the app factory imports them all.
"""
