"""The one on-disk cache layout: ``ROOT/<kind>/<name>`` folders that appear atomically.

ROOT is ``data.cache_dir``, else ``$GPTUNE_CACHE``, else ``~/.cache/gptune``. Kinds: ``lm`` (token shards
of a pretraining corpus, gptune.data.prepare) and ``tasks`` (tokenized task splits, gptune.data.features).
An entry is keyed by a hash of everything that decides its content (``entry_key``), and is only ever seen
whole: it is written under a temporary sibling and renamed into place (``publish``, which every folder gptune
writes whole in one call goes through; ``rename_into_place``, the one rename, for the two whose temporary
folder outlives a call; ``write_atomic`` is the same for one text file).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$GPTUNE_CACHE``, else ``~/.cache/gptune``."""
    root = cache_dir or os.environ.get("GPTUNE_CACHE") or Path.home() / ".cache" / "gptune"
    return Path(root).expanduser()


def entry_key(parts: Any, length: int = 24) -> str:
    """A stable hash of a JSON-able description of what decides an entry's content."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


def entry_dir(kind: str, name: str, cache_dir: str | Path | None = None) -> Path:
    """``ROOT/<kind>/<name>``: where a cache entry lives once published."""
    return cache_root(cache_dir) / kind / name


def publish(folder: Path, write: Callable[[Path], None], *, replace: bool = False, strict: bool = False) -> bool:
    """Run ``write(tmp)`` on a fresh temporary sibling of `folder`, then rename it to `folder`: the one way a
    folder appears whole (cache entries, downloaded books, a trained tokenizer, a run's ``final/``).

    A reader sees the whole folder or none; whatever goes wrong, the temporary folder is removed. ``replace``:
    an existing `folder` is removed just before the rename (``final/`` of a resumed run). Errors: by default a
    cache entry's -- False when another process published the same entry first (theirs is as good) or the disk
    refused (a read-only cache costs the cache, not the run); ``strict``: every error is raised.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(tmp)
        rename_into_place(tmp, folder, replace=replace)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if strict:
            raise
        return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def rename_into_place(tmp: Path, folder: Path, *, replace: bool = False) -> None:
    """Rename `tmp`, a folder written whole beside `folder`, to `folder`: the one rename behind every folder that
    appears whole. ``publish`` is the way for a folder written in one call. Two writers call this directly,
    because their temporary folder must outlive that call and have a name known in advance: a checkpoint
    (``training.checkpoint``: every process writes into the same folder, their errors are gathered, then the
    main process renames) and a corpus preparation (``data.prepare``: its ``.partial`` folder is kept across
    restarts so that an interrupted preparation resumes there, where ``publish`` would remove it). Also
    ``best/`` becoming ``final/``. ``replace``: an existing `folder` is removed first."""
    if replace and folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def write_atomic(path: Path, text: str) -> None:
    """A text file that appears whole: written and fsync'ed beside `path`, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
