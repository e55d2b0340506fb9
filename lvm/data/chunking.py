"""Text -> chunks: rule-based sentence splitting, a minimum chunk length, optional merging.

A chunk is one encoded text unit. By default a chunk is a sentence; sentences shorter than
``min_chars`` are glued to their neighbour (a lone "Rome." carries no signal to predict), and
``target_chars`` optionally packs consecutive sentences into chunks of about that size.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

# Tokens that end with a period but do not end a sentence.
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "ft",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "al",
        "approx",
        "ca",
        "c",
        "no",
        "nos",
        "vol",
        "fig",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "u.s",
        "u.k",
        "u.n",
        "inc",
        "ltd",
        "co",
        "corp",
        "gen",
        "col",
        "lt",
        "sgt",
        "rev",
        "gov",
        "pres",
        "rep",
        "sen",
        "est",
        "dept",
        "univ",
        "op",
        "pp",
        "ed",
        "eds",
    ]
)
# A candidate boundary: terminal punctuation, optional closing quotes/brackets, whitespace, then
# something that can start a sentence.
_BOUNDARY = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")


_WORD = re.compile(r"[^\W_]")  # a letter or a digit, in any script


def has_word(text: str) -> bool:
    """``text`` holds at least one letter or digit (a chunk of only punctuation, symbols or spaces
    carries nothing to encode)."""
    return _WORD.search(text) is not None


@dataclass(frozen=True)
class ChunkerConfig:
    min_chars: int = 20  # shorter sentences are merged into a neighbour
    target_chars: int | None = None  # pack sentences up to about this many characters (None: off)

    def to_dict(self) -> dict:
        return {"kind": "sentences", **asdict(self)}


def _ends_with_abbreviation(text: str) -> bool:
    word = text.rstrip(".!?\"')]\u201d\u2019").split()[-1:] or [""]
    token = word[0].lower().strip("(\"'")
    # single letters ("J. R. R. Tolkien") and known abbreviations
    return len(token) == 1 or token in _ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences (rule-based; good enough for encyclopaedic prose)."""
    text = " ".join(text.split())
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        candidate = text[start : m.start() + 1]
        if text[m.start()] == "." and _ends_with_abbreviation(candidate):
            continue
        sentences.append(text[start : m.end()].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def merge_short(pieces: list[str], min_chars: int) -> list[str]:
    """Glue pieces shorter than ``min_chars`` to the previous piece (or the next one if first)."""
    out: list[str] = []
    carry = ""
    for p in pieces:
        p = (carry + " " + p).strip() if carry else p
        carry = ""
        if len(p) >= min_chars:
            out.append(p)
        elif out:
            out[-1] = out[-1] + " " + p
        else:
            carry = p
    if carry:
        out.append(carry)  # the whole article is shorter than min_chars: keep it as one chunk
    return out


def pack_to_target(pieces: list[str], target_chars: int) -> list[str]:
    """Greedily pack consecutive pieces into chunks of at least ``target_chars`` characters."""
    out: list[str] = []
    cur = ""
    for p in pieces:
        cur = (cur + " " + p).strip() if cur else p
        if len(cur) >= target_chars:
            out.append(cur)
            cur = ""
    if cur:
        if out and len(cur) < target_chars // 2:
            out[-1] = out[-1] + " " + cur
        else:
            out.append(cur)
    return out


def chunk_text(text: str, cfg: ChunkerConfig = ChunkerConfig()) -> list[str]:
    pieces = merge_short(split_sentences(text), cfg.min_chars)
    if cfg.target_chars:
        pieces = pack_to_target(pieces, cfg.target_chars)
    return pieces
