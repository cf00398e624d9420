"""A deterministic prompt-quality score in [0, 1], with named sub-scores and the evidence for each.

    quality = 0.25·clarity + 0.25·specificity + 0.20·structure + 0.15·actionability + 0.15·linguistic

* clarity = 1 / (1 + 10·d), d = vague terms / prose words. Vague terms are a fixed lexicon ("stuff",
  "things", "good", "some", "etc.", "maybe", ...); one vague word in ten words halves the score.
* specificity = share of six concrete signals present: numbers, concrete terms (proper nouns, identifiers,
  acronyms, quoted or code terms), an output format, a length limit, an audience, and a requirement or
  prohibition (as found by the structural analyzer).
* structure = the score of :func:`services.tier3.structural_analyzer.structural_analyzer` (organisation,
  instructions, constraints, examples, formatting), called as a plain function.
* actionability = 1 with an imperative instruction ("Write ...", "You must ..."), 0.7 with only a question,
  0.4 with only prohibitions ("Do not ..."), 0 with no task at all.
* linguistic = 0.4·(1 − share of sentences over 30 words) + 0.2·(1 − share of repeated sentences)
  + 0.4·1 / (1 + mechanical issues per sentence); mechanical issues are doubled words, runs of spaces,
  trailing whitespace, a space before punctuation, a lower-case sentence start or "i", and a paragraph
  without final punctuation.

Only prose counts. Fenced and indented code, inline code, double-quoted text, URLs and the content of data
tags (``<input>``, ``<context>``, ``<document>``, ...) are *protected*: masked before any lexical check, and
never edited by the rules in :mod:`services.text.rules`. Masking keeps every offset and line number.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import Field

from services.framework import ComponentOutput
from services.tier3.structural_analyzer import (
    StructuralAnalyzerInput,
    StructuralAnalyzerOutput,
    structural_analyzer,
)

__all__ = [
    "DATA_TAGS",
    "VAGUE_TERMS",
    "WEIGHTS",
    "Evidence",
    "PromptFeatures",
    "QualityReport",
    "QualitySubScore",
    "VagueHit",
    "is_protected",
    "line_of",
    "mask",
    "mechanical_issues",
    "prompt_features",
    "protected_spans",
    "score_prompt",
]

SubScoreName = Literal["clarity", "specificity", "structure", "actionability", "linguistic"]
WEIGHTS: dict[str, float] = {
    "clarity": 0.25,
    "specificity": 0.25,
    "structure": 0.20,
    "actionability": 0.15,
    "linguistic": 0.15,
}
LONG_SENTENCE_WORDS = 30
MAX_EVIDENCE = 20  # evidence items listed per sub-score; the signals keep the exact counts

# Vague terms and the explicit ask that would replace each one.
VAGUE_TERMS: dict[str, str] = {
    "stuff": "name the specific items or topic",
    "things": "name the specific items",
    "thing": "name the specific item",
    "something": "say exactly what you want",
    "good": "state the criteria (accurate, concise, formal, ...)",
    "nice": "state the criteria (tone, length, style)",
    "great": "state the criteria that make it great",
    "better": "say better in what respect, and than what",
    "bad": "say what is wrong",
    "interesting": "say what should make it interesting",
    "appropriate": "say what is appropriate here",
    "proper": "say what the standard is",
    "properly": "say what correct looks like",
    "some": "give a number",
    "several": "give a number",
    "a few": "give a number",
    "a couple of": "give a number",
    "many": "give a number",
    "various": "list them",
    "etc": "list every item you expect",
    "and so on": "list every item you expect",
    "and so forth": "list every item you expect",
    "somehow": "say how",
    "maybe": "say whether it is required",
    "perhaps": "say whether it is required",
    "kind of": "say exactly what you mean",
    "sort of": "say exactly what you mean",
    "a bit": "give an amount",
    "a lot": "give an amount",
    "whatever": "say what you want",
}
_VAGUE = re.compile(
    r"(?<![\w'’\-])(?:"
    + "|".join(re.escape(t).replace(r"\ ", r"\s+") for t in sorted(VAGUE_TERMS, key=len, reverse=True))
    + r")(?![\w'’\-])",
    re.IGNORECASE,
)
# "how many", "many thanks" and "as many as" are not vague asks.
_NOT_VAGUE_BEFORE = re.compile(r"(?:how|as|so|too)\s+$", re.IGNORECASE)

# Tags whose content is data supplied with the prompt, not instructions to rewrite.
DATA_TAGS = (
    "input",
    "inputs",
    "context",
    "document",
    "documents",
    "data",
    "text",
    "code",
    "example",
    "examples",
    "article",
    "email",
    "quote",
    "source",
    "passage",
    "transcript",
    "query",
)
_DATA_OPEN = re.compile(r"<(?P<name>" + "|".join(DATA_TAGS) + r")(?:\s[^<>\n]*)?>", re.IGNORECASE)
_FENCE_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})")
_INDENTED = re.compile(r"^(?: {4}|\t)")
_INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)[^\n]*?(?<!`)\1(?!`)")
_DOUBLE_QUOTED = re.compile(r'"[^"\n]{0,2000}"|“[^”\n]{0,2000}”')
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+")

_WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(
    r"\b\d+(?:[.,]\d+)*%?|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|"
    r"thirty|fifty|hundred|thousand|million|dozen|single|half)\b",
    re.IGNORECASE,
)
_IDENTIFIER = re.compile(
    r"\b(?:[A-Za-z_]\w*_\w+|[a-z]+[A-Z]\w*|[A-Za-z]\w*\.(?:[A-Za-z]\w*\.)*[a-z]{1,5}|[A-Za-z]+\d+\w*|[A-Z]{2,}\d*s?)\b"
)
_CAPITALISED = re.compile(r"\b[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+)*\b")
_FORMAT = re.compile(
    r"\b(?:json|yaml|xml|csv|markdown|html|table|bullet(?:ed)?\s+(?:list|points?)|bullets|numbered\s+list|"
    r"(?:fenced\s+)?code\s+block|plain\s+text|one\s+paragraph|single\s+paragraph|\d+\s+paragraphs|"
    r"(?:one|single)\s+line|the\s+label\s+only|label\s+only)\b"
    r"|^[ \t]*(?:output\s+)?format\s*:"
    r"|\bformat(?:ted)?\s+(?:it\s+|the\s+\w+\s+|your\s+\w+\s+)?(?:as|in)\b",
    re.IGNORECASE | re.MULTILINE,
)
_LENGTH = re.compile(
    r"\b\d+(?:\s*[-–]\s*\d+)?\s+(?:words?|sentences?|characters?|chars|lines?|paragraphs?|bullet\s+points?|"
    r"bullets?|items?|tokens?|pages?|points?|tweets?)\b"
    r"|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|single)\s+(?:words?|sentences?|paragraphs?|lines?|"
    r"bullet\s+points?|bullets?|items?|points?)\b"
    r"|\b(?:at\s+most|at\s+least|no\s+more\s+than|no\s+longer\s+than|fewer\s+than|under|up\s+to|maximum\s+of|"
    r"max\.?)\s+\d+"
    r"|^[ \t]*length\s*:",
    re.IGNORECASE | re.MULTILINE,
)
_AUDIENCE = re.compile(
    r"^[ \t]*audience\s*:"
    r"|\baudience\b|\beli5\b|\bexplain\s+(?:it\s+)?like\s+i['’]?m\b"
    r"|\b(?:for|to|at)\s+(?:an?\s+|the\s+|my\s+|our\s+|your\s+)?(?:[\w\-]+\s+){0,3}?(?:readers?|beginners?|experts?|"
    r"developers?|engineers?|programmers?|students?|children|kids|novices?|managers?|executives?|customers?|"
    r"clients?|professionals?|layperson|laypeople|lay\s+readers?|non-specialists?|specialists?|researchers?|"
    r"scientists?|stakeholders?|teenagers?|adults?|newcomers?|learners?|patients?|investors?|recruiters?|"
    r"buyers?|shoppers?|users?|visitors?|parents?|teachers?|teams?|colleagues?|employees|staff|leadership|board|"
    r"members|subscribers|followers|listeners|viewers|travell?ers|tourists|general\s+public)\b",
    re.IGNORECASE | re.MULTILINE,
)


# --------------------------------------------------------------------------------------------- models


class Evidence(ComponentOutput):
    """One piece of evidence behind a sub-score."""

    kind: str = Field(description="what was found, e.g. 'vague_word', 'number', 'format', 'doubled_word'")
    text: str = Field(description="the words or element found (clipped to 120 characters)")
    line: int | None = Field(default=None, description="1-based line in the prompt, when it has one")


class QualitySubScore(ComponentOutput):
    name: SubScoreName
    weight: float
    score: float = Field(ge=0, le=1)
    reason: str
    evidence: list[Evidence] = Field(description=f"what the score rests on (at most {MAX_EVIDENCE} items)")
    signals: dict[str, float] = Field(description="the inputs of this sub-score's formula")


class QualityReport(ComponentOutput):
    score: float = Field(ge=0, le=1, description="weighted sum of the sub-scores")
    sub_scores: list[QualitySubScore]


# --------------------------------------------------------------------------------------------- protection


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        elif end > start:
            merged.append((start, end))
    return merged


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts.extend(i + 1 for i, ch in enumerate(text) if ch == "\n")
    return starts


@lru_cache(maxsize=512)
def protected_spans(text: str) -> tuple[tuple[int, int], ...]:
    """Character spans (start, end) of the text that rules never edit and lexical checks never read.

    Fenced code (to its closing fence, or to the end when unclosed), indented code after a blank line,
    data-tag elements (tags included), inline code spans, double-quoted text and URLs.
    """
    spans: list[tuple[int, int]] = []
    lines = text.split("\n")
    starts = _line_starts(text)
    fence: str | None = None
    fence_start = 0
    previous_blank = True
    indented = False
    for i, line in enumerate(lines):
        begin, end = starts[i], starts[i] + len(line)
        if fence is not None:
            stripped = line.strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]} and len(line) - len(line.lstrip(" ")) <= 3:
                spans.append((fence_start, end))
                fence = None
            continue
        opened = _FENCE_OPEN.match(line)
        if opened:
            fence, fence_start = opened.group("fence"), begin
            indented = False
            continue
        if line.strip() and _INDENTED.match(line) and (previous_blank or indented):
            spans.append((begin, end))
            indented = True
        elif line.strip():
            indented = False
        previous_blank = not line.strip()
    if fence is not None:
        spans.append((fence_start, len(text)))
    blocked = _merge(spans)

    def inside(pos: int) -> bool:
        k = bisect.bisect_right(blocked, (pos, len(text) + 1)) - 1
        return k >= 0 and blocked[k][0] <= pos < blocked[k][1]

    pos = 0
    while True:
        opened_tag = _DATA_OPEN.search(text, pos)
        if opened_tag is None:
            break
        if inside(opened_tag.start()):
            pos = opened_tag.end()
            continue
        close = re.compile(rf"</{re.escape(opened_tag.group('name'))}\s*>", re.IGNORECASE).search(
            text, opened_tag.end()
        )
        stop = close.end() if close else opened_tag.end()
        spans.append((opened_tag.start(), stop))
        pos = stop
    for pattern in (_INLINE_CODE, _DOUBLE_QUOTED, _URL):
        blocked = _merge(spans)
        spans.extend((m.start(), m.end()) for m in pattern.finditer(text) if not inside(m.start()))
    return tuple(_merge(spans))


def is_protected(text: str, pos: int) -> bool:
    """Whether the character at ``pos`` lies in a protected span."""
    spans = protected_spans(text)
    k = bisect.bisect_right(spans, (pos, len(text) + 1)) - 1
    return k >= 0 and spans[k][0] <= pos < spans[k][1]


def mask(text: str) -> str:
    """``text`` with every protected character replaced by a space (newlines kept, so offsets and lines hold)."""
    spans = protected_spans(text)
    if not spans:
        return text
    parts: list[str] = []
    pos = 0
    for start, end in spans:
        parts.append(text[pos:start])
        parts.append(re.sub(r"[^\n]", " ", text[start:end]))
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def line_of(text: str, offset: int) -> int:
    """1-based line of a character offset."""
    return text.count("\n", 0, offset) + 1


def _clip(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------- features


@dataclass(frozen=True)
class VagueHit:
    term: str  # lower-cased, single-spaced form of the lexicon entry
    text: str  # as written
    start: int
    end: int
    line: int


@dataclass(frozen=True)
class PromptFeatures:
    """What the quality score and the rules read from a prompt (computed once per distinct prompt)."""

    text: str
    prose: str  # the masked text
    words: tuple[str, ...]  # prose words
    structure: StructuralAnalyzerOutput
    vague: tuple[VagueHit, ...]
    numbers: tuple[Evidence, ...]
    concrete_terms: tuple[Evidence, ...]
    formats: tuple[Evidence, ...]
    lengths: tuple[Evidence, ...]
    audiences: tuple[Evidence, ...]

    @property
    def word_count(self) -> int:
        return len(self.words)


def _find(pattern: re.Pattern[str], text: str, prose: str, kind: str) -> tuple[Evidence, ...]:
    return tuple(
        Evidence(kind=kind, text=_clip(text[m.start() : m.end()]), line=line_of(text, m.start()))
        for m in pattern.finditer(prose)
    )


def _vague(text: str, prose: str) -> tuple[VagueHit, ...]:
    hits = []
    for m in _VAGUE.finditer(prose):
        term = " ".join(m.group(0).lower().split())
        if term == "many" and _NOT_VAGUE_BEFORE.search(prose[max(0, m.start() - 6) : m.start()]):
            continue
        hits.append(VagueHit(term, text[m.start() : m.end()], m.start(), m.end(), line_of(text, m.start())))
    return tuple(hits)


def _concrete_terms(text: str, prose: str) -> tuple[Evidence, ...]:
    found: list[Evidence] = []
    for m in _IDENTIFIER.finditer(prose):
        found.append(Evidence(kind="identifier", text=_clip(m.group(0)), line=line_of(text, m.start())))
    for m in _CAPITALISED.finditer(prose):
        # A capitalised word that opens a line or a sentence is not evidence of a name.
        before = prose[max(0, m.start() - 200) : m.start()].rstrip(" \t")
        line_lead = before[before.rfind("\n") + 1 :]
        if not line_lead.strip(" \t-*+>#0123456789.)") or before.endswith((".", "!", "?", ":", '"')):
            continue
        found.append(Evidence(kind="proper_noun", text=_clip(m.group(0)), line=line_of(text, m.start())))
    for start, end in protected_spans(text):
        piece = text[start:end]
        if piece.startswith(("`", '"', "“")) and "\n" not in piece:
            found.append(Evidence(kind="quoted_or_code", text=_clip(piece), line=line_of(text, start)))
    found.sort(key=lambda e: (e.line or 0, e.text))
    return tuple(found)


@lru_cache(maxsize=256)
def prompt_features(text: str) -> PromptFeatures:
    """Features of a prompt: its prose, vague terms, concrete signals and its structural analysis."""
    prose = mask(text)
    structure = structural_analyzer(StructuralAnalyzerInput(prompt=text, include_graph=False, max_items=200))
    return PromptFeatures(
        text=text,
        prose=prose,
        words=tuple(m.group(0) for m in _WORD.finditer(prose)),
        structure=structure,
        vague=_vague(text, prose),
        numbers=_find(_NUMBER, text, prose, "number"),
        concrete_terms=_concrete_terms(text, prose),
        formats=_find(_FORMAT, text, prose, "format"),
        lengths=_find(_LENGTH, text, prose, "length"),
        audiences=_find(_AUDIENCE, text, prose, "audience"),
    )


# --------------------------------------------------------------------------------------------- sub-scores


def _sub(name: str, score: float, reason: str, evidence: list[Evidence], **signals: float) -> QualitySubScore:
    return QualitySubScore(
        name=name,  # type: ignore[arg-type]
        weight=WEIGHTS[name],
        score=round(min(1.0, max(0.0, score)), 4),
        reason=reason,
        evidence=evidence[:MAX_EVIDENCE],
        signals={k: round(float(v), 4) for k, v in signals.items()},
    )


def _clarity(f: PromptFeatures) -> QualitySubScore:
    words = f.word_count
    density = len(f.vague) / words if words else 0.0
    evidence = [Evidence(kind="vague_word", text=h.text, line=h.line) for h in f.vague]
    if not words:
        reason = "no prose words to read"
    elif f.vague:
        terms = sorted({h.term for h in f.vague})
        reason = f"{len(f.vague)} vague term(s) in {words} words ({', '.join(terms)})"
    else:
        reason = f"no vague terms in {words} words"
    return _sub("clarity", 1 / (1 + 10 * density), reason, evidence, vague=len(f.vague), words=words, density=density)


def _specificity(f: PromptFeatures) -> QualitySubScore:
    constraints = [c for c in f.structure.constraints or [] if {"requirement", "prohibition"} & set(c.kinds)]
    signals = {
        "numbers": list(f.numbers),
        "concrete_terms": list(f.concrete_terms),
        "output_format": list(f.formats),
        "length": list(f.lengths),
        "audience": list(f.audiences),
        "constraints": [Evidence(kind="constraint", text=_clip(c.text), line=c.start_line) for c in constraints],
    }
    present = [name for name, found in signals.items() if found]
    missing = [name for name, found in signals.items() if not found]
    evidence = [e for found in signals.values() for e in found[:4]]
    reason = f"{len(present)} of {len(signals)} concrete signals present" + (
        f"; missing: {', '.join(missing)}" if missing else ""
    )
    score = len(present) / len(signals)
    return _sub("specificity", score, reason, evidence, **{name: len(found) for name, found in signals.items()})


def _structure(f: PromptFeatures) -> QualitySubScore:
    s = f.structure
    evidence = [Evidence(kind=f"structure_{sub.name}", text=_clip(sub.reason)) for sub in s.sub_scores]
    reason = "structural analyzer: " + ", ".join(f"{sub.name} {sub.score:.2f}" for sub in s.sub_scores)
    return _sub("structure", s.score, reason, evidence, **{sub.name: sub.score for sub in s.sub_scores})


def _actionability(f: PromptFeatures) -> QualitySubScore:
    instructions = f.structure.instructions or []
    questions = f.structure.questions or []
    do = [i for i in instructions if i.polarity == "do"]
    dont = [i for i in instructions if i.polarity == "do_not"]
    evidence = [Evidence(kind=f"instruction_{i.polarity}", text=_clip(i.text), line=i.start_line) for i in instructions]
    evidence += [Evidence(kind="question", text=_clip(q.text), line=q.start_line) for q in questions]
    if do:
        score, reason = 1.0, f"{len(do)} imperative instruction(s), first verb '{do[0].verb}'"
    elif questions:
        score, reason = 0.7, f"no imperative instruction; {len(questions)} question(s) state the task"
    elif dont:
        score, reason = 0.4, "only prohibitions; nothing says what to do"
    else:
        score, reason = 0.0, "no instruction or question states a task"
    return _sub("actionability", score, reason, evidence, do=len(do), do_not=len(dont), questions=len(questions))


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=\S)")
_DOUBLED = re.compile(r"(?<![\w'’\-])([A-Za-z]+)([ \t]+)\1(?![\w'’\-])", re.IGNORECASE)
_DOUBLED_OK = frozenset({"that", "had", "is", "bye", "no", "very", "so", "ha", "really", "far", "more", "again"})
_SPACE_RUN = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_BLANK_RUN = re.compile(r"\n(?:[ \t]*\n){2,}")
_TRAILING_WS = re.compile(r"[ \t]+$", re.MULTILINE)
_SPACE_BEFORE_PUNCT = re.compile(r"(?<=\w)[ \t]+(?=[,;.!?](?:\s|$))")
_LOWER_I = re.compile(
    r"(?<![\w.'’\-])i(?=['’](?:m|ve|d|ll)\b|\s+(?:am|was|have|had|think|want|need|would|will|can|do|did|like|"
    r"hope|believe|know|mean|feel|guess|wonder|should|could|must)\b)"
)
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|no|fig|mr|mrs|ms|dr|prof|st)\.|\.\.)$", re.IGNORECASE)
_SENTENCE_LOWER = re.compile(r"(?<=[.!?])[ \t]+(?P<word>[a-z][a-z'’\-]*)(?=[\s,;:.!?]|$)")
_QUESTION_WORDS = frozenset(
    {
        *("what", "why", "how", "who", "whom", "whose", "when", "where", "which", "is", "are", "am", "was", "were"),
        *("can", "could", "do", "does", "did", "should", "would", "will", "shall", "may", "might", "has", "have"),
        "had",
    }
)
# A line that opens with list, header, table, quote or tag markup is not a prose paragraph start.
_MARKUP_LINE = re.compile(r"^\s*(?:[-*+•]\s|\d{1,3}[.)]\s|#{1,6}\s|\||>|<|\{|\[)")


@dataclass(frozen=True)
class Issue:
    kind: str  # doubled_word, space_run, trailing_whitespace, space_before_punctuation, lowercase_start, ...
    start: int
    end: int
    replacement: str


_TAG_LINE = re.compile(r"^[ \t]*</?[A-Za-z_][\w.:\-]*(?:\s[^<>\n]*)?/?>[ \t]*$")


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the runs of non-blank lines; a line holding only a tag also ends a run."""
    spans: list[tuple[int, int]] = []
    start: int | None = None
    pos = previous_end = 0
    for line in text.split("\n"):
        end = pos + len(line)
        if not line.strip() or _TAG_LINE.match(line):
            if start is not None:
                spans.append((start, previous_end))
                start = None
        else:
            if start is None:
                start = pos
            previous_end = end
        pos = end + 1
    if start is not None:
        spans.append((start, previous_end))
    return spans


