"""The recipe schema: typed dataclasses, one per concern, a docstring under every field (the single
source of ``gptune recipes docs``) and range checks in ``_checks``. Reading YAML, flags and ``--set``
into a ``Recipe`` is ``gptune.recipes``; the reference docs are ``gptune.recipe_docs``.

Every section validates itself in ``__post_init__``, built from YAML or in code (``TrainConfig(lr=-1)``
raises, naming ``train.lr``). ``Recipe.check_complete`` holds what a run needs beyond valid values (a step
budget, a tokenizer): the default ``Recipe()`` is valid but not runnable. What needs the model's own config
(``data.block_size`` against its context) is checked by the runner before the run folder exists. While ``gptune.recipes`` builds a recipe it collects every problem (``collecting``) and
reports them all at once.

No torch import here: ``gptune --help`` and ``gptune recipes validate`` stay fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gptune.checks import Checked, report
from gptune.config_clean import LANGUAGES, CleanConfig  # noqa: F401 - part of the schema, importable from here
from gptune.config_finetune import LoraConfig, TaskConfig

# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------
DEFAULT_SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "n_positions": 256}
"""The shape of a random init when neither the ``model.arch`` preset nor ``model.config_file`` gives one."""


@dataclass
class ArchConfig(Checked):
    """Architecture of a randomly initialised model (ignored when ``model.name_or_path`` is set,
    except ``dropout`` which is applied to pretrained models too). Each shape key maps to the family's
    own name (GPT-2's ``n_embd``, Llama's ``hidden_size``...)."""

    _prefix = "model.config."

    n_layer: int | None = None
    """Number of transformer blocks (absent: the ``model.arch`` preset's, the ``model.config_file``'s, else 6)."""
    n_head: int | None = None
    """Attention heads per block; must divide ``n_embd`` (absent: the preset's or config file's, else 6)."""
    n_embd: int | None = None
    """Width of the residual stream (absent: the preset's or config file's, else 384)."""
    n_positions: int | None = None
    """Longest sequence the model can read (its context); ``data.block_size`` must fit in it (absent: the
    preset's or config file's, else 256)."""
    dropout: float = 0.1
    """Every dropout rate of the model: residual, embedding, attention (GPT-1 used 0.1)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """The family's own transformers config keys, passed as they are and winning over everything else
    (e.g. ``{num_key_value_heads: 2, rope_theta: 500000}`` for llama); keys a family derives from the shape
    (MLP width, GPT-Neo's attention pattern, GPT-J's rotary_dim) are filled unless given here (docs/models.md)."""

    def _checks(self):
        for k in DEFAULT_SHAPE:
            if getattr(self, k) is not None and getattr(self, k) <= 0:
                yield k, f"must be > 0, got {getattr(self, k)}"
        if not 0 <= self.dropout < 1:
            yield "dropout", f"must be in [0, 1), got {self.dropout}"


