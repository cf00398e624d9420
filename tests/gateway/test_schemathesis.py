"""schemathesis over the gateway's OpenAPI document, with a real toy tier behind it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from gateway.app import create_app as create_gateway
from services.framework.app import create_app as create_tier
from tests.conftest import AUTH, make_settings
from tests.gateway.conftest import gateway_settings
from tests.gateway.toys import toy_add
from tests.support import ServerThread, free_port

_root = Path(tempfile.mkdtemp(prefix="schemathesis-gateway-"))
_ports = {tier: free_port() for tier in ("tier1", "tier2", "tier3", "tier4")}
_tier = create_tier("tier3", settings=make_settings(_root / "tier3"), components=[toy_add], announce=False)
_gateway = create_gateway(gateway_settings(_root / "gateway", _ports))


def _serve() -> str:
    # Started when the schema is first loaded, stopped with the interpreter (daemon threads).
    ServerThread(_tier, _ports["tier3"]).start()
    return ServerThread(_gateway).start().url


schema = schemathesis.openapi.from_url(f"{_serve()}/openapi.json")
schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
schema.config.phases.update(phases=["examples", "fuzzing"])


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_gateway_api_conforms(case: schemathesis.Case) -> None:
    response = case.call_and_validate(headers=AUTH, excluded_checks=[schemathesis.checks.positive_data_acceptance])
    assert response.status_code != 500, response.text
