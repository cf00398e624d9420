"""Structure of a prompt: sections, lists, code, XML tags, instructions, constraints, examples, questions.

Block structure (ATX and setext headers, bullet and numbered lists, fenced code, tables) comes from
markdown-it-py, a CommonMark parser that reports the source lines of every block. Three of its rules
are switched off because prompts are not web pages:

* raw HTML — a line such as ``<context>`` would otherwise open an opaque HTML block that hides the
  Markdown inside it; here tags are prompt structure, scanned separately with a stack;
* indented code — prompts indent prose inside tags far more often than they indent code;
* inline parsing — code spans are scanned here instead, so every offset maps back to a source line.

Everything in a fenced code block or a code span is literal: it never counts as a header, list, tag,
placeholder, instruction or example. Sentences (for instructions, constraints, examples and questions)
are read from the prose of paragraphs, list items and table cells; headers only count as questions.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, get_args

from markdown_it import MarkdownIt
from pydantic import Field

from services.framework import ComponentInput, ComponentOutput, component

__all__ = [
    "CodeBlock",
    "Constraint",
    "Example",
    "GraphEdge",
    "GraphNode",
    "Header",
    "InlineCode",
    "Instruction",
    "ListBlock",
    "ListItem",
    "Placeholder",
    "Question",
    "Section",
    "StructuralAnalyzerInput",
    "StructuralAnalyzerOutput",
    "StructureGraph",
    "SubScore",
    "Table",
    "UnbalancedTag",
    "XmlElement",
    "structural_analyzer",
]

ElementKind = Literal[
    "headers",
    "sections",
    "lists",
    "code_blocks",
    "inline_code",
    "xml_elements",
    "unbalanced_tags",
    "tables",
    "instructions",
    "constraints",
    "examples",
    "questions",
    "placeholders",
]
ELEMENT_KINDS: tuple[str, ...] = get_args(ElementKind)
SectionRole = Literal[
    "examples", "constraints", "output_format", "instructions", "context", "role", "questions", "other"
]

MAX_TEXT = 300  # characters of element text echoed back; spans locate the full text

WEIGHTS = {"organisation": 0.25, "instructions": 0.25, "constraints": 0.20, "examples": 0.15, "formatting": 0.15}


# --------------------------------------------------------------------------------------------- models


class StructuralAnalyzerInput(ComponentInput):
    """A prompt and which structural elements to list."""

    prompt: str = Field(min_length=1, max_length=100_000, description="the prompt text (Markdown, XML-ish tags, prose)")
    include: list[ElementKind] | None = Field(
        default=None,
        max_length=len(ELEMENT_KINDS),
        description="element kinds to list (default: all); the counts, graph and score always cover everything",
    )
    include_graph: bool = Field(default=True, description="return the structure graph (nodes and 'contains' edges)")
    max_items: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="list at most this many elements of each kind (first in document order); counts stay exact",
    )


class Header(ComponentOutput):
    level: int = Field(description="1 to 6")
    text: str
    style: Literal["atx", "setext"]
    section_id: str
    start_line: int
    end_line: int


class Section(ComponentOutput):
    id: str
    title: str
    level: int
    role: SectionRole = Field(description="what the header's wording says the section is for")
    parent_id: str | None = Field(description="the enclosing section (a header of a lower level)")
    start_line: int = Field(description="the header's line")
    end_line: int = Field(description="last non-blank line before the next header of the same or a higher level")


class ListItem(ComponentOutput):
    text: str = Field(description="first line of the item's text")
    start_line: int
    end_line: int


class ListBlock(ComponentOutput):
    id: str
    ordered: bool
    marker: str = Field(description="'-', '*', '+' for bullets; '.' or ')' for numbered lists")
    start_number: int | None = Field(description="first number of a numbered list")
    depth: int = Field(description="1 for a top-level list, 2 for a list inside an item, ...")
    parent_list_id: str | None
    item_count: int
    items: list[ListItem]
    start_line: int
    end_line: int


class CodeBlock(ComponentOutput):
    id: str
    language: str | None = Field(description="first word of the fence's info string")
    fence: str = Field(description="the opening fence, e.g. ``` or ~~~")
    closed: bool = Field(description="False when the fence is never closed and runs to the end of the prompt")
    content_lines: int
    start_line: int
    end_line: int


class InlineCode(ComponentOutput):
    text: str
    start_line: int
    end_line: int


class XmlElement(ComponentOutput):
    id: str
    name: str
    role: SectionRole
    depth: int = Field(description="1 for an outermost element")
    parent_id: str | None = Field(description="the enclosing XML element")
    self_closing: bool
    start_line: int
    end_line: int


class UnbalancedTag(ComponentOutput):
    name: str
    tag: str = Field(description="the tag as written")
    problem: Literal["unclosed", "unopened"] = Field(
        description="'unclosed': opened and never closed; 'unopened': a closing tag with no matching open tag"
    )
    start_line: int
    end_line: int


class Table(ComponentOutput):
    id: str
    rows: int = Field(description="rows including the header row")
    columns: int
    start_line: int
    end_line: int


class Instruction(ComponentOutput):
    text: str
    verb: str = Field(description="the directive verb, lower case")
    polarity: Literal["do", "do_not"]
    start_line: int
    end_line: int


class Constraint(ComponentOutput):
    text: str
    kinds: list[Literal["prohibition", "requirement", "limit", "format"]]
    cues: list[str] = Field(description="the words that make it a constraint")
    start_line: int
    end_line: int


class Example(ComponentOutput):
    kind: Literal["cue", "label", "io_pair", "section", "xml"] = Field(
        description="'cue': 'for example'/'e.g.' in a sentence; 'label': an 'Example:' line; 'io_pair': "
        "Input:/Output: (Q:/A:, User:/Assistant:, ...) lines; 'section'/'xml': a header or tag named for examples"
    )
    text: str
    start_line: int
    end_line: int


class Question(ComponentOutput):
    text: str
    start_line: int
    end_line: int


class Placeholder(ComponentOutput):
    name: str
    style: Literal["single_brace", "double_brace", "dollar_brace"] = Field(description="{x}, {{x}} or ${x}")
    raw: str
    start_line: int
    end_line: int


class GraphNode(ComponentOutput):
    id: str
    kind: Literal["document", "section", "list", "code_block", "xml_element", "table"]
    label: str
    start_line: int
    end_line: int


class GraphEdge(ComponentOutput):
    source: str
    target: str
    relation: Literal["contains"] = "contains"


class StructureGraph(ComponentOutput):
    nodes: list[GraphNode]
    edges: list[GraphEdge]


class SubScore(ComponentOutput):
    name: Literal["organisation", "instructions", "constraints", "examples", "formatting"]
    weight: float
    score: float = Field(ge=0, le=1)
    reason: str
    signals: dict[str, float] = Field(description="the inputs of this sub-score's formula")


class StructuralAnalyzerOutput(ComponentOutput):
    line_count: int
    char_count: int
    word_count: int
    counts: dict[str, int] = Field(description="exact number of elements of every kind, listed or not")
    headers: list[Header] | None = None
    sections: list[Section] | None = None
    lists: list[ListBlock] | None = None
    code_blocks: list[CodeBlock] | None = None
    inline_code: list[InlineCode] | None = None
    xml_elements: list[XmlElement] | None = None
    unbalanced_tags: list[UnbalancedTag] | None = None
    tables: list[Table] | None = None
    instructions: list[Instruction] | None = None
    constraints: list[Constraint] | None = None
    examples: list[Example] | None = None
    questions: list[Question] | None = None
    placeholders: list[Placeholder] | None = None
    variables: list[str] = Field(description="distinct placeholder names, sorted (at most max_items)")
    graph: StructureGraph | None = None
    score: float = Field(ge=0, le=1, description="weighted sum of the sub-scores")
    sub_scores: list[SubScore]
    truncated: list[str] = Field(description="element kinds whose list was cut at max_items")


# --------------------------------------------------------------------------------------------- patterns

_BACKTICKS = re.compile(r"`+")
_NAME = r"[A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?"
_ATTR = r"""[ \t]+[A-Za-z_:][\w.:\-]*(?:[ \t]*=[ \t]*(?:"[^"\n]*"|'[^'\n]*'|[^\s"'=<>`]+))?"""
_TAG = re.compile(rf"<(?:/(?P<close>{_NAME})[ \t]*|(?P<open>{_NAME})(?:{_ATTR})*[ \t]*(?P<self>/)?)>")
# HTML void elements never take a closing tag.
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
# Inline HTML formatting organises nothing.
_INLINE_HTML = frozenset(
    {"a", "b", "i", "u", "s", "em", "strong", "span", "code", "sup", "sub", "small", "mark", "kbd"}
)
_PLACEHOLDER = re.compile(
    r"\$\{[ \t]*(?P<dollar>[A-Za-z_][\w.\-]*)[ \t]*\}"
    r"|\{\{[ \t]*(?P<double>[A-Za-z_][\w.\-]*)[ \t]*\}\}"
    r"|(?<!\{)\{[ \t]*(?P<single>[A-Za-z_][\w.\-]*)[ \t]*\}(?!\})"
)
# Starts only where a run of terminal punctuation starts, so a failed match costs the run once.
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]++[\"'”’)\]]*+(?=[\s\x00]|$)")
_ABBREVIATIONS = frozenset({"e.g", "i.e", "vs", "cf", "mr", "mrs", "ms", "dr", "prof", "fig", "approx", "no", "st"})
_WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*")
_LEAD = re.compile(
    r"^(?:(?:please|kindly|now|then|also|next|finally|first|firstly|second|secondly|third|lastly|and|so|just|"
    r"carefully|briefly|simply|always|only|additionally|afterwards|instead|again|maybe|perhaps|possibly)\b,?\s+)+",
    re.IGNORECASE,
)
_MARKUP = re.compile(r"^[\s*_>#~\-–—•\"'“‘(\[]+")
_ENUMERATOR = re.compile(r"^(?:step\s+\d+|\d{1,3}|[a-z])\s*[.):\-]\s+", re.IGNORECASE)
_LABEL = re.compile(r"^[A-Za-z][\w'’ ]{0,40}?:\s+(?=\S)")
_NEGATIVE = re.compile(r"^(?:do\s+not|don['’]?t|never|must\s+not|should\s+not)\s+(?P<verb>[A-Za-z][A-Za-z\-]*)", re.I)
_MODAL = re.compile(
    r"\b(?:you\s+(?:must|should|shall|need\s+to|have\s+to|are\s+(?:required|expected|asked)\s+to|are\s+to|will(?!\s+be\b))"
    r"|i\s+(?:want|need|would\s+like|'d\s+like)\s+you\s+to"
    r"|your\s+(?:task|job|goal|objective|mission)\s+is\s+to"
    r"|let['’]?s|let\s+us"
    r"|make\s+sure\s+(?:to|you)|be\s+sure\s+to)"
    r"\s+(?P<not>not\s+)?(?P<verb>[A-Za-z][A-Za-z\-]*)",
    re.IGNORECASE,
)
_DETERMINERS = frozenset(
    {"the", "a", "an", "this", "these", "that", "those", "following", "each", "all", "your", "my", "our", "it", "them"}
)
_NOUN_FOLLOWERS = frozenset({"is", "are", "was", "were", "of", "has", "have", "'s", "’s"})
# Verbs that open an instruction in the imperative ("Write ...", "List ...", "Be concise.").
_VERB_WORDS = """
    act adapt add adopt aim analyse analyze annotate answer apply argue ask assess assume avoid be begin brainstorm
    break build calculate call categorise categorize check choose cite clarify classify combine comment compare
    compile complete compose compute condense confirm consider continue convert copy count craft create debug
    decide decline define delete deliver demonstrate describe design detail determine develop display do document
    double-check draft draw edit elaborate emphasise emphasize enclose end ensure estimate evaluate execute expand
    explain explore express extract fill filter find finish fix focus follow format formulate frame generate give
    group guide handle help highlight identify ignore illustrate imagine implement improve include incorporate
    indicate infer insert interpret introduce justify keep label limit list load look maintain make map mark match
    mention merge name note number offer omit optimise optimize order organise organize outline output paraphrase
    parse pick place plan plot predict prefer prepare present preserve pretend print prioritise prioritize process
    produce proofread propose provide put quote rank rate read recommend reference refactor refer refrain refuse
    remember remove render reorder rephrase replace reply report represent respect respond restate return review
    rewrite run save score search select separate set share shorten show simplify sketch skip solve sort specify
    split start state stay stick stop store structure suggest summarise summarize supply tag take teach tell test
    think transform translate treat try turn underline update use validate verify visualise visualize walk wrap write
"""
_VERBS = frozenset(_VERB_WORDS.split())
_HEDGES = re.compile(
    r"\b(?:maybe|perhaps|possibly|somehow|something|stuff|etc|kind\s+of|sort\s+of|try\s+to|if\s+possible|"
    r"as\s+needed|whatever|and\s+so\s+on|or\s+something)\b",
    re.IGNORECASE,
)
_CONSTRAINT_CUES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "prohibition",
        re.compile(
            r"\b(?:must\s+not|mustn['’]?t|should\s+not|shouldn['’]?t|do\s+not|don['’]?t|never|avoid|cannot|"
            r"can['’]?t|may\s+not|refrain\s+from|under\s+no\s+circumstances)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "requirement",
        re.compile(
            r"\b(?:must(?!\s+not)|always|required|mandatory|ensure|make\s+sure|be\s+sure|needs?\s+to|ha(?:ve|s)\s+to|"
            r"exactly)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "limit",
        re.compile(
            r"\b(?:at\s+(?:most|least)|no\s+(?:more|less|fewer|longer|shorter)\s+than|not\s+(?:more\s+than|exceed)|"
            r"fewer\s+than|less\s+than|maximum|minimum|max|min|up\s+to\s+\d+|limit(?:ed)?\s+(?:to|of)|within\s+\d+|"
            r"under\s+\d+|exceed|(?<!not\s)(?<!if\s)only|"
            r"\d+(?:\s*[-–]\s*\d+)?\s+(?:words?|sentences?|characters?|chars|lines?|paragraphs?|bullet\s+points?|"
            r"bullets?|items?|tokens?|pages?|examples?|options?|points?)|"
            r"(?:one|two|three|four|five|six|seven|eight|nine|ten|single)\s+(?:words?|sentences?|paragraphs?|lines?|"
            r"bullet\s+points?|bullets?|items?))\b",
            re.IGNORECASE,
        ),
    ),
    (
        "format",
        re.compile(
            r"\b(?:(?:in|as|using|into)\s+(?:a\s+|an\s+|valid\s+|the\s+|plain\s+)?(?:json|yaml|xml|csv|markdown|html|"
            r"table|bulleted\s+list|numbered\s+list|bullet\s+points|text)|format(?:ted)?\s+(?:as|in))\b",
            re.IGNORECASE,
        ),
    ),
)
_EXAMPLE_CUE = re.compile(r"\bfor\s+(?:example|instance)\b|\be\.g\.", re.IGNORECASE)
_EXAMPLE_LABEL = re.compile(
    r"^[*_\s]*(?:examples?|samples?|sample\s+(?:input|output))(?:\s*#?\d+)?[*_\s]*:[*_]*(?P<rest>.*)$", re.IGNORECASE
)
_IO_LABEL = re.compile(
    r"^[*_\s]*(?P<label>input|output|q|a|question|answer|user|human|assistant|ai|prompt|response|completion)"
    r"(?:\s*\d+)?[*_\s]*:[*_]*(?P<rest>.*)$",
    re.IGNORECASE,
)
_IO_ROLES = {
    "input": ("io", "in"),
    "output": ("io", "out"),
    "q": ("qa", "in"),
    "question": ("qa", "in"),
    "a": ("qa", "out"),
    "answer": ("qa", "out"),
    "user": ("chat", "in"),
    "human": ("chat", "in"),
    "assistant": ("chat", "out"),
    "ai": ("chat", "out"),
    "prompt": ("completion", "in"),
    "response": ("completion", "out"),
    "completion": ("completion", "out"),
}
_ROLES: tuple[tuple[SectionRole, re.Pattern[str]], ...] = tuple(
    (role, re.compile(pattern, re.IGNORECASE))
    for role, pattern in (
        ("examples", r"\b(?:examples?|samples?|demonstrations?|few[- ]?shot|illustrations?|shots?)\b"),
        (
            "constraints",
            r"\b(?:constraints?|rules?|requirements?|guidelines?|restrictions?|limits?|limitations?|polic(?:y|ies)|"
            r"dos|don['’]?ts|guardrails?)\b",
        ),
        ("output_format", r"\b(?:output|format|formatting|response|deliverables?|expected|schema|style)\b"),
        ("instructions", r"\b(?:instructions?|tasks?|directions?|steps?|objectives?|goals?|procedure|what to do)\b"),
        (
            "context",
            r"\b(?:context|background|overview|situation|information|info|data|inputs?|documents?|sources?|"
            r"references?|details|text|article|passage)\b",
        ),
        ("role", r"\b(?:role|persona|identity|system|who you are|about you)\b"),
        ("questions", r"\b(?:questions?|faqs?|quer(?:y|ies))\b"),
    )
)


