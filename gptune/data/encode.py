"""Tokenize a stream of texts in bounded batches, in worker processes, with exactly the ids of the whole texts.

Each text is cut into pieces (``split_exact``), pieces are grouped into batches of about ``batch_chars``
characters, and each batch is encoded by one of ``num_proc`` worker processes (``gptune.data.workers``)
with the tokenizers batch API. At most ``2 * num_proc`` batches are in flight, so memory does not grow with
the corpus; results come back in input order.

Why pieces are exact for GPT-2 byte-level BPE: BPE merges never cross a pre-token, so cutting the
text where a pre-token boundary is guaranteed gives the same ids as tokenizing it whole. GPT-2's
pre-tokenizer regex (``... |\\s+(?!\\S)|\\s+``) always ends a whitespace run that precedes a
non-space character one character early; when that last character is ``\\n`` it becomes a pre-token
of its own. So we cut *before* a ``\\n`` that is followed by a non-space character: the left piece
ends with the rest of the whitespace run (matched whole by ``\\s+(?!\\S)`` in both cases) and the right
piece starts with the lone ``\\n``. Cutting *after* the newline would not be exact: ``"a \\nb"`` is
``a|' '|\\n|b`` whole but ``a|' \\n'`` + ``b`` in pieces. The same argument holds for a space followed
by a non-space character (``tail_cut``'s fallback). tests/test_text_data.py pins this. For
whitespace-splitting tokenizers (GPT-1's BERT-style pre-tokenizer) any whitespace cut is exact; for
SentencePiece-style tokenizers that prepend a space marker it is close but not exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from gptune.data.workers import ordered_map

PIECE_CHARS = 8192  # pieces of about this size: many per batch, so batches stay even
BATCH_CHARS = 1 << 20  # characters per worker batch: big enough to amortise a process hand-off
_CUT = re.compile(r"\n(?=\S)")  # see the module docstring: cut before this newline
_SPACE_CUT = re.compile(r" (?=\S)")


def split_exact(text: str, piece_chars: int | None = None) -> list[str]:
    """Cut `text` into pieces of about `piece_chars` whose tokens, joined, equal the whole's tokens.

    Cuts fall just before a ``\\n`` followed by a non-space character (see the module docstring).
    A piece with no such newline after `piece_chars` runs to the end of the text.
    """
    piece_chars = piece_chars or PIECE_CHARS
    pieces = []
    start = 0
    while len(text) - start > piece_chars:
        m = _CUT.search(text, start + piece_chars)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def tail_cut(text: str, fraction: float) -> int:
    """Where to cut `text` so the last ~`fraction` of it is held out, at an exact cut (module docstring).

    The first line start at or after the target, else the last one before it, else a space before a word;
    ``len(text)`` when there is no exact cut (the whole text stays on the training side).
    """
    target = int(len(text) * (1 - fraction))
    for pattern in (_CUT, _SPACE_CUT):
        m = pattern.search(text, max(1, target))
        if m is not None:
            return m.start()
        before = [m.start() for m in pattern.finditer(text, 1, target)][-1:]
        if before:
            return before[0]
    return len(text)


def encode_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens. The one place pretraining tokenization runs."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer directly: no max-length warnings, batch-parallel
        # encode_batch_fast skips character offsets (unused here): about 15% faster, same ids.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


_worker_tokenizer: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_batch(pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(all ids of the batch concatenated, ids per piece): two arrays, cheap to send between processes."""
    ids = encode_ids(_worker_tokenizer, pieces)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((t for x in ids for t in x), dtype=np.uint32, count=int(lengths.sum()))
    return flat, lengths


def encode_texts(
    items: Iterable[tuple[Any, str]],
    tokenizer: Any,
    *,
    num_proc: int = 1,
    batch_chars: int | None = None,
    piece_chars: int | None = None,
) -> Iterator[tuple[Any, np.ndarray]]:
    """``(tag, ids)`` for each ``(tag, text)`` of `items`, in order; ids are a uint32 array."""
    batch_chars = batch_chars or BATCH_CHARS

    def batches() -> Iterator[tuple[list[tuple[Any, int]], list[str]]]:
        pieces: list[str] = []
        meta: list[tuple[Any, int]] = []  # (tag, pieces in this text)
        chars = 0
        for tag, text in items:
            parts = split_exact(text, piece_chars) if text else []
            pieces += parts
            meta.append((tag, len(parts)))
            chars += len(text)
            if chars >= batch_chars:
                yield meta, pieces
                pieces, meta, chars = [], [], 0
        if meta:
            yield meta, pieces

    for batch_meta, (flat, lengths) in ordered_map(_encode_batch, batches(), num_proc=num_proc,
                                                   init=_init_worker, initargs=(tokenizer,)):
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        p = 0
        for tag, n in batch_meta:
            yield tag, flat[bounds[p] : bounds[p + n]]
            p += n
