"""Where the books come from: ``data.download_books`` fills a missing books folder with public-domain Project
Gutenberg books from the hub; ``data.path: embedded`` is the 13 public-domain books inside the package
(``corpus/PROVENANCE.md``), which a missing books folder falls back to when the hub cannot be reached."""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import lzma
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


EMBEDDED = "embedded"
"""``data.path: embedded``: the public-domain books shipped inside the package (5.5 MB of text, 1.8 MB packed)."""


def _embedded_files() -> list[Path]:
    return sorted(Path(str(importlib.resources.files(__package__) / "corpus")).glob("*.txt.xz"))


def embedded_label() -> str:
    files = _embedded_files()
    return f"gptune's embedded public-domain books ({len(files)} Project Gutenberg books)"


def embedded_books(cache_dir: str | Path | None = None) -> Path:
    """The embedded corpus as a folder of .txt books: extracted once into the cache
    (``ROOT/corpus/books-<hash>``, appearing atomically), then read like any books folder."""
    from gptune.data.cache import entry_dir, entry_key, publish

    files = _embedded_files()
    folder = entry_dir("corpus", "books-" + entry_key(["utf-8", *((f.name, f.stat().st_size) for f in files)], 12),
                       cache_dir)
    if folder.is_dir():
        return folder

    def write(tmp: Path) -> None:
        for f in files:
            data = lzma.decompress(f.read_bytes())
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:  # two of the books are Latin-1 as NLTK ships them: UTF-8 for every recipe
                data = data.decode("latin-1").encode("utf-8")
            (tmp / f.name.removesuffix(".xz")).write_bytes(data)

    if not publish(folder, write) and not folder.is_dir():
        raise GptuneError(f"data.cache_dir: cannot write the embedded corpus to {folder.parent}; "
                          "set data.cache_dir (or GPTUNE_CACHE) to a writable folder")
    return folder


def corpus_path(path: str, cache_dir: str | Path | None = None) -> str:
    """What a ``data.path`` value reads: the extracted embedded corpus for ``embedded``, else `path` itself."""
    return str(embedded_books(cache_dir)) if path == EMBEDDED else path


def choose_corpus(data):
    """The ``DataConfig`` a run reads, and the line that says which corpus that is (the run's first line).

    A missing ``data.path`` with ``data.download_books`` is downloaded when the hub can be reached (by the
    runner, ``fetch_corpus``), else replaced by ``embedded`` -- so the recipe.yaml the run writes says what
    it read, and replays the same."""
    from gptune.hub import hub_reachable

    if data.path == EMBEDDED:
        return data, f"{EMBEDDED} ({embedded_label()})"
    if Path(data.path).expanduser().exists() or not data.download_books:
        return data, data.path
    if hub_reachable():
        return data, f"{data.path} (missing: downloading public-domain books from the hub)"
    return (dataclasses.replace(data, path=EMBEDDED),
            f"{EMBEDDED} ({embedded_label()}: {data.path} is missing and the hub cannot be reached)")


def fetch_corpus(data) -> None:
    """Download the books of a missing ``data.path`` (``data.download_books``; call on the main process)."""
    if data.download_books and data.path != EMBEDDED and not Path(data.path).expanduser().exists():
        ensure_books(Path(data.path))


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
