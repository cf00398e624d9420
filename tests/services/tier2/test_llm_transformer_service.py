"""llm_transformer_service: rules mode end to end, bad input over HTTP, and the LLM path against respx."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from mlmesh.errors import InvalidInput, Overloaded, ServiceUnavailable
from mlmesh.settings import LLMSettings, Settings
from services.framework import RunContext
from services.text.quality import score_prompt
from services.text.rules import RULE_NAMES
from services.tier2.llm_transformer_service import (
    LLMTransformerServiceInput,
    LLMTransformerServiceOutput,
    llm_transformer_service,
)
from tests.conftest import make_settings
from tests.support import sample_data_script

ROUTE = "/run/llm_transformer_service"
LLM_URL = "http://llm.test/v1"
CODE = "```sql\nSELECT  *  FROM t;   -- the the stuff\n```"


def run(settings: Settings, **body: object) -> LLMTransformerServiceOutput:
    ctx = RunContext(component="llm_transformer_service", settings=settings, request_id=None)
    return llm_transformer_service(LLMTransformerServiceInput.model_validate(body), ctx)


@pytest.fixture
def llm_settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path, llm=LLMSettings(base_url=LLM_URL, model="test-model", api_key="sk-test", timeout_s=2)
    )


@pytest.fixture
def client(client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(llm_transformer_service)


# ------------------------------------------------------------------------------------------- rules mode


def test_rules_mode_reports_rules_quality_and_diff(settings: Settings) -> None:
    prompt = f"explain why this query is slow and fix some things\n\n{CODE}"
    out = run(settings, prompt=prompt)
    assert out.mode == "rules" and out.changed and out.llm is None
    assert CODE in out.improved_prompt
    assert {a.rule for a in out.rules_applied} | {s.rule for s in out.rules_skipped} == set(RULE_NAMES)
    assert all(a.reason and a.changes for a in out.rules_applied)
    assert all(s.reason for s in out.rules_skipped)
    assert out.quality_before == score_prompt(prompt)
    assert out.quality_after == score_prompt(out.improved_prompt)
    assert out.improvement == pytest.approx(out.quality_after.score - out.quality_before.score, abs=1e-4)
    assert out.quality_after.score >= out.quality_before.score
    assert out.domain == "data"
    # The diff rebuilds the improved prompt from the original: apply its hunks by hand.
    lines = out.diff.split("\n")
    assert lines[0] == "--- original" and lines[1] == "+++ improved"
    added = [line[1:] for line in lines[2:] if line.startswith("+")]
    assert out.improved_prompt.split("\n")[0] in added


def test_rule_subset_and_determinism(settings: Settings) -> None:
    first = run(settings, prompt="write a  poem about the the sea", rules=["linguistic_quality"])
    assert first.improved_prompt == "Write a poem about the sea."
    assert [a.rule for a in first.rules_applied] == ["linguistic_quality"] and first.rules_skipped == []
    assert run(settings, prompt="write a  poem about the the sea", rules=["linguistic_quality"]) == first


VAGUE = [
    "Write some stuff about things etc.",
    "Make my essay better",
    "write a nice email to my boss about things",
    "tell me about dogs and stuff",
]


@pytest.mark.parametrize("prompt", VAGUE)
def test_quality_after_at_least_before_on_vague_prompts(settings: Settings, prompt: str) -> None:
    out = run(settings, prompt=prompt)
    assert out.quality_after.score >= out.quality_before.score


def test_unchanged_prompt_has_empty_diff(settings: Settings) -> None:
    out = run(settings, prompt="Write a haiku about the rain.", rules=["linguistic_quality"])
    assert not out.changed and out.diff == "" and out.rules_skipped[0].rule == "linguistic_quality"


def test_blank_prompt_duplicates_and_unselected_params_are_invalid(settings: Settings) -> None:
    with pytest.raises(InvalidInput, match="prompt"):
        run(settings, prompt="   \n ")
    with pytest.raises(InvalidInput, match="rules"):
        run(settings, prompt="Write.", rules=["role", "role"])
    with pytest.raises(InvalidInput, match=r"rule_params\.few_shot"):
        run(settings, prompt="Write.", rules=["role"], rule_params={"few_shot": {"n_examples": 2}})


# ------------------------------------------------------------------------------------------- over HTTP


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "Write a poem.", "rules": ["poetry"]}, "rules.0"),
        (
            {"prompt": "Write a poem.", "rule_params": {"few_shot": {"n_examples": 9}}},
            "rule_params.few_shot.n_examples",
        ),
        ({"prompt": "Write a poem.", "rule_params": {"role": {"rank": 1}}}, "rule_params.role.rank"),
        ({"prompt": "Write a poem.", "rule_params": {"clarity": {"criteria": "good"}}}, "rule_params.clarity.criteria"),
        ({"prompt": "Write a poem.", "rules": ["role"], "rule_params": {"clarity": {}}}, "rule_params.clarity"),
        ({"prompt": "Write a poem.", "rules": ["role", "role"]}, "rules"),
        ({"prompt": "Write a poem.", "mode": "magic"}, "mode"),
        ({"prompt": "x" * 20_001}, "prompt"),
        ({"prompt": " "}, "prompt"),
    ],
)
def test_bad_input_is_422_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    response = client.post(ROUTE, json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]


def test_sql_semicolons_and_ampersands_over_http(client: TestClient) -> None:
    prompt = "SELECT * FROM users; DROP TABLE users; -- explain this & say why it is dangerous"
    response = client.post(ROUTE, json={"prompt": prompt})
    assert response.status_code == 200, response.text
    assert "DROP TABLE users;" in response.json()["component_result"]["improved_prompt"]


def test_llm_mode_without_endpoint_is_503_over_http(client: TestClient) -> None:
    response = client.post(ROUTE, json={"prompt": "Write a poem.", "mode": "llm"})
    assert response.status_code == 503
    assert "LLM endpoint not configured: set MLMESH_LLM__BASE_URL" in response.json()["detail"]


# ------------------------------------------------------------------------------------------- LLM mode


def completion(content: str) -> dict:
    return {
        "id": "cmpl-1",
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 12},
    }


def test_llm_success_is_scored_with_the_same_quality_function(llm_settings: Settings) -> None:
    prompt = f"fix some stuff in this query\n\n{CODE}"
    answer = (
        f"You are a database engineer.\n\nFix the performance problem in this query.\n\n{CODE}\n\n"
        "Answer in 3 bullet points."
    )
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(f"{LLM_URL}/chat/completions").mock(return_value=httpx.Response(200, json=completion(answer)))
        out = run(llm_settings, prompt=prompt, mode="llm", rules=["role", "clarity", "few_shot"])
    sent = json.loads(route.calls.last.request.content)
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-test"
    assert sent["model"] == "test-model" and sent["temperature"] == 0.0 and sent["max_tokens"] == 2048
    assert sent["messages"][1] == {"role": "user", "content": prompt}
    assert "role line" in sent["messages"][0]["content"]
    assert out.mode == "llm" and out.improved_prompt == answer
    assert out.quality_after == score_prompt(answer) and out.quality_before == score_prompt(prompt)
    assert out.llm is not None and (out.llm.prompt_tokens, out.llm.completion_tokens) == (40, 12)
    assert {a.rule for a in out.rules_applied} == {"role", "clarity"}
    assert [s.rule for s in out.rules_skipped] == ["few_shot"] and out.warnings == []


def test_llm_answer_that_drops_code_is_warned_about(llm_settings: Settings) -> None:
    with respx.mock() as mock:
        mock.post(f"{LLM_URL}/chat/completions").mock(
            return_value=httpx.Response(200, json=completion("Explain the query."))
        )
        out = run(llm_settings, prompt=f"Explain this query.\n\n{CODE}", mode="llm")
    assert out.warnings and "protected text" in out.warnings[0]


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.ConnectError("connection refused"), "unreachable"),
        (httpx.ReadTimeout("timed out"), "did not answer within 2 s"),
        (httpx.Response(502, text="bad gateway"), "answered HTTP 502"),
        (httpx.Response(200, text="<html>not json</html>"), "answered malformed JSON"),
        (httpx.Response(200, json={"choices": []}), "answered malformed JSON"),
        (httpx.Response(200, json={"choices": [{"message": {"content": ""}}]}), "answered malformed JSON"),
        (httpx.Response(401, json={"error": "bad key"}), "MLMESH_LLM__API_KEY"),
    ],
)
def test_llm_failures_are_503_with_a_clear_message(
    llm_settings: Settings, response: httpx.Response | Exception, message: str
) -> None:
    with respx.mock() as mock:
        route = mock.post(f"{LLM_URL}/chat/completions")
        if isinstance(response, Exception):
            route.mock(side_effect=response)
        else:
            route.mock(return_value=response)
        with pytest.raises(ServiceUnavailable, match=message) as raised:
            run(llm_settings, prompt="Write a poem.", mode="llm")
    assert raised.value.status == 503


def test_llm_rate_limit_is_429_with_retry_after(llm_settings: Settings) -> None:
    with respx.mock() as mock:
        mock.post(f"{LLM_URL}/chat/completions").mock(return_value=httpx.Response(429, headers={"retry-after": "7"}))
        with pytest.raises(Overloaded) as raised:
            run(llm_settings, prompt="Write a poem.", mode="llm")
    assert raised.value.status == 429 and raised.value.retry_after == 7.0


def test_llm_not_configured_is_503(settings: Settings) -> None:
    with pytest.raises(ServiceUnavailable, match="LLM endpoint not configured: set MLMESH_LLM__BASE_URL"):
        run(settings, prompt="Write a poem.", mode="llm")


def test_every_sample_prompt_is_improved_with_every_change_explained(settings: Settings) -> None:
    prompts = [p["text"] for p in sample_data_script().generate(7).prompts]
    assert len(prompts) == 300
    for text in prompts:
        out = run(settings, prompt=text)
        assert out.changed, text
        assert out.quality_after.score >= out.quality_before.score, text
        assert out.rules_applied and all(r.reason and r.changes for r in out.rules_applied), text