# --------------------------------------------------------------------------------------------- parsing


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    # See the module docstring for why html, indented code and inline parsing are off.
    return MarkdownIt("commonmark", {"html": False}).enable("table").disable(["code", "inline"])


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _role(name: str) -> SectionRole:
    # snake_case, kebab-case and camelCase names read as words: output_format -> "output format".
    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", name).replace("_", " ").replace("-", " ").replace(".", " ")
    for role, pattern in _ROLES:
        if pattern.search(words):
            return role
    return "other"


@dataclass(slots=True)
class _Inline:
    """The prose of one paragraph, header or table cell, with a probe string of the same length.

    In the probe, code spans are ``x`` runs, the tags of balanced block elements ``\\x00`` runs (they end
    sentences) and other tags spaces, so no pattern matches inside code or tags; offsets in the probe
    are offsets in the content.
    """

    index: int
    content: str
    block: Literal["paragraph", "heading", "table"]
    first_line: int
    last_line: int
    probe: str = ""
    newlines: list[int] = field(default_factory=list)

    def line(self, offset: int) -> int:
        return min(self.last_line, self.first_line + bisect.bisect_left(self.newlines, offset))

    def key(self, offset: int) -> tuple[int, int, int]:
        return (self.line(offset), self.index, offset)


@dataclass(slots=True)
class _Node:
    """A container in the structure graph, with sortable start and end positions."""

    id: str
    kind: Literal["section", "list", "code_block", "xml_element", "table"]
    label: str
    start_line: int
    end_line: int
    start: tuple[int, int, int]
    end: tuple[int, int, int]
    rank: int
    kept: bool = True


