"""Where pretraining documents come from: files on disk, a ``datasets`` folder, or a hub dataset.

A .txt file is one document (a book); a row of a .jsonl/.json/.csv/.parquet table, a saved ``datasets``
folder (``save_to_disk``) or a hub dataset is one document. ``open_source`` turns ``data.path`` into a
``Source``: the documents in a fixed order, a signature that changes when they change (the cache key), and
``sample`` (a capped, corpus-wide sample for tokenizer training).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptune.errors import GptuneError, first_line
from gptune.hub import is_hub_id

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt", ".jsonl", ".json", ".csv", ".parquet")
"""File types read as pretraining text (found recursively in a data folder)."""

_SAMPLE_WINDOW = 1 << 16  # tokenizer-training sample: windows of 64 KB spread evenly over each file
_ROWS_PER_BATCH = 1000
_BATCH_CHARS = 1 << 23  # a batch of table rows also ends at 8M characters (rows may be whole books)


# ----------------------------------------------------------------------------- files


def discover_files(path: str | Path, field_name: str = "data.path") -> list[Path]:
    """The text files under `path` (a file, or a folder searched recursively), sorted by relative path."""
    p = Path(path).expanduser()
    if not p.exists():
        raise GptuneError(f"{field_name}: no such file or folder: {path}")
    accepted = ", ".join(TEXT_EXTENSIONS)
    if p.is_file():
        if p.suffix.lower() not in TEXT_EXTENSIONS:
            raise GptuneError(f"{field_name}: {path} is not a text file (accepted: {accepted})")
        files = [p]
    else:
        files = sorted(
            (f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_EXTENSIONS),
            key=lambda f: f.relative_to(p).as_posix(),
        )
        if not files:
            raise GptuneError(f"{field_name}: no text files in folder {path} (accepted: {accepted})")
    if all(f.stat().st_size == 0 for f in files):
        raise GptuneError(f"{field_name}: {path}: corpus is empty ({len(files)} empty file(s))")
    return files


def read_txt(path: Path, fallback_encoding: str | None = None) -> str:
    """A whole .txt file as one document.

    Bytes that are not UTF-8 are an error naming the offset, unless `fallback_encoding` is set:
    then such a file (only such a file: a folder may mix encodings) is decoded with it.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if fallback_encoding is None:
            raise GptuneError(
                f"{path}: not UTF-8 text (first bad byte 0x{data[e.start]:02x} at byte offset {e.start}); "
                "convert it (e.g. iconv -f latin1 -t utf-8) or set data.fallback_encoding=latin-1"
            ) from e
        logger.warning("%s is not UTF-8 (byte offset %d): decoding it as %s", path, e.start, fallback_encoding)
        text = data.decode(fallback_encoding)
    return text.removeprefix("\ufeff")  # a BOM is an encoding marker, not text