@dataclass
class ModelConfig(Checked):
    """Which model to train and with which tokenizer."""

    _prefix = "model."

    name_or_path: str | None = None
    """Pretrained model: a local folder (e.g. runs/books/final) or a hub id. Absent: random init from
    ``model.config``."""
    arch: str = "gpt2"
    """Architecture for random init: a family's ``model_type`` (gpt2, openai-gpt, gpt_neo, gptj, gpt_neox,
    opt, bloom, llama, qwen2) with the ``model.config`` shape, or a named size that sets the shape
    (gpt2-small, gpt2-medium, gpt2-large, gpt2-xl, gpt1, pythia-160m, opt-350m, tinyllama-1.1b, ...;
    the full list: docs/models.md); keys set in ``model.config`` win over the preset's."""
    config: ArchConfig = field(default_factory=ArchConfig)
    """Architecture of a randomly initialised model."""
    config_file: str | None = None
    """A transformers ``config.json`` (file or folder) to initialise randomly from instead of ``model.arch``:
    its ``model_type`` picks the family, ``model.config`` keys that are set win over it."""
    tokenizer: str | None = None
    """Tokenizer: a local folder, a hub id, or ``train`` (byte-level BPE trained on ``data.path`` and
    saved in the run folder). Absent: the tokenizer saved with ``model.name_or_path``."""
    vocab_size: int = 16384
    """Vocabulary size when ``model.tokenizer`` is ``train``."""
    tokenizer_train_bytes: int = 100_000_000
    """Cap on the text read to train a tokenizer (``model.tokenizer=train``), sampled across the whole
    corpus (evenly spaced windows of each file; a shuffled hub stream), not only its head (measured
    training times: benchmarks/NOTES.md)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    trust_remote_code: bool = False
    """Allow a hub model to run its own Python code. Off: loading never executes code from a folder."""
    transfer_layers: int | None = None
    """Fine-tuning: transfer the embeddings and the first k transformer blocks of the pretrained model and
    re-initialise the blocks above k (GPT-1's Fig. 2 left; 0: embeddings only). Absent: every block."""

    def __post_init__(self):
        from gptune.modeling.families import PRESETS

        if self.config_file is None:  # a config file gives its own shape: nothing is filled in over it
            preset = PRESETS.get(self.arch)
            for key, default in DEFAULT_SHAPE.items():
                if getattr(self.config, key) is None:
                    setattr(self.config, key, getattr(preset, key) if preset else default)
            if preset is not None:
                self.config.extra = {**preset.extra, **self.config.extra}
        super().__post_init__()  # then the checks, as every section

    def _checks(self):
        from gptune.modeling.families import ARCHS

        if self.arch not in ARCHS:
            import difflib

            close = difflib.get_close_matches(self.arch, ARCHS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            yield "arch", f"unknown architecture {self.arch!r}; {hint}choose from {', '.join(ARCHS)}"
        a = self.config
        if a.n_head and a.n_embd and a.n_head > 0 and a.n_embd % a.n_head:
            yield "config.n_embd", f"must be divisible by model.config.n_head={a.n_head}, got {a.n_embd}"
        if self.tokenizer_train_bytes < 1:
            yield "tokenizer_train_bytes", f"must be >= 1, got {self.tokenizer_train_bytes}"
        if self.vocab_size < 300:
            yield "vocab_size", f"must be >= 300 (256 bytes + merges + specials), got {self.vocab_size}"
        if self.transfer_layers is not None and self.transfer_layers < 0:
            yield "transfer_layers", f"must be >= 0, got {self.transfer_layers}"


@dataclass
class DataConfig(Checked):
    """Text for causal-LM pretraining."""

    _prefix = "data."

    path: str = "data/books"
    """A text file, a folder of .txt/.jsonl/.csv/.parquet files, a hub dataset id (``name`` or
    ``name:config``), or ``embedded``: the 13 public-domain books shipped inside gptune (5.5 MB)."""
    download_books: bool = False
    """When ``data.path`` does not exist, fill it with public-domain Project Gutenberg books from the
    Hugging Face hub (about 50 MB); when the hub cannot be reached, read ``embedded`` instead (the run's
    first line and its recipe.yaml say so)."""
    text_column: str = "text"
    """Column holding the text in .jsonl/.csv/.parquet files and hub datasets."""
    block_size: int = 256
    """Tokens per training sequence; documents are packed into one stream cut into blocks."""
    val_path: str | None = None
    """Validation text (file, folder, ``datasets`` folder or hub id). Absent: held out of ``data.path`` by
    ``data.val_split``."""
    val_split: Literal["tail", "documents", "blocks"] = "tail"
    """How validation is held out of ``data.path`` when ``data.val_path`` is absent: ``tail`` (the last
    ``data.val_fraction`` of each document, cut at a line start: contiguous text the model never trains on),
    ``documents`` (a seeded ``data.val_fraction`` of whole documents: for corpora of many short rows), or
    ``blocks`` (a seeded random fraction of the packed blocks, as before; neighbouring blocks leak context)."""
    val_fraction: float = 0.01
    """Fraction held out for validation when ``data.val_path`` is absent (0: no validation)."""
    num_proc: int = 2
    """Worker processes for tokenization (``gptune prepare`` and the first ``gptune pretrain``)."""
    max_tokens: int | None = None
    """Stop reading a (streamed hub) corpus after this many training tokens (part of the prepared data's key)."""
    revision: str | None = None
    """Revision (branch, tag or commit) of a hub dataset ``data.path``. Absent: ``main``; pin a commit so
    prepared shards cannot silently describe an older version of the dataset."""
    fallback_encoding: str | None = None
    """Encoding for text files that are not valid UTF-8 (e.g. ``latin-1``). Absent: such a file is an
    error naming it and the first bad byte."""
    cache_dir: str | None = None
    """Cache root for token shards (``lm/``) and tokenized tasks (``tasks/``). Absent: ``$GPTUNE_CACHE``,
    else ``~/.cache/gptune``."""
    clean: CleanConfig = field(default_factory=CleanConfig)
    """Cleaning before tokenizing: HTML stripping, length and quality filters, language filter, dedup."""

    def _checks(self):
        if self.block_size < 2:
            yield "block_size", f"must be >= 2, got {self.block_size}"
        if not 0 <= self.val_fraction < 1:
            yield "val_fraction", f"must be in [0, 1), got {self.val_fraction}"
        if self.num_proc < 1:
            yield "num_proc", f"must be >= 1, got {self.num_proc}"
        if self.max_tokens is not None and self.max_tokens <= 0:
            yield "max_tokens", f"must be > 0, got {self.max_tokens}"


# Accelerate's trackers -> the module each needs (the pip package has the same name, comet_ml: comet-ml).
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim",
            "comet_ml": "comet_ml", "clearml": "clearml", "dvclive": "dvclive"}


@dataclass
class TrainConfig(Checked):
    """Optimisation: one Accelerate loop for pretraining and fine-tuning."""

    _prefix = "train."

    max_steps: int | None = None
    """Optimizer steps to run. Absent: ``train.epochs`` passes over the data. Changing it on
    ``--resume`` extends (or shortens) the run with the lr continuous at the resume step: the warmup
    keeps its number of steps and, past it, the decay is re-planned from the current lr to its floor at
    the new total (a finished cosine run continues at ``lr * min_lr_ratio``)."""
    epochs: float | None = None
    """Passes over the training data when ``train.max_steps`` is absent."""
    micro_batch_size: int = 8
    """Sequences per forward pass per process."""
    global_batch_size: int = 32
    """Sequences per optimizer step over all processes; gradient accumulation makes up the
    difference (global = micro x accumulation x processes)."""
    lr: float = 6e-4
    """Peak learning rate (GPT-1 pretraining: 2.5e-4; fine-tuning: 6.25e-5)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup: cosine to ``min_lr_ratio`` (GPT-1 pretraining), linear to 0 (GPT-1
    fine-tuning), or constant."""
    warmup: float = 0.02
    """Warmup: a number >= 1 is a count of steps, a number in [0, 1) a fraction of the run."""
    min_lr_ratio: float = 0.1
    """Cosine schedule ends at ``lr * min_lr_ratio`` after the last step. GPT-1 annealed to 0
    (``recipes/gpt1.yaml``: 0); the default lr/10 is gptune's choice."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on matrices (weights and embeddings; GPT-1's modified L2,
    w=0.01); biases and LayerNorm gains are not decayed."""
    beta1: float = 0.9
    """AdamW beta1 (GPT-1: 0.9)."""
    beta2: float = 0.95
    """AdamW beta2. GPT-1 used Adam's 0.999 (``recipes/gpt1.yaml``, ``recipes/finetune.yaml``); the
    default 0.95 is gptune's choice, steadier at the higher learning rates of small models."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision through Accelerate. ``auto``: the launcher's bf16/fp16 when it names one
    (``accelerate launch --mixed_precision``, an Accelerate config file), else bf16 on a GPU or a CPU with
    native bf16 (``avx512_bf16``/``amx_bf16``), else fp32 (``no``); the run says which in its first lines
    and writes the resolved value to recipe.yaml. bf16 on a CPU without bf16 units is 10-150x slower (it
    warns)."""
    compile: bool = False
    """``torch.compile`` the model (first steps slower while it compiles)."""
    eval_every: int = 200
    """Evaluate every N optimizer steps (0: only at the end)."""
    eval_batches: int | None = 50
    """Cap on validation batches per periodic evaluation (absent: the whole split)."""
    save_every: int = 500
    """Write a resumable checkpoint every N optimizer steps (0: only at the end and on interrupt);
    every run ends with one, so it can be extended with ``--resume``."""
    keep_last: int = 2
    """Keep this many step checkpoints; older ones are deleted."""
    log_every: int = 10
    """Log loss, lr and tokens/s every N optimizer steps (reading the loss syncs the device)."""
    tracker: list[str] = field(default_factory=list)
    """Experiment trackers through Accelerate (logging dir: the run folder's logs/): any of tensorboard,
    wandb, mlflow, aim, comet_ml, clearml, dvclive, several at once (a list or ``tensorboard,mlflow``);
    empty or ``none``: metrics.jsonl only. They get every metrics.jsonl event (train loss, lr, gradient
    norm; validation loss/perplexity; task metrics) at the same step."""
    skip_nonfinite: int = 0
    """Skip up to N optimizer steps whose loss is NaN/inf on any process before stopping the run (0: stop
    at the first). All processes skip or stop together; a skipped step's batches are not retried."""
    dist_timeout: int = 1800
    """Seconds a process waits for the others in a collective (all-reduce, barrier) before the run fails
    with an error, instead of hanging when one process died or stalled."""
    num_workers: int | None = None
    """DataLoader worker processes per training process (absent: 0 on CPU, 2 on CUDA, where batches are
    also pinned for fast copies to the GPU)."""

    @property
    def trackers(self) -> list[str]:
        """``tracker`` without ``none``."""
        return [t for t in self.tracker if t != "none"]

    def _checks(self):
        unknown = [t for t in self.tracker if t not in TRACKERS and t != "none"]
        if unknown:
            yield "tracker", f"unknown tracker {', '.join(unknown)}; choose from none, {', '.join(TRACKERS)}"
        if self.max_steps is not None and self.max_steps <= 0:
            yield "max_steps", f"must be > 0, got {self.max_steps}"
        if self.epochs is not None and self.epochs <= 0:
            yield "epochs", f"must be > 0, got {self.epochs}"
        for k in ("micro_batch_size", "global_batch_size"):
            if getattr(self, k) <= 0:
                yield k, f"must be > 0, got {getattr(self, k)}"
        if self.micro_batch_size > 0 and self.global_batch_size % self.micro_batch_size:
            yield "global_batch_size", (
                f"must be a multiple of train.micro_batch_size={self.micro_batch_size}, got {self.global_batch_size}"
            )
        if self.lr <= 0:
            yield "lr", f"must be > 0, got {self.lr}"
        if self.warmup < 0:
            yield "warmup", f"must be >= 0, got {self.warmup}"
        if not 0 <= self.min_lr_ratio <= 1:
            yield "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}"
        if self.weight_decay < 0:
            yield "weight_decay", f"must be >= 0, got {self.weight_decay}"
        for k in ("beta1", "beta2"):
            if not 0 <= getattr(self, k) < 1:
                yield k, f"must be in [0, 1), got {getattr(self, k)}"
        if self.dist_timeout <= 0:
            yield "dist_timeout", f"must be > 0, got {self.dist_timeout}"
        if self.num_workers is not None and self.num_workers < 0:
            yield "num_workers", f"must be >= 0, got {self.num_workers}"
        for k in ("grad_clip", "eval_every", "save_every", "skip_nonfinite"):
            if getattr(self, k) < 0:
                yield k, f"must be >= 0, got {getattr(self, k)}"
        if self.keep_last < 1:
            yield "keep_last", f"must be >= 1, got {self.keep_last}"
        if self.log_every < 1:
            yield "log_every", f"must be >= 1, got {self.log_every}"
        if self.eval_batches is not None and self.eval_batches < 1:
            yield "eval_batches", f"must be >= 1, got {self.eval_batches}"



@dataclass
class Recipe:
    """A whole run: what to train, on what, how, and where the run folder goes."""

    name: str = "run"
    """Run name; the run folder defaults to runs/<name>."""
    seed: int = 1337
    """Seed for weights, data order, dropout and the validation split."""
    out_dir: str | None = None
    """Run folder (default: runs/<name>)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model and tokenizer."""
    data: DataConfig = field(default_factory=DataConfig)
    """Pretraining text."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """Fine-tuning task (fine-tuning only)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (fine-tuning only)."""

    def check_complete(self) -> None:
        """What a run needs beyond valid values, all reported at once (the default ``Recipe()`` lacks both)."""
        problems = []
        if self.model.name_or_path is None and self.model.tokenizer is None:
            problems.append("model.tokenizer: must be set (a folder, a hub id, or 'train') when "
                            "model.name_or_path is absent")
        if self.train.max_steps is None and self.train.epochs is None:
            problems.append("train.max_steps: set train.max_steps or train.epochs")
        report(problems)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, header: str = "") -> str:
        body = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        return (header + "\n" if header else "") + body