@dataclass(slots=True)
class _ListBuild:
    id: str
    ordered: bool
    marker: str
    start_number: int | None
    depth: int
    parent: str | None
    start_line: int
    end_line: int
    items: list[list] = field(default_factory=list)  # [text | None, start_line, end_line]


_BLOCKS = frozenset(
    {
        "paragraph_open",
        "heading_open",
        "bullet_list_open",
        "ordered_list_open",
        "fence",
        "table_open",
        "blockquote_open",
        "hr",
    }
)
_RANK = {"section": 0, "xml_element": 1, "table": 2, "list": 3, "code_block": 4}
_BIG = 1 << 62


def _block_node(id_: str, kind: Literal["section", "list", "code_block", "table"], label: str, a: int, b: int) -> _Node:
    return _Node(id_, kind, label, a, b, (a, -1, -1), (b, _BIG, _BIG), _RANK[kind])


class _Document:
    """The normalised prompt, its lines and the blocks markdown-it found in it."""

    def __init__(self, prompt: str) -> None:
        # markdown-it normalises line endings the same way; both sides then count lines alike.
        self.text = prompt.replace("\r\n", "\n").replace("\r", "\n")
        lines = self.text.split("\n")
        if len(lines) > 1 and lines[-1] == "":
            lines.pop()
        self.lines = lines
        self.line_count = len(lines)
        self.prev_nonblank = [0] * (self.line_count + 1)
        for i, line in enumerate(lines, start=1):
            self.prev_nonblank[i] = i if line.strip() else self.prev_nonblank[i - 1]
        self.headers: list[Header] = []
        self.lists: list[ListBlock] = []
        self.code_blocks: list[CodeBlock] = []
        self.tables: list[Table] = []
        self.inlines: list[_Inline] = []
        self.block_ends: dict[int, int] = {}
        self._parse()
        self.block_starts = sorted(self.block_ends)

    def span(self, token_map: list[int] | None) -> tuple[int, int]:
        """1-based inclusive lines of a markdown-it map, without trailing blank lines."""
        if token_map is None:
            return (1, 1)
        start = min(token_map[0] + 1, self.line_count)
        end = min(max(token_map[1], start), self.line_count)
        return start, self.trim(start, end)

    def trim(self, start: int, end: int) -> int:
        last = self.prev_nonblank[end]
        return last if last >= start else start

    def block_after(self, line: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self.block_starts, line)
        if i == len(self.block_starts):
            return None
        start = self.block_starts[i]
        return start, self.block_ends[start]

    def _parse(self) -> None:
        list_stack: list[_ListBuild] = []
        header: dict[str, Any] | None = None
        table: dict[str, int] | None = None
        for token in _parser().parse(self.text):
            kind = token.type
            if token.map is not None and kind in _BLOCKS:
                a, b = self.span(token.map)
                self.block_ends[a] = max(b, self.block_ends.get(a, a))
            if kind == "heading_open":
                a, b = self.span(token.map)
                header = {
                    "level": int(token.tag[1]),
                    "style": "setext" if token.markup in "=-" else "atx",
                    "a": a,
                    "b": b,
                }
            elif kind == "heading_close" and header is not None:
                self.headers.append(
                    Header(
                        level=header["level"],
                        text=_clip(header.get("text", "")),
                        style=header["style"],
                        section_id=f"section-{len(self.headers) + 1}",
                        start_line=header["a"],
                        end_line=header["b"],
                    )
                )
                header = None
            elif kind in ("bullet_list_open", "ordered_list_open"):
                a, b = self.span(token.map)
                ordered = kind == "ordered_list_open"
                start_attr = token.attrs.get("start", 1) if ordered else None
                list_stack.append(
                    _ListBuild(
                        # lists open in document order: every list opened so far is closed or still open
                        id=f"list-{len(self.lists) + len(list_stack) + 1}",
                        ordered=ordered,
                        marker=token.markup,
                        start_number=int(start_attr) if start_attr is not None else None,
                        depth=len(list_stack) + 1,
                        parent=list_stack[-1].id if list_stack else None,
                        start_line=a,
                        end_line=b,
                    )
                )
            elif kind == "list_item_open" and list_stack:
                a, b = self.span(token.map)
                list_stack[-1].items.append([None, a, b])
            elif kind in ("bullet_list_close", "ordered_list_close") and list_stack:
                done = list_stack.pop()
                self.lists.append(
                    ListBlock(
                        id=done.id,
                        ordered=done.ordered,
                        marker=done.marker,
                        start_number=done.start_number,
                        depth=done.depth,
                        parent_list_id=done.parent,
                        item_count=len(done.items),
                        items=[ListItem(text=text or "", start_line=a, end_line=b) for text, a, b in done.items],
                        start_line=done.start_line,
                        end_line=done.end_line,
                    )
                )
            elif kind == "fence":
                self.code_blocks.append(self._code_block(token.markup, token.info, token.map or [0, 1]))
            elif kind == "table_open":
                a, b = self.span(token.map)
                table = {"a": a, "b": b, "rows": 0, "columns": 0}
            elif kind == "tr_open" and table is not None:
                table["rows"] += 1
            elif kind in ("th_open", "td_open") and table is not None and table["rows"] == 1:
                table["columns"] += 1
            elif kind == "table_close" and table is not None:
                self.tables.append(
                    Table(
                        id=f"table-{len(self.tables) + 1}",
                        rows=table["rows"],
                        columns=table["columns"],
                        start_line=table["a"],
                        end_line=table["b"],
                    )
                )
                table = None
            elif kind == "inline":
                self._add_inline(token.content, token.map, header, table is not None, list_stack)
        # Lists close inner-first; list them in document order.
        self.lists.sort(key=lambda item: int(item.id.split("-")[1]))

    def _code_block(self, markup: str, info: str, token_map: list[int]) -> CodeBlock:
        # markdown-it runs an unclosed fence to the end of its container; a closed one ends on its fence line.
        m0, m1 = token_map
        last = self.lines[m1 - 1] if m1 - m0 >= 2 and m1 <= self.line_count else ""
        closed = re.fullmatch(rf"[ \t>]*{re.escape(markup[0])}{{{len(markup)},}}[ \t]*", last) is not None
        a, b = self.span(token_map)
        language = info.split()[0] if info.strip() else None
        return CodeBlock(
            id=f"code-{len(self.code_blocks) + 1}",
            language=_clip(language) if language else None,
            fence=markup,
            closed=closed,
            content_lines=max(0, m1 - m0 - (2 if closed else 1)),
            start_line=a,
            end_line=max(b, min(m1, self.line_count)) if closed else b,
        )

    def _add_inline(
        self,
        content: str,
        token_map: list[int] | None,
        header: dict[str, Any] | None,
        in_table: bool,
        lists: list[_ListBuild],
    ) -> None:
        if token_map is not None:
            first = min(token_map[0] + 1, self.line_count)
            last = min(max(token_map[1], first), self.line_count)
        else:
            first = last = self.inlines[-1].last_line if self.inlines else 1
        block: Literal["paragraph", "heading", "table"] = "table" if in_table else "paragraph"
        if header is not None:
            header["text"] = content
            block = "heading"
            last = first + content.count("\n")
        if lists and lists[-1].items and lists[-1].items[-1][0] is None:
            lists[-1].items[-1][0] = _clip(content.split("\n", 1)[0])
        self.inlines.append(_Inline(len(self.inlines), content, block, first, min(last, self.line_count)))


