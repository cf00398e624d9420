"""The rule engine: seven deterministic prompt rewrites, each saying why it applied and what it changed.

Every rule has ``applies(prompt, features, params) -> reason | None`` and ``apply(prompt, params) ->
RuleResult`` (the new prompt and one line per change), bounded parameters (a pydantic model), and a
``assess`` that also gives the reason when it does not apply.

* clarity — replaces vague quantities and praise before a deliverable ("some examples" → "3 examples",
  "a good summary" → "a clear and accurate summary") and asks the model to state how it reads the
  remaining vague terms ("stuff", "things", "etc."), which are also flagged to the caller with an
  explicit ask each.
* specificity — adds the output format, a length limit and the audience when the prompt names none.
* chain_of_thought — adds a step-by-step scaffold to a reasoning or analysis task (not to a trivial one).
* few_shot — adds an examples scaffold with input/output slots to a classification or transformation
  task that shows no example.
* role — puts a role line matched to the detected domain at the top when the prompt sets no role.
* xml_structure — wraps instructions, context and input in XML tags when the prompt mixes them.
* linguistic_quality — fixes doubled words, spacing, capitalisation and final punctuation.

Protected text (fenced and indented code, inline code, double-quoted text, URLs, data tags; see
:mod:`services.text.quality`) is never edited: rules only add lines around it or move whole blocks.

:func:`run_rules` applies the selected rules in a fixed order and repeats the pass until nothing changes
(at most :data:`MAX_PASSES`), so its output is a fixed point: running it again changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from services.framework import ComponentInput
from services.text.quality import (
    VAGUE_TERMS,
    PromptFeatures,
    is_protected,
    line_of,
    mask,
    mechanical_issues,
    prompt_features,
)

__all__ = [
    "DOMAINS",
    "MAX_PASSES",
    "ORDER",
    "RULES",
    "RULE_NAMES",
    "Application",
    "Assessment",
    "ChainOfThoughtParams",
    "ClarityParams",
    "EngineResult",
    "FewShotParams",
    "LinguisticQualityParams",
    "RoleParams",
    "Rule",
    "RuleName",
    "RuleParameters",
    "RuleResult",
    "Skip",
    "SpecificityParams",
    "XmlStructureParams",
    "detect_domain",
    "run_rules",
]

RuleName = Literal[
    "clarity", "specificity", "chain_of_thought", "few_shot", "role", "xml_structure", "linguistic_quality"
]
RULE_NAMES: tuple[str, ...] = get_args(RuleName)
# Rules that add text run first, so clarity and linguistic quality also see (and settle) what they added;
# xml_structure wraps after the scaffolds exist, so they land inside the instructions.
ORDER: tuple[str, ...] = (
    "role",
    "specificity",
    "chain_of_thought",
    "few_shot",
    "xml_structure",
    "clarity",
    "linguistic_quality",
)
MAX_PASSES = 4
MAX_LISTED_CHANGES = 25

Domain = Literal[
    "software", "data", "writing", "education", "medical", "legal", "finance", "support", "science", "general"
]
DOMAINS: tuple[str, ...] = get_args(Domain)
_DOMAIN_WORDS: dict[str, str] = {
    "software": r"code|coding|function|functions|python|javascript|typescript|java|rust|golang|c\+\+|bug|bugs|debug|"
    r"api|apis|endpoint|compile|compiler|refactor|repository|repo|git|class|method|script|algorithm|unit\s+tests?|"
    r"exception|stack\s+trace|program|software|frontend|backend|docker|kubernetes",
    "data": r"data|dataset|datasets|statistics|statistical|regression|csv|chart|charts|metric|metrics|average|"
    r"median|correlation|sql|query|table|spreadsheet|excel|dashboard|kpi|analytics|sales|forecast|trend|trends",
    "writing": r"essay|story|stories|blog|article|poem|poetry|haiku|email|copy|headline|headlines|slogan|tagline|"
    r"marketing|newsletter|novel|narrative|tone|prose|paragraph|tweet|post|caption|speech|letter",
    "education": r"student|students|lesson|lessons|teach|teaching|quiz|homework|curriculum|exam|learner|learners|"
    r"classroom|syllabus|tutor|explain\s+to\s+a\s+child",
    "medical": r"patient|patients|symptom|symptoms|diagnosis|medication|medications|clinical|disease|treatment|"
    r"doctor|dose|dosage|health|medical",
    "legal": r"contract|contracts|clause|clauses|law|laws|legal|liability|compliance|regulation|regulations|court|"
    r"lawsuit|statute|gdpr|terms\s+of\s+service",
    "finance": r"budget|invoice|revenue|stock|stocks|investment|investments|tax|taxes|accounting|profit|finance|"
    r"financial|portfolio|loan|interest\s+rate|cash\s+flow",
    "support": r"customer|customers|complaint|complaints|refund|refunds|ticket|tickets|support|order|orders|"
    r"shipping|return\s+policy",
    "science": r"experiment|experiments|hypothesis|physics|chemistry|biology|research|scientific|molecule|"
    r"genome|quantum|climate",
}
_DOMAIN_PATTERNS = {name: re.compile(rf"\b(?:{words})\b", re.IGNORECASE) for name, words in _DOMAIN_WORDS.items()}
ROLE_LINES: dict[str, str] = {
    "software": "You are a senior software engineer who writes correct, tested and readable code.",
    "data": "You are an experienced data analyst who states assumptions and checks every number.",
    "writing": "You are a skilled professional writer and editor.",
    "education": "You are a patient teacher who explains ideas clearly, with concrete examples.",
    "medical": "You are a careful medical information specialist; you say when a doctor should be consulted.",
    "legal": "You are a careful legal analyst; you say when a qualified lawyer should be consulted.",
    "finance": "You are an experienced financial analyst who shows the figures behind each conclusion.",
    "support": "You are a courteous, precise customer support specialist.",
    "science": "You are a rigorous research scientist who separates evidence from speculation.",
    "general": "You are a knowledgeable assistant who answers precisely and says when you are unsure.",
}
AUDIENCES: dict[str, str] = {
    "software": "a developer who knows the language",
    "data": "a non-technical stakeholder",
    "education": "a beginner",
    "medical": "a patient without medical training",
    "legal": "a reader without legal training",
}
DEFAULT_AUDIENCE = "a non-specialist reader"
DEFAULT_STEPS = (
    "Restate what is asked and list the facts you are given.",
    "Work through the reasoning one step at a time, showing intermediate results.",
    "Check the result against the facts, then give the final answer on its own line, starting with 'Answer:'.",
)

_SINGLE_LINE = r"^[^\x00-\x1f\x7f]+$"  # no newlines or control characters in text that becomes a line
_ROLE_LINE = re.compile(
    r"^[ \t]*(?:[#>*\-][ \t]*)*(?:"
    r"you\s+are(?!\s+(?:given|provided|asked|to|going|about|allowed|not|required|expected|supposed|free|welcome|"
    r"responsible|able|shown|now|here|tasked|helping|reviewing|working|writing|reading|being|done))"
    r"|you['’]re\s+an?\b|act\s+as|acting\s+as|your\s+role\s+is|role\s*:|persona\s*:|system\s*:|imagine\s+you\s+are|"
    r"pretend\s+(?:to\s+be|you\s+are)|assume\s+the\s+role|as\s+an?\s+[\w\- ]{2,40},\s+you\b)",
    re.IGNORECASE | re.MULTILINE,
)
_REASONING = re.compile(
    r"\b(?:why|analy[sz]e|analysis|compare|comparison|evaluate|assess|reason\s+about|solve|calculate|compute|prove|"
    r"derive|diagnose|debug|decide|decision|estimate|determine|trade-?offs?|pros\s+and\s+cons|root\s+cause|plan|"
    r"strategy|justify|infer|deduce|figure\s+out|how\s+many|how\s+much|probability|optimi[sz]e|recommend)\b",
    re.IGNORECASE,
)
_STEP_SCAFFOLD = re.compile(
    r"step[- ]by[- ]step|think\s+(?:it\s+|this\s+)?through|show\s+your\s+(?:work|reasoning)|chain\s+of\s+thought|"
    r"<thinking>|\bstep\s*1\b|reason\s+carefully",
    re.IGNORECASE,
)
_CLASSIFY = re.compile(
    r"\b(?:classify|classification|categori[sz]e|label|tag|sentiment|which\s+category|intent|detect\s+the\s+language)\b",
    re.IGNORECASE,
)
_TRANSFORM = re.compile(
    r"\b(?:convert|translate|rewrite|rephrase|paraphrase|reformat|transform|extract|normali[sz]e|transliterate|"
    r"correct\s+the\s+(?:grammar|spelling)|turn\s+[\w\s]{1,40}\s+into)\b",
    re.IGNORECASE,
)
_GENERATE_CODE = re.compile(r"\b(?:write|implement|create|build|generate|code|fix|refactor)\b", re.IGNORECASE)
_INLINE_HTML = frozenset(
    {"a", "b", "i", "u", "s", "em", "strong", "span", "code", "sup", "sub", "small", "mark", "kbd"}
)
_INSTRUCTION_TAGS = ("instructions", "instruction", "task", "tasks")
_CLOSE_INSTRUCTIONS = re.compile(
    r"^[ \t]*</(?:" + "|".join(_INSTRUCTION_TAGS) + r")\s*>[ \t]*$", re.IGNORECASE | re.MULTILINE
)

_PLURAL_DELIVERABLES = (
    "examples|ideas|points|tips|reasons|sentences|paragraphs|bullet\\s+points|bullets|options|questions|words|items|"
    "steps|suggestions|names|titles|facts|alternatives|recommendations|headlines|taglines|slogans|keywords|"
    "test\\s+cases|tests|exercises|arguments|benefits|variations|versions|synonyms|solutions|strategies|methods|"
    "approaches|use\\s+cases|features|quotes|hashtags|bullet-points|lines|jokes|topics|examples\\s+of"
)
_SINGULAR_DELIVERABLES = (
    "summary|answer|explanation|essay|description|title|response|list|email|story|report|article|post|plan|name|"
    "headline|introduction|conclusion|overview|example|translation|code|function|solution|outline|abstract|caption|"
    "tagline|slogan|review|letter|message|paragraph|prompt|poem|bio|tweet|question|analysis|comparison|definition"
)
_VAGUE_QUANTITY = re.compile(
    r"(?<![\w'’\-])(?P<q>some|a\s+few|several|a\s+couple\s+of|many|various)(?P<gap>\s+)"
    rf"(?=(?:{_PLURAL_DELIVERABLES})\b)",
    re.IGNORECASE,
)
_VAGUE_PRAISE = re.compile(
    rf"(?<![\w'’\-])(?P<q>good|nice|great|proper|decent)(?P<gap>\s+)(?=(?:{_SINGULAR_DELIVERABLES})\b)",
    re.IGNORECASE,
)
_ARTICLE_BEFORE = re.compile(r"(?<![\w'’\-])(?P<article>an?|An?)(?P<gap>\s+)$")
_CLARIFY_PREFIX = "State how you read each vague term in this prompt"
_CLARIFY_LINE = re.compile(
    r"^" + re.escape(_CLARIFY_PREFIX) + r" \((?P<terms>[^)\n]*)\) before you answer, naming the specific items, "
    r"topic or criteria you assume\.$",
    re.MULTILINE,
)

_INPUT_LABEL = re.compile(
    r"^[ \t]*(?:input|text|data|document|article|email|message|code|query|sql|transcript|passage|reviews?|"
    r"sentences?|snippet|logs?|table|source|excerpt|report)\s*:",
    re.IGNORECASE,
)
_CONTEXT_LABEL = re.compile(
    r"^[ \t]*(?:context|background|notes?|info|information|situation|about|details|facts)\s*:", re.IGNORECASE
)
_INSTRUCTION_LABEL = re.compile(
    r"^[ \t]*(?:examples?|output\s+format|format|length|audience|tasks?|instructions?|rules?|constraints?|steps?|"
    r"requirements?|goal|question)\s*:",
    re.IGNORECASE,
)
_DEICTIC = re.compile(
    r"\b(?:this|these|the\s+following|the\s+given|the\s+attached|the\s+provided)\s+(?:[\w\-]+\s+)?"
    r"(?:text|review|reviews|email|message|messages|article|document|passage|paragraph|sentence|sentences|code|"
    r"snippet|function|query|data|table|list|transcript|post|comment|comments|story|essay|report|input|content)\b"
    r"|\b(?:below|above)\b",
    re.IGNORECASE,
)
_FENCE_LINE = re.compile(r"^ {0,3}(?:`{3,}|~{3,})")


# --------------------------------------------------------------------------------------------- parameters


def _no_vague_words(value: str | None) -> str | None:
    if value is not None:
        found = sorted({" ".join(m.lower().split()) for m in _vague_terms_in(value)})
        if found:
            raise ValueError(f"must not itself be vague; remove {', '.join(repr(t) for t in found)}")
    return value


def _vague_terms_in(text: str) -> list[str]:
    return [h.text for h in prompt_features(text).vague]


class ClarityParams(ComponentInput):
    """Parameters of the clarity rule."""

    count: int = Field(
        3, ge=1, le=20, description="the number that replaces 'some', 'a few', 'several' before a deliverable"
    )
    criteria: str = Field(
        "clear and accurate",
        min_length=3,
        max_length=60,
        pattern=r"^[A-Za-z][A-Za-z ,\-]*[A-Za-z]$",
        description="the criteria that replace 'good', 'nice', 'great' before a deliverable",
    )
    flag_unresolved: bool = Field(
        True, description="ask the model to state how it reads the vague terms that have no safe replacement"
    )

    @field_validator("criteria")
    @classmethod
    def _criteria_not_vague(cls, value: str) -> str:
        _no_vague_words(value)
        return value


class SpecificityParams(ComponentInput):
    """Parameters of the specificity rule."""

    output_format: str | None = Field(
        None,
        min_length=2,
        max_length=120,
        pattern=_SINGLE_LINE,
        description="the output format to ask for (default: chosen from the task, e.g. 'the label only, on one line')",
    )
    max_words: int = Field(250, ge=10, le=5000, description="the length limit to ask for, in words")
    audience: str | None = Field(
        None,
        min_length=2,
        max_length=120,
        pattern=_SINGLE_LINE,
        description="the audience to name (default: from the detected domain, e.g. 'a beginner')",
    )
    require: list[Literal["format", "length", "audience"]] = Field(
        default_factory=lambda: ["format", "length", "audience"],
        min_length=1,
        max_length=3,
        description="which of the three the prompt must state",
    )

    @field_validator("output_format", "audience")
    @classmethod
    def _text_not_vague(cls, value: str | None) -> str | None:
        return _no_vague_words(value)

    @field_validator("require")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("list each of format, length, audience at most once")
        return value


class ChainOfThoughtParams(ComponentInput):
    """Parameters of the chain-of-thought rule."""

    steps: list[str] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="the numbered reasoning steps to add (default: restate, reason step by step, check and answer)",
    )
    min_words: int = Field(
        8, ge=1, le=500, description="prompts with fewer prose words are trivial and get no scaffold"
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[str] | None) -> list[str] | None:
        for step in value or []:
            if not 3 <= len(step) <= 200 or not re.match(_SINGLE_LINE, step):
                raise ValueError("each step must be one line of 3 to 200 characters")
            _no_vague_words(step)
        return value


class FewShotParams(ComponentInput):
    """Parameters of the few-shot rule."""

    n_examples: int = Field(2, ge=1, le=5, description="how many input/output slots to add")
    labels: list[str] | None = Field(
        None, min_length=2, max_length=20, description="for classification: the allowed labels, named in the prompt"
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str] | None) -> list[str] | None:
        for label in value or []:
            if not re.fullmatch(r"[\w][\w \-/]{0,39}", label):
                raise ValueError("each label must be 1 to 40 letters, digits, spaces, '-', '_' or '/'")
        if value is not None and len({v.lower() for v in value}) != len(value):
            raise ValueError("labels must be distinct")
        return value


class RoleParams(ComponentInput):
    """Parameters of the role rule."""

    role: str | None = Field(
        None,
        min_length=3,
        max_length=200,
        pattern=_SINGLE_LINE,
        description="the role line, e.g. 'You are a tax accountant.'; other text gets 'You are ' in front",
    )
    domain: Domain | None = Field(None, description="use this domain's role line instead of the detected one")

    @field_validator("role")
    @classmethod
    def _reads_as_role(cls, value: str | None) -> str | None:
        if value is not None and not _ROLE_LINE.match(_role_line(value)):
            raise ValueError("must read as a role, e.g. 'You are a senior tax accountant.'")
        return value


class XmlStructureParams(ComponentInput):
    """Parameters of the XML-structure rule."""

    instructions_tag: str = Field("instructions", pattern=r"^[a-z][a-z0-9_\-]{0,30}$")
    context_tag: str = Field("context", pattern=r"^[a-z][a-z0-9_\-]{0,30}$")
    input_tag: str = Field("input", pattern=r"^[a-z][a-z0-9_\-]{0,30}$")

    @model_validator(mode="after")
    def _distinct(self) -> XmlStructureParams:
        if len({self.instructions_tag, self.context_tag, self.input_tag}) != 3:
            raise ValueError("instructions_tag, context_tag and input_tag must differ")
        return self


class LinguisticQualityParams(ComponentInput):
    """Parameters of the linguistic-quality rule: which kinds of fix to make."""

    doubled_words: bool = True
    whitespace: bool = True
    capitalisation: bool = True
    punctuation: bool = True

    @model_validator(mode="after")
    def _something(self) -> LinguisticQualityParams:
        if not (self.doubled_words or self.whitespace or self.capitalisation or self.punctuation):
            raise ValueError("enable at least one kind of fix (or leave linguistic_quality out of the rules)")
        return self


class RuleParameters(ComponentInput):
    """Per-rule parameters; a rule left out uses its defaults."""

    clarity: ClarityParams | None = None
    specificity: SpecificityParams | None = None
    chain_of_thought: ChainOfThoughtParams | None = None
    few_shot: FewShotParams | None = None
    role: RoleParams | None = None
    xml_structure: XmlStructureParams | None = None
    linguistic_quality: LinguisticQualityParams | None = None


# --------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Assessment:
    applies: bool
    reason: str


@dataclass(frozen=True)
class RuleResult:
    prompt: str
    changes: tuple[str, ...]


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _first_match(pattern: re.Pattern[str], f: PromptFeatures) -> str | None:
    m = pattern.search(f.prose)
    return None if m is None else f"{_quote(m.group(0))} on line {line_of(f.text, m.start())}"


def _unclosed_fence_start(text: str) -> int | None:
    """Where a code fence that runs to the end of the text opens, if one does."""
    fence: str | None = None
    start = pos = 0
    for line in text.split("\n"):
        stripped = line.strip()
        if fence is None:
            opened = _FENCE_LINE.match(line)
            if opened:
                fence, start = stripped[:3] if stripped[0] in "`~" else stripped, pos
                fence = re.match(r"`+|~+", stripped).group(0)  # type: ignore[union-attr]
        elif stripped.startswith(fence) and set(stripped) == {fence[0]}:
            fence = None
        pos += len(line) + 1
    return start if fence is not None else None


def add_block(prompt: str, block: str) -> str:
    """Add a paragraph of instructions: inside an ``<instructions>`` element when there is one, else at the end.

    A code fence left open at the end would swallow the new text, so the block then goes before it.
    """
    prose = mask(prompt)
    close = None
    for m in _CLOSE_INSTRUCTIONS.finditer(prose):
        close = m
    if close is not None:
        head = prompt[: close.start()].rstrip("\n")
        return f"{head}\n\n{block}\n{prompt[close.start() :]}"
    fence = _unclosed_fence_start(prompt)
    if fence is not None:
        head = prompt[:fence].rstrip("\n")
        return f"{head}\n\n{block}\n\n{prompt[fence:]}" if head else f"{block}\n\n{prompt[fence:]}"
    body = prompt.rstrip("\n")
    tail = "\n" if prompt.endswith("\n") else ""
    return f"{body}\n\n{block}{tail}" if body.strip() else f"{block}{tail}"


def detect_domain(f: PromptFeatures) -> tuple[str, list[str]]:
    """The domain whose keywords the prose mentions most (ties in :data:`DOMAINS` order), and those keywords."""
    best, best_words = "general", []
    for name in DOMAINS[:-1]:
        words = [m.group(0).lower() for m in _DOMAIN_PATTERNS[name].finditer(f.prose)]
        if len(words) > len(best_words):
            best, best_words = name, words
    return best, sorted(set(best_words))


def _role_line(text: str) -> str:
    line = " ".join(text.split())
    if not _ROLE_LINE.match(line) and not re.match(r"(?:you\s+are|you['’]re)\b", line, re.IGNORECASE):
        line = "You are " + (line[0].lower() + line[1:] if line[1:2].islower() else line)
    if line[-1] not in ".!?":
        line += "."
    return line[0].upper() + line[1:]


def _sentence(text: str) -> str:
    text = " ".join(text.split()).rstrip(".!?;:, ")
    return text + "."


def _has_role(f: PromptFeatures) -> str | None:
    m = _ROLE_LINE.search(f.prose)
    if m:
        return f"{_quote(f.text[m.start() :].split(chr(10), 1)[0].strip())} on line {line_of(f.text, m.start())}"
    for section in f.structure.sections or []:
        if section.role == "role":
            return f"a {_quote(section.title)} section on line {section.start_line}"
    for element in f.structure.xml_elements or []:
        if element.role == "role":
            return f"a <{element.name}> element on line {element.start_line}"
    return None


# --------------------------------------------------------------------------------------------- rules


class Rule:
    """A prompt rewrite: when it applies (and why), and what it does."""

    name: ClassVar[str]
    summary: ClassVar[str]
    params_model: ClassVar[type[ComponentInput]]

    def params(self, params: ComponentInput | None) -> Any:
        return params if params is not None else self.params_model()

    def assess(self, prompt: str, features: PromptFeatures, params: Any) -> Assessment:
        raise NotImplementedError

    def applies(self, prompt: str, features: PromptFeatures | None = None, params: Any = None) -> str | None:
        """Why the rule applies to ``prompt``, or None when it does not."""
        verdict = self.assess(prompt, features or prompt_features(prompt), self.params(params))
        return verdict.reason if verdict.applies else None

    def apply(self, prompt: str, params: Any = None) -> RuleResult:
        """The rewritten prompt and one line per change (the prompt unchanged when there is nothing to do)."""
        raise NotImplementedError


class ClarityRule(Rule):
    name = "clarity"
    summary = "Replace vague quantities and praise with explicit asks; ask the model to state how it reads the rest."
    params_model = ClarityParams

    @staticmethod
    def _replacements(f: PromptFeatures, p: ClarityParams) -> list[tuple[int, int, str, str]]:
        """(start, end, new text, description) of every safe in-place replacement."""
        edits: list[tuple[int, int, str, str]] = []
        for m in _VAGUE_QUANTITY.finditer(f.prose):
            if m.group("q").lower() == "many" and re.search(
                r"(?:how|as|so|too)\s+$", f.prose[max(0, m.start() - 6) : m.start()], re.I
            ):
                continue
            new = str(p.count)
            edits.append((m.start("q"), m.end("q"), new, f"{_quote(m.group('q'))} → {_quote(new)}"))
        for m in _VAGUE_PRAISE.finditer(f.prose):
            start, new = m.start("q"), p.criteria
            article = _ARTICLE_BEFORE.search(f.prose[max(0, start - 6) : start])
            if article:
                # "a good answer" → "an accurate answer": the article follows the new first word.
                wanted = "an" if new[0].lower() in "aeiou" else "a"
                old_article = article.group("article")
                if old_article[0].isupper():
                    wanted = wanted.capitalize()
                astart = start - len(article.group(0))
                edits.append(
                    (
                        astart,
                        m.end("q"),
                        f"{wanted}{article.group('gap')}{new}",
                        f"{_quote(old_article + ' ' + m.group('q'))} → {_quote(wanted + ' ' + new)}",
                    )
                )
            else:
                edits.append((start, m.end("q"), new, f"{_quote(m.group('q'))} → {_quote(new)}"))
        return sorted(edits)

    @staticmethod
    def _flagged(f: PromptFeatures) -> set[str]:
        m = _CLARIFY_LINE.search(f.text)
        return set(re.findall(r'"([^"]+)"', m.group("terms"))) if m else set()

    def _unflagged(self, f: PromptFeatures) -> list[str]:
        flagged = self._flagged(f)
        return sorted({h.term for h in f.vague} - flagged)

    def assess(self, prompt: str, features: PromptFeatures, params: ClarityParams) -> Assessment:
        f = features
        if not f.vague:
            return Assessment(False, "no vague terms in the prose")
        where = ", ".join(f"{_quote(h.text)} (line {h.line})" for h in f.vague[:8])
        if self._replacements(f, params):
            return Assessment(True, f"{len(f.vague)} vague term(s): {where}")
        unflagged = self._unflagged(f)
        if params.flag_unresolved and unflagged:
            return Assessment(True, f"vague term(s) with no clarification asked yet: {where}")
        if not params.flag_unresolved:
            return Assessment(False, f"vague term(s) {where} have no safe replacement and flag_unresolved is off")
        return Assessment(False, "every vague term is already named in the clarification line")

    def apply(self, prompt: str, params: Any = None) -> RuleResult:
        p: ClarityParams = self.params(params)
        f = prompt_features(prompt)
        changes: list[str] = []
        text = prompt
        for start, end, new, description in reversed(self._replacements(f, p)):
            text = text[:start] + new + text[end:]
            changes.append(f"line {line_of(prompt, start)}: {description}")
        changes.reverse()
        if p.flag_unresolved:
            g = prompt_features(text)
            unflagged = self._unflagged(g)
            if unflagged:
                terms = sorted(self._flagged(g) | set(unflagged))
                quoted = ", ".join(f'"{t}"' for t in terms)
                line = (
                    f"{_CLARIFY_PREFIX} ({quoted}) before you answer, naming the specific items, topic or criteria "
                    "you assume."
                )
                existing = _CLARIFY_LINE.search(text)
                text = text[: existing.start()] + line + text[existing.end() :] if existing else add_block(text, line)
                asks = "; ".join(f"{t!r} → {VAGUE_TERMS[t]}" for t in unflagged if t in VAGUE_TERMS)
                changes.append(
                    f"asked the model to state how it reads {', '.join(repr(t) for t in unflagged)} (for you: {asks})"
                )
        return RuleResult(text, tuple(changes))


class SpecificityRule(Rule):
    name = "specificity"
    summary = "Add the output format, a length limit and the audience when the prompt names none."
    params_model = SpecificityParams

    @staticmethod
    def _missing(f: PromptFeatures, p: SpecificityParams) -> list[str]:
        present = {"format": f.formats, "length": f.lengths, "audience": f.audiences}
        return [kind for kind in ("format", "length", "audience") if kind in p.require and not present[kind]]

    def assess(self, prompt: str, features: PromptFeatures, params: SpecificityParams) -> Assessment:
        missing = self._missing(features, params)
        if not missing:
            found = {"format": features.formats, "length": features.lengths, "audience": features.audiences}
            said = ", ".join(f"{k} ({_quote(found[k][0].text)}, line {found[k][0].line})" for k in params.require)
            return Assessment(False, f"the prompt already states {said}")
        return Assessment(True, f"the prompt names no {', no '.join(missing)}")

    @staticmethod
    def _default_format(f: PromptFeatures) -> str:
        domain, _ = detect_domain(f)
        if _CLASSIFY.search(f.prose):
            return "the label only, on one line"
        if domain == "software" and _GENERATE_CODE.search(f.prose):
            return "one fenced code block, then at most 3 sentences of explanation"
        if f.structure.questions and not f.structure.instructions:
            return "plain text: the direct answer first, then the supporting detail"
        return "Markdown, with short paragraphs or a bulleted list"

    def apply(self, prompt: str, params: Any = None) -> RuleResult:
        p: SpecificityParams = self.params(params)
        f = prompt_features(prompt)
        missing = self._missing(f, p)
        if not missing:
            return RuleResult(prompt, ())
        domain, _ = detect_domain(f)
        lines = {
            "format": f"Output format: {_sentence(p.output_format or self._default_format(f))}",
            "length": f"Length: at most {p.max_words} words.",
            "audience": f"Audience: {_sentence(p.audience or AUDIENCES.get(domain, DEFAULT_AUDIENCE))}",
        }
        added = [lines[kind] for kind in missing]
        return RuleResult(add_block(prompt, "\n".join(added)), tuple(f"added {_quote(line)}" for line in added))


class ChainOfThoughtRule(Rule):
    name = "chain_of_thought"
    summary = "Add a step-by-step reasoning scaffold to a reasoning or analysis task."
    params_model = ChainOfThoughtParams

    def assess(self, prompt: str, features: PromptFeatures, params: ChainOfThoughtParams) -> Assessment:
        f = features
        scaffold = _first_match(_STEP_SCAFFOLD, f)
        if scaffold:
            return Assessment(False, f"already asks for step-by-step reasoning ({scaffold})")
        cues = [m for m in _REASONING.finditer(f.prose)]
        if not cues:
            return Assessment(
                False, "not a reasoning or analysis task (no analyse, compare, why, solve, calculate, ...)"
            )
        if f.word_count < params.min_words:
            return Assessment(False, f"trivial: {f.word_count} prose words, fewer than min_words={params.min_words}")
        named = ", ".join(f"{_quote(m.group(0))} (line {line_of(f.text, m.start())})" for m in cues[:4])
        return Assessment(True, f"a reasoning task ({named}) with no step-by-step scaffold")

    def apply(self, prompt: str, params: Any = None) -> RuleResult:
        p: ChainOfThoughtParams = self.params(params)
        f = prompt_features(prompt)
        if not self.assess(prompt, f, p).applies:
            return RuleResult(prompt, ())
        steps = [_sentence(s) for s in (p.steps or DEFAULT_STEPS)]
        block = "Work through this step by step:\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, start=1))
        return RuleResult(add_block(prompt, block), (f"added a {len(steps)}-step reasoning scaffold",))


class FewShotRule(Rule):
    name = "few_shot"
    summary = "Add an examples scaffold with input/output slots to a classification or transformation task."
    params_model = FewShotParams

    def assess(self, prompt: str, features: PromptFeatures, params: FewShotParams) -> Assessment:
        f = features
        examples = f.structure.counts.get("examples", 0)
        if examples:
            first = (f.structure.examples or [None])[0]
            where = f" (first on line {first.start_line})" if first is not None else ""
            return Assessment(False, f"already shows {examples} example(s){where}")
        cue = _first_match(_CLASSIFY, f) or _first_match(_TRANSFORM, f)
        if cue is None:
            return Assessment(False, "not a classification or transformation task")
        kind = "classification" if _CLASSIFY.search(f.prose) else "transformation"
        return Assessment(True, f"a {kind} task ({cue}) with no examples")

    def apply(self, prompt: str, params: Any = None) -> RuleResult:
        p: FewShotParams = self.params(params)
        f = prompt_features(prompt)
        if not self.assess(prompt, f, p).applies:
            return RuleResult(prompt, ())
        lines = []
        if p.labels:
            lines.append(f"Answer with exactly one of these labels: {', '.join(p.labels)}.")
        lines.append("Examples:")
        for i in range(1, p.n_examples + 1):
            lines += [f"Input: {{example_input_{i}}}", f"Output: {{example_output_{i}}}"]
        changes = [f"added {p.n_examples} input/output example slot(s) ({{example_input_1}}, ...) for you to fill"]
        if p.labels:
            changes.append(f"named the {len(p.labels)} allowed labels")
        return RuleResult(add_block(prompt, "\n".join(lines)), tuple(changes))


class RoleRule(Rule):
    name = "role"
    summary = "Put a role line matched to the detected domain at the top when the prompt sets no role."
    params_model = RoleParams

    def assess(self, prompt: str, features: PromptFeatures, params: RoleParams) -> Assessment:
        existing = _has_role(features)
        if existing:
            return Assessment(False, f"the prompt already sets a role: {existing}")
        domain, words = detect_domain(features)
        evidence = f" (keywords: {', '.join(words[:6])})" if words else ""
        return Assessment(True, f"no role line; detected domain {domain!r}{evidence}")

    def apply(self, prompt: str, params: Any = None) -> RuleResult:
        p: RoleParams = self.params(params)
        f = prompt_features(prompt)
        if not self.assess(prompt, f, p).applies:
            return RuleResult(prompt, ())
        domain = p.domain or detect_domain(f)[0]
        line = _role_line(p.role) if p.role else ROLE_LINES[domain]
        body = prompt.lstrip("\n")
        return RuleResult(f"{line}\n\n{body}", (f"added the role line {_quote(line, 120)} at the top",))


@dataclass
class _Block:
    start: int
    end: int
    kind: str = "context"
    why: str = ""


class XmlStructureRule(Rule):
    name = "xml_structure"
    summary = "Wrap instructions, context and input in XML tags when the prompt mixes them."
    params_model = XmlStructureParams

    @staticmethod
    def _blocks(f: PromptFeatures) -> list[_Block]:
        """Blocks separated by blank lines and fence boundaries; protected spans never split."""
        text = f.text
        lines = text.split("\n")
        blocks: list[_Block] = []
        pos = 0
        current: _Block | None = None
        fence: str | None = None
        for line in lines:
            end = pos + len(line)
            opens = fence is None and _FENCE_LINE.match(line)
            # A blank line inside protected text (a data tag's paragraphs) does not end its block.
            blank = not line.strip() and fence is None and not is_protected(text, pos)
            if (opens or blank) and current is not None:
                blocks.append(current)
                current = None
            if not blank:
                if current is None:
                    current = _Block(pos, end)
                current.end = end
            if opens:
                fence = re.match(r"\s*(`+|~+)", line).group(1)  # type: ignore[union-attr]
            elif fence is not None and line.strip().startswith(fence) and set(line.strip()) == {fence[0]}:
                fence = None
                blocks.append(current)  # type: ignore[arg-type]
                current = None
            pos = end + 1
        if current is not None:
            blocks.append(current)
        return blocks

    def _classify(self, f: PromptFeatures) -> list[_Block]:
        blocks = self._blocks(f)
        s = f.structure
        task_lines = {i.start_line for i in s.instructions or []} | {q.start_line for q in s.questions or []}
        for i, block in enumerate(blocks):
            text = f.text[block.start : block.end]
            prose = f.prose[block.start : block.end]
            first, last = line_of(f.text, block.start), line_of(f.text, block.end)
            if not prose.strip():
                block.kind, block.why = "input", "protected text (code, quotation or data)"
            elif i == 0 and _ROLE_LINE.match(prose):
                block.kind, block.why = "role", "role line"
            elif _INPUT_LABEL.match(prose):
                block.kind, block.why = "input", "labelled as input"
            elif _CONTEXT_LABEL.match(prose):
                block.kind, block.why = "context", "labelled as context"
            elif _INSTRUCTION_LABEL.match(prose) or any(first <= n <= last for n in task_lines):
                block.kind, block.why = "instructions", "states the task"
            elif (
                re.match(r"^\s*(?:[-*+]|\d{1,3}[.)])\s", text)
                and i
                and blocks[i - 1].kind == "instructions"
                and f.text[: blocks[i - 1].end].rstrip().endswith(":")
            ):
                block.kind, block.why = "instructions", "a list the instructions introduce"
            else:
                block.kind, block.why = "context", "prose without a task"
        # Prose the task points at ("classify this review", "the text below") is its input, not background.
        pointed = any(_DEICTIC.search(f.prose[b.start : b.end]) for b in blocks if b.kind == "instructions")
        for block in blocks:
            if pointed and block.kind == "context" and block.why == "prose without a task":
                block.kind, block.why = "input", "the material the task points at"
        # A lead-in ("Here is the code:") belongs to the input it introduces.
        for i, block in enumerate(blocks[:-1]):
            if (
                block.kind == "context"
                and blocks[i + 1].kind == "input"
                and f.text[block.start : block.end].rstrip().endswith(":")
            ):
                block.kind, block.why = "input", "introduces the input that follows"
        return blocks

    def assess(self, prompt: str, features: PromptFeatures, params: XmlStructureParams) -> Assessment:
        f = features
        tags = [e for e in f.structure.xml_elements or [] if not e.self_closing and e.name.lower() not in _INLINE_HTML]
        if tags:
            return Assessment(False, f"already organised with XML tags (<{tags[0].name}> on line {tags[0].start_line})")
        if f.structure.headers:
            return Assessment(False, f"already organised with Markdown headers ({len(f.structure.headers)})")
        unclosed = [c for c in f.structure.code_blocks or [] if not c.closed]
        if unclosed:
            return Assessment(
                False, f"the code fence on line {unclosed[0].start_line} is never closed; close it before adding tags"
            )
        blocks = self._classify(f)
        kinds = {kind: [b for b in blocks if b.kind == kind] for kind in ("instructions", "context", "input")}
        if not kinds["instructions"]:
            return Assessment(False, "no block states a task, so there is nothing to separate")
        if not kinds["context"] and not kinds["input"]:
            return Assessment(False, "only instructions: nothing to separate them from")
        described = "; ".join(
            f"{len(found)} {kind} block(s) (line {line_of(f.text, found[0].start)}: {found[0].why})"
            for kind, found in kinds.items()
            if found
        )
        return Assessment(True, f"mixes {described} without tags")

    def apply(self, prompt: str, params: Any = None) -> RuleResult:
        p: XmlStructureParams = self.params(params)
        f = prompt_features(prompt)
        if not self.assess(prompt, f, p).applies:
            return RuleResult(prompt, ())
        blocks = self._classify(f)
        tag = {"instructions": p.instructions_tag, "context": p.context_tag, "input": p.input_tag}
        parts = [prompt[b.start : b.end] for b in blocks if b.kind == "role"]
        changes = []
        for kind in ("instructions", "context", "input"):
            found = [b for b in blocks if b.kind == kind]
            if found:
                body = "\n\n".join(prompt[b.start : b.end] for b in found)
                parts.append(f"<{tag[kind]}>\n{body}\n</{tag[kind]}>")
                lines = ", ".join(str(line_of(prompt, b.start)) for b in found)
                changes.append(f"wrapped {len(found)} block(s) from line(s) {lines} in <{tag[kind]}>")
        tail = "\n" if prompt.endswith("\n") else ""
        return RuleResult("\n\n".join(parts) + tail, tuple(changes))


class LinguisticQualityRule(Rule):
    name = "linguistic_quality"
    summary = "Fix doubled words, spacing, capitalisation and final punctuation in the prose."
    params_model = LinguisticQualityParams

    _KINDS: ClassVar[dict[str, str]] = {
        "doubled_word": "doubled_words",
        "space_run": "whitespace",
        "trailing_whitespace": "whitespace",
        "space_before_punctuation": "whitespace",
        "blank_lines": "whitespace",
        "lowercase_i": "capitalisation",
        "lowercase_sentence_start": "capitalisation",
        "lowercase_paragraph_start": "capitalisation",
        "missing_final_punctuation": "punctuation",
    }

    def _issues(self, prompt: str, p: LinguisticQualityParams) -> list[Any]:
        return [i for i in mechanical_issues(prompt) if getattr(p, self._KINDS[i.kind])]

    def assess(self, prompt: str, features: PromptFeatures, params: LinguisticQualityParams) -> Assessment:
        issues = self._issues(prompt, params)
        if not issues:
            return Assessment(False, "no doubled words, spacing, capitalisation or punctuation issues in the prose")
        counts: dict[str, int] = {}
        for issue in issues:
            counts[issue.kind] = counts.get(issue.kind, 0) + 1
        listed = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items())
        return Assessment(True, f"{len(issues)} issue(s): {listed}")

    def apply(self, prompt: str, params: Any = None) -> RuleResult:
        p: LinguisticQualityParams = self.params(params)
        text, changes = prompt, []
        # A fix can reveal another ("the the the", a sentence start after a removed space): repeat, bounded.
        for _ in range(5):
            issues = self._issues(text, p)
            if not issues:
                break
            # Edits go from the end, so the offsets and lines of the earlier issues stay valid.
            for issue in reversed(issues):
                old, new = _quote(text[issue.start : issue.end]), _quote(issue.replacement)
                what = issue.kind.replace("_", " ")
                changes.append(f"line {line_of(text, issue.start)}: {what} {old} → {new}")
                text = text[: issue.start] + issue.replacement + text[issue.end :]
            changes[len(changes) - len(issues) :] = reversed(changes[len(changes) - len(issues) :])
        return RuleResult(text, tuple(changes))


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        ClarityRule(),
        SpecificityRule(),
        ChainOfThoughtRule(),
        FewShotRule(),
        RoleRule(),
        XmlStructureRule(),
        LinguisticQualityRule(),
    )
}


# --------------------------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class Application:
    rule: str
    reason: str
    changes: tuple[str, ...]
    pass_number: int


@dataclass(frozen=True)
class Skip:
    rule: str
    reason: str


@dataclass
class EngineResult:
    prompt: str
    applied: list[Application] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    passes: int = 0
    converged: bool = True


def run_rules(
    prompt: str,
    rules: Sequence[str] | None = None,
    params: RuleParameters | Mapping[str, ComponentInput | None] | None = None,
    *,
    max_passes: int = MAX_PASSES,
) -> EngineResult:
    """Apply the selected rules (all by default) in :data:`ORDER`, pass after pass, until nothing changes.

    Raises:
        ValueError: a rule name that is not one of :data:`RULE_NAMES`.
    """
    selected = set(RULE_NAMES if rules is None else rules)
    unknown = sorted(selected - set(RULE_NAMES))
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; choose from {list(RULE_NAMES)}")
    if isinstance(params, RuleParameters):
        per_rule: dict[str, Any] = {name: getattr(params, name) for name in RULE_NAMES}
    else:
        per_rule = dict(params or {})
    result = EngineResult(prompt)
    last_reason: dict[str, str] = {}
    applied: set[str] = set()
    text = prompt
    for number in range(1, max_passes + 1):
        result.passes = number
        changed = False
        for name in ORDER:
            if name not in selected:
                continue
            rule = RULES[name]
            rule_params = rule.params(per_rule.get(name))
            verdict = rule.assess(text, prompt_features(text), rule_params)
            if not verdict.applies:
                last_reason[name] = verdict.reason
                continue
            outcome = rule.apply(text, rule_params)
            if outcome.prompt == text:
                last_reason[name] = f"{verdict.reason}, but nothing could be changed safely"
                continue
            result.applied.append(Application(name, verdict.reason, outcome.changes, number))
            applied.add(name)
            text, changed = outcome.prompt, True
        if not changed:
            break
    else:
        result.converged = False
    result.prompt = text
    result.skipped = [Skip(name, last_reason[name]) for name in ORDER if name in selected and name not in applied]
    return result
