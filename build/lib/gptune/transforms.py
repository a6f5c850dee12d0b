"""GPT-1 task-aware input transformations, as pure functions over token ids (no torch).

Radford et al. 2018, section 3.3: every task becomes one or more token sequences that a single
left-to-right model reads; the task head reads the hidden state at the final end token.

    classification   <s> text <e>
    entailment       <s> premise $ hypothesis <e>
    similarity       <s> A $ B <e>   and   <s> B $ A <e>      (no inherent order)
    multiple choice  <s> context $ answer_k <e>   for each candidate k

The three markers are *new* added tokens (see `SPECIAL_TOKENS`): `$` and `<s>` would collide with
text that already contains them, since byte-level BPE vocabularies encode `$` as an ordinary byte.

Truncation rule (`truncate_longest_first`): Hugging Face's fast-tokenizer `longest_first` (what
run_glue's `truncation=True` does to a pair): the shorter segment is kept whole when it fits in half
the budget, else both are cut from their ends to half the budget each (the longer one gets the odd
token). The special tokens, and so the pooled end token, are
never removed.
"""

from __future__ import annotations

from dataclasses import dataclass

# Added-token strings for the three GPT-1 markers. The original code names them _start_,
# _delimiter_ and _classify_; the <|...|> form matches GPT-2's <|endoftext|> and cannot be
# produced by BPE-encoding ordinary text once registered as added tokens.
SPECIAL_TOKENS = {"start": "<|start|>", "delim": "<|delim|>", "extract": "<|extract|>"}


@dataclass(frozen=True)
class SpecialIds:
    """Token ids of the three GPT-1 markers in a tokenizer that has `SPECIAL_TOKENS` added."""

    start: int
    """Id of `<|start|>`, the first token of every task input."""
    delim: int
    """Id of `<|delim|>`, between the two segments of a pair."""
    extract: int
    """Id of `<|extract|>`, the last token; the task head reads the hidden state here."""


# Text segments each kind takes (multiple_choice: context + at least 2 candidates).
_SEGMENTS = {"classification": 1, "entailment": 2, "similarity": 2}


def min_length(kind: str, n_segments: int) -> int:
    """Shortest max_length that still holds the markers plus one token per segment."""
    n_special = 2 if kind == "classification" else 3
    per_seq_segments = 2 if kind == "multiple_choice" else n_segments
    return n_special + per_seq_segments


def truncate_longest_first(segments: list[list[int]], budget: int) -> list[list[int]]:
    """Cut one or two `segments` to at most `budget` tokens in total, from their ends, by the rule of the
    `tokenizers` library's `LongestFirst` (so a pair is cut exactly as `tokenizer(a, b, truncation=True,
    max_length=budget)` cuts it): the shorter segment (the first on a tie) keeps its length if that is at
    most half the budget, else `budget // 2`; the other one gets the rest. Returns new lists."""
    lengths = [len(s) for s in segments]
    if sum(lengths) > budget:
        if len(segments) == 1:
            lengths = [budget]
        elif len(segments) == 2:
            short = 0 if lengths[0] <= lengths[1] else 1
            if 2 * lengths[short] > budget:
                lengths[short] = budget // 2
            lengths[1 - short] = budget - lengths[short]
        else:
            raise ValueError(f"truncation takes one or two segments, got {len(segments)}")
    return [list(s[:n]) for s, n in zip(segments, lengths, strict=True)]


def _check(kind: str, segments: list[list[int]], max_length: int) -> None:
    if kind == "multiple_choice":
        if len(segments) < 3:
            raise ValueError(
                f"multiple_choice needs [context, answer_1, answer_2, ...], got {len(segments)} segments"
            )
    elif kind in _SEGMENTS:
        if len(segments) != _SEGMENTS[kind]:
            raise ValueError(f"{kind} takes {_SEGMENTS[kind]} segment(s), got {len(segments)}")
    else:
        raise ValueError(
            f"unknown kind '{kind}': expected one of classification, entailment, similarity, multiple_choice"
        )
    need = min_length(kind, len(segments))
    if max_length < need:
        raise ValueError(
            f"max_length {max_length} is too small for {kind}: the markers plus one token per segment need {need}"
        )


def encode_example(kind: str, segments: list[list[int]], special_ids: SpecialIds, max_length: int) -> list[list[int]]:
    """The model input sequence(s) for one example, each at most `max_length` tokens.

    segments: token ids of the texts in `TaskSpec.text_fields` order (multiple_choice:
    [context, answer_1, ..., answer_K]). Returns 1 sequence (classification, entailment),
    2 (similarity: A$B then B$A, built from the same truncated A and B) or K (multiple_choice:
    the context is truncated per candidate, against that candidate's answer).
    """
    _check(kind, segments, max_length)
    s, d, e = special_ids.start, special_ids.delim, special_ids.extract
    if kind == "classification":
        (a,) = truncate_longest_first(segments, max_length - 2)
        return [[s, *a, e]]
    if kind == "entailment":
        a, b = truncate_longest_first(segments, max_length - 3)
        return [[s, *a, d, *b, e]]
    if kind == "similarity":
        a, b = truncate_longest_first(segments, max_length - 3)
        return [[s, *a, d, *b, e], [s, *b, d, *a, e]]
    context, *answers = segments
    out = []
    for answer in answers:
        c, x = truncate_longest_first([context, answer], max_length - 3)
        out.append([s, *c, d, *x, e])
    return out


def encode_plain(segments: list[list[int]], max_length: int) -> list[int]:
    """The run_glue baseline input: the segments simply concatenated (a + b), no markers, nothing added.

    This is exactly what run_glue's ``tokenizer(text_a, text_b)`` gives for GPT-2's tokenizer (which adds
    no special tokens to a pair); the head pools the last non-pad token, as ``GPT2ForSequenceClassification``
    does. Truncation: `truncate_longest_first`, the rule of run_glue's ``truncation=True``.
    """
    if not segments:
        raise ValueError("encode_plain needs at least one segment")
    if max_length < len(segments):
        raise ValueError(f"max_length {max_length} is too small for {len(segments)} segment(s)")
    return [t for p in truncate_longest_first(segments, max_length) for t in p]