# --------------------------------------------------------------------------------------------- inline scans


def _code_spans(text: str) -> list[tuple[int, int]]:
    """CommonMark code spans: a run of n backticks up to the next run of exactly n (offsets of the whole span)."""
    runs = [(m.start(), m.end() - m.start()) for m in _BACKTICKS.finditer(text)]
    by_length: dict[int, list[int]] = {}
    for i, (_, n) in enumerate(runs):
        by_length.setdefault(n, []).append(i)
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(runs):
        pos, n = runs[i]
        k = pos
        while k > 0 and text[k - 1] == "\\":
            k -= 1
        if (pos - k) % 2:  # an escaped backtick is literal; the rest of the run may still open a span
            pos, n = pos + 1, n - 1
        candidates = by_length.get(n, [])
        j = bisect.bisect_right(candidates, i)
        if n and j < len(candidates):
            close = candidates[j]
            spans.append((pos, runs[close][0] + n))
            i = close + 1
        else:
            i += 1
    return spans


@dataclass(slots=True)
class _Tag:
    name: str
    raw: str
    inline: _Inline
    start: int
    end: int
    boundary: bool = False  # the tag of a balanced block element: it ends the sentence before it


@dataclass(slots=True)
class _Xml:
    number: int
    opened: _Tag
    closed: _Tag
    self_closing: bool


