"""Malformed or duplicate declarations fail at import, with a message that says what to fix."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from services.framework import ComponentInput, ComponentOutput, DeclarationError, component, snake_case


class In(ComponentInput):
    x: int


class Out(ComponentOutput):
    y: int


class LooseIn(BaseModel):
    x: int


@pytest.mark.parametrize(
    ("class_name", "expected"),
    [
        ("ModernABTestingService", "modern_ab_testing_service"),
        ("LLMTransformerService", "llm_transformer_service"),
        ("AutoMLOrchestrator", "auto_ml_orchestrator"),
        ("MLServiceHealthChecker", "ml_service_health_checker"),
        ("TypeSafePsycopgClient", "type_safe_psycopg_client"),
        ("StructuralAnalyzer", "structural_analyzer"),
    ],
)
def test_snake_case(class_name: str, expected: str) -> None:
    assert snake_case(class_name) == expected


def _declare(class_name: str = "WellFormedThing", **kwargs: object):  # type: ignore[no-untyped-def]
    options = {"tier": "tier3", "capabilities": ["testing"], "example": {"x": 1}} | kwargs
    return component(class_name, **options)  # type: ignore[arg-type]


def test_name_must_match_class() -> None:
    with pytest.raises(DeclarationError, match="must be named 'badly_named'"):

        @_declare("BadlyNamed")
        def something_else(request: In) -> Out:
            """Doc."""
            return Out(y=request.x)


def test_catalogue_names_that_are_not_snake_case_are_explicit() -> None:
    @_declare("AutoMLThing", name="automl_thing")
    def automl_thing(request: In) -> Out:
        """Doc."""
        return Out(y=request.x)

    assert automl_thing.name == "automl_thing" and automl_thing.class_name == "AutoMLThing"
    with pytest.raises(DeclarationError, match="name must be snake_case"):

        @_declare("BadName", name="Bad-Name")
        def bad_name(request: In) -> Out:
            """Doc."""
            return Out(y=request.x)


def test_unknown_tier() -> None:
    with pytest.raises(DeclarationError, match="tier must be one of"):

        @_declare("TierlessThing", tier="tier9")
        def tierless_thing(request: In) -> Out:
            """Doc."""
            return Out(y=request.x)


def test_docstring_required() -> None:
    with pytest.raises(DeclarationError, match="docstring"):

        @_declare("UndocumentedThing")
        def undocumented_thing(request: In) -> Out:
            return Out(y=request.x)


def test_input_must_forbid_unknown_fields() -> None:
    with pytest.raises(DeclarationError, match="forbid unknown fields"):

        @_declare("LooseThing")
        def loose_thing(request: LooseIn) -> Out:
            """Doc."""
            return Out(y=request.x)


def test_example_must_validate() -> None:
    with pytest.raises(DeclarationError, match="example does not validate"):

        @_declare("BadExampleThing", example={"x": "not a number"})
        def bad_example_thing(request: In) -> Out:
            """Doc."""
            return Out(y=request.x)


def test_output_must_be_component_output() -> None:
    with pytest.raises(DeclarationError, match="ComponentOutput"):

        @_declare("WrongOutputThing")
        def wrong_output_thing(request: In) -> In:
            """Doc."""
            return request


def test_version_and_capabilities_checked() -> None:
    with pytest.raises(DeclarationError, match="version"):

        @_declare("VersionedThing", version="one")
        def versioned_thing(request: In) -> Out:
            """Doc."""
            return Out(y=request.x)

    with pytest.raises(DeclarationError, match="capabilities"):

        @_declare("CapableThing", capabilities=[])
        def capable_thing(request: In) -> Out:
            """Doc."""
            return Out(y=request.x)


def test_duplicates_fail() -> None:
    @_declare("OnceOnlyThing")
    def once_only_thing(request: In) -> Out:
        """Doc."""
        return Out(y=request.x)

    with pytest.raises(DeclarationError, match="already declared"):

        @_declare("OnceOnlyThing")
        def once_only_thing(request: In) -> Out:
            """Doc."""
            return Out(y=request.x)


def test_declared_component_is_a_plain_callable() -> None:
    @_declare("CallableThing")
    def callable_thing(request: In) -> Out:
        """Double x.

        Longer text.
        """
        return Out(y=request.x * 2)

    assert callable_thing(In(x=4)) == Out(y=8)
    assert callable_thing.summary == "Double x."
    assert callable_thing.manifest()["input_schema"]["required"] == ["x"]
