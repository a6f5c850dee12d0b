"""The Gopher/C4 quality heuristics of ``data.clean``: each measure a pure function of one document, each
threshold a key of ``config.CleanConfig`` (``QUALITY_RULES``). Words are whitespace-separated (punctuation
tokens included, as Gopher's tokenizer keeps them); lines are the non-empty lines, stripped.
Gopher: Rae et al. 2021, "Scaling Language Models", appendix A; C4: Raffel et al. 2020, section 2.2.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gptune.config import CleanConfig

GOPHER_STOP_WORDS = frozenset("the be to of and that have with".split())
"""Gopher's stop words (Rae et al. 2021, appendix A): a document of English prose has at least two."""
_TERMINAL = tuple('.!?"\'”’»)]')
_PUNCT_ONLY = re.compile(r"^[^\w]+$")


def words_of(text: str) -> list[str]:
    """Whitespace-separated words (punctuation tokens included, as Gopher's tokenizer keeps them)."""
    return text.split()


def lines_of(text: str) -> list[str]:
    """The non-empty lines, stripped."""
    return [s for s in (line.strip() for line in text.splitlines()) if s]


def mean_word_length(words: list[str]) -> float:
    """Mean length of the words that are not punctuation alone."""
    real = [w for w in words if not _PUNCT_ONLY.match(w)]
    return sum(map(len, real)) / len(real) if real else 0.0


def symbol_ratio(text: str, words: list[str]) -> float:
    """(``#`` + ellipses) per word."""
    n = text.count("#") + text.count("...") + text.count("…")
    return n / max(1, len(words))


def alpha_word_fraction(words: list[str]) -> float:
    """Fraction of words with at least one letter."""
    return sum(any(c.isalpha() for c in w) for w in words) / len(words) if words else 0.0


def punctuation_line_fraction(lines: list[str]) -> float:
    """Fraction of non-empty lines that end in terminal punctuation."""
    return sum(line.endswith(_TERMINAL) for line in lines) / len(lines) if lines else 0.0


def repeated_line_fraction(lines: list[str]) -> float:
    """Fraction of non-empty lines equal to an earlier line."""
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


def top_ngram_fraction(words: list[str], n: int = 2) -> float:
    """Characters of the most frequent word n-gram (times its count) over all word characters."""
    total = sum(map(len, words))
    if len(words) < n or not total:
        return 0.0
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = grams.most_common(1)[0]
    return count * sum(map(len, gram)) / total if count > 1 else 0.0


def dup_ngram_fraction(words: list[str], n: int = 5) -> float:
    """Fraction of word characters inside word n-grams that occur earlier in the document (each word
    counted once; Gopher's duplicate n-gram character fraction)."""
    total = sum(map(len, words))
    if len(words) < n or not total:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    dup = np.zeros(len(words), dtype=bool)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            dup[i : i + n] = True
        else:
            seen.add(gram)
    return sum(len(w) for w, d in zip(words, dup, strict=True) if d) / total


def stop_word_count(words: list[str]) -> int:
    """How many words are Gopher stop words."""
    return sum(w.lower() in GOPHER_STOP_WORDS for w in words)


@dataclass(frozen=True)
class Doc:
    """One document as the quality measures see it (words and lines split once)."""

    text: str
    words: list[str]
    lines: list[str]

    @classmethod
    def of(cls, text: str) -> Doc:
        return cls(text, words_of(text), lines_of(text))


# (data.clean key, measure, "min" or "max"): a document fails when its measure is below a min / above a max.
QUALITY_RULES: list[tuple[str, Callable[[Doc], float], str]] = [
    ("min_mean_word_length", lambda d: mean_word_length(d.words), "min"),
    ("max_mean_word_length", lambda d: mean_word_length(d.words), "max"),
    ("max_symbol_ratio", lambda d: symbol_ratio(d.text, d.words), "max"),
    ("min_alpha_word_fraction", lambda d: alpha_word_fraction(d.words), "min"),
    ("min_punctuation_lines", lambda d: punctuation_line_fraction(d.lines), "min"),
    ("max_repeated_lines", lambda d: repeated_line_fraction(d.lines), "max"),
    ("max_top_2gram_fraction", lambda d: top_ngram_fraction(d.words, 2), "max"),
    ("max_dup_5gram_fraction", lambda d: dup_ngram_fraction(d.words, 5), "max"),
    ("min_stop_words", lambda d: stop_word_count(d.words), "min"),
]


def quality_failure(text: str, cfg: CleanConfig) -> tuple[str, float] | None:
    """``(key, measured value)`` of the first quality rule `text` fails, or None."""
    doc = None
    for key, measure, kind in QUALITY_RULES:
        limit = getattr(cfg, key)
        if limit is None:
            continue
        doc = doc or Doc.of(text)
        value = measure(doc)
        if (value < limit) if kind == "min" else (value > limit):
            return key, float(value)
    return None