class _Scan:
    """Everything found in the prose: code spans, tags, placeholders and sentences."""

    def __init__(self, doc: _Document) -> None:
        self.doc = doc
        self.inline_code: list[InlineCode] = []
        self.xml: list[tuple[XmlElement, _Node]] = []
        self.unbalanced: list[UnbalancedTag] = []
        self.placeholders: list[Placeholder] = []
        self.instructions: list[Instruction] = []
        self.constraints: list[Constraint] = []
        self.examples: list[Example] = []
        self.questions: list[Question] = []
        self.hedged_tasks = 0
        self.task_words: list[int] = []
        self._stack: list[tuple[_Tag, int]] = []
        self._parent_of: list[int | None] = []  # by opening order, for every opening tag
        self._closed: list[_Xml] = []
        self.bounds: list[tuple[int, int, int]] = []  # block elements: start line, end line, last line for a section
        self._pending_io: dict[str, int] = {}
        tags: list[list[_Tag]] = []
        for inline in doc.inlines:
            self._prepare(inline)
            tags.append(self._scan_tags(inline))
        for tag, _ in self._stack:
            self._unbalanced(tag, "unclosed")
        self.xml = self._elements()
        self.unbalanced.sort(key=lambda t: (t.start_line, t.end_line))
        # Only now is it known which tags are blocks; the others ("<b>", a stray "<name>") read as spaces.
        for inline, found in zip(doc.inlines, tags, strict=True):
            if found:
                probe = list(inline.probe)
                for tag in found:
                    probe[tag.start : tag.end] = ("\x00" if tag.boundary else " ") * (tag.end - tag.start)
                inline.probe = "".join(probe)
            self._scan_placeholders(inline)
            self._scan_sentences(inline)
            if inline.block == "paragraph":
                self._scan_labels(inline)

    def _prepare(self, inline: _Inline) -> None:
        content = inline.content
        inline.newlines = [m.start() for m in re.finditer("\n", content)]
        probe = list(content)
        for a, b in _code_spans(content):
            self.inline_code.append(
                InlineCode(
                    text=_clip(content[a:b].strip("`").strip()), start_line=inline.line(a), end_line=inline.line(b - 1)
                )
            )
            for k in range(a, b):
                if probe[k] != "\n":
                    probe[k] = "x"
        inline.probe = "".join(probe)

    def _scan_tags(self, inline: _Inline) -> list[_Tag]:
        found = []
        for m in _TAG.finditer(inline.probe):
            raw = inline.content[m.start() : m.end()]
            tag = _Tag(m.group("close") or m.group("open"), raw, inline, m.start(), m.end())
            found.append(tag)
            if m.group("close"):
                self._close(tag)
                continue
            number = self._open(tag)
            if m.group("self") or tag.name.lower() in _VOID:
                self._stack.pop()
                self._closed.append(_Xml(number, tag, tag, self_closing=True))
        return found

    def _open(self, tag: _Tag) -> int:
        number = len(self._parent_of)
        self._parent_of.append(self._stack[-1][1] if self._stack else None)
        self._stack.append((tag, number))
        return number

    def _close(self, tag: _Tag) -> None:
        for depth in range(len(self._stack) - 1, -1, -1):
            if self._stack[depth][0].name == tag.name:
                for inner, _ in self._stack[depth + 1 :]:
                    self._unbalanced(inner, "unclosed")
                opened, number = self._stack[depth]
                del self._stack[depth:]
                opened.boundary = tag.boundary = opened.name.lower() not in _INLINE_HTML
                self._closed.append(_Xml(number, opened, tag, self_closing=False))
                return
        self._unbalanced(tag, "unopened")

    def _elements(self) -> list[tuple[XmlElement, _Node]]:
        """Number the balanced elements in document order; an unclosed tag is no element, so skip it as a parent."""
        records = sorted(self._closed, key=lambda r: r.number)  # numbers follow the opening tags
        ids = {r.number: f"xml-{i}" for i, r in enumerate(records, start=1)}
        # Nearest enclosing tag that became an element; parents open first, so one forward pass resolves all.
        element_parent: list[int | None] = []
        for parent in self._parent_of:
            element_parent.append(None if parent is None else parent if parent in ids else element_parent[parent])
        depth: dict[int, int] = {}
        out = []
        for r in records:
            parent = element_parent[r.number]
            depth[r.number] = 1 if parent is None else depth[parent] + 1
            a, b = r.opened.inline.line(r.opened.start), r.closed.inline.line(r.closed.end - 1)
            if not r.self_closing and r.opened.name.lower() not in _INLINE_HTML:
                # A header inside this element ends its section before the closing tag's line (or on it,
                # when text precedes the tag on that line).
                content = r.closed.inline.content
                line_head = content[content.rfind("\n", 0, r.closed.start) + 1 : r.closed.start]
                self.bounds.append((a, b, b - 1 if not line_head.strip() and b > a else b))
            element = XmlElement(
                id=ids[r.number],
                name=r.opened.name,
                role=_role(r.opened.name),
                depth=depth[r.number],
                parent_id=None if parent is None else ids[parent],
                self_closing=r.self_closing,
                start_line=a,
                end_line=b,
            )
            start, end = r.opened.inline.key(r.opened.start), r.closed.inline.key(r.closed.end - 1)
            out.append(
                (
                    element,
                    _Node(element.id, "xml_element", f"<{r.opened.name}>", a, b, start, end, _RANK["xml_element"]),
                )
            )
        return out

    def _unbalanced(self, tag: _Tag, problem: Literal["unclosed", "unopened"]) -> None:
        line = tag.inline.line(tag.start)
        self.unbalanced.append(
            UnbalancedTag(name=tag.name, tag=_clip(tag.raw), problem=problem, start_line=line, end_line=line)
        )

    def _scan_placeholders(self, inline: _Inline) -> None:
        for m in _PLACEHOLDER.finditer(inline.probe):
            style = "dollar_brace" if m.group("dollar") else "double_brace" if m.group("double") else "single_brace"
            name = m.group("dollar") or m.group("double") or m.group("single")
            line = inline.line(m.start())
            self.placeholders.append(
                Placeholder(
                    name=name, style=style, raw=inline.content[m.start() : m.end()], start_line=line, end_line=line
                )
            )

    # -- sentences ---------------------------------------------------------------------------------------

    def _scan_sentences(self, inline: _Inline) -> None:
        for a, b in _sentences(inline.probe):
            probe = inline.probe[a:b]
            text = inline.content[a:b]
            if _is_question(probe):
                self.questions.append(
                    Question(text=_clip(text), start_line=inline.line(a), end_line=inline.line(b - 1))
                )
                if inline.block != "heading":
                    self._task(probe)
                continue
            if inline.block == "heading":
                continue
            if _EXAMPLE_CUE.search(probe):
                self.examples.append(
                    Example(kind="cue", text=_clip(text), start_line=inline.line(a), end_line=inline.line(b - 1))
                )
            for ua, ub in _units(probe, a):
                self._unit(inline, ua, ub)

    def _unit(self, inline: _Inline, a: int, b: int) -> None:
        probe, text = inline.probe[a:b], inline.content[a:b]
        lines = {"start_line": inline.line(a), "end_line": inline.line(b - 1)}
        directive = _directive(probe)
        if directive is not None:
            verb, polarity = directive
            self.instructions.append(Instruction(text=_clip(text), verb=verb, polarity=polarity, **lines))
            self._task(probe)
        kinds: list[str] = []
        cues: list[str] = []
        for kind, pattern in _CONSTRAINT_CUES:
            found = [" ".join(m.group(0).lower().split()) for m in pattern.finditer(probe)]
            if found:
                kinds.append(kind)
                cues.extend(cue for cue in found if cue not in cues)
        if kinds:
            self.constraints.append(Constraint(text=_clip(text), kinds=kinds, cues=cues, **lines))  # type: ignore[arg-type]

    def _task(self, probe: str) -> None:
        self.task_words.append(len(probe.split()))
        if _HEDGES.search(probe):
            self.hedged_tasks += 1

    # -- example labels and input/output pairs ----------------------------------------------------------

    def _scan_labels(self, inline: _Inline) -> None:
        offset = 0
        for line_text in inline.probe.split("\n"):
            line = inline.line(offset)
            offset += len(line_text) + 1
            clean = line_text.replace("\x00", " ")
            label = _EXAMPLE_LABEL.match(clean)
            if label:
                # The example is the rest of the paragraph, or the block right after a bare "Example:".
                end = inline.last_line
                if not label.group("rest").strip() and line == inline.last_line:
                    end = self._following(inline) or end
                self.examples.append(Example(kind="label", text=_clip(clean), start_line=line, end_line=end))
                continue
            io = _IO_LABEL.match(clean)
            if not io:
                continue
            family, side = _IO_ROLES[io.group("label").lower()]
            if side == "in":
                self._pending_io[family] = line
                continue
            start = self._pending_io.pop(family, None)
            if start is None:
                continue
            if io.group("rest").strip():
                end: int | None = line
            elif line < inline.last_line:
                end = inline.last_line  # the answer continues on the paragraph's next lines
            else:
                end = self._following(inline)  # "Output:" then a code block or list
            if end is not None:  # a bare "Output:" with nothing after it is a template slot, not an example
                self.examples.append(
                    Example(kind="io_pair", text=_clip(self.doc.lines[start - 1]), start_line=start, end_line=end)
                )

    def _following(self, inline: _Inline) -> int | None:
        """Last line of the block that starts right after ``inline`` (at most one blank line between)."""
        after = self.doc.block_after(inline.last_line)
        return after[1] if after is not None and after[0] <= inline.last_line + 2 else None