def iter_table_texts(path: Path, text_column: str, batch_rows: int = _ROWS_PER_BATCH) -> Iterator[list[str]]:
    """The `text_column` of a .jsonl/.csv/.parquet/.json file, in batches of at most `batch_rows` strings
    and about 8M characters (nulls and empty strings skipped), streamed: memory holds about one batch, not
    the file (a .json list is the exception: JSON has no record boundaries, so it is parsed whole).

    Errors name the file: a missing column (with the columns there are), a line that is not JSON."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            yield from _jsonl_texts(path, text_column, batch_rows)
            return
        if suffix == ".json":
            yield from _batched(_json_texts(path, text_column), batch_rows)
            return
        yield from _arrow_texts(path, suffix, text_column, batch_rows)
    except GptuneError:
        raise
    except Exception as e:  # pyarrow parse errors: say which file
        raise GptuneError(f"{path}: cannot read as {suffix[1:]}: {first_line(e)}") from e


def _no_column(path: Path, text_column: str, columns) -> GptuneError:
    return GptuneError(f"{path}: no column {text_column!r} (columns: {', '.join(columns) or 'none'}); "
                       "set data.text_column")


def _batched(texts: Iterator[Any], n: int) -> Iterator[list[str]]:
    """Non-empty texts as strings, in lists of ``n`` or of about ``_BATCH_CHARS`` characters."""
    batch: list[str] = []
    chars = 0
    for t in texts:
        if t is not None and t != "":
            batch.append(str(t))
            chars += len(batch[-1])
            if len(batch) >= n or chars >= _BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def _jsonl_texts(path: Path, text_column: str, batch_rows: int) -> Iterator[list[str]]:
    keys: dict[str, None] = {}  # every key seen, in order, while no row has the column (for the error)
    found = False

    def texts() -> Iterator[Any]:
        nonlocal found
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise GptuneError(f"{path} line {n}: not a JSON object ({e.msg})") from e
                if not isinstance(row, dict):
                    raise GptuneError(f"{path} line {n}: not a JSON object (one document per line)")
                if text_column in row:
                    found = True
                    yield row[text_column]
                elif not found:
                    keys.update(dict.fromkeys(row))

    yield from _batched(texts(), batch_rows)
    if not found:
        raise _no_column(path, text_column, keys)


def _json_texts(path: Path, text_column: str) -> Iterator[Any]:
    """A .json file: a list of objects, one object, or JSON lines under a .json name."""
    with path.open(encoding="utf-8") as fh:
        try:
            rows = json.load(fh)
        except json.JSONDecodeError:
            fh.seek(0)
            rows = [json.loads(line) for line in fh if line.strip()]
    if isinstance(rows, dict):
        rows = [rows]
    if not all(isinstance(r, dict) for r in rows):
        raise GptuneError(f"{path}: expected a JSON list of objects (one document per object)")
    if not any(text_column in r for r in rows):
        raise _no_column(path, text_column, dict.fromkeys(k for r in rows for k in r))
    return (r.get(text_column) for r in rows)


def _arrow_texts(path: Path, suffix: str, text_column: str, batch_rows: int) -> Iterator[list[str]]:
    """.parquet (a row group at a time: pyarrow decodes a row group's column whole, then hands it out 64
    rows at a time) or .csv (1 MB blocks), reading only `text_column`."""
    import pyarrow as pa

    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)  # column chunks in 1 MB reads, not whole
        if text_column not in pf.schema_arrow.names:
            raise _no_column(path, text_column, pf.schema_arrow.names)
        # arrow batches of 64 rows (rows may be whole books), gathered into ours by _batched
        batches = pf.iter_batches(batch_size=64, columns=[text_column], use_threads=False)
    else:
        import pyarrow.csv as pcsv

        multiline = pcsv.ParseOptions(newlines_in_values=True)  # a document's text has line breaks
        names = pcsv.open_csv(path, parse_options=multiline).schema.names  # the header (parses the first block)
        if text_column not in names:
            raise _no_column(path, text_column, names)
        batches = pcsv.open_csv(path, parse_options=multiline,
                                convert_options=pcsv.ConvertOptions(include_columns=[text_column],
                                                                    column_types={text_column: pa.string()}))
    for batch in batches:
        yield from _batched(iter(batch.column(0).to_pylist()), batch_rows)


def _sample_txt(path: Path, budget: int, encoding: str) -> Iterator[str]:
    """About `budget` bytes of a .txt file in windows (64 KB, or 8 smaller ones) spread evenly over it,
    starting at line starts."""
    size = path.stat().st_size
    if budget >= size:
        yield path.read_bytes().decode(encoding, errors="replace")
        return
    windows = max(8, -(-budget // _SAMPLE_WINDOW))  # at least 8, so even a small budget spans the file
    step, length = size / windows, max(1, budget // windows)
    with path.open("rb") as fh:
        for i in range(windows):
            fh.seek(int(i * step))
            chunk = fh.read(length)
            if i:  # a window that starts mid-line starts at the next line
                chunk = chunk.partition(b"\n")[2]
            yield chunk.decode(encoding, errors="replace")


# ----------------------------------------------------------------------------- sources


@dataclass
class Source:
    """One corpus: ``documents()`` in a fixed order, a signature for the cache key, ``sample`` for tokenizers."""

    spec: str
    """What the user typed (``data.path`` / ``data.val_path``)."""
    kind: str
    """``files``, ``datasets`` (a save_to_disk folder) or ``hub``."""
    text_column: str = "text"
    fallback_encoding: str | None = None
    revision: str | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def signature(self) -> Any:
        """Changes when the documents may have changed: file paths, sizes and mtimes; or hub id + revision."""
        if self.kind == "hub":
            return ["hub", self.spec, self.revision or "main"]
        return [self.kind] + [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in self.files]

    @property
    def bytes(self) -> int | None:
        """Size on disk (None for a hub stream)."""
        return None if self.kind == "hub" else sum(f.stat().st_size for f in self.files)

    def documents(self) -> Iterator[str]:
        """Every non-empty document, in corpus order."""
        if self.kind == "files":
            for f in self.files:
                if f.suffix.lower() == ".txt":
                    text = read_txt(f, self.fallback_encoding)
                    if text:
                        yield text
                else:
                    for batch in iter_table_texts(f, self.text_column):
                        yield from batch
        else:
            for batch in self._row_batches(shuffle_seed=None):
                yield from batch

    def sample(self, max_bytes: int, seed: int = 0) -> Iterator[list[str]]:
        """Batches of text, about `max_bytes` in all, spread over the whole corpus (not its head)."""
        if self.kind == "files":
            total = self.bytes or 1
            batch: list[str] = []
            for f in self.files:
                budget = max(1, round(f.stat().st_size * max_bytes / total))
                if f.suffix.lower() == ".txt":
                    texts = _sample_txt(f, budget, self.fallback_encoding or "utf-8")
                    batch += [line for t in texts for line in t.splitlines(keepends=True)]
                else:  # every k-th row, streamed
                    every, seen = max(1, round(total / max_bytes)), 0
                    for rows in iter_table_texts(f, self.text_column):
                        batch += rows[(-seen) % every :: every]
                        seen += len(rows)
                while len(batch) >= _ROWS_PER_BATCH:
                    yield batch[:_ROWS_PER_BATCH]
                    batch = batch[_ROWS_PER_BATCH:]
            if batch:
                yield batch
            return
        taken = 0
        for batch in self._row_batches(shuffle_seed=seed):
            for n, t in enumerate(batch):
                taken += len(t.encode("utf-8"))
                if taken >= max_bytes:
                    yield batch[: n + 1]
                    return
            yield batch

    def _row_batches(self, shuffle_seed: int | None) -> Iterator[list[str]]:
        """Batches of non-empty texts from a ``datasets`` folder or a streamed hub dataset (split train).

        With `shuffle_seed`, rows come in a seeded random order (a hub stream: shuffled shard order and a
        shuffle buffer), so a capped read spreads over the corpus.
        """
        ds = self._open_dataset()
        if shuffle_seed is not None:
            ds = ds.shuffle(seed=shuffle_seed, **({"buffer_size": 10_000} if self.kind == "hub" else {}))
        col = self.text_column
        for rows in ds.iter(batch_size=_ROWS_PER_BATCH):
            texts = [str(t) for t in rows[col] if t]
            if texts:
                yield texts

    def _open_dataset(self):
        import datasets

        if self.kind == "datasets":
            ds = datasets.load_from_disk(self.spec)
            if isinstance(ds, datasets.DatasetDict):
                if "train" not in ds:
                    raise GptuneError(f"data.path: {self.spec} has no 'train' split (splits: {', '.join(ds)})")
                ds = ds["train"]
            columns = ds.column_names
        else:
            name, _, config = self.spec.partition(":")
            try:
                ds = datasets.load_dataset(name, config or None, split="train", streaming=True,
                                           revision=self.revision)
                columns = list(next(iter(ds.take(1))).keys())
            except Exception as e:
                raise GptuneError(
                    f"data.path: {self.spec} is not a local file or folder, and loading it from the Hugging "
                    f"Face hub failed ({first_line(e)}); pass a local folder with --set data.path=DIR"
                ) from e
        if self.text_column not in columns:
            raise GptuneError(
                f"data.path: dataset {self.spec} has no column {self.text_column!r} "
                f"(columns: {', '.join(columns)}); set data.text_column"
            )
        return ds


def is_datasets_folder(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def open_source(spec: str, field_name: str = "data.path", *, text_column: str = "text",
                fallback_encoding: str | None = None, revision: str | None = None) -> Source:
    """The `Source` for a file, a folder of text files, a ``datasets`` folder or a hub id (``name[:config]``)."""
    p = Path(spec).expanduser()
    kw = dict(text_column=text_column, fallback_encoding=fallback_encoding, revision=revision)
    if is_datasets_folder(p):
        files = sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.relative_to(p).as_posix())
        return Source(str(p), "datasets", files=files, **kw)
    if not is_hub_id(spec, dataset=True):
        return Source(spec, "files", files=discover_files(spec, field_name), **kw)
    return Source(spec, "hub", **kw)
