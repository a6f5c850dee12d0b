"""Read task data into rows: GLUE TSVs (glue_data layout), the GLUE hub dataset, or user CSV/TSV/JSONL.

No tokenization here. Every reader returns a `SplitData` whose `rows` is a plain list of dicts:

    {<each text field>: str (stripped), "label": int | float | None, "idx": int}

`label` is an index into `task.labels`, a float for regression (STS-B), or None when the split has
no labels (GLUE test files). `idx` is the file's index/id column when it has one, else the row's
0-based position. Plain lists keep this module cheap to import and easy to test;
`SplitData.to_dataset()` converts to a `datasets.Dataset` for tokenizing with `.map`.

GLUE TSV quirks handled (all seen in the official files):
* quoting is disabled (tab-split lines): CoLA, MRPC, STS-B, QNLI, RTE, WNLI contain `"` characters;
* CoLA train/dev have no header (source, label, original judgement, sentence); dev has no final newline;
* MRPC train/dev start with a UTF-8 BOM (files are decoded as utf-8-sig);
* SST-2 sentences end with a space (text fields are stripped);
* MNLI dev files have more columns than train (fields are found by header name, not position);
* QQP has lines with the wrong number of columns: they are skipped but *reported* in
  `SplitData.malformed` (1-based line numbers) and `SplitData.warning()`, never silently dropped.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptune.errors import GptuneError
from gptune.tasks import TaskSpec

GLUE_DIR_ENV = "GPTUNE_GLUE_DIR"
HUB_DATASET = "nyu-mll/glue"
_WHERE_HINT = f"pass --data-dir DIR (glue_data layout, e.g. DIR/SST-2/train.tsv) or set {GLUE_DIR_ENV}"
_INDEX_COLUMNS = ("idx", "index", "id")
_MAX_LISTED = 5  # bad values / malformed line numbers shown in one message


@dataclass
class SplitData:
    """The rows of one split of one task, plus what could not be read."""

    task: str
    """Task name."""
    split: str
    """Split name (train, validation, validation_matched, test, ...)."""
    path: str
    """File the rows came from (or `hf://datasets/nyu-mll/glue/<config>/<split>`)."""
    rows: list[dict[str, Any]]
    """One dict per example: the text fields, `label` and `idx` (see module docstring)."""
    malformed: list[int] = field(default_factory=list)
    """1-based line numbers of lines skipped because they have the wrong number of columns."""

    @property
    def has_labels(self) -> bool:
        return bool(self.rows) and self.rows[0]["label"] is not None

    def warning(self) -> str | None:
        """One line for the console when lines were skipped, else None."""
        if not self.malformed:
            return None
        first = ", ".join(str(n) for n in self.malformed[:_MAX_LISTED])
        more = ", ..." if len(self.malformed) > _MAX_LISTED else ""
        return (
            f"{self.path}: skipped {len(self.malformed)} malformed line(s) (wrong number of columns), "
            f"lines {first}{more}; kept {len(self.rows)} rows"
        )

    def to_dataset(self):
        """The rows as a `datasets.Dataset` (imported here: `datasets` is slow to import)."""
        import datasets

        return datasets.Dataset.from_list(self.rows)


# ----------------------------------------------------------------------------- locating files


def find_glue_dir(explicit: str | Path | None = None) -> Path | None:
    """The glue_data folder: `--data-dir`, else $GPTUNE_GLUE_DIR, else ./glue_data if present, else None
    (None means: use the hub). A folder that was asked for but does not exist is an error."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise GptuneError(
                f"--data-dir {p}: no such folder; point it at a glue_data folder (DIR/SST-2/train.tsv)"
            )
        return p
    env = os.environ.get(GLUE_DIR_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise GptuneError(f"{GLUE_DIR_ENV}={env}: no such folder; fix or unset it")
        return p
    local = Path("glue_data")
    return local.resolve() if local.is_dir() else None


def _task_folder(task: TaskSpec, data_dir: Path) -> Path:
    """data_dir/<glue_dir>, matched case-insensitively (also by hub name); data_dir itself if it is that folder."""
    if not data_dir.is_dir():
        raise GptuneError(f"GLUE data folder {data_dir} does not exist; {_WHERE_HINT}")
    wanted = {task.glue_dir.lower(), task.hub_name.lower()} - {""}
    if data_dir.name.lower() in wanted:
        return data_dir
    exact = data_dir / task.glue_dir
    if exact.is_dir():
        return exact
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and child.name.lower() in wanted:
            return child
    raise GptuneError(f"no folder {exact} for GLUE task {task.name}; {_WHERE_HINT}")


def has_local_files(task: TaskSpec, data_dir: str | Path | None, splits: tuple[str, ...]) -> bool:
    """Whether a local glue_data folder (``find_glue_dir``) holds the files of ``splits`` of ``task``."""
    folder = find_glue_dir(data_dir)
    if folder is None:
        return False
    try:
        tf = _task_folder(task, folder)
    except GptuneError:
        return False
    return all((tf / task.splits[s]).is_file() for s in splits)


# ----------------------------------------------------------------------------- public readers


def read_glue_split(task: TaskSpec, data_dir: str | Path, split: str) -> SplitData:
    """Read `split` of a GLUE task from a glue_data folder (`data_dir/<task.glue_dir>/<file>`)."""
    if not task.glue_dir:
        return read_custom_split(task, task.split_file(split), split=split)
    name = task.split_file(split)  # unknown split first: the more specific message
    path = _task_folder(task, Path(data_dir)) / name
    if not path.is_file():
        raise GptuneError(f"missing file {path} (task {task.name}, split '{split}'); {_WHERE_HINT}")
    if split in task.headerless_splits:
        records, malformed = _tsv_headerless(path, task.column_index)
        columns = {f: f for f in task.column_index}
    else:
        records, malformed, header = _tsv_with_header(path)
        columns = _resolve_columns(task, path, split, header)
    return _finish(task, split, path, records, malformed, columns)


def read_custom_split(task: TaskSpec, path: str | Path, *, split: str = "train") -> SplitData:
    """Read a user file with named columns: .csv (header row, standard quoting), .tsv (header row,
    tab-separated, quoting disabled as in GLUE) or .jsonl (one JSON object per line).
    The label column may be absent only in splits named test*."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GptuneError(
            f"missing file {path} (task {task.name}, split '{split}'); check the task's file paths"
        )
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        records, malformed, header = _tsv_with_header(path)
    elif suffix == ".csv":
        records, malformed, header = _csv_with_header(path)
    elif suffix == ".jsonl":
        records, malformed = _jsonl(path)
        header = _jsonl_keys(path, records)
    else:
        raise GptuneError(f"{path}: unsupported file type '{suffix}'; use .csv, .tsv or .jsonl")
    columns = _resolve_columns(task, path, split, header)
    return _finish(task, split, path, records, malformed, columns)


def load_hub_split(task: TaskSpec, split: str) -> SplitData:
    """Read `split` of a GLUE task from the hub dataset nyu-mll/glue (needs network or a warm cache).
    The hub's field names and label ids are the ones `TaskSpec` uses, so rows match the TSV reader's."""
    if not task.hub_name:
        raise GptuneError(f"task {task.name} is not a GLUE task; give its files instead of using the hub")
    task.split_file(split)  # unknown split -> GptuneError listing the known ones
    import datasets

    try:
        ds = datasets.load_dataset(HUB_DATASET, task.hub_name, split=split)
    except (OSError, datasets.exceptions.DatasetNotFoundError) as err:  # ConnectionError is an OSError
        raise GptuneError(
            f"cannot reach the Hugging Face hub for GLUE task {task.name} ({err.__class__.__name__}); {_WHERE_HINT}"
        ) from err
    rows = []
    for r in ds:
        row = {f: str(r[f]).strip() for f in task.text_fields}
        label = r["label"]
        # the hub marks unlabeled (test) rows with -1
        row["label"] = (
            None if label is None or label == -1 else (float(label) if task.is_regression else int(label))
        )
        row["idx"] = int(r["idx"])
        rows.append(row)
    return SplitData(task.name, split, f"hf://datasets/{HUB_DATASET}/{task.hub_name}/{split}", rows)


def load_task_split(task: TaskSpec, split: str, data_dir: str | Path | None = None) -> SplitData:
    """The one call a runner makes: custom files, else a local glue_data folder (`find_glue_dir`), else the hub."""
    if not task.glue_dir:
        return read_custom_split(task, task.split_file(split), split=split)
    folder = find_glue_dir(data_dir)
    if folder is not None:
        return read_glue_split(task, folder, split)
    return load_hub_split(task, split)


# ----------------------------------------------------------------------------- file formats
# Each returns records as (1-based line number, {column: value}) and the malformed line numbers.

Record = tuple[int, dict[str, Any]]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        # utf-8-sig drops MRPC's BOM; split on "\n" only (str.splitlines would also split on
        # characters like U+2028 that can occur inside a sentence)
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise GptuneError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from err
    lines = text.split("\n")
    if lines[-1] == "":  # final newline; CoLA dev.tsv has none, which needs no special case here
        lines.pop()
    for n, line in enumerate(lines, start=1):
        yield n, line.removesuffix("\r")


def _tsv_with_header(path: Path) -> tuple[list[Record], list[int], list[str]]:
    it = _lines(path)
    first = next(it, None)
    if first is None:
        raise GptuneError(f"{path}: the file is empty (expected a header row and data rows)")
    header = [c.strip() for c in first[1].split("\t")]
    records, malformed = [], []
    for n, line in it:
        cells = line.split("\t")
        if len(cells) != len(header):
            malformed.append(n)
        else:
            records.append((n, dict(zip(header, cells, strict=True))))
    return records, malformed, header


def _tsv_headerless(path: Path, column_index: dict[str, int]) -> tuple[list[Record], list[int]]:
    records, malformed, width = [], [], None
    for n, line in _lines(path):
        cells = line.split("\t")
        width = width or len(cells)  # the first line sets the expected column count
        if len(cells) != width or max(column_index.values()) >= len(cells):
            malformed.append(n)
        else:
            records.append((n, {f: cells[i] for f, i in column_index.items()}))
    return records, malformed


def _csv_with_header(path: Path) -> tuple[list[Record], list[int], list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = [c.strip() for c in next(reader)]
        except StopIteration:
            raise GptuneError(f"{path}: the file is empty (expected a header row and data rows)") from None
        except csv.Error as err:
            raise GptuneError(f"{path}: cannot parse the header row ({err})") from err
        records, malformed = [], []
        last = reader.line_num
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error:
                malformed.append(last + 1)
                last = reader.line_num
                continue
            start, last = last + 1, reader.line_num  # a quoted field may span lines: report the first
            if not cells:
                continue  # blank line
            if len(cells) != len(header):
                malformed.append(start)
            else:
                records.append((start, dict(zip(header, cells, strict=True))))
    return records, malformed, header


def _jsonl(path: Path) -> tuple[list[Record], list[int]]:
    records, malformed = [], []
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            malformed.append(n)
            continue
        if isinstance(obj, dict):
            records.append((n, obj))
        else:
            malformed.append(n)
    return records, malformed


def _jsonl_keys(path: Path, records: list[Record]) -> list[str]:
    """JSONL has no header: the first object's keys stand in for it (later rows are checked one by one)."""
    if not records:
        raise GptuneError(f"{path}: no JSON object lines found (expected one object per line)")
    return list(records[0][1])


# ----------------------------------------------------------------------------- rows


def _resolve_columns(task: TaskSpec, path: Path, split: str, header: list[str]) -> dict[str, str]:
    """Row field -> source column. Missing text columns (or label outside test splits) -> one error."""
    columns = {f: task.columns.get(f, f) for f in task.text_fields}
    problems = [
        f"{path}: missing column '{col}' (field '{f}' of task {task.name}); columns are: {', '.join(header)}"
        for f, col in columns.items()
        if col not in header
    ]
    label_col = task.columns.get("label", task.label_field)
    if label_col in header:
        columns["label"] = label_col
    elif not split.startswith("test"):
        problems.append(
            f"{path}: missing label column '{label_col}' (task {task.name}, split '{split}'); "
            f"columns are: {', '.join(header)}"
        )
    for name in _INDEX_COLUMNS:
        if name in header and name not in columns.values():
            columns["idx"] = name
            break
    if problems:
        raise GptuneError(*problems)
    return columns


def _label_value(task: TaskSpec, raw: Any) -> int | float:
    """Raw cell/JSON value -> label id or float; ValueError when it is not allowed."""
    if task.labels is None:
        if isinstance(raw, bool):
            raise ValueError
        return float(raw)
    if isinstance(raw, bool):
        raw = str(raw).lower()  # JSON true/false
    return task.labels.index(str(raw).strip())


def _finish(
    task: TaskSpec,
    split: str,
    path: Path,
    records: list[Record],
    malformed: list[int],
    columns: dict[str, str],
) -> SplitData:
    rows, bad = [], []
    label_col = columns.get("label")
    for pos, (n, rec) in enumerate(records):
        row: dict[str, Any] = {}
        for f in task.text_fields:
            value = rec.get(columns[f])
            if value is None:  # only JSONL rows can lack a key the header has
                raise GptuneError(f"{path} line {n}: missing field '{columns[f]}' (task {task.name})")
            row[f] = str(value).strip()
        if label_col is None:
            row["label"] = None
        else:
            raw = rec.get(label_col)
            try:
                row["label"] = _label_value(task, raw)
            except (ValueError, TypeError):
                bad.append((n, raw))
                continue
        idx = rec.get(columns.get("idx", ""), pos)
        try:
            row["idx"] = int(idx)
        except (TypeError, ValueError):
            row["idx"] = pos
        rows.append(row)
    if bad:
        col = label_col
        allowed = "a number" if task.labels is None else "one of " + ", ".join(f"'{v}'" for v in task.labels)
        lines = [
            f"{path} line {n}: label {raw!r} in column '{col}' is not {allowed}"
            for n, raw in bad[:_MAX_LISTED]
        ]
        if len(bad) > _MAX_LISTED:
            lines.append(f"{path}: ... and {len(bad) - _MAX_LISTED} more rows with a bad label")
        raise GptuneError(*lines)
    if not rows:
        extra = f" ({len(malformed)} malformed line(s), first at line {malformed[0]})" if malformed else ""
        raise GptuneError(f"{path}: no data rows for task {task.name}, split '{split}'{extra}")
    return SplitData(task.name, split, str(path), rows, malformed)
