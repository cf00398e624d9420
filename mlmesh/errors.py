"""Domain errors and their one mapping to problem+json.

Components and the gateway raise these; :func:`install_error_handlers` turns them
(and validation errors, and unexpected bugs) into the one problem shape of the
design contract: ``{"type", "title", "status", "detail", "component", "request_id"}``.

Exception tree::

    MeshError                      500 unless a subclass says otherwise
    ├── BadRequest                 400  malformed input, path outside data/
    ├── Unauthorized               401  missing or wrong mesh token
    ├── NotFound                   404  unknown component, experiment, model, run
    ├── Conflict                   409  state does not allow the operation
    ├── PayloadTooLarge            413  body or estimate over the configured limit
    ├── InvalidInput               422  a field's value is invalid
    ├── ServiceUnavailable         503  tier down, dependency missing (Retry-After)
    │   └── Overloaded             429  too much work right now (Retry-After)
    └── GatewayTimeout             504  a call ran out of time
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from mlmesh.logs import current_request_id

__all__ = [
    "BadRequest",
    "Conflict",
    "GatewayTimeout",
    "InvalidInput",
    "MeshError",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "describe_validation_errors",
    "install_error_handlers",
    "problem_response",
]

log = logging.getLogger("mlmesh.errors")
PROBLEM_TYPE = "https://mlmesh.dev/problems/"


class MeshError(Exception):
    """Base of every error the mesh turns into an HTTP problem."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class BadRequest(MeshError):
    status, title = 400, "Bad request"


class Unauthorized(MeshError):
    status, title = 401, "Unauthorized"


class NotFound(MeshError):
    status, title = 404, "Not found"


class Conflict(MeshError):
    status, title = 409, "Conflict"


class PayloadTooLarge(MeshError):
    status, title = 413, "Payload too large"


class InvalidInput(MeshError):
    """A field's value is invalid; ``field`` is named in the detail."""

    status, title = 422, "Invalid input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ServiceUnavailable(MeshError):
    status, title = 503, "Service unavailable"


class Overloaded(ServiceUnavailable):
    status, title = 429, "Too many requests"


class GatewayTimeout(MeshError):
    status, title = 504, "Timeout"


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
    504: "Timeout",
}


PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status", "detail", "component", "request_id"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "component": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "request_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
}
PROBLEM_CONTENT = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}


def document_problems(doc: dict[str, Any]) -> dict[str, Any]:
    """Make an OpenAPI document say what the mesh really answers on errors.

    Every 4xx/5xx response becomes problem+json with the Problem schema (FastAPI's
    own 422 model is replaced), and every operation that takes a body also lists
    400 (unparseable), 413 and 422.
    """
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                responses.setdefault("400", {"description": "a body that cannot be parsed"})
                responses.setdefault("413", {"description": "body over the limit"})
                responses.setdefault("422", {"description": "invalid input (the detail names the field)"})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = PROBLEM_CONTENT
                    if response.get("description") == "Validation Error":
                        response["description"] = "invalid input (the detail names the field)"
    return doc


def _slug(title: str) -> str:
    return title.lower().replace(" ", "-")


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    component: str | None = None,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The one problem+json response of the mesh."""
    title = title or _TITLES.get(status, "Error")
    body = {
        "type": PROBLEM_TYPE + _slug(title),
        "title": title,
        "status": status,
        "detail": detail,
        "component": component,
        "request_id": current_request_id(),
    }
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """``field.path: message; ...`` for pydantic/FastAPI error lists (inputs are not echoed)."""
    seen: list[str] = []
    for err in errors[:20]:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "malformed")
            text = f"body: invalid JSON ({reason}) at character {_loc(err.get('loc', ()))}"
        else:
            text = f"{_loc(err.get('loc', ()))}: {err.get('msg', 'invalid')}"
        if text not in seen:
            seen.append(text)
    more = len(errors) - 20
    return "; ".join(seen) + (f"; and {more} more" if more > 0 else "")


def _component_of(request: Request) -> str | None:
    path = request.url.path
    return path.removeprefix("/run/").strip("/") or None if path.startswith("/run/") else None


def install_error_handlers(app: FastAPI) -> None:
    """Map every error an app can raise to problem+json, in one place."""

    @app.exception_handler(MeshError)
    async def _mesh_error(request: Request, exc: MeshError) -> JSONResponse:
        if exc.status == 500:
            log.error("internal error: %s", exc.detail)
        return problem_response(
            exc.status, exc.detail, title=exc.title, component=_component_of(request), retry_after=exc.retry_after
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(422, describe_validation_errors(list(exc.errors())), component=_component_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem_response(exc.status_code, detail, component=_component_of(request), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            f"internal error ({type(exc).__name__}); see the service log for request {current_request_id()}",
            component=_component_of(request),
        )
