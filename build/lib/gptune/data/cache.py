"""The one on-disk cache layout: ``ROOT/<kind>/<name>`` folders that appear atomically.

ROOT is ``data.cache_dir``, else ``$GPTUNE_CACHE``, else ``~/.cache/gptune``. Kinds: ``lm`` (token shards
of a pretraining corpus, gptune.data.prepare) and ``tasks`` (tokenized task splits, gptune.data.features).
An entry is keyed by a hash of everything that decides its content (``entry_key``), and is only ever seen
whole: it is written under a temporary sibling and renamed into place (``publish``).
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


def publish(folder: Path, write: Callable[[Path], None]) -> bool:
    """Run ``write(tmp)`` on a fresh temporary sibling of `folder`, then rename it to `folder`.

    A reader sees the whole entry or none. Returns False when another process published the same entry
    first (theirs is as good) or the disk refused (a read-only cache costs the cache, not the run).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(tmp)
        os.rename(tmp, folder)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
