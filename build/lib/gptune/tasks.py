"""Task specifications: what a task's rows look like, how it is scored, where its files live.

One frozen `TaskSpec` per task. The nine GLUE tasks are built in (`GLUE_TASKS`, `get_task`);
user tasks (CSV/TSV/JSONL files) are `TaskSpec`s too (`custom_task`). A spec is saved as
`task.json` next to a fine-tuned model (`to_dict`/`from_dict`) so evaluation needs only the folder.

Label convention: a row's label is an index into `TaskSpec.labels`. For GLUE, `labels` holds the
values exactly as written in the GLUE TSV files and in the order of the hub dataset `nyu-mll/glue`,
so the index equals the hub's label id and `labels[i]` is what a GLUE test submission expects.
`labels=None` means regression (STS-B): the label is a float.

No torch, numpy or datasets import here: `gptune --help` must stay fast.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptune.errors import GptuneError

if TYPE_CHECKING:
    from gptune.config import TaskConfig

KINDS = ("classification", "entailment", "similarity", "multiple_choice")
# Metrics `gptune/evaluation/glue_metric.py` implements (names = keys of the `evaluate` "glue" metric where
# it has them). f1 is binary F1 with labels[1] as the positive class; f1_macro is for >2 labels.
CLASS_METRICS = ("accuracy", "f1", "f1_macro", "matthews_correlation")
REGRESSION_METRICS = ("pearson", "spearmanr")
METRICS = CLASS_METRICS + REGRESSION_METRICS


@dataclass(frozen=True)
class TaskSpec:
    """Everything gptune needs to know about one task, GLUE or custom."""

    name: str
    """Short lower-case task name (`sst2`, or the user's name for a custom task)."""
    kind: str
    """GPT-1 input transformation: classification, entailment, similarity or multiple_choice."""
    text_fields: tuple[str, ...]
    """Row fields holding the texts, in input order. multiple_choice: context, then one field per candidate."""
    label_field: str
    """Column (or JSON key) holding the label in the source files; rows always call it `label`."""
    labels: tuple[str, ...] | None
    """Allowed label values as written in the files, in label-id order; None = regression (float label).
    multiple_choice: one value per candidate, in candidate order (label labels[k] = candidate k correct)."""
    metrics: tuple[str, ...]
    """Metric names reported on eval splits (see `METRICS`)."""
    main_metric: str
    """The metric `task.keep_best` ranks evaluations by (higher is better) and that heads the summary; one of `metrics`."""
    splits: dict[str, str]
    """Split name -> file, relative to the task folder (GLUE) or an absolute path (custom)."""
    eval_splits: tuple[str, ...] = ("validation",)
    """Splits scored by `gptune eval --task` (MNLI: matched and mismatched)."""
    glue_dir: str = ""
    """Folder name in the glue_data layout (`SST-2`); empty for custom tasks."""
    hub_name: str = ""
    """Config name in the hub dataset `nyu-mll/glue` (`sst2`); empty for custom tasks."""
    paper_score: dict[str, float] = field(default_factory=dict)
    """GPT-1 paper score (GLUE test server, x100), keyed `metric`, or `eval_split/metric` when a task
    has several eval splits (MNLI). Empty when the paper gives none (WNLI, custom tasks)."""
    label_names: tuple[str, ...] | None = None
    """Readable names for `labels` (same order), e.g. negative/positive for SST-2's 0/1; None = `labels`."""
    columns: dict[str, str] = field(default_factory=dict)
    """Row field -> column name in the file header, where they differ (MNLI premise -> sentence1)."""
    headerless_splits: tuple[str, ...] = ()
    """Splits whose file has no header row (GLUE CoLA train/dev); fields are then found by `column_index`."""
    column_index: dict[str, int] = field(default_factory=dict)
    """0-based column of each field (and `label`) in the `headerless_splits` files."""

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise JSON lists to tuples with object.__setattr__.
        for name in ("text_fields", "metrics", "eval_splits", "headerless_splits"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("labels", "label_names"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(str(v) for v in value))
        problems = self._problems()
        if problems:
            raise GptuneError(*problems)

    def _problems(self) -> list[str]:
        """All inconsistencies at once, each naming the field (style: refuse everything at once)."""
        p = []
        where = f"task '{self.name}'"
        if self.kind not in KINDS:
            p.append(f"{where}: kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        need = {"classification": 1, "entailment": 2, "similarity": 2}.get(self.kind)
        if need is not None and len(self.text_fields) != need:
            p.append(f"{where}: kind {self.kind} needs {need} text field(s), got {list(self.text_fields)}")
        if self.kind == "multiple_choice":
            if len(self.text_fields) < 3:
                p.append(f"{where}: multiple_choice needs a context field and at least 2 candidate fields")
            if self.labels is None or len(self.labels) != len(self.text_fields) - 1:
                p.append(
                    f"{where}: multiple_choice needs one label value per candidate "
                    f"({len(self.text_fields) - 1}), got {self.labels}"
                )
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            p.append(f"{where}: labels must be distinct, got {list(self.labels)}")
        if self.labels is not None and len(self.labels) < 2:
            p.append(
                f"{where}: labels needs at least 2 values (or none for regression), got {list(self.labels)}"
            )
        if self.label_names is not None and (
            self.labels is None or len(self.label_names) != len(self.labels)
        ):
            p.append(f"{where}: label_names must have one name per label")
        allowed = REGRESSION_METRICS if self.labels is None else CLASS_METRICS
        for m in self.metrics:
            if m not in allowed:
                what = "regression (no labels)" if self.labels is None else "a task with labels"
                p.append(f"{where}: metric '{m}' does not apply to {what}; choose from {', '.join(allowed)}")
        if "f1" in self.metrics and self.labels is not None and len(self.labels) != 2:
            p.append(f"{where}: metric 'f1' is binary; use 'f1_macro' for {len(self.labels)} labels")
        if not self.metrics:
            p.append(f"{where}: metrics must not be empty")
        elif self.main_metric not in self.metrics:
            p.append(f"{where}: main_metric '{self.main_metric}' is not in metrics {list(self.metrics)}")
        for s in self.eval_splits + self.headerless_splits:
            if s not in self.splits:
                p.append(f"{where}: split '{s}' has no file in splits (known: {', '.join(self.splits)})")
        return p

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Outputs of the task head: 1 for regression and multiple choice (a score per candidate)."""
        if self.labels is None or self.kind == "multiple_choice":
            return 1
        return len(self.labels)

    def texts(self, row: dict[str, Any]) -> list[str]:
        """The row's text segments in input order (what `transforms.encode_example` expects, untokenized)."""
        return [row[f] for f in self.text_fields]

    def split_file(self, split: str) -> str:
        """The file of `split`; unknown split -> GptuneError listing the known ones."""
        if split not in self.splits:
            raise GptuneError(
                f"task {self.name} has no split '{split}'; choose one of {', '.join(self.splits)}"
            )
        return self.splits[split]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); `from_dict` rebuilds an equal spec."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        """Rebuild from `to_dict` output (e.g. a model folder's task.json); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = [k for k in _REQUIRED if k not in data]
        problems = [f"task.json: unknown key '{k}'" for k in unknown]
        problems += [f"task.json: missing key '{k}'" for k in missing]
        if problems:
            raise GptuneError(*problems)
        return cls(**data)


_REQUIRED = ("name", "kind", "text_fields", "label_field", "labels", "metrics", "main_metric", "splits")


def custom_task(
    name: str,
    kind: str,
    text_fields: list[str] | tuple[str, ...],
    label_field: str,
    labels: list[str] | tuple[str, ...] | None,
    files: dict[str, str | Path],
    *,
    metrics: list[str] | tuple[str, ...] | None = None,
    main_metric: str | None = None,
    eval_splits: list[str] | tuple[str, ...] | None = None,
) -> TaskSpec:
    """A `TaskSpec` for the user's own CSV/TSV/JSONL files (one file per split, absolute paths kept).

    Defaults: metrics accuracy (labels) or pearson+spearmanr (regression); main metric the first one;
    eval splits `validation` if given, else none.
    """
    if metrics is None:
        metrics = REGRESSION_METRICS if labels is None else ("accuracy",)
    if eval_splits is None:
        eval_splits = ("validation",) if "validation" in files else ()
    return TaskSpec(
        name=name,
        kind=kind,
        text_fields=tuple(text_fields),
        label_field=label_field,
        labels=None if labels is None else tuple(labels),
        metrics=tuple(metrics),
        main_metric=main_metric or metrics[0],
        splits={s: str(Path(p).expanduser().resolve()) for s, p in files.items()},
        eval_splits=tuple(eval_splits),
    )


def _glue(**kw: Any) -> TaskSpec:
    kw.setdefault("splits", {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"})
    kw.setdefault("label_field", "label")
    kw.setdefault("main_metric", kw["metrics"][0])
    return TaskSpec(**kw)


# Field names are those of the hub dataset nyu-mll/glue, so TSV rows and hub rows look the same;
# `columns` maps them to the GLUE TSV header names. Header names are used (not positions) because
# test files drop the label column and MNLI train/dev differ in column count.
GLUE_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        _glue(
            name="cola",
            kind="classification",
            text_fields=("sentence",),
            labels=("0", "1"),
            label_names=("unacceptable", "acceptable"),
            metrics=("matthews_correlation",),
            glue_dir="CoLA",
            hub_name="cola",
            paper_score={"matthews_correlation": 45.4},
            # train/dev: no header; source, label, original judgement, sentence. test has `index sentence`.
            headerless_splits=("train", "validation"),
            column_index={"sentence": 3, "label": 1},
        ),
        _glue(
            name="sst2",
            kind="classification",
            text_fields=("sentence",),
            labels=("0", "1"),
            label_names=("negative", "positive"),
            metrics=("accuracy",),
            glue_dir="SST-2",
            hub_name="sst2",
            paper_score={"accuracy": 91.3},
        ),
        _glue(
            name="mrpc",
            kind="similarity",
            text_fields=("sentence1", "sentence2"),
            labels=("0", "1"),
            label_names=("not_equivalent", "equivalent"),
            metrics=("f1", "accuracy"),
            glue_dir="MRPC",
            hub_name="mrpc",
            paper_score={"f1": 82.3},
            columns={"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
        ),
        _glue(
            name="stsb",
            kind="similarity",
            text_fields=("sentence1", "sentence2"),
            labels=None,
            metrics=("pearson", "spearmanr"),
            glue_dir="STS-B",
            hub_name="stsb",
            paper_score={"pearson": 82.0},
            columns={"label": "score"},
        ),
        _glue(
            name="qqp",
            kind="similarity",
            text_fields=("question1", "question2"),
            labels=("0", "1"),
            label_names=("not_duplicate", "duplicate"),
            metrics=("f1", "accuracy"),
            glue_dir="QQP",
            hub_name="qqp",
            paper_score={"f1": 70.3},
            columns={"label": "is_duplicate"},
        ),
        _glue(
            name="mnli",
            kind="entailment",
            text_fields=("premise", "hypothesis"),
            labels=("entailment", "neutral", "contradiction"),
            metrics=("accuracy",),
            splits={
                "train": "train.tsv",
                "validation_matched": "dev_matched.tsv",
                "validation_mismatched": "dev_mismatched.tsv",
                "test_matched": "test_matched.tsv",
                "test_mismatched": "test_mismatched.tsv",
            },
            eval_splits=("validation_matched", "validation_mismatched"),
            glue_dir="MNLI",
            hub_name="mnli",
            paper_score={"validation_matched/accuracy": 82.1, "validation_mismatched/accuracy": 81.4},
            # sentence1/2 are columns 8/9; gold_label is the last column (train 12 columns, dev 16).
            columns={"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
        ),
        _glue(
            name="qnli",
            kind="entailment",
            text_fields=("question", "sentence"),
            labels=("entailment", "not_entailment"),
            metrics=("accuracy",),
            glue_dir="QNLI",
            hub_name="qnli",
            paper_score={"accuracy": 88.1},
        ),
        _glue(
            name="rte",
            kind="entailment",
            text_fields=("sentence1", "sentence2"),
            labels=("entailment", "not_entailment"),
            metrics=("accuracy",),
            glue_dir="RTE",
            hub_name="rte",
            paper_score={"accuracy": 56.0},
        ),
        _glue(
            name="wnli",
            kind="entailment",
            text_fields=("sentence1", "sentence2"),
            labels=("0", "1"),
            label_names=("not_entailment", "entailment"),
            metrics=("accuracy",),
            glue_dir="WNLI",
            hub_name="wnli",
        ),
    )
}

# Spellings people type: glue_data folder names and the old run_glue names.
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli-mm": "mnli"}


def get_task(name: str) -> TaskSpec:
    """The built-in GLUE task `name` (case-insensitive; `SST-2`, `sts-b` also work)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    valid = sorted(GLUE_TASKS)
    close = difflib.get_close_matches(key, valid + list(_ALIASES), n=1, cutoff=0.6)
    hint = f" (did you mean '{_ALIASES.get(close[0], close[0])}'?)" if close else ""
    raise GptuneError(f"unknown task '{name}'{hint}: choose one of {', '.join(valid)}")


def build_task_spec(cfg: TaskConfig) -> TaskSpec:
    """The recipe's ``task`` section as a spec: a GLUE task by name, or a custom task from ``task.kind`` + files."""
    if cfg.kind is None:
        if not cfg.name:
            raise GptuneError("task.name: no task given; pass --task NAME (a GLUE task) or a recipe with a task section")
        try:
            return get_task(cfg.name)
        except GptuneError as e:
            raise GptuneError(f"{e}; for your own data set task.kind, task.train_file and task.text_fields") from None
    problems = []
    if not cfg.train_file:
        problems.append("task.train_file: must be set for a custom task (task.kind is set)")
    if not cfg.text_fields:
        problems.append("task.text_fields: must list the text columns of a custom task")
    if problems:
        raise GptuneError(*problems)
    files = {"train": cfg.train_file}
    if cfg.eval_file:
        files["validation"] = cfg.eval_file
    return custom_task(cfg.name or "custom", cfg.kind, cfg.text_fields, cfg.label_field, cfg.labels, files)
