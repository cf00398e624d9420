"""Known-answer tests of structural_analyzer on prompts whose structure is worked out by hand.

Every expected line span below was counted from the fixture text (1-based, inclusive), not printed by
the code; the score tests check the formulas in the component's docstring on hand-computed inputs.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.tier3.structural_analyzer import (
    ELEMENT_KINDS,
    WEIGHTS,
    StructuralAnalyzerInput,
    StructuralAnalyzerOutput,
    structural_analyzer,
)


def analyse(prompt: str, **options: object) -> StructuralAnalyzerOutput:
    return structural_analyzer(StructuralAnalyzerInput(prompt=prompt, **options))


def sub(out: StructuralAnalyzerOutput, name: str) -> float:
    return next(s.score for s in out.sub_scores if s.name == name)


def spans(items) -> list[tuple[int, int]]:
    return [(i.start_line, i.end_line) for i in items]


def edges(out: StructuralAnalyzerOutput) -> set[tuple[str, str]]:
    assert out.graph is not None
    return {(e.source, e.target) for e in out.graph.edges}


# ------------------------------------------------------------------------------------------- Markdown blocks

HEADER_LIST_CODE = """# Setup

- alpha
- beta
- gamma

```python
# not a header
print("hi")
```
"""


def test_header_list_and_fenced_code_with_line_spans() -> None:
    out = analyse(HEADER_LIST_CODE)
    assert out.line_count == 10
    assert [(h.level, h.text, h.style) for h in out.headers] == [(1, "Setup", "atx")]
    assert spans(out.headers) == [(1, 1)]
    assert spans(out.sections) == [(1, 10)]
    [bullets] = out.lists
    assert (bullets.ordered, bullets.marker, bullets.depth, bullets.item_count) == (False, "-", 1, 3)
    assert [i.text for i in bullets.items] == ["alpha", "beta", "gamma"]
    assert spans(bullets.items) == [(3, 3), (4, 4), (5, 5)]
    assert (bullets.start_line, bullets.end_line) == (3, 5)
    [code] = out.code_blocks
    assert (code.language, code.fence, code.closed, code.content_lines) == ("python", "```", True, 2)
    assert (code.start_line, code.end_line) == (7, 10)
    # The '# not a header' line is code: one header only, and nothing else is found inside the fence.
    assert out.counts["headers"] == 1
    assert out.counts["instructions"] == out.counts["questions"] == out.counts["xml_elements"] == 0
    assert edges(out) == {("document", "section-1"), ("section-1", "list-1"), ("section-1", "code-1")}


def test_setext_headers_and_section_nesting() -> None:
    prompt = "Title\n=====\n\nintro\n\nPart A\n------\nbody a\n\nPart B\n------\nbody b\n"
    out = analyse(prompt)
    assert [(h.level, h.text, h.style) for h in out.headers] == [
        (1, "Title", "setext"),
        (2, "Part A", "setext"),
        (2, "Part B", "setext"),
    ]
    assert spans(out.headers) == [(1, 2), (6, 7), (10, 11)]
    assert spans(out.sections) == [(1, 12), (6, 8), (10, 12)]
    assert [s.parent_id for s in out.sections] == [None, "section-1", "section-1"]
    assert edges(out) == {("document", "section-1"), ("section-1", "section-2"), ("section-1", "section-3")}


def test_atx_levels_close_sections_at_the_same_or_higher_level() -> None:
    prompt = "# A\na\n## B\nb\n### C\nc\n## D\nd\n# E\ne"
    out = analyse(prompt)
    assert [h.level for h in out.headers] == [1, 2, 3, 2, 1]
    assert spans(out.sections) == [(1, 8), (3, 6), (5, 6), (7, 8), (9, 10)]
    assert [s.parent_id for s in out.sections] == [None, "section-1", "section-2", "section-1", None]


def test_numbered_lists_with_start_number_and_nesting() -> None:
    prompt = "Steps:\n\n3. first\n4. second\n   - detail one\n   - detail two\n5. third\n"
    out = analyse(prompt)
    outer, inner = out.lists
    assert (outer.ordered, outer.marker, outer.start_number, outer.depth, outer.item_count) == (True, ".", 3, 1, 3)
    assert spans(outer.items) == [(3, 3), (4, 6), (7, 7)]
    assert (outer.start_line, outer.end_line) == (3, 7)
    assert (inner.ordered, inner.depth, inner.parent_list_id, inner.item_count) == (False, 2, outer.id, 2)
    assert spans(inner.items) == [(5, 5), (6, 6)]
    assert [i.text for i in inner.items] == ["detail one", "detail two"]
    assert out.counts["list_items"] == 5
    assert ("list-1", "list-2") in edges(out)


def test_tilde_fence_unclosed_runs_to_the_end_and_hides_everything() -> None:
    prompt = "Intro.\n\n~~~\n# not a header\n- not a list\n<tag>\n{not_a_var}\n"
    out = analyse(prompt)
    [code] = out.code_blocks
    assert (code.fence, code.language, code.closed) == ("~~~", None, False)
    assert (code.start_line, code.end_line) == (3, 7)
    assert out.counts["headers"] == out.counts["lists"] == out.counts["xml_elements"] == 0
    assert out.counts["unbalanced_tags"] == out.counts["placeholders"] == 0
    formatting = next(s for s in out.sub_scores if s.name == "formatting")
    assert formatting.signals == {"fences_closed": 0.0, "fence_languages": 0.0}
    assert formatting.score == 0.0
    assert "unclosed" in formatting.reason


def test_windows_line_endings_count_lines_like_unix() -> None:
    unix = analyse("# A\n- x\n- y\n")
    windows = analyse("# A\r\n- x\r\n- y\r\n")
    assert windows.line_count == unix.line_count == 3
    assert windows.model_dump() == unix.model_dump() | {"char_count": windows.char_count}


def test_inline_code_is_literal() -> None:
    out = analyse("Call `render(<b>, {x})` then ``a ` b`` here.\nSecond `line`.")
    assert [(c.text, c.start_line) for c in out.inline_code] == [("render(<b>, {x})", 1), ("a ` b", 1), ("line", 2)]
    assert out.counts["xml_elements"] == out.counts["unbalanced_tags"] == out.counts["placeholders"] == 0


def test_table() -> None:
    out = analyse("Scores:\n\n| name | score |\n|------|-------|\n| a | 1 |\n| b | 2 |\n")
    [table] = out.tables
    assert (table.rows, table.columns, table.start_line, table.end_line) == (3, 2, 3, 6)


# ------------------------------------------------------------------------------------------- XML tags

NESTED_XML = """<task>
<context>
Some <b>bold</b> text.
</context>
<rules>
<rule>Never guess.</rule>
<rule>Cite sources.</rule>
</rules>
<br/>
</task>"""


def test_nested_xml_tags_give_the_right_tree() -> None:
    out = analyse(NESTED_XML)
    tree = [(e.id, e.name, e.depth, e.parent_id, e.start_line, e.end_line, e.self_closing) for e in out.xml_elements]
    assert tree == [
        ("xml-1", "task", 1, None, 1, 10, False),
        ("xml-2", "context", 2, "xml-1", 2, 4, False),
        ("xml-3", "b", 3, "xml-2", 3, 3, False),
        ("xml-4", "rules", 2, "xml-1", 5, 8, False),
        ("xml-5", "rule", 3, "xml-4", 6, 6, False),
        ("xml-6", "rule", 3, "xml-4", 7, 7, False),
        ("xml-7", "br", 2, "xml-1", 9, 9, True),
    ]
    assert [e.role for e in out.xml_elements][:4] == ["instructions", "context", "other", "constraints"]
    assert out.unbalanced_tags == []
    assert edges(out) == {
        ("document", "xml-1"),
        ("xml-1", "xml-2"),
        ("xml-2", "xml-3"),
        ("xml-1", "xml-4"),
        ("xml-4", "xml-5"),
        ("xml-4", "xml-6"),
        ("xml-1", "xml-7"),
    }
    # Block tags end sentences; inline <b> does not.
    assert [i.text for i in out.instructions] == ["Never guess.", "Cite sources."]


def test_unbalanced_tags_are_reported() -> None:
    prompt = "<a>\n<b>\ntext\n</a>\n</c>\nReplace <name> here."
    out = analyse(prompt)
    assert [(e.name, e.start_line, e.end_line) for e in out.xml_elements] == [("a", 1, 4)]
    problems = [(t.name, t.problem, t.start_line, t.tag) for t in out.unbalanced_tags]
    assert problems == [("b", "unclosed", 2, "<b>"), ("c", "unopened", 5, "</c>"), ("name", "unclosed", 6, "<name>")]
    formatting = next(s for s in out.sub_scores if s.name == "formatting")
    assert formatting.signals["tags_balanced"] == pytest.approx(1 / 4)
    # The stray <name> reads as a space, so the sentence around it is still one instruction.
    assert [(i.verb, i.text) for i in out.instructions] == [("replace", "Replace <name> here.")]


def test_markdown_inside_xml_and_sections_end_at_the_closing_tag() -> None:
    prompt = "# Outer\n<context>\n## Inner\ntext\n</context>\nafter\n## Next\nmore"
    out = analyse(prompt)
    assert spans(out.sections) == [(1, 8), (3, 4), (7, 8)]
    assert edges(out) == {
        ("document", "section-1"),
        ("section-1", "xml-1"),
        ("xml-1", "section-2"),
        ("section-1", "section-3"),
    }


def test_comparisons_and_autolinks_are_not_tags() -> None:
    out = analyse("Keep x < 3 and y > 2; see <https://example.com> or mail <me@example.com>.")
    assert out.counts["xml_elements"] == out.counts["unbalanced_tags"] == 0


# ------------------------------------------------------------------------------------------- sentences


def test_ordinary_prompt_works() -> None:
    out = analyse("Create a SQL query that joins orders and customers; return id & total")
    assert out.line_count == 1
    assert [(i.verb, i.polarity, i.start_line) for i in out.instructions] == [("create", "do", 1), ("return", "do", 1)]
    assert out.counts["headers"] == out.counts["lists"] == out.counts["code_blocks"] == 0
    assert sub(out, "organisation") == 0.0
    assert sub(out, "instructions") == 1.0  # a task, no hedges, both clauses under 30 words
    assert out.score == pytest.approx(WEIGHTS["instructions"] * 1.0 + WEIGHTS["formatting"] * 1.0)


def test_instructions_constraints_and_polarity() -> None:
    prompt = (
        "You are a helpful assistant.\n"
        "Summarise the report.\n"
        "Never mention prices.\n"
        "You must answer in JSON.\n"
        "Use at most 50 words.\n"
        "The report is long."
    )
    out = analyse(prompt)
    assert [(i.verb, i.polarity, i.start_line) for i in out.instructions] == [
        ("summarise", "do", 2),
        ("mention", "do_not", 3),
        ("answer", "do", 4),
        ("use", "do", 5),
    ]
    got = {c.start_line: (c.kinds, c.cues) for c in out.constraints}
    assert got == {
        3: (["prohibition"], ["never"]),
        4: (["requirement", "format"], ["must", "in json"]),
        5: (["limit"], ["at most", "50 words"]),
    }
    # 3 constraints of 4 kinds: 0.6·min(1, 3/3) + 0.4·min(1, 3/2) = 1.
    assert sub(out, "constraints") == 1.0


def test_one_constraint_sub_score_formula() -> None:
    out = analyse("Write a haiku. Do not use the letter e.")
    assert [c.kinds for c in out.constraints] == [["prohibition"]]
    assert sub(out, "constraints") == pytest.approx(0.6 / 3 + 0.4 / 2)


def test_hedged_instruction_lowers_clarity() -> None:
    clear = analyse("Write a haiku about rain.")
    hedged = analyse("Maybe write a haiku about rain or something.")
    assert sub(clear, "instructions") == 1.0
    assert sub(hedged, "instructions") == pytest.approx(0.75)  # 0.5 + 0.25·(1 − 1/1) + 0.25·1


def test_questions_are_counted() -> None:
    prompt = "## Why does it fail?\nWhat is the capital of France? Why is it famous?\nList three facts. Is that 'ok?'"
    out = analyse(prompt)
    assert [(q.text, q.start_line) for q in out.questions] == [
        ("Why does it fail?", 1),
        ("What is the capital of France?", 2),
        ("Why is it famous?", 2),
        ("Is that 'ok?'", 3),
    ]
    assert [i.verb for i in out.instructions] == ["list"]


def test_wrapped_lines_join_into_one_sentence() -> None:
    out = analyse("Write a summary of the text that\nfollows, in plain words.\nKeep it short.")
    assert [(i.text, i.start_line, i.end_line) for i in out.instructions] == [
        ("Write a summary of the text that follows, in plain words.", 1, 2),
        ("Keep it short.", 3, 3),
    ]


def test_abbreviations_do_not_end_sentences() -> None:
    out = analyse("Use short words, e.g. cat or dog. Avoid jargon.")
    assert [i.text for i in out.instructions] == ["Use short words, e.g. cat or dog.", "Avoid jargon."]
    assert [(e.kind, e.start_line) for e in out.examples] == [("cue", 1)]


def test_placeholders_outside_code() -> None:
    out = analyse('Hello {name}, see {{ topic }} and ${path}.\nNot `{code}`, not {{{x}, not {"a": 1}.\n```\n{y}\n```')
    assert [(p.name, p.style, p.raw, p.start_line) for p in out.placeholders] == [
        ("name", "single_brace", "{name}", 1),
        ("topic", "double_brace", "{{ topic }}", 1),
        ("path", "dollar_brace", "${path}", 1),
    ]
    assert out.variables == ["name", "path", "topic"]


# ------------------------------------------------------------------------------------------- examples

FEW_SHOT = """Classify the sentiment.