def _prose_word(prose: str, start: int) -> bool:
    """Whether the word at ``start`` is plain prose (not an identifier, path or placeholder)."""
    m = re.match(r"[^\s]+", prose[start:])
    token = m.group(0) if m else ""
    return bool(re.fullmatch(r"[a-z][a-z'’\-]*[,;:.!?)]*", token))


def mechanical_issues(text: str, prose: str | None = None) -> list[Issue]:
    """Doubled words, spacing, capitalisation and missing final punctuation in the prose of ``text``.

    Each issue carries the span it covers and its fix, so the linguistic-quality rule applies exactly
    what the score counts. Markdown table rows are exempt from the spacing checks.
    """
    prose = mask(text) if prose is None else prose
    issues: list[Issue] = []
    table_lines = {m.start() for m in re.finditer(r"(?m)^[ \t]*\|", prose)}

    def in_table(pos: int) -> bool:
        return prose.rfind("\n", 0, pos) + 1 in table_lines

    def plain(m: re.Match[str]) -> bool:
        # Masked characters are spaces in the prose; a real whitespace run is whitespace in the text too.
        return text[m.start() : m.end()] == prose[m.start() : m.end()]

    for m in _DOUBLED.finditer(prose):
        if m.group(1).lower() not in _DOUBLED_OK:
            issues.append(Issue("doubled_word", m.start(), m.end(), text[m.start() : m.start() + len(m.group(1))]))
    for m in _SPACE_RUN.finditer(prose):
        if plain(m) and not in_table(m.start()):
            issues.append(Issue("space_run", m.start(), m.end(), " "))
    for m in _TRAILING_WS.finditer(prose):
        # Masked code keeps its own trailing whitespace.
        if m.end() > m.start() and plain(m) and (m.end() == len(text) or text[m.end()] == "\n"):
            issues.append(Issue("trailing_whitespace", m.start(), m.end(), ""))
    for m in _SPACE_BEFORE_PUNCT.finditer(prose):
        if plain(m) and not in_table(m.start()):
            issues.append(Issue("space_before_punctuation", m.start(), m.end(), ""))
    for m in _BLANK_RUN.finditer(prose):
        if plain(m):
            issues.append(Issue("blank_lines", m.start(), m.end(), "\n\n"))
    for m in _LOWER_I.finditer(prose):
        issues.append(Issue("lowercase_i", m.start(), m.end(), "I"))
    for m in _SENTENCE_LOWER.finditer(prose):
        before = prose[max(0, m.start() - 8) : m.start()]
        if _ABBREVIATION.search(before) or not _prose_word(prose, m.start("word")):
            continue
        pos = m.start("word")
        issues.append(Issue("lowercase_sentence_start", pos, pos + 1, text[pos].upper()))
    for start, end in _paragraphs(prose):
        first_line = prose[start : prose.find("\n", start) if "\n" in prose[start:end] else end]
        if _MARKUP_LINE.match(first_line):
            continue
        lead = len(first_line) - len(first_line.lstrip())
        pos = start + lead
        if pos < end and prose[pos].islower() and _prose_word(prose, pos) and text[pos] == prose[pos]:
            issues.append(Issue("lowercase_paragraph_start", pos, pos + 1, text[pos].upper()))
        last = prose[start:end].rstrip()
        stop = start + len(last)
        last_line = last.rsplit("\n", 1)[-1]
        if (
            stop > start
            and text[stop - 1] == prose[stop - 1]
            and re.search(r"[A-Za-z0-9]$", last)
            and not _MARKUP_LINE.match(last_line)
            and not re.match(r"^\s*[\w ]{1,30}:\s*$", last_line)
            and len(_WORD.findall(last)) >= 3
            and "\n" not in prose[start:end].strip()
        ):
            sentence = _SENTENCE_SPLIT.split(last)[-1]
            first_word = (_WORD.findall(sentence) or [""])[0].lower()
            issues.append(Issue("missing_final_punctuation", stop, stop, "?" if first_word in _QUESTION_WORDS else "."))
    issues.sort(key=lambda i: (i.start, i.end))
    # Overlapping fixes (a doubled word that is also a sentence start) keep the first.
    kept: list[Issue] = []
    for issue in issues:
        if kept and issue.start < kept[-1].end:
            continue
        kept.append(issue)
    return kept


