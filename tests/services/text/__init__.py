"""Tests of services.text: prompt features, quality and the rule engine."""
