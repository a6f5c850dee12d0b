"""The fine-tuning sections of the recipe schema (``gptune.config``): ``lora`` and ``task``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gptune.checks import Checked


@dataclass
class LoraConfig(Checked):
    """LoRA adapters through PEFT (used by ``gptune finetune --lora``)."""

    _prefix = "lora."

    enabled: bool = False
    """Train LoRA adapters (plus the task head and the new special-token rows) instead of all weights."""
    r: int = 8
    """Rank of the LoRA update."""
    alpha: int = 16
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] | None = None
    """Modules that get adapters, by the last part of their name (``[q_proj, v_proj]``), or ``all-linear``
    (every linear layer of the body). Absent: PEFT's default for the model's family (GPT-2: c_attn; Llama:
    q_proj, v_proj; GPT-NeoX: query_key_value), else all-linear. ``fan_in_fan_out`` is set where the layers
    are Conv1D (GPT-2, GPT-1)."""
    merge: bool = False
    """Also write a merged full model to ``final/merged``."""
    save_embeddings: bool = True
    """Save the whole input-embedding matrix, the trained new-token rows folded in, in the adapter (PEFT's
    own convention for a resized vocabulary): every tool loads it, lm-evaluation-harness's ``peft=`` too
    (it re-ties the embeddings, which fails on PEFT's trainable-token wrapper under transformers 5), at the
    cost of vocabulary x width floats (GPT-2 small: ~154 MB). ``false``: only the new rows, as PEFT
    trainable tokens (a few KB; loads in PEFT, transformers and gptune, not in lm-eval's ``peft=``)."""
    lr: float | None = None
    """Peak learning rate when LoRA is on (replaces ``train.lr``; absent: ``train.lr``). Adapters
    start at zero and need a larger rate than full fine-tuning."""

    def _checks(self):
        if self.r <= 0:
            yield "r", f"must be > 0, got {self.r}"
        if self.alpha <= 0:
            yield "alpha", f"must be > 0, got {self.alpha}"
        if not 0 <= self.dropout < 1:
            yield "dropout", f"must be in [0, 1), got {self.dropout}"
        if self.lr is not None and self.lr <= 0:
            yield "lr", f"must be > 0, got {self.lr}"
        if self.target_modules is not None and not self.target_modules:
            yield "target_modules", "must name at least one module (or be absent: the family's default)"


@dataclass
class TaskConfig(Checked):
    """The supervised task for ``gptune finetune``: a GLUE task by name, or your own files."""

    _prefix = "task."

    name: str | None = None
    """A GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or a name for a custom task."""
    data_dir: str | None = None
    """GLUE data in the glue_data/ layout (else ``$GPTUNE_GLUE_DIR``, else ./glue_data, else the hub)."""
    kind: Literal["classification", "entailment", "similarity", "multiple_choice"] | None = None
    """Custom tasks: the GPT-1 input transformation to use."""
    train_file: str | None = None
    """Custom tasks: training rows (.csv, .tsv or .jsonl with a header / keys)."""
    eval_file: str | None = None
    """Custom tasks: evaluation rows, same format."""
    text_fields: list[str] = field(default_factory=list)
    """Custom tasks: text columns in order (multiple choice: context, then one column per candidate)."""
    label_field: str = "label"
    """Custom tasks: the label column."""
    labels: list[str] | None = None
    """Custom tasks: the label set (absent: regression on a float label)."""
    max_length: int | None = None
    """Longest input sequence after the GPT-1 transformation; longer inputs are truncated (the
    longer segment first; the extract token is always kept). Absent: the model's context, as in GPT-1
    (512). A value above the context is lowered to it. Batches are padded to their longest row only."""
    lm_coef: float = 0.5
    """Weight of the auxiliary language-modelling loss: L = L_task + lm_coef * L_lm (0 disables)."""
    lm_loss_mean: Literal["sequence", "token"] = "sequence"
    """How the auxiliary LM loss is averaged: ``sequence`` (GPT-1's code: each sequence's token mean,
    then the mean over sequences, so short and long inputs weigh the same) or ``token`` (one mean over
    every scored token of the micro-batch)."""
    new_token_init: Literal["mean", "normal"] = "mean"
    """Embedding rows of the new start/delimiter/extract tokens: ``mean`` (the mean embedding plus small
    seeded noise: gptune's choice, the new tokens start as an average token) or ``normal`` (seeded
    N(0, 0.02), like GPT-1's code, where they were fresh rows of its randomly initialised table)."""
    clf_dropout: float = 0.1
    """Dropout before the task head (GPT-1: 0.1)."""
    input_style: Literal["gpt1", "plain"] = "gpt1"
    """``gpt1``: special start/delimiter/extract tokens, head on the extract token (GPT-1). ``plain``:
    run_glue's input exactly (the texts concatenated as ``tokenizer(a, b)`` joins them for GPT-2, nothing
    added, one order for similarity), head on the last non-pad token as in GPT2ForSequenceClassification
    (the baseline for ablations)."""
    eval_every_epoch: bool = True
    """Evaluate on the dev split(s) after every epoch."""
    keep_best: bool = False
    """``final/`` holds the weights of the best evaluation by the task's main metric (higher is better; with
    several dev splits, the first one's), not the last step's. Each new best is written to ``best/``
    during the run and becomes ``final/`` at the end."""

    def _checks(self):
        if self.lm_coef < 0:
            yield "lm_coef", f"must be >= 0, got {self.lm_coef}"
        if self.max_length is not None and self.max_length < 8:
            yield "max_length", f"must be >= 8, got {self.max_length}"
        if not 0 <= self.clf_dropout < 1:
            yield "clf_dropout", f"must be in [0, 1), got {self.clf_dropout}"