def _sentences(probe: str) -> list[tuple[int, int]]:
    """Sentence spans: lines and tags end sentences, but a line that continues in lower case is joined."""
    pieces = [(m.start(), m.end()) for m in re.finditer(r"[^\n\x00]+", probe) if m.group(0).strip()]
    chunks: list[list[int]] = []
    for a, b in pieces:
        if chunks:
            prev_a, prev_b = chunks[-1]
            gap = probe[prev_b:a]
            prev = probe[prev_a:prev_b].rstrip()
            head = probe[a:b].lstrip()
            if "\x00" not in gap and prev and prev[-1] not in ".!?:;" and head[:1].islower():
                chunks[-1][1] = b
                continue
        chunks.append([a, b])
    spans: list[tuple[int, int]] = []
    for a, b in chunks:
        start = a
        for m in _SENTENCE_END.finditer(probe, a, b):
            # Look back a bounded distance only: long runs of skipped full stops must stay linear.
            word = re.search(r"[\w.]+$", probe[max(start, m.start() - 12) : m.start() + 1])
            if word and word.group(0).rstrip(".").lower() in _ABBREVIATIONS and m.group(0) == ".":
                continue
            if m.start() - start <= 8 and re.fullmatch(r"\d{1,3}|[A-Za-z]", probe[start : m.start()].strip()):
                continue  # "1. Do this" inside a paragraph is an enumerator, not a sentence
            spans.append((start, m.end()))
            start = m.end()
        spans.append((start, b))
    out = []
    for a, b in spans:
        while a < b and probe[a].isspace():
            a += 1
        while b > a and probe[b - 1].isspace():
            b -= 1
        if any(ch.isalnum() for ch in probe[a:b]):
            out.append((a, b))
    return out


def _units(sentence: str, base: int) -> Iterable[tuple[int, int]]:
    """A sentence's clauses split at semicolons ("Create a query; return id & total" is two directives)."""
    start = 0
    for m in re.finditer(r";", sentence + ";"):
        a, b = start, m.start()
        start = m.end()
        while a < b and sentence[a].isspace():
            a += 1
        while b > a and sentence[b - 1].isspace():
            b -= 1
        if any(ch.isalnum() for ch in sentence[a:b]):
            yield base + a, base + b


def _is_question(probe: str) -> bool:
    return probe.rstrip("\"'”’)] \t*_").endswith("?")


def _directive(probe: str) -> tuple[str, Literal["do", "do_not"]] | None:
    """The verb and polarity of an instruction, or None when the clause does not direct the reader."""
    text = _ENUMERATOR.sub("", _MARKUP.sub("", probe), count=1)
    candidates = [text]
    label = _LABEL.match(text)
    if label:
        # "Task: write a poem" directs after the label; "Output format: JSON" is a noun phrase, but
        # "Write the following: ..." is a directive whose object comes after the colon.
        words = label.group(0).rstrip(": \t").split()
        verb_phrase = len(words) >= 4 or (len(words) >= 2 and words[1].lower() in _DETERMINERS)
        candidates = [text[label.end() :], text] if verb_phrase else [text[label.end() :]]
    for candidate in candidates:
        candidate = _LEAD.sub("", _MARKUP.sub("", candidate))
        words = _WORD.findall(candidate[:200])
        if len(words) < 2:  # a one-word cell or label ("List", "Output") is a noun more often than a verb
            continue
        negative = _NEGATIVE.match(candidate)
        if negative:
            return negative.group("verb").lower(), "do_not"
        if words[0].lower() in _VERBS and words[1].lower() not in _NOUN_FOLLOWERS:
            return words[0].lower(), "do"
        modal = _MODAL.search(candidate[:300])
        if modal and modal.start() <= 40:
            return modal.group("verb").lower(), "do_not" if modal.group("not") else "do"
    return None


# --------------------------------------------------------------------------------------------- graph


def _graph(nodes: list[_Node], line_count: int) -> StructureGraph:
    """Parent of each node: the innermost open container when it starts (a sweep over sorted spans).

    Spans that cross (an XML element that outlives a Markdown section) attach to the latest container
    still open that holds them whole. A node cut by ``max_items`` hands its children to its nearest
    kept ancestor.
    """
    order = sorted(nodes, key=lambda n: (n.start, (-n.end[0], -n.end[1], -n.end[2]), n.rank))
    kept_ancestor: dict[str, str] = {}  # parents come first in ``order``, so one pass resolves them all
    stack: list[_Node] = []
    graph_nodes = [GraphNode(id="document", kind="document", label="document", start_line=1, end_line=line_count)]
    edges: list[GraphEdge] = []
    for node in order:
        while stack and stack[-1].end < node.end:
            stack.pop()
        parent = stack[-1] if stack else None
        source = "document" if parent is None else parent.id if parent.kept else kept_ancestor[parent.id]
        kept_ancestor[node.id] = source
        stack.append(node)
        if node.kept:
            graph_nodes.append(
                GraphNode(
                    id=node.id, kind=node.kind, label=node.label, start_line=node.start_line, end_line=node.end_line
                )
            )
            edges.append(GraphEdge(source=source, target=node.id))
    return StructureGraph(nodes=graph_nodes, edges=edges)


