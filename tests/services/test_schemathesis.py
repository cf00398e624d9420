"""Property-based API tests: schemathesis over every tier's OpenAPI document.

Each documented operation gets generated requests, valid and invalid. Every
answer must be documented and match its schema, schema-violating requests must
be refused, and none may be a 500. The default run is bounded (the declared
examples plus a few generated requests per operation); ``-m slow`` adds
schemathesis's coverage phase (boundary values of every field) and many more
examples.

Not checked: that every schema-valid request is accepted. Components refuse
inputs that are well-formed but meaningless (a correlation matrix that is not
positive definite, two arms with zero variance) with a 422 naming the field,
which no JSON schema can express.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from mlmesh.settings import TIERS
from services.framework.app import create_app
from tests.conftest import AUTH, make_settings

# Not schemathesis's to judge here: semantic 422s (see above) and documented 503s ("PostgreSQL is not configured",
# 507 from the memory guard). The assertion below still fails on any 500.
EXCLUDED = [schemathesis.checks.positive_data_acceptance, schemathesis.checks.not_a_server_error]
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


def _schema(tier: str, *, thorough: bool) -> schemathesis.schemas.BaseSchema:
    root = Path(tempfile.mkdtemp(prefix=f"schemathesis-{tier}-"))
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(tier, settings=make_settings(root), announce=False)
    )
    schema.config.generation.update(modes=MODES)
    if not thorough:
        schema.config.phases.update(phases=["examples", "fuzzing"])
    return schema


def _declare(tier: str, *, thorough: bool) -> None:
    schema = _schema(tier, thorough=thorough)

    @schema.parametrize()
    @settings(
        max_examples=60 if thorough else 3,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    def test(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers=AUTH, excluded_checks=EXCLUDED)
        assert response.status_code != 500, response.text

    if thorough:
        test = pytest.mark.slow(test)
    globals()[f"test_{tier}_api_conforms{'_thoroughly' if thorough else ''}"] = test


for _tier in TIERS:
    _declare(_tier, thorough=False)
    _declare(_tier, thorough=True)
