"""``data.download_books``: fill a missing books folder with public-domain Project Gutenberg books."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from gptune.errors import GptuneError

logger = logging.getLogger(__name__)

GUTENBERG_HUB_ID = "manu/project_gutenberg"
"""Public-domain Project Gutenberg books on the hub (columns id, text; one split per language)."""

_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG.*$", re.M | re.I)


def strip_gutenberg_boilerplate(text: str) -> str:
    """The book between the ``*** START/END OF THE PROJECT GUTENBERG ...`` lines (licence text is not the book)."""
    start = _GUTENBERG_START.search(text)
    end = _GUTENBERG_END.search(text, start.end() if start else 0)
    return text[start.end() if start else 0 : end.start() if end else len(text)].strip() + "\n"


def ensure_books(path: Path, max_bytes: int = 50_000_000) -> Path:
    """Return `path` if it exists; else download English Gutenberg books (.txt) into it, up to `max_bytes`.

    The folder appears atomically (temporary sibling + rename); without the hub, nothing is left
    behind and the error says how to point at local books.
    """
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        import datasets

        written = 0
        for i, row in enumerate(datasets.load_dataset(GUTENBERG_HUB_ID, split="en", streaming=True)):
            text = strip_gutenberg_boilerplate(row["text"])
            book_id = re.sub(r"[^\w.-]", "_", str(row.get("id", i)))
            data = text.encode("utf-8")
            (tmp / f"{i:05d}-{book_id}.txt").write_bytes(data)
            written += len(data)
            if written >= max_bytes:
                break
        if written == 0:
            raise RuntimeError(f"{GUTENBERG_HUB_ID} gave no books")
        os.rename(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise GptuneError(
            f"data.path: {path} does not exist and the Hugging Face hub cannot be reached; "
            "pass --set data.path=DIR (a folder of .txt books)"
        ) from e
    logger.info("downloaded %.1f MB of Gutenberg books -> %s", written / 1e6, path)
    return path