# --------------------------------------------------------------------------------------------- scoring


def _sub(name: str, score: float, reason: str, **signals: float) -> SubScore:
    return SubScore(
        name=name,  # type: ignore[arg-type]
        weight=WEIGHTS[name],
        score=round(min(1.0, max(0.0, score)), 4),
        reason=reason,
        signals={k: round(float(v), 4) for k, v in signals.items()},
    )


def _organisation(doc: _Document, sections: list[Section], blocks: list[XmlElement]) -> SubScore:
    nonblank = doc.prev_nonblank
    total = sum(1 for line in doc.lines if line.strip())
    if total == 0:
        return _sub("organisation", 0.0, "the prompt is blank", sectioned=0, coverage=0, grouping=0)
    marks = [0] * (doc.line_count + 2)
    for item in [*sections, *blocks]:
        marks[item.start_line] += 1
        marks[item.end_line + 1] -= 1
    covered, depth = 0, 0
    for i in range(1, doc.line_count + 1):
        depth += marks[i]
        if depth > 0 and nonblank[i] == i:
            covered += 1
    sectioned = 1.0 if sections or blocks else 0.0
    coverage = covered / total
    grouping = 1.0 if doc.lists or doc.tables or doc.code_blocks else 0.0
    score = 0.4 * sectioned + 0.3 * coverage + 0.3 * grouping
    parts = []
    if sectioned:
        parts.append(
            f"{len(sections)} header section(s) and {len(blocks)} XML block(s) cover {coverage:.0%} of the text"
        )
    else:
        parts.append("no headers or XML blocks divide the prompt")
    groups = len(doc.lists) + len(doc.tables) + len(doc.code_blocks)
    parts.append(f"{groups} list/table/code group(s)" if groups else "no lists, tables or code blocks group content")
    if total <= 3 and score < 1:
        parts.append("a prompt of 3 lines or fewer needs little structure")
    return _sub("organisation", score, "; ".join(parts), sectioned=sectioned, coverage=coverage, grouping=grouping)


def _instructions(scan: _Scan) -> SubScore:
    tasks = len(scan.task_words)
    if tasks == 0:
        return _sub("instructions", 0.0, "no imperative instruction or question states the task", tasks=0)
    specificity = 1 - scan.hedged_tasks / tasks
    concision = sum(min(1.0, 30 / max(words, 1)) for words in scan.task_words) / tasks
    score = 0.5 + 0.25 * specificity + 0.25 * concision
    reason = (
        f"{len(scan.instructions)} instruction(s) and {len(scan.questions)} question(s); "
        f"{scan.hedged_tasks} hedged (maybe, try to, etc.); mean directness {concision:.2f} (1 = at most 30 words)"
    )
    return _sub("instructions", score, reason, tasks=tasks, specificity=specificity, concision=concision)


def _constraints(scan: _Scan) -> SubScore:
    n = len(scan.constraints)
    kinds = sorted({kind for c in scan.constraints for kind in c.kinds})
    score = 0.6 * min(1.0, n / 3) + 0.4 * min(1.0, len(kinds) / 2)
    reason = (
        f"{n} constraint(s) of kinds {', '.join(kinds)}" if n else "no constraints (must, never, at most, N words, ...)"
    )
    return _sub("constraints", score, reason, count=n, kinds=len(kinds))


def _example_groups(examples: list[Example]) -> int:
    groups, end = 0, 0
    for example in sorted(examples, key=lambda e: (e.start_line, e.end_line)):
        if groups == 0 or example.start_line > end:
            groups += 1
            end = example.end_line
        else:
            end = max(end, example.end_line)
    return groups


def _examples(examples: list[Example]) -> SubScore:
    groups = _example_groups(examples)
    score = 0.0 if groups == 0 else min(1.0, 0.4 + 0.3 * groups)
    if groups == 0:
        reason = "no examples (Example:, e.g., Input/Output pairs, an Examples section)"
    else:
        reason = f"{groups} separate example(s)" + ("" if groups >= 2 else "; two or more show the pattern better")
    return _sub("examples", score, reason, groups=groups)


def _formatting(doc: _Document, scan: _Scan, sections: list[Section]) -> SubScore:
    checks: dict[str, float] = {}
    problems: list[str] = []
    if doc.code_blocks:
        unclosed = sum(not c.closed for c in doc.code_blocks)
        untagged = sum(c.language is None for c in doc.code_blocks)
        checks["fences_closed"] = 1 - unclosed / len(doc.code_blocks)
        checks["fence_languages"] = 1 - untagged / len(doc.code_blocks)
        if unclosed:
            problems.append(f"{unclosed} unclosed code fence(s)")
        if untagged:
            problems.append(f"{untagged} code block(s) without a language")
    tags = len(scan.xml) + len(scan.unbalanced)
    if tags:
        checks["tags_balanced"] = len(scan.xml) / tags
        if scan.unbalanced:
            problems.append(f"{len(scan.unbalanced)} unbalanced tag(s)")
    if len(doc.headers) >= 2:
        skips = sum(b.level > a.level + 1 for a, b in zip(doc.headers, doc.headers[1:], strict=False))
        checks["header_levels"] = 1 - skips / (len(doc.headers) - 1)
        if skips:
            problems.append(f"{skips} header level jump(s) (e.g. # then ###)")
    if sections:
        empty = sum(s.end_line == doc.headers[i].end_line for i, s in enumerate(sections))
        checks["non_empty_sections"] = 1 - empty / len(sections)
        if empty:
            problems.append(f"{empty} empty section(s)")
    if not checks:
        return _sub("formatting", 1.0, "no fences, tags or headers to get wrong")
    score = sum(checks.values()) / len(checks)
    reason = "; ".join(problems) if problems else f"all {len(checks)} formatting check(s) pass"
    return _sub("formatting", score, reason, **checks)


# --------------------------------------------------------------------------------------------- component


def _sections(doc: _Document, bounds: list[tuple[int, int, int]]) -> list[Section]:
    """Each header's section: up to the next header of the same or a higher level, within its XML element.

    The section ends on the last non-blank line before the next header of the same or a higher level,
    or before the closing tag of the innermost XML element the header sits in, whichever comes first.
    """
    # Balanced elements nest, so a stack sweep over them in start order finds each header's innermost one.
    ordered = sorted(bounds, key=lambda b: (b[0], -b[1]))
    stack: list[tuple[int, int, int]] = []
    limits: list[int] = []
    j = 0
    for h in doc.headers:
        while j < len(ordered) and ordered[j][0] < h.start_line:
            while stack and stack[-1][1] < ordered[j][0]:
                stack.pop()
            stack.append(ordered[j])
            j += 1
        while stack and stack[-1][1] < h.start_line:
            stack.pop()
        limits.append(stack[-1][2] if stack else doc.line_count)
    ends = [doc.line_count] * len(doc.headers)
    parents: list[str | None] = []
    open_: list[int] = []
    for i, h in enumerate(doc.headers):
        while open_ and doc.headers[open_[-1]].level >= h.level:
            ends[open_.pop()] = h.start_line - 1
        parents.append(doc.headers[open_[-1]].section_id if open_ else None)
        open_.append(i)
    sections = []
    for h, end, limit, parent in zip(doc.headers, ends, limits, parents, strict=True):
        last = max(min(end, limit), h.start_line)
        sections.append(
            Section(
                id=h.section_id,
                title=h.text,
                level=h.level,
                role=_role(h.text),
                parent_id=parent,
                start_line=h.start_line,
                end_line=max(h.end_line, doc.trim(h.start_line, last)),
            )
        )
    return sections


