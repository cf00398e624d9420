"""Rewrite a prompt with the improvement rules, or with an OpenAI-compatible LLM when one is configured.

Rules mode (the default) is deterministic: :func:`services.text.rules.run_rules` applies the selected rules
until nothing changes. LLM mode sends the prompt and the selected rules' descriptions to
``POST {llm.base_url}/chat/completions`` and scores the answer with the same quality function; it then checks,
rule by rule, whether the rewrite satisfies what each rule asks for. Both modes report the quality before and
after (with sub-scores and evidence) and a unified diff.
"""

from __future__ import annotations

import difflib
import time
from typing import Any, Literal

import httpx
from pydantic import Field

from mlmesh.errors import InvalidInput, Overloaded, ServiceUnavailable
from mlmesh.settings import LLMSettings
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.text.quality import QualityReport, prompt_features, protected_spans, score_prompt
from services.text.rules import ORDER, RULE_NAMES, RULES, RuleName, RuleParameters, detect_domain, run_rules

__all__ = [
    "LLMCall",
    "LLMTransformerServiceInput",
    "LLMTransformerServiceOutput",
    "RuleApplied",
    "RuleSkipped",
    "llm_transformer_service",
]

MAX_PROMPT_CHARS = 20_000
MAX_ANSWER_CHARS = 100_000
_SYSTEM = (
    "You improve prompts for large language models. Rewrite the user's prompt so that it follows the rules "
    "below, keeping its intent, its facts and its language. Copy code blocks, quoted text and data inside tags "
    "exactly. Answer with the improved prompt only: no preamble, no commentary, no surrounding code fence.\n\n"
    "Rules:\n"
)


