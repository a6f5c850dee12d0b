"""Task rows -> model inputs: tokenize each text field once, apply the GPT-1 input transformation
(or the plain baseline), and cache the result on disk keyed by everything it depends on.

A tokenized split is a ``datasets.Dataset`` with columns ``input_ids`` (a list of sequences per
example: 1, 2 for similarity, K for multiple choice), ``label`` (label id, float for regression,
-1 / NaN when the split has no labels), ``idx``, ``length`` (longest sequence, for grouping) and ``row`` (position in the split).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gptune.console import is_main_process
from gptune.data.cache import entry_dir, entry_key, publish
from gptune.data.glue import SplitData
from gptune.errors import GptuneError
from gptune.tasks import TaskSpec
from gptune.tokenization import tokenizer_fingerprint
from gptune.transforms import SpecialIds, encode_example, encode_plain

CACHE_VERSION = 2  # 2: plain inputs as run_glue's (no EOS, one order)


def _source_key(split: SplitData) -> str:
    p = Path(split.path)
    if p.is_file():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    # hub splits: the rows themselves
    return hashlib.sha256(json.dumps(split.rows, sort_keys=True).encode()).hexdigest()


def encode_rows(task: TaskSpec, rows: list[dict], tokenizer, *, style: str, special_ids: SpecialIds | None,
                max_length: int) -> dict[str, list]:
    """Columns of the tokenized split (pure function of its inputs; used by ``encode_split``)."""
    # one batched tokenizer call per text field: much faster than per row
    per_field = [tokenizer([r[f] for r in rows], add_special_tokens=False)["input_ids"] for f in task.text_fields]
    out = {"input_ids": [], "label": [], "idx": [], "length": [], "row": []}
    for i, r in enumerate(rows):
        segments = [f[i] for f in per_field]
        if style == "gpt1":
            seqs = encode_example(task.kind, segments, special_ids, max_length)
        elif task.kind == "multiple_choice":
            seqs = [encode_plain([segments[0], a], max_length) for a in segments[1:]]
        else:  # run_glue: one sequence, one order (similarity too)
            seqs = [encode_plain(segments, max_length)]
        # an input with no text at all still needs a token to pool: EOS
        seqs = [s or [tokenizer.eos_token_id] for s in seqs]
        label = r["label"]
        if label is None:
            label = float("nan") if task.is_regression else -1
        out["input_ids"].append(seqs)
        out["label"].append(float(label) if task.is_regression else int(label))
        out["idx"].append(int(r["idx"]))
        out["length"].append(max(len(s) for s in seqs))
        out["row"].append(i)
    return out


def encode_split(task: TaskSpec, split: SplitData, tokenizer, *, style: str, special_ids: SpecialIds | None,
                 max_length: int, cache_dir: str | None = None, first=None):
    """The tokenized split, from the cache when the same file, tokenizer, task and settings were
    seen before. ``first``: ``accelerator.main_process_first`` (the main process writes the cache,
    the others then read it)."""
    import contextlib

    import datasets

    datasets.disable_progress_bars()
    key = entry_key([CACHE_VERSION, task.to_dict(), split.split, _source_key(split), tokenizer_fingerprint(tokenizer),
                     style, max_length], length=20)
    path = entry_dir("tasks", f"{task.name}-{split.split}-{key}", cache_dir)
    with first() if first is not None else contextlib.nullcontext():
        if (path / "dataset_info.json").exists():
            try:
                return datasets.load_from_disk(str(path)), True
            except (OSError, ValueError, FileNotFoundError):
                pass  # a damaged cache entry is rebuilt
        try:
            columns = encode_rows(task, split.rows, tokenizer, style=style, special_ids=special_ids,
                                  max_length=max_length)
        except ValueError as e:  # max_length too small for the markers
            raise GptuneError(f"task.max_length: {e}") from None
        ds = datasets.Dataset.from_dict(columns)
        if is_main_process():  # caching is an optimisation: a read-only cache folder still trains
            publish(path, lambda tmp: ds.save_to_disk(str(tmp)))
        return ds, False