def _sentences(prose: str) -> list[tuple[str, int]]:
    found = []
    for start, end in _paragraphs(prose):
        offset = start
        for line in prose[start:end].split("\n"):
            for piece in _SENTENCE_SPLIT.split(line):
                if _WORD.search(piece):
                    found.append((piece.strip(), offset + max(0, line.find(piece))))
            offset += len(line) + 1
    return found


def _issue_text(text: str, issue: Issue) -> str:
    """The words around an issue, on its own line."""
    line_start = text.rfind("\n", 0, issue.start) + 1
    line_end = text.find("\n", issue.end)
    line_end = len(text) if line_end == -1 else line_end
    start = max(line_start, issue.start - 20)
    return _clip(text[start : min(line_end, issue.end + 20)]) or repr(text[issue.start : issue.end])


def _linguistic(f: PromptFeatures) -> QualitySubScore:
    sentences = _sentences(f.prose)
    n = len(sentences)
    evidence: list[Evidence] = []
    long = [(s, pos) for s, pos in sentences if len(_WORD.findall(s)) > LONG_SENTENCE_WORDS]
    evidence += [Evidence(kind="long_sentence", text=_clip(s), line=line_of(f.text, pos)) for s, pos in long]
    seen: set[str] = set()
    repeated = 0
    for s, pos in sentences:
        words = [w.lower() for w in _WORD.findall(s)]
        if len(words) < 4:
            continue
        key = " ".join(words)
        if key in seen:
            repeated += 1
            evidence.append(Evidence(kind="repeated_sentence", text=_clip(s), line=line_of(f.text, pos)))
        seen.add(key)
    issues = mechanical_issues(f.text, f.prose)
    evidence += [Evidence(kind=i.kind, text=_issue_text(f.text, i), line=line_of(f.text, i.start)) for i in issues]
    length = 1 - len(long) / n if n else 1.0
    repetition = 1 - repeated / n if n else 1.0
    mechanics = 1 / (1 + len(issues) / max(n, 1))
    score = 0.4 * length + 0.2 * repetition + 0.4 * mechanics
    parts = [
        f"{len(long)} of {n} sentence(s) over {LONG_SENTENCE_WORDS} words",
        f"{repeated} repeated sentence(s)",
        f"{len(issues)} mechanical issue(s)",
    ]
    kinds = sorted({i.kind for i in issues})
    if kinds:
        parts[-1] += f" ({', '.join(kinds)})"
    return _sub(
        "linguistic",
        score,
        "; ".join(parts),
        evidence,
        sentences=n,
        long_sentences=len(long),
        repeated_sentences=repeated,
        mechanical_issues=len(issues),
    )


def score_prompt(text: str) -> QualityReport:
    """The quality report of a prompt (see the module docstring for the formulas)."""
    f = prompt_features(text)
    subs = [_clarity(f), _specificity(f), _structure(f), _actionability(f), _linguistic(f)]
    total = sum(s.weight * s.score for s in subs)
    return QualityReport(score=round(min(1.0, max(0.0, total)), 4), sub_scores=subs)