class LLMTransformerServiceInput(ComponentInput):
    """A prompt, the rules to apply (all by default), their parameters, and the mode."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="the prompt to improve")
    rules: list[RuleName] | None = Field(
        default=None,
        min_length=1,
        max_length=len(RULE_NAMES),
        description=f"rules to apply, each at most once (default: all of {', '.join(RULE_NAMES)})",
    )
    rule_params: RuleParameters = Field(
        default_factory=RuleParameters, description="per-rule parameters; only for rules that are selected"
    )
    mode: Literal["rules", "llm"] = Field(
        "rules",
        description="'rules': deterministic rewrites; 'llm': the configured OpenAI-compatible endpoint "
        "(503 when none is set)",
    )
    temperature: float = Field(0.0, ge=0, le=2, description="LLM mode only: sampling temperature")


class RuleApplied(ComponentOutput):
    rule: str
    reason: str = Field(description="why the rule applied")
    changes: list[str] = Field(description="what it changed, one line per change")
    pass_number: int = Field(description="the engine pass in which it applied (rules mode); 1 in LLM mode")


class RuleSkipped(ComponentOutput):
    rule: str
    reason: str = Field(description="why the rule did not apply")


class LLMCall(ComponentOutput):
    model: str
    latency_ms: float
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


class LLMTransformerServiceOutput(ComponentOutput):
    mode: Literal["rules", "llm"]
    improved_prompt: str
    changed: bool
    rules_applied: list[RuleApplied]
    rules_skipped: list[RuleSkipped]
    quality_before: QualityReport
    quality_after: QualityReport
    improvement: float = Field(description="quality_after.score − quality_before.score")
    diff: str = Field(description="unified diff from the original to the improved prompt")
    domain: str = Field(description="the domain detected in the original prompt")
    passes: int = Field(description="engine passes until nothing changed (rules mode; 0 in LLM mode)")
    llm: LLMCall | None = None
    warnings: list[str]


def _selected(request: LLMTransformerServiceInput) -> list[str]:
    rules = list(request.rules) if request.rules is not None else list(RULE_NAMES)
    if len(set(rules)) != len(rules):
        dupes = sorted({r for r in rules if rules.count(r) > 1})
        raise InvalidInput("rules", f"list each rule at most once; repeated: {', '.join(dupes)}")
    for name in RULE_NAMES:
        if getattr(request.rule_params, name) is not None and name not in rules:
            raise InvalidInput(f"rule_params.{name}", f"parameters given for {name!r}, which is not in rules")
    return [name for name in ORDER if name in rules]


def _diff(before: str, after: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(), after.splitlines(), fromfile="original", tofile="improved", lineterm=""
    )
    return "\n".join(lines)


def _endpoint(settings: LLMSettings) -> str:
    if not settings.base_url:
        raise ServiceUnavailable("LLM endpoint not configured: set MLMESH_LLM__BASE_URL (or [llm] base_url)")
    return settings.base_url.rstrip("/") + "/chat/completions"


def _call_llm(request: LLMTransformerServiceInput, rules: list[str], settings: LLMSettings) -> tuple[str, LLMCall]:
    """POST the prompt to the chat-completions endpoint; every failure is a 503 (429 when it is rate-limited)."""
    url = _endpoint(settings)
    rule_text = "\n".join(f"- {RULES[name].summary}" for name in rules)
    body = {
        "model": settings.model,
        "messages": [
            {"role": "system", "content": _SYSTEM + rule_text},
            {"role": "user", "content": request.prompt},
        ],
        "temperature": request.temperature,
        "max_tokens": settings.max_tokens,
    }
    headers = {"content-type": "application/json"}
    if settings.api_key is not None:
        headers["authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=settings.timeout_s) as client:
            response = client.post(url, json=body, headers=headers)
    except httpx.TimeoutException as exc:
        raise ServiceUnavailable(
            f"LLM endpoint {url} did not answer within {settings.timeout_s:g} s ({type(exc).__name__}); "
            "check the server or raise MLMESH_LLM__TIMEOUT_S"
        ) from exc
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(
            f"LLM endpoint {url} is unreachable ({type(exc).__name__}); check that it runs"
        ) from exc
    latency = (time.perf_counter() - started) * 1000
    if response.status_code == 429:
        retry = response.headers.get("retry-after")
        raise Overloaded(
            f"LLM endpoint {url} is rate-limiting (HTTP 429); retry later",
            retry_after=float(retry) if retry and retry.isdigit() else 5.0,
        )
    if response.status_code in (401, 403):
        raise ServiceUnavailable(
            f"LLM endpoint {url} refused the credentials (HTTP {response.status_code}); check MLMESH_LLM__API_KEY"
        )
    if response.status_code >= 400:
        raise ServiceUnavailable(f"LLM endpoint {url} answered HTTP {response.status_code}; check the server and model")
    try:
        payload: Any = response.json()
        choice = payload["choices"][0]
        content = choice["message"]["content"]
        usage = payload.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ServiceUnavailable(
            f"LLM endpoint {url} answered malformed JSON (expected choices[0].message.content): {type(exc).__name__}"
        ) from exc
    if not isinstance(content, str) or not content.strip():
        raise ServiceUnavailable(f"LLM endpoint {url} answered malformed JSON: choices[0].message.content is empty")
    if len(content) > MAX_ANSWER_CHARS:
        raise ServiceUnavailable(f"LLM endpoint {url} answered {len(content)} characters; at most {MAX_ANSWER_CHARS}")
    call = LLMCall(
        model=str(payload.get("model") or settings.model),
        latency_ms=round(latency, 3),
        finish_reason=choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None,
        prompt_tokens=usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else None,
        completion_tokens=usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else None,
    )
    return content.strip(), call


def _llm_rule_report(
    before: str, after: str, rules: list[str], params: RuleParameters
) -> tuple[list[RuleApplied], list[RuleSkipped]]:
    """Which rules the LLM's rewrite satisfies: needed before and no longer needed after."""
    applied, skipped = [], []
    fb, fa = prompt_features(before), prompt_features(after)
    for name in rules:
        rule = RULES[name]
        rule_params = rule.params(getattr(params, name))
        was = rule.assess(before, fb, rule_params)
        now = rule.assess(after, fa, rule_params)
        if not was.applies:
            skipped.append(RuleSkipped(rule=name, reason=f"not needed: {was.reason}"))
        elif now.applies:
            skipped.append(RuleSkipped(rule=name, reason=f"the LLM's rewrite still needs it: {now.reason}"))
        else:
            applied.append(
                RuleApplied(rule=name, reason=was.reason, changes=[f"the LLM's rewrite: {now.reason}"], pass_number=1)
            )
    return applied, skipped


