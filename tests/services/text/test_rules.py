"""services.text.rules: each rule fires on a prompt built for it and not on one that satisfies it; the engine
never edits protected text, explains every change and is idempotent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.text.quality import prompt_features, score_prompt
from services.text.rules import (
    ORDER,
    RULE_NAMES,
    RULES,
    ClarityParams,
    FewShotParams,
    LinguisticQualityParams,
    RoleParams,
    RuleParameters,
    SpecificityParams,
    XmlStructureParams,
    run_rules,
)

# Per rule: a prompt built for it, and one that already satisfies it.
FIRES = {
    "clarity": "Give me some examples of a good title for my blog about stuff.",
    "specificity": "Write a product description for our new kettle.",
    "chain_of_thought": "Analyze why the churn rate rose last quarter and decide which fix to try first.",
    "few_shot": "Classify each support ticket by urgency.",
    "role": "Review this contract clause for liability risks.",
    "xml_structure": "Summarise the email below in two sentences.\n\nHi team, the launch moves to May: QA found bugs.",
    "linguistic_quality": "write a  haiku about the the rain",
}
SATISFIED = {
    "clarity": "Give me 3 examples of a clear title for my blog about river fishing.",
    "specificity": "Describe our kettle for first-time buyers as a bulleted list of at most 80 words.",
    "chain_of_thought": "Analyze why the churn rate rose last quarter. Think step by step.",
    "few_shot": "Classify each ticket by urgency.\n\nExample:\nInput: The site is down.\nOutput: high",
    "role": "You are a contract lawyer. Review this clause for liability risks.",
    "xml_structure": "<instructions>\nSummarise the email.\n</instructions>\n\n<email>\nThe launch moves.\n</email>",
    "linguistic_quality": "Write a haiku about the rain.",
}


@pytest.mark.parametrize("name", RULE_NAMES)
def test_rule_fires_on_a_prompt_built_for_it(name: str) -> None:
    rule, prompt = RULES[name], FIRES[name]
    reason = rule.applies(prompt, prompt_features(prompt))
    assert reason
    result = rule.apply(prompt)
    assert result.prompt != prompt
    assert result.changes and all(change.strip() for change in result.changes)


@pytest.mark.parametrize("name", RULE_NAMES)
def test_rule_does_not_fire_when_the_prompt_already_satisfies_it(name: str) -> None:
    rule, prompt = RULES[name], SATISFIED[name]
    assert rule.applies(prompt, prompt_features(prompt)) is None
    verdict = rule.assess(prompt, prompt_features(prompt), rule.params(None))
    assert not verdict.applies and verdict.reason


# ------------------------------------------------------------------------------------------- rule by rule


def test_clarity_replaces_quantities_and_praise_and_flags_the_rest() -> None:
    result = RULES["clarity"].apply(FIRES["clarity"])
    first, _, ask = result.prompt.partition("\n\n")
    assert first == "Give me 3 examples of a clear and accurate title for my blog about stuff."
    assert ask.startswith('State how you read each vague term in this prompt ("stuff")')
    assert result.changes[0] == "line 1: 'some' → '3'"
    assert result.changes[1] == "line 1: 'a good' → 'a clear and accurate'"
    assert "'stuff' → name the specific items or topic" in result.changes[2]


def test_clarity_fixes_the_article_and_takes_its_parameters() -> None:
    params = ClarityParams(count=5, criteria="accurate")
    out = RULES["clarity"].apply("Write a good answer with several examples.", params).prompt
    assert out == "Write an accurate answer with 5 examples."
    # "how many" is a question, not a vague quantity; without flagging nothing else is added.
    off = ClarityParams(flag_unresolved=False)
    assert RULES["clarity"].applies("How many ideas are there? Tell me things.", params=off) is None


def test_specificity_adds_only_what_is_missing() -> None:
    out = RULES["specificity"].apply("Explain recursion to a beginner.").prompt
    assert out.endswith(
        "Output format: Markdown, with short paragraphs or a bulleted list.\nLength: at most 250 words."
    )
    assert "Audience:" not in out
    params = SpecificityParams(output_format="JSON with keys name and score", max_words=50, audience="data engineers")
    custom = RULES["specificity"].apply("Describe the dataset.", params).prompt
    assert custom.endswith(
        "Output format: JSON with keys name and score.\nLength: at most 50 words.\nAudience: data engineers."
    )
    assert RULES["specificity"].applies("Describe the dataset.", params=SpecificityParams(require=["length"]))


def test_chain_of_thought_skips_trivial_and_non_reasoning_prompts() -> None:
    rule = RULES["chain_of_thought"]
    trivial = rule.assess("Why is the sky blue?", prompt_features("Why is the sky blue?"), rule.params(None))
    assert not trivial.applies and "trivial" in trivial.reason
    plain = "Write a limerick about a cat who loves to sleep all day."
    assert "not a reasoning" in rule.assess(plain, prompt_features(plain), rule.params(None)).reason
    out = rule.apply(FIRES["chain_of_thought"]).prompt
    assert "Work through this step by step:\n1. " in out and "\n3. " in out


def test_few_shot_scaffold_with_labels() -> None:
    params = FewShotParams(n_examples=3, labels=["low", "medium", "high"])
    out = RULES["few_shot"].apply(FIRES["few_shot"], params).prompt
    assert "Answer with exactly one of these labels: low, medium, high.\nExamples:\n" in out
    assert out.count("Input: {example_input_") == 3 and "Output: {example_output_3}" in out
    assert prompt_features(out).structure.counts["examples"] > 0
    not_a_task = "Write a poem about autumn leaves falling."
    assert RULES["few_shot"].applies(not_a_task) is None


def test_role_matches_the_domain_and_takes_a_role_parameter() -> None:
    out = RULES["role"].apply(FIRES["role"]).prompt
    assert out.startswith("You are a careful legal analyst")
    assert out.endswith(FIRES["role"])
    code = RULES["role"].apply("Fix the bug in this Python function.").prompt
    assert code.startswith("You are a senior software engineer")
    custom = RULES["role"].apply("Plan a menu.", RoleParams(role="a Michelin-starred chef")).prompt
    assert custom.startswith("You are a Michelin-starred chef.\n\n")
    assert (
        RULES["role"]
        .apply("Plan a menu.", RoleParams(domain="finance"))
        .prompt.startswith("You are an experienced financial analyst")
    )
    # "You are given ..." describes the input, it sets no role.
    assert RULES["role"].applies("You are given a list of numbers. Sort them.")


def test_xml_structure_separates_instructions_context_and_input() -> None:
    prompt = (
        "Background: we sell hiking boots online.\n\n"
        "Here is the customer's message:\n\n"
        "```text\nMy boots  leaked after some days.\n```\n\n"
        "Draft a reply that apologises and offers a refund."
    )
    out = RULES["xml_structure"].apply(prompt).prompt
    assert out == (
        "<instructions>\nDraft a reply that apologises and offers a refund.\n</instructions>\n\n"
        "<context>\nBackground: we sell hiking boots online.\n</context>\n\n"
        "<input>\nHere is the customer's message:\n\n```text\nMy boots  leaked after some days.\n```\n</input>"
    )
    tags = XmlStructureParams(instructions_tag="task", context_tag="background", input_tag="message")
    custom = RULES["xml_structure"].apply(prompt, tags).prompt
    assert custom.startswith("<task>\n") and "<background>\n" in custom and "<message>\n" in custom
    headed = "# Task\nSummarise it.\n\nSome text here."
    assert "headers" in RULES["xml_structure"].assess(headed, prompt_features(headed), tags).reason


def test_linguistic_quality_fixes_and_its_switches() -> None:
    prompt = "write a  haiku about the the rain , please\n\n\n\ni think it should rhyme"
    out = RULES["linguistic_quality"].apply(prompt).prompt
    assert out == "Write a haiku about the rain, please.\n\nI think it should rhyme."
    only_doubled = LinguisticQualityParams(whitespace=False, capitalisation=False, punctuation=False)
    partial = RULES["linguistic_quality"].apply(prompt, only_doubled).prompt
    assert partial == "write a  haiku about the rain , please\n\n\n\ni think it should rhyme"
    with pytest.raises(ValidationError):
        LinguisticQualityParams(doubled_words=False, whitespace=False, capitalisation=False, punctuation=False)


# ------------------------------------------------------------------------------------------- engine

CODE = '```python\ndef f(x):\n    # the the stuff, some things etc\n    return x  +  1   \n\n\n\nyou are = "good"\n```'
QUOTE = '"please write some good stuff , i think"'


def test_code_blocks_and_quoted_input_survive_byte_for_byte() -> None:
    prompt = f"here is some code:\n\n{CODE}\n\nanalyze why it fails and fix the the bug. the user wrote {QUOTE} ."
    result = run_rules(prompt)
    assert CODE in result.prompt
    assert QUOTE in result.prompt
    assert result.applied and result.prompt != prompt


def test_a_data_tag_with_blank_lines_stays_whole_and_untouched() -> None:
    context = "<context>\nsome  things here\n\nthe the stuff\n</context>"
    result = run_rules(f"Summarise the context in 3 bullet points.\n\n{context}")
    assert context in result.prompt


def test_every_change_is_explained_and_skips_say_why() -> None:
    result = run_rules("analyze the the data and tell me something interesting")
    assert {a.rule for a in result.applied} >= {
        "role",
        "specificity",
        "chain_of_thought",
        "clarity",
        "linguistic_quality",
    }
    for application in result.applied:
        assert application.reason and application.changes
    assert {s.rule for s in result.skipped} | {a.rule for a in result.applied} == set(RULE_NAMES)
    assert all(s.reason for s in result.skipped)


def test_rules_run_in_the_fixed_order_and_only_those_selected() -> None:
    result = run_rules(FIRES["chain_of_thought"], rules=["linguistic_quality", "role", "chain_of_thought"])
    assert [a.rule for a in result.applied] == ["role", "chain_of_thought"]
    assert [s.rule for s in result.skipped] == ["linguistic_quality"]
    assert [name for name in ORDER if name in {"role", "chain_of_thought"}] == ["role", "chain_of_thought"]
    with pytest.raises(ValueError, match="unknown rule"):
        run_rules("Write a poem.", rules=["poetry"])


def test_parameters_reach_their_rule() -> None:
    params = RuleParameters(
        specificity=SpecificityParams(max_words=42, audience="ten-year-old children"),
        role=RoleParams(domain="education"),
    )
    out = run_rules("Explain photosynthesis.", rules=["specificity", "role"], params=params).prompt
    assert out.startswith("You are a patient teacher")
    assert "Length: at most 42 words." in out and "Audience: ten-year-old children." in out


@pytest.mark.parametrize(
    "prompt",
    [
        "SELECT * FROM users WHERE id = 1; DROP TABLE users; -- explain what this does & why it is dangerous",
        "Compare A & B; list the trade-offs; keep it short",
        "Rewrite: Tom & Jerry; 50% off; <b>bold</b> & 'quotes'",
    ],
)
def test_ordinary_prompts_with_semicolons_ampersands_and_sql(prompt: str) -> None:
    result = run_rules(prompt)
    assert result.converged
    for token in ("&", ";"):
        assert result.prompt.count(token) >= prompt.count(token)
    assert run_rules(result.prompt).prompt == result.prompt


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValidationError, match="criteria"):
        ClarityParams(criteria="good and nice")
    with pytest.raises(ValidationError, match="role"):
        RoleParams(role="You are given a table")
    with pytest.raises(ValidationError):
        FewShotParams(n_examples=9)
    with pytest.raises(ValidationError):
        XmlStructureParams(context_tag="input")
    with pytest.raises(ValidationError):
        SpecificityParams(require=["length", "length"])


VAGUE_PROMPTS = [
    "Write some stuff about things etc.",
    "Give me some examples of a good title for my blog",
    "tell me about dogs and stuff",
    "Make my essay better",
    "write a nice email to my boss about things",
    "analyze the the data and tell me something interesting",
    "classify these reviews into good or bad etc",
    "help me with my code, it has some bugs\n\n```js\nlet x = 1\n```",
]


@pytest.mark.parametrize("prompt", VAGUE_PROMPTS)
def test_quality_after_is_at_least_quality_before(prompt: str) -> None:
    before, after = score_prompt(prompt), score_prompt(run_rules(prompt).prompt)
    assert after.score >= before.score
    assert next(s.score for s in after.sub_scores if s.name == "clarity") >= next(
        s.score for s in before.sub_scores if s.name == "clarity"
    )


FRAGMENTS = [
    "Write some stuff about things etc.",
    "analyze why the the sales dropped",
    "Classify the sentiment of this review:",
    "```python\nx  =  1 \n\nprint( x )\n```",
    '"some quoted good stuff"',
    "You are a chef.",
    "<context>\nsome  things here\n\nmore stuff\n</context>",
    "what is the capital of France",
    "Give some examples of a good title",
    "- item one\n- item two",
    "# Task\nSummarise it",
    "Translate this text into German",
    "i think it is fine , really",
    "Use `some_var` and https://example.com/some stuff",
    "Background: we sell shoes.",
    "Input: hello",
    "SELECT * FROM t; DROP TABLE t; -- & ok",
    "\n\n\n",
    "Do not invent facts.",
    "~~~\nunclosed fence",
]


@hsettings(max_examples=60, deadline=None)
@given(
    parts=st.lists(st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from(["\n", "\n\n", " "])), min_size=1, max_size=5),
    rules=st.none() | st.lists(st.sampled_from(RULE_NAMES), min_size=1, max_size=7, unique=True),
)
def test_engine_is_idempotent(parts: list[tuple[str, str]], rules: list[str] | None) -> None:
    prompt = "".join(fragment + sep for fragment, sep in parts)
    once = run_rules(prompt, rules)
    assert once.converged
    twice = run_rules(once.prompt, rules)
    assert twice.prompt == once.prompt and twice.applied == []
    fence = "```python\nx  =  1 \n\nprint( x )\n```"
    if f"\n{fence}" in f"\n{prompt}":  # a fence opens only at a line start
        assert fence in once.prompt
