"""A preparation as it is read back: the memory-mapped train/validation blocks of a published folder
(``load_prepared``), what preparing produced (``PackStats``), and the validation text the loss scores.
Written by ``gptune.data.prepare``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptune.data.shards import TokenBlocks, TokenStream
from gptune.errors import GptuneError


@dataclass
class PackStats:
    """What preparing produced, for the run summary and the tests."""

    files: int
    """Number of files read (0 for a hub dataset)."""
    documents: int
    """Documents read (books, table rows); each one (or each of its parts) is followed by one EOS."""
    tokens: int
    """Tokens in the train and validation streams (EOS included)."""
    blocks_train: int
    """Training blocks of ``data.block_size`` tokens."""
    blocks_val: int
    """Validation blocks (0 when there is no validation set)."""
    dropped_tokens: int
    """Tokens of the final partial block of each stream, which fill no whole block."""
    shards: int = 0
    """Shard files on disk."""
    disk_bytes: int = 0
    """Bytes of the shard files."""
    text_bytes: int = 0
    """Characters of text read (about its bytes: UTF-8 English is nearly one byte a character)."""
    seconds: float = 0.0
    """Wall time of the preparation (0 when it was already prepared)."""
    kept_documents: int | None = None
    """Documents that cleaning (``data.clean``) kept; None when cleaning is off."""
    cached: bool = False
    """True when the shards were already prepared (no tokenization ran)."""

    def summary(self, folder: Path) -> str:
        rate = ""
        if self.seconds > 0:
            rate = (f" in {self.seconds:.1f} s ({self.text_bytes / 1e6 / self.seconds:.1f} MB/s, "
                    f"{self.tokens / 1e6 / self.seconds:.2f}M tokens/s)")
        kept = "" if self.kept_documents is None else f" ({self.kept_documents:,} kept by data.clean)"
        return (f"{'prepared' if not self.cached else 'already prepared'}: {self.tokens:,} tokens from "
                f"{self.documents:,} documents{kept} -> {self.blocks_train:,} train / {self.blocks_val:,} val blocks, "
                f"{self.shards} shard(s), {self.disk_bytes / 1e6:.1f} MB{rate} -> {folder}")


@dataclass
class LMData:
    """Train/val blocks for causal-LM pretraining, memory-mapped from the prepared folder."""

    train: TokenBlocks
    """Training blocks."""
    val: TokenBlocks | None
    """Validation blocks; None when ``data.val_fraction`` is 0 and no ``data.val_path`` is given."""
    stats: PackStats
    """Counts of files, documents, tokens, blocks and dropped tokens."""
    folder: Path
    """The prepared folder."""
    val_split: str
    """``tail``, ``documents``, ``blocks``, ``path`` (data.val_path) or ``none``."""


def load_prepared(folder: Path) -> LMData:
    """Memory-map a published preparation."""
    meta = json.loads((folder / "meta.json").read_text())
    block = meta["block_size"]

    def blocks(name: str, index: str | None) -> TokenBlocks:
        s = meta["streams"][name]
        stream = TokenStream(folder, name, s["dtype"], s["shard_tokens"], s["tokens"])
        return TokenBlocks(stream, block, None if index is None else np.load(folder / index, mmap_mode="r"))

    split = meta["val_split"]
    if split == "blocks":
        train, val = blocks("train", "train_blocks.npy"), blocks("train", "val_blocks.npy")
    else:
        train, val = blocks("train", None), blocks("val", None) if "val" in meta["streams"] else None
    stats = PackStats(**meta["stats"])
    stats.cached, stats.seconds = True, 0.0
    return LMData(train=train, val=val, stats=stats, folder=folder, val_split=split)


def validation_text(data: LMData, tokenizer: Any) -> str:
    """The validation tokens as text: each held-out document (or, for ``val_split=blocks``, each block)
    decoded without its EOS, joined as documents. Only whole blocks count: the text that the
    validation loss scores."""
    from gptune.data.eval_text import join_documents

    val = data.val
    if val is None or not len(val):
        raise GptuneError("the run has no validation split (data.val_fraction=0); pass --data FILE")
    eos = tokenizer.eos_token_id
    if data.val_split == "blocks":
        pieces = [val.block_ids(i) for i in range(len(val))]
    else:
        n = len(val) * val.block_size  # the whole blocks: what the validation loss scores
        bounds = [0] + [int(e) for e in val.stream.document_ends() if e < n] + [n]
        pieces = [val.stream.read(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    docs = []
    for ids in pieces:
        ids = np.asarray(ids)
        ids = ids[:-1] if ids.size and ids[-1] == eos else ids
        if ids.size:
            docs.append(tokenizer.decode(ids.tolist()))
    return join_documents(docs)