def _cut(kind: str, items: list, include: set[str], max_items: int, truncated: list[str]) -> list | None:
    if kind not in include:
        return None
    if len(items) > max_items:
        truncated.append(kind)
    return items[:max_items]


@component(
    "StructuralAnalyzer",
    tier="tier3",
    capabilities=["prompt_structure", "prompt_scoring"],
    example={
        "prompt": "# Task\nSummarise the article below in at most 3 bullet points.\n\n"
        "<article>\n{article}\n</article>\n\n"
        "## Rules\n- Never invent facts.\n- Use plain English.\n\nExample:\nInput: The cat sat.\nOutput: - A cat sat.",
    },
)
def structural_analyzer(request: StructuralAnalyzerInput) -> StructuralAnalyzerOutput:
    """Structure of a prompt: sections, lists, code, XML tags, instructions, constraints, examples, questions.

    Lists every element with 1-based inclusive line spans, builds a structure graph (document, sections,
    lists, code blocks, tables and XML elements joined by "contains" edges; a node's parent is the
    innermost container open where it starts) and scores the structure in [0, 1]:

        score = 0.25·organisation + 0.25·instructions + 0.20·constraints + 0.15·examples + 0.15·formatting

    * organisation = 0.4·[any header or XML block] + 0.3·(share of non-blank lines inside a section or
      XML block) + 0.3·[any list, table or code block]. Inline HTML tags (b, em, span, ...) are not blocks.
    * instructions = 0 without a task (no imperative instruction or question in the prose); otherwise
      0.5 + 0.25·(1 − share of tasks hedged with maybe/try to/etc.) + 0.25·mean(min(1, 30 / words)).
    * constraints = 0.6·min(1, n / 3) + 0.4·min(1, distinct kinds / 2), kinds being prohibition,
      requirement, limit and format.
    * examples = 0 without examples, else min(1, 0.4 + 0.3·g), g = groups of overlapping example spans.
    * formatting = mean of the checks that apply: share of closed fences, of fences naming a language,
      of balanced tags, of header steps without a skipped level, of non-empty sections; 1 when none apply.

    Instructions, constraints and examples are found with documented heuristics (directive verbs,
    "you must/should", cue words, labels), so they are indications for a reader, not a grammar.
    """
    doc = _Document(request.prompt)
    scan = _Scan(doc)
    sections = _sections(doc, scan.bounds)
    xml_elements = [element for element, _ in scan.xml]
    blocks = [e for e in xml_elements if not e.self_closing and e.name.lower() not in _INLINE_HTML]
    examples = list(scan.examples)
    examples += [
        Example(kind="section", text=s.title, start_line=s.start_line, end_line=s.end_line)
        for s in sections
        if s.role == "examples"
    ]
    examples += [
        Example(kind="xml", text=f"<{e.name}>", start_line=e.start_line, end_line=e.end_line)
        for e in blocks
        if e.role == "examples"
    ]
    examples.sort(key=lambda e: (e.start_line, e.end_line))

    include = set(request.include) if request.include is not None else set(ELEMENT_KINDS)
    truncated: list[str] = []
    cap = request.max_items
    graph = None
    if request.include_graph:
        nodes = [
            *(_block_node(s.id, "section", s.title or f"h{s.level}", s.start_line, s.end_line) for s in sections),
            *(
                _block_node(
                    b.id,
                    "list",
                    f"{'numbered' if b.ordered else 'bullet'} list ({b.item_count} items)",
                    b.start_line,
                    b.end_line,
                )
                for b in doc.lists
            ),
            *(
                _block_node(c.id, "code_block", f"code ({c.language or 'plain'})", c.start_line, c.end_line)
                for c in doc.code_blocks
            ),
            *(_block_node(t.id, "table", f"table {t.rows}×{t.columns}", t.start_line, t.end_line) for t in doc.tables),
            *(node for _, node in scan.xml),
        ]
        per_kind: dict[str, int] = {}
        for node in sorted(nodes, key=lambda n: n.start):
            per_kind[node.kind] = per_kind.get(node.kind, 0) + 1
            node.kept = per_kind[node.kind] <= cap
        graph = _graph(nodes, doc.line_count)

    scores = [
        _organisation(doc, sections, blocks),
        _instructions(scan),
        _constraints(scan),
        _examples(examples),
        _formatting(doc, scan, sections),
    ]
    total = sum(s.weight * s.score for s in scores)
    counts = {
        "headers": len(doc.headers),
        "sections": len(sections),
        "lists": len(doc.lists),
        "list_items": sum(b.item_count for b in doc.lists),
        "code_blocks": len(doc.code_blocks),
        "inline_code": len(scan.inline_code),
        "xml_elements": len(xml_elements),
        "unbalanced_tags": len(scan.unbalanced),
        "tables": len(doc.tables),
        "instructions": len(scan.instructions),
        "constraints": len(scan.constraints),
        "examples": len(examples),
        "example_groups": _example_groups(examples),
        "questions": len(scan.questions),
        "placeholders": len(scan.placeholders),
    }
    return StructuralAnalyzerOutput(
        line_count=doc.line_count,
        char_count=len(doc.text),
        word_count=len(doc.text.split()),
        counts=counts,
        headers=_cut("headers", doc.headers, include, cap, truncated),
        sections=_cut("sections", sections, include, cap, truncated),
        lists=_cut("lists", doc.lists, include, cap, truncated),
        code_blocks=_cut("code_blocks", doc.code_blocks, include, cap, truncated),
        inline_code=_cut("inline_code", scan.inline_code, include, cap, truncated),
        xml_elements=_cut("xml_elements", xml_elements, include, cap, truncated),
        unbalanced_tags=_cut("unbalanced_tags", scan.unbalanced, include, cap, truncated),
        tables=_cut("tables", doc.tables, include, cap, truncated),
        instructions=_cut("instructions", scan.instructions, include, cap, truncated),
        constraints=_cut("constraints", scan.constraints, include, cap, truncated),
        examples=_cut("examples", examples, include, cap, truncated),
        questions=_cut("questions", scan.questions, include, cap, truncated),
        placeholders=_cut("placeholders", scan.placeholders, include, cap, truncated),
        variables=_cut("variables", sorted({p.name for p in scan.placeholders}), {"variables"}, cap, truncated) or [],
        graph=graph,
        score=round(min(1.0, max(0.0, total)), 4),
        sub_scores=scores,
        truncated=truncated,
    )