Example 1:
Input: I love it
Output: positive

Example 2:
Input: I hate it
Output:
```json
{"label": "negative"}
```

For example, "meh" is neutral.

Input: {text}
Output:"""


def test_examples_labels_io_pairs_and_cues() -> None:
    out = analyse(FEW_SHOT)
    assert [(e.kind, e.start_line, e.end_line) for e in out.examples] == [
        ("label", 3, 5),
        ("io_pair", 4, 5),
        ("label", 7, 9),
        ("io_pair", 8, 12),  # a bare "Output:" takes the code block right after it
        ("cue", 14, 14),
    ]
    # The trailing "Input: {text} / Output:" is a template slot, not an example.
    assert out.counts["example_groups"] == 3
    assert sub(out, "examples") == 1.0  # min(1, 0.4 + 0.3·3)
    assert out.variables == ["text"]


def test_examples_section_and_xml_and_single_example_score() -> None:
    out = analyse("Translate to French.\n\n## Examples\nhello -> bonjour\n")
    assert [(e.kind, e.start_line, e.end_line) for e in out.examples] == [("section", 3, 4)]
    assert sub(out, "examples") == pytest.approx(0.7)
    out = analyse("<examples>\n<example>a</example>\n</examples>\nDo it.")
    assert [(e.kind, e.text, e.start_line, e.end_line) for e in out.examples] == [
        ("xml", "<examples>", 1, 3),
        ("xml", "<example>", 2, 2),
    ]
    assert out.counts["example_groups"] == 1


# ------------------------------------------------------------------------------------------- score


def test_score_is_the_weighted_sum_of_sub_scores() -> None:
    out = analyse(FEW_SHOT)
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)
    assert [s.name for s in out.sub_scores] == list(WEIGHTS)
    assert out.score == pytest.approx(sum(s.weight * s.score for s in out.sub_scores), abs=1e-3)
    assert all(s.reason for s in out.sub_scores)


def test_organisation_formula_on_a_hand_counted_prompt() -> None:
    # Non-blank lines: 1 intro, 3 header, 4 text, 5-6 list = 5; the section covers 4 of them.
    out = analyse("Intro line.\n\n# Part\ntext\n- a\n- b")
    organisation = next(s for s in out.sub_scores if s.name == "organisation")
    assert organisation.signals == {"sectioned": 1.0, "coverage": 0.8, "grouping": 1.0}
    assert organisation.score == pytest.approx(0.4 + 0.3 * 0.8 + 0.3)


def test_adding_a_header_and_constraints_does_not_lower_organisation() -> None:
    base = "Summarise the text below.\nKeep the tone neutral.\n\nThe text goes here."
    richer = (
        "# Task\nSummarise the text below.\nKeep the tone neutral.\n\n## Constraints\n- Never add facts.\n"
        "- Use at most 3 sentences.\n\nThe text goes here."
    )
    a, b = analyse(base), analyse(richer)
    assert sub(b, "organisation") >= sub(a, "organisation")
    assert sub(b, "organisation") > sub(a, "organisation")
    assert sub(b, "constraints") > sub(a, "constraints")
    assert b.score > a.score


def test_header_level_jumps_and_empty_sections_cost_formatting() -> None:
    out = analyse("# A\n### B\ntext\n## C\n")
    formatting = next(s for s in out.sub_scores if s.name == "formatting")
    assert formatting.signals == {"header_levels": 0.5, "non_empty_sections": pytest.approx(2 / 3, abs=1e-4)}


def test_blank_prompt_is_not_an_error() -> None:
    out = analyse("   \n\t\n")
    assert out.score == pytest.approx(WEIGHTS["formatting"])
    assert sub(out, "organisation") == 0.0


# ------------------------------------------------------------------------------------------- options


def test_include_and_max_items() -> None:
    out = analyse(HEADER_LIST_CODE, include=["headers", "lists"], include_graph=False)
    assert out.headers is not None and out.lists is not None
    assert out.sections is None and out.code_blocks is None and out.graph is None
    assert out.counts["code_blocks"] == 1  # counts cover everything
    out = analyse("- a\n- b\n\n---\n\n- c\n\n***\n\n- d\n", max_items=2)
    assert out.counts["lists"] == 3 and len(out.lists) == 2
    assert out.truncated == ["lists"]
    assert out.graph is not None and [n.id for n in out.graph.nodes] == ["document", "list-1", "list-2"]


def test_graph_reattaches_to_a_kept_ancestor() -> None:
    out = analyse("<a>\n<b>\n<c>x</c>\n</b>\n</a>", max_items=1)
    assert out.graph is not None
    assert [n.id for n in out.graph.nodes] == ["document", "xml-1"]
    assert edges(out) == {("document", "xml-1")}


def test_input_validation() -> None:
    with pytest.raises(ValidationError):
        StructuralAnalyzerInput(prompt="")
    with pytest.raises(ValidationError):
        StructuralAnalyzerInput(prompt="x" * 100_001)
    with pytest.raises(ValidationError):
        StructuralAnalyzerInput(prompt="x", include=["paragraphs"])
    with pytest.raises(ValidationError):
        StructuralAnalyzerInput(prompt="x", max_items=0)


def test_deterministic() -> None:
    assert analyse(FEW_SHOT + NESTED_XML).model_dump() == analyse(FEW_SHOT + NESTED_XML).model_dump()


# ------------------------------------------------------------------------------------------- HTTP


def test_http_envelope_and_problems(client_for) -> None:
    client = client_for(structural_analyzer)
    r = client.post("/run/structural_analyzer", json=structural_analyzer.example)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["orchestrator_compatible"] is True
    assert body["component"] == "structural_analyzer"
    result = body["component_result"]
    assert 0 <= result["score"] <= 1
    assert result["counts"]["headers"] == 2 and result["variables"] == ["article"]
    assert body["local_metadata"]["tier"] == "tier3"

    for payload, field in (
        ({"prompt": ""}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": "x", "include": ["nope"]}, "include"),
    ):
        r = client.post("/run/structural_analyzer", json=payload)
        assert r.status_code == 422, payload
        assert r.headers["content-type"].startswith("application/problem+json")
        assert field in r.json()["detail"]


# ------------------------------------------------------------------------------------------- invariants

MARKDOWNISH = st.lists(
    st.sampled_from(
        [
            "# ",
            "## H\n",
            "Title\n",
            "===\n",
            "---\n",
            "\n",
            "\n\n",
            "- ",
            "1. ",
            "   ",
            "```",
            "```py\n",
            "~~~",
            "`",
            "<a>",
            "</a>",
            "<b x='1'>",
            "</b>",
            "<br/>",
            "{x}",
            "{{ y }}",
            "?",
            ". ",
            "; ",
            "Example:",
            "Input: ",
            "Output: ",
            "Write ",
            "never ",
            "must ",
            "at most 3 words",
            "e.g. ",
            "| a | b |\n|---|---|\n",
            "> ",
            "\r\n",
            "word",
            "What is it",
            "\t",
            "é",
            "<",
            ">",
        ]
    ),
    max_size=40,
).map("".join)
TEXT = st.one_of(st.text(max_size=300), MARKDOWNISH).filter(lambda s: len(s) > 0)


def check_invariants(out: StructuralAnalyzerOutput) -> None:
    assert 0.0 <= out.score <= 1.0
    assert all(0.0 <= s.score <= 1.0 for s in out.sub_scores)
    n = out.line_count
    for kind in ELEMENT_KINDS:
        for item in getattr(out, kind):
            assert 1 <= item.start_line <= item.end_line <= n, (kind, item)
    for block in out.lists:
        assert all(block.start_line <= i.start_line <= i.end_line <= block.end_line for i in block.items)
    assert out.graph is not None
    ids = [node.id for node in out.graph.nodes]
    assert len(ids) == len(set(ids))
    assert all(1 <= node.start_line <= node.end_line <= n for node in out.graph.nodes)
    assert len(out.graph.edges) == len(ids) - 1  # a tree rooted at the document
    assert all(e.source in ids and e.target in ids for e in out.graph.edges)


@hsettings(max_examples=50, deadline=None)
@given(TEXT)
def test_arbitrary_text_never_crashes_and_stays_in_bounds(prompt: str) -> None:
    check_invariants(analyse(prompt))


@hsettings(max_examples=50, deadline=None)
@given(TEXT)
def test_a_leading_header_never_lowers_organisation(prompt: str) -> None:
    with_header = analyse("# Title\n\n" + prompt)
    assert sub(with_header, "organisation") >= sub(analyse(prompt), "organisation")


def test_http_never_answers_500(client_for) -> None:
    client = client_for(structural_analyzer)

    @hsettings(max_examples=25, deadline=None)
    @given(TEXT)
    def post(prompt: str) -> None:
        r = client.post("/run/structural_analyzer", json={"prompt": prompt})
        assert r.status_code == 200, r.text
        check_invariants(StructuralAnalyzerOutput.model_validate(r.json()["component_result"]))

    post()
