"""Tests of services.text: prompt quality and the rule engine."""
