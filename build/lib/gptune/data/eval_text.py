"""Text to score for perplexity: a file, a folder of ``.txt`` files or a hub dataset, documents joined
as the Hugging Face guide "Perplexity of fixed-length models" joins WikiText, tokenized whole."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptune.errors import GptuneError

if TYPE_CHECKING:
    import torch


def join_documents(texts: Sequence[str]) -> str:
    """Join documents as the guide does with WikiText (``"\\n\\n".join(test["text"])``)."""
    return "\n\n".join(texts)


def load_eval_text(spec: str) -> str:
    """Text to score: a file, a folder of ``.txt`` files (sorted by name, joined as documents), or a hub
    dataset ``name:config:split`` (e.g. ``wikitext:wikitext-2-raw-v1:test``) with a ``text`` column."""
    path = Path(spec).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    elif path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise GptuneError(f"--data folder {spec} has no .txt files")
        text = join_documents([f.read_text(encoding="utf-8") for f in files])
    elif _looks_like_path(spec):
        raise GptuneError(f"--data {spec}: no such file or folder")
    else:
        text = _load_hub_text(spec)
    if not text.strip():
        raise GptuneError(f"--data {spec}: the text is empty")
    return text


def _looks_like_path(spec: str) -> bool:
    """A missing local path gets "no such file", not a hub error (hub ids look like ``owner/name:config``)."""
    return spec.startswith((".", "~", "/")) or bool(re.search(r"\.(txt|raw|tokens|md)$", spec))


def _load_hub_text(spec: str) -> str:
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise GptuneError(f"--data {spec}: expected a file, a folder, or a hub dataset name:config:split")
    name, config, split = (parts + [None, None])[:3]
    try:
        import datasets

        dataset = datasets.load_dataset(name, config or None, split=split or "test")
    except Exception as exc:  # any hub failure (offline, unknown name) reads the same to the user
        raise GptuneError(
            f"could not load hub dataset {spec!r} ({type(exc).__name__}); pass a local file instead, "
            "e.g. --data path/to/wiki.test.raw"
        ) from exc
    if "text" not in dataset.column_names:
        raise GptuneError(
            f"hub dataset {spec!r} has no 'text' column (columns: {', '.join(dataset.column_names)})"
        )
    return join_documents(dataset["text"])


def encode_text(tokenizer: Any, text: str) -> torch.LongTensor:
    """The whole text as one 1-D id tensor, tokenized as the guide does (``tokenizer(text)``, no truncation:
    the windows do the cutting)."""
    import torch

    if not text:
        raise GptuneError("the evaluation text is empty")
    # verbose=False: the "longer than the model maximum" warning does not apply to windowed scoring
    return torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)
