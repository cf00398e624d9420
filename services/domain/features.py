"""Features measured on a prompt's text, shared by the sample data and the training-data loader."""

from __future__ import annotations

import math
import re

__all__ = ["TEXT_FEATURES", "text_features"]

TEXT_FEATURES = ("prompt_length", "word_count", "has_headers", "has_list", "has_code", "has_xml", "vagueness")

_HEADER = re.compile(r"^\s{0,3}#{1,6}\s", re.MULTILINE)
_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s", re.MULTILINE)
_XML = re.compile(r"<([A-Za-z][\w-]*)>.*?</\1>", re.DOTALL)


def text_features(text: str) -> dict[str, float]:
    """Length, words, structure flags (markdown headers, lists, code fences, XML tags) and a 0..1 vagueness.

    Vagueness is 1 for a one-word prompt and falls with the log of the word count to 0.25 at about 60 words;
    each kind of structure present lowers it by 0.1 (clipped to [0, 1]).
    """
    words = len(text.split())
    has_headers = float(bool(_HEADER.search(text)))
    has_list = float(bool(_LIST.search(text)))
    has_code = float("```" in text)
    has_xml = float(bool(_XML.search(text)))
    brevity = min(1.0, max(0.0, 1.0 - math.log(words) / math.log(60))) if words else 1.0
    structure = (has_headers + has_list + has_code + has_xml) / 4
    vagueness = round(max(0.0, min(1.0, 0.25 + 0.75 * brevity - 0.4 * structure)), 6)
    return {
        "prompt_length": float(len(text)),
        "word_count": float(words),
        "has_headers": has_headers,
        "has_list": has_list,
        "has_code": has_code,
        "has_xml": has_xml,
        "vagueness": vagueness,
    }
