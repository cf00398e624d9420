"""The gateway's OpenAPI document: its own routes plus one path per discovered component.

Each component's path carries that component's own input and output schemas
(taken from the manifests), so ``/docs`` on the gateway shows real models.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.registry import Registry
from mlmesh.errors import document_problems

__all__ = ["install_openapi"]

ERRORS = {
    "404": "unknown component",
    "413": "body over the limit",
    "422": "invalid input (the detail names the field)",
    "503": "the owning tier is down or its circuit breaker is open (Retry-After)",
    "504": "the component did not answer in time",
}


def _rewrite_refs(node: Any, prefix: str) -> Any:
    """Point ``#/$defs/X`` references at ``#/components/schemas/<prefix>X``."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                out[key] = "#/components/schemas/" + prefix + value.removeprefix("#/$defs/")
            else:
                out[key] = _rewrite_refs(value, prefix)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, prefix) for v in node]
    return node


def _hoist(schema: dict[str, Any], prefix: str, schemas: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    for name, definition in schema.pop("$defs", {}).items():
        schemas[prefix + name] = _rewrite_refs(definition, prefix)
    return _rewrite_refs(schema, prefix)


def build_openapi(app: FastAPI, registry: Registry) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, entry in registry.components().items():
        manifest = entry.manifest
        prefix = f"{name}__"
        input_schema = _hoist(manifest["input_schema"], prefix, schemas)
        output_schema = _hoist(manifest["output_schema"], prefix, schemas)
        schemas[prefix + "Input"] = input_schema
        schemas[prefix + "Result"] = output_schema
        envelope = {
            "type": "object",
            "properties": {
                "orchestrator_compatible": {"type": "boolean"},
                "component": {"type": "string", "const": name},
                "component_result": {"$ref": f"#/components/schemas/{prefix}Result"},
                "local_metadata": {"type": "object"},
            },
        }
        request_body: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{prefix}Input"}}
        if manifest.get("example") is not None:
            request_body["example"] = manifest["example"]
        doc["paths"][f"/run/{name}"] = {
            "post": {
                "tags": [entry.tier],
                "summary": str(manifest.get("description", "")).split("\n", 1)[0],
                "description": manifest.get("description", ""),
                "operationId": f"run_{name}",
                "requestBody": {"required": True, "content": {"application/json": request_body}},
                "responses": {
                    "200": {
                        "description": "the success envelope",
                        "content": {"application/json": {"schema": envelope}},
                    },
                    **{code: {"description": text} for code, text in ERRORS.items()},
                },
            }
        }
    return document_problems(doc)


def install_openapi(app: FastAPI, registry: Registry) -> None:
    """Serve a document rebuilt whenever the component index changes."""
    cache: dict[str, Any] = {"version": None, "doc": None}

    def openapi() -> dict[str, Any]:
        if cache["version"] != registry.version:
            cache["doc"] = build_openapi(app, registry)
            cache["version"] = registry.version
        return cache["doc"]  # type: ignore[no-any-return]

    app.openapi = openapi  # type: ignore[method-assign]