def _lost_protected(before: str, after: str) -> list[str]:
    """Code blocks, quotations and data the rewrite no longer contains byte for byte."""
    lost = []
    for start, end in protected_spans(before):
        piece = before[start:end]
        if piece not in after:
            first = " ".join(piece.split())[:60]
            lost.append(f"the LLM's rewrite changed or dropped protected text starting {first!r}")
    return lost


@component(
    "LLMTransformerService",
    tier="tier2",
    capabilities=["prompt_rewriting", "prompt_scoring"],
    example={
        "prompt": "Analyze why our sales dropped in Q3 and compare with some things from last year.\n\n"
        "```sql\nSELECT region, SUM(amount) FROM sales GROUP BY region;\n```",
        "rules": ["clarity", "specificity", "chain_of_thought", "role", "xml_structure", "linguistic_quality"],
        "rule_params": {"specificity": {"max_words": 300, "audience": "the sales leadership team"}},
    },
    errors={503: "LLM mode: endpoint not configured, unreachable, timing out, failing or answering malformed JSON"},
)
def llm_transformer_service(request: LLMTransformerServiceInput, ctx: RunContext) -> LLMTransformerServiceOutput:
    """Rewrite a prompt with the improvement rules (or a configured LLM); before/after quality and a diff.

    Rules (applied in this order, repeated until nothing changes): role, specificity, chain_of_thought,
    few_shot, xml_structure, clarity, linguistic_quality. Each reports why it applied and what it changed, or
    why it was skipped. Code blocks, inline code, quoted text, URLs and data tags are never edited.

    Quality = 0.25·clarity + 0.25·specificity + 0.20·structure + 0.15·actionability + 0.15·linguistic, each
    sub-score with its evidence (see services.text.quality).

    LLM mode posts to ``{llm.base_url}/chat/completions`` (OpenAI-compatible) with the configured model and
    timeout: 503 when no endpoint is configured, when it is unreachable, times out, fails (5xx) or answers
    malformed JSON; 429 when it rate-limits.
    """
    if not request.prompt.strip():
        raise InvalidInput("prompt", "is blank; send the prompt text to improve")
    rules = _selected(request)
    original = request.prompt
    domain = detect_domain(prompt_features(original))[0]
    before = score_prompt(original)
    warnings: list[str] = []
    llm_call = None
    if request.mode == "rules":
        result = run_rules(original, rules, request.rule_params)
        improved = result.prompt
        applied = [
            RuleApplied(rule=a.rule, reason=a.reason, changes=list(a.changes), pass_number=a.pass_number)
            for a in result.applied
        ]
        skipped = [RuleSkipped(rule=s.rule, reason=s.reason) for s in result.skipped]
        passes = result.passes
        if not result.converged:
            warnings.append(f"the rules still changed the prompt after {passes} passes; the result may not be final")
    else:
        improved, llm_call = _call_llm(request, rules, ctx.settings.llm)
        applied, skipped = _llm_rule_report(original, improved, rules, request.rule_params)
        passes = 0
        warnings += _lost_protected(original, improved)
    after = score_prompt(improved)
    return LLMTransformerServiceOutput(
        mode=request.mode,
        improved_prompt=improved,
        changed=improved != original,
        rules_applied=applied,
        rules_skipped=skipped,
        quality_before=before,
        quality_after=after,
        improvement=round(after.score - before.score, 4),
        diff=_diff(original, improved),
        domain=domain,
        passes=passes,
        llm=llm_call,
        warnings=warnings,
    )
