"""services.text.quality on fixtures worked out by hand, against the structural analyzer, and by invariants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.text.quality import (
    WEIGHTS,
    QualityReport,
    mask,
    mechanical_issues,
    prompt_features,
    protected_spans,
    score_prompt,
)
from services.tier3.structural_analyzer import StructuralAnalyzerInput, structural_analyzer

VAGUE = "Write some stuff about things etc."
PRECISE = "Write a 150-word summary of the Q3 sales report for the finance team. Format it as a bulleted list."


def sub(report: QualityReport, name: str) -> float:
    return next(s.score for s in report.sub_scores if s.name == name)


def evidence(report: QualityReport, name: str) -> list[tuple[str, str, int | None]]:
    found = next(s for s in report.sub_scores if s.name == name)
    return [(e.kind, e.text, e.line) for e in found.evidence]


# ------------------------------------------------------------------------------------------- clarity


def test_vague_prompt_scores_lower_in_clarity_than_its_precise_rewrite() -> None:
    vague, precise = score_prompt(VAGUE), score_prompt(PRECISE)
    assert sub(vague, "clarity") < sub(precise, "clarity") == 1.0
    assert vague.score < precise.score


def test_exact_vague_words_found_and_clarity_by_hand() -> None:
    report = score_prompt(VAGUE)
    assert evidence(report, "clarity") == [
        ("vague_word", "some", 1),
        ("vague_word", "stuff", 1),
        ("vague_word", "things", 1),
        ("vague_word", "etc", 1),
    ]
    # 6 prose words (Write some stuff about things etc), 4 vague: 1 / (1 + 10 · 4/6).
    assert sub(report, "clarity") == pytest.approx(1 / (1 + 10 * 4 / 6), abs=1e-4)


def test_multiword_vague_terms_and_how_many_is_not_vague() -> None:
    report = score_prompt("How many planets are there? List a few of them and so on.\nIt is kind of urgent.")
    terms = [text.lower() for kind, text, _ in evidence(report, "clarity")]
    assert terms == ["a few", "and so on", "kind of"]
    assert [line for _, _, line in evidence(report, "clarity")] == [1, 1, 2]


def test_protected_text_is_not_read_as_prose() -> None:
    prompt = (
        'Translate "some good stuff" into French.\n\n```python\nthings = stuff  # etc\n```\n\n'
        "<context>\nSome things, maybe.\n</context>\nSee `some_stuff` at https://example.com/some/stuff."
    )
    report = score_prompt(prompt)
    assert evidence(report, "clarity") == []
    masked = mask(prompt)
    assert len(masked) == len(prompt) and masked.count("\n") == prompt.count("\n")
    protected = ["".join(prompt[a:b]) for a, b in protected_spans(prompt)]
    assert '"some good stuff"' in protected
    assert "```python\nthings = stuff  # etc\n```" in protected
    assert "<context>\nSome things, maybe.\n</context>" in protected
    assert "`some_stuff`" in protected


# ------------------------------------------------------------------------------------------- specificity


def test_specificity_counts_the_six_signals() -> None:
    none = score_prompt("Tell me about dogs.")
    assert sub(none, "specificity") == 0.0
    full = score_prompt(
        "Write a summary of the `sales.csv` file for the executive team in Markdown. Use at most 200 words. "
        "You must cite the figures."
    )
    spec = next(s for s in full.sub_scores if s.name == "specificity")
    assert spec.score == 1.0
    assert {k for k, v in spec.signals.items() if v > 0} == {
        "numbers",
        "concrete_terms",
        "output_format",
        "length",
        "audience",
        "constraints",
    }
    half = score_prompt("Explain recursion in Python to a beginner with 2 examples.")
    # numbers (2), concrete terms (Python), audience (to a beginner): 3 of 6.
    assert sub(half, "specificity") == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------- structure, actionability


@pytest.mark.parametrize(
    "prompt", [VAGUE, PRECISE, "# Task\n- List 3 risks.\n- Never guess.\n\nExample:\nInput: a\nOutput: b"]
)
def test_structure_is_the_structural_analyzers_score(prompt: str) -> None:
    reference = structural_analyzer(StructuralAnalyzerInput(prompt=prompt))
    assert sub(score_prompt(prompt), "structure") == pytest.approx(reference.score, abs=1e-4)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Write a haiku about rain.", 1.0),
        ("What is the boiling point of water at sea level?", 0.7),
        ("Do not mention prices.", 0.4),
        ("The weather in Paris.", 0.0),
    ],
)
def test_actionability_levels(prompt: str, expected: float) -> None:
    assert sub(score_prompt(prompt), "actionability") == expected


# ------------------------------------------------------------------------------------------- linguistic


def test_mechanical_issues_found_exactly() -> None:
    prompt = "write a  haiku about the the rain  \n\nwhat is this"
    issues = [(i.kind, prompt[i.start : i.end], i.replacement) for i in mechanical_issues(prompt)]
    assert issues == [
        ("lowercase_paragraph_start", "w", "W"),
        ("space_run", "  ", " "),
        ("doubled_word", "the the", "the"),
        ("missing_final_punctuation", "", "."),
        ("trailing_whitespace", "  ", ""),
        ("lowercase_paragraph_start", "w", "W"),
        ("missing_final_punctuation", "", "?"),
    ]


def test_linguistic_score_by_hand() -> None:
    # One sentence, none long or repeated; 4 issues (lowercase start, space run, doubled word, no final stop):
    # 0.4·1 + 0.2·1 + 0.4 / (1 + 4/1).
    report = score_prompt("write a  haiku about the the rain")
    assert sub(report, "linguistic") == pytest.approx(0.4 + 0.2 + 0.4 / 5, abs=1e-4)
    clean = score_prompt("Write a haiku about the rain.")
    assert sub(clean, "linguistic") == 1.0


def test_long_and_repeated_sentences() -> None:
    long_sentence = "Write " + " ".join(["red", "green", "blue", "cyan", "pink"] * 7) + "."
    repeated = "Check the totals twice. Check the totals twice."
    report = score_prompt(f"{long_sentence} {repeated}")
    kinds = [kind for kind, _, _ in evidence(report, "linguistic")]
    assert kinds.count("long_sentence") == 1 and kinds.count("repeated_sentence") == 1
    # 3 sentences: 1 long, 1 repeated, 0 mechanical issues.
    assert sub(report, "linguistic") == pytest.approx(0.4 * (2 / 3) + 0.2 * (2 / 3) + 0.4, abs=1e-4)


def test_code_is_exempt_from_mechanical_checks() -> None:
    prompt = "Fix this.\n\n```python\nx  =  1   \nprint( x ) ,\n```\n"
    assert mechanical_issues(prompt) == []


def test_total_is_the_weighted_sum() -> None:
    report = score_prompt(PRECISE)
    assert report.score == pytest.approx(sum(WEIGHTS[s.name] * s.score for s in report.sub_scores), abs=1e-4)
    assert [s.name for s in report.sub_scores] == list(WEIGHTS)
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- invariants

NEUTRAL = st.lists(
    st.sampled_from(["write", "the", "report", "about", "rivers", "in", "Spain", "list", "facts"]),
    min_size=1,
    max_size=15,
)
VAGUE_WORDS = st.sampled_from(["stuff", "things", "some", "good", "etc", "maybe", "whatever", "several"])


@hsettings(max_examples=40, deadline=None)
@given(words=NEUTRAL, vague=VAGUE_WORDS, position=st.integers(0, 15))
def test_inserting_a_vague_word_never_raises_clarity(words: list[str], vague: str, position: int) -> None:
    before = " ".join(words) + "."
    inserted = [*words[:position], vague, *words[position:]]
    after = " ".join(inserted) + "."
    assert sub(score_prompt(after), "clarity") < sub(score_prompt(before), "clarity")


@hsettings(max_examples=40, deadline=None)
@given(words=NEUTRAL, vague=VAGUE_WORDS, position=st.integers(0, 15), concrete=st.sampled_from(["rivers", "three"]))
def test_replacing_a_vague_word_never_lowers_clarity(
    words: list[str], vague: str, position: int, concrete: str
) -> None:
    with_vague = " ".join([*words[:position], vague, *words[position:]]) + "."
    replaced = " ".join([*words[:position], concrete, *words[position:]]) + "."
    assert sub(score_prompt(replaced), "clarity") >= sub(score_prompt(with_vague), "clarity")


@hsettings(max_examples=40, deadline=None)
@given(words=NEUTRAL, addition=st.sampled_from(["Answer in JSON.", "Use at most 80 words.", "Write for a beginner."]))
def test_adding_a_constraint_never_lowers_specificity(words: list[str], addition: str) -> None:
    base = " ".join(words) + "."
    assert sub(score_prompt(f"{base}\n\n{addition}"), "specificity") >= sub(score_prompt(base), "specificity")


@hsettings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(
        st.sampled_from([*'ab c.\n`"<>/#-*1?!', "the", "some", "```", "<input>", "You are"]), min_size=1, max_size=40
    )
)
def test_any_text_scores_in_unit_interval_deterministically(pieces: list[str]) -> None:
    text = "".join(pieces)
    first = score_prompt(text)
    assert 0.0 <= first.score <= 1.0
    assert all(0.0 <= s.score <= 1.0 for s in first.sub_scores)
    prompt_features.cache_clear()
    assert score_prompt(text) == first
