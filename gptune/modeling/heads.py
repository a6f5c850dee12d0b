"""GPT-1 task heads: one module holding the LM and a linear ``clf_head``, whose forward returns the
task logits and the loss parts.

The loss is computed inside ``forward`` because Accelerate/DDP wrap this module: the distributed
wrapper must see the forward that produces the loss (its gradient hooks are set up there).
The auxiliary LM loss goes through the body's hidden states and the chunked kernel of ``losses`` (over the
vocabulary) so the (tokens x vocabulary) logits are never built (for a family whose logits are more than
``head(hidden)``: from the model's own logits, ``families.chunked_head``).

Pooling (Radford et al. 2018, 3.3): the hidden state at the extract token ``<|extract|>``;
similarity sums the two orderings' states before the head; multiple choice scores each candidate
(one output) and the softmax runs over candidates. ``input_style=plain`` pools the last non-pad token.
"""

from __future__ import annotations

import torch
from torch import nn

from gptune.losses import combined_loss, lm_targets, task_loss
from gptune.modeling import families
from gptune.modeling.families import block_class_names
from gptune.modeling.gpt import lm_loss, run_lm, use_fused_gelu
from gptune.tasks import TaskSpec
from gptune.transforms import SPECIAL_TOKENS, SpecialIds

# Seed of the generator that initialises the rows of the new special tokens: the same base model
# always gets the same rows, so a LoRA adapter re-applied to a freshly resized base model is exact.
NEW_ROWS_SEED = 20180611


def add_task_tokens(tokenizer) -> SpecialIds:
    """Register ``<|start|>``, ``<|delim|>``, ``<|extract|>`` as additional special tokens (idempotent)."""
    wanted = list(SPECIAL_TOKENS.values())
    present = set(tokenizer.get_vocab())
    missing = [t for t in wanted if t not in present]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    start, delim, extract = tokenizer.convert_tokens_to_ids(wanted)
    return SpecialIds(start=start, delim=delim, extract=extract)


def init_new_rows(lm: nn.Module, n_old: int, mode: str = "mean") -> None:
    """New embedding rows (indices >= n_old). ``mean``: the mean of the old rows plus small seeded noise;
    ``normal``: seeded N(0, 0.02), GPT-1's init (``task.new_token_init``). An untied LM head (GPT-NeoX,
    Llama) gets its new rows the same way (its bias: the mean of the old entries). Deterministic, so
    rebuilding the base model for a saved adapter gives the very same rows."""
    inner = families.unwrap(lm)
    matrices = [inner.get_input_embeddings()]
    if not getattr(inner.config, "tie_word_embeddings", False):
        matrices.append(inner.get_output_embeddings())
    g = torch.Generator().manual_seed(NEW_ROWS_SEED)
    with torch.no_grad():
        for module in matrices:
            emb = module.weight
            if emb.shape[0] <= n_old:
                continue
            noise = torch.randn(emb.shape[0] - n_old, emb.shape[1], generator=g)  # (new, C)
            if mode == "normal":
                emb[n_old:] = (noise * 0.02).to(emb.dtype)
            else:
                old = emb[:n_old].float()
                emb[n_old:] = (old.mean(0, keepdim=True) + noise * old.std() * 0.1).to(emb.dtype)
            bias = getattr(module, "bias", None)
            if bias is not None:
                bias[n_old:] = bias[:n_old].mean()


class GPT1TaskModel(nn.Module):
    """A causal LM plus GPT-1's task head. ``forward(batch)`` returns a dict with ``logits``
    (B, num_labels) or (B, K) for multiple choice, and, when the batch has labels, ``loss``,
    ``task_loss`` and ``lm_loss``."""

    def __init__(self, lm: nn.Module, task: TaskSpec, *, lm_coef: float = 0.5, clf_dropout: float = 0.1,
                 lm_loss_mean: str = "sequence"):
        super().__init__()
        self.lm = lm
        use_fused_gelu(lm)
        self._no_split_modules = block_class_names(lm)  # FSDP's wrap policy reads it off the wrapped model
        self.chunked = families.chunked_head(lm)
        self.kind = task.kind
        self.regression = task.is_regression
        self.lm_coef = lm_coef
        self.lm_loss_mean = lm_loss_mean
        width = lm.get_input_embeddings().weight.shape[1]
        self.clf_dropout = nn.Dropout(clf_dropout)
        # a unique name: PEFT matches modules_to_save by suffix ("head" would also match lm_head)
        self.clf_head = nn.Linear(width, task.num_labels)
        nn.init.normal_(self.clf_head.weight, std=0.02)
        nn.init.zeros_(self.clf_head.bias)

    def get_input_embeddings(self) -> nn.Module | None:
        """The input embedding, for Accelerate's FSDP2 prepare, which makes it a unit of its own. None under
        PEFT's trainable tokens: there the tied matrix is also read by the wrapped LM head, whose token
        layer uses it directly (not through the embedding's forward), so it must stay in the root unit;
        carved out, the root ``fully_shard`` meets it already sharded and fails."""
        emb = self.lm.get_input_embeddings()
        return None if hasattr(emb, "token_adapter") else emb

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, extract_pos: torch.Tensor,
                labels: torch.Tensor | None = None, **_ignored) -> dict[str, torch.Tensor]:
        b, n, t = input_ids.shape  # (B, sequences per example, T)
        flat_ids = input_ids.view(b * n, t)
        flat_mask = attention_mask.view(b * n, t)
        # (B*n, T, C), and the logits (B*n, T, V) only where the family needs them for its LM loss
        hidden, lm_logits = run_lm(self.lm, flat_ids, flat_mask, chunked=self.chunked or self.lm_coef == 0)
        rows = torch.arange(b * n, device=hidden.device)
        pooled = hidden[rows, extract_pos.view(-1)].view(b, n, -1)  # (B, n, C): state at the extract token
        if self.kind == "similarity":
            pooled = pooled.sum(1, keepdim=True)  # (B, 1, C): A$B + B$A, order-free by construction
        logits = self.clf_head(self.clf_dropout(pooled))  # (B, n', num_labels)
        # multiple choice: one score per candidate -> (B, K); otherwise the single pooled row -> (B, L)
        logits = logits.squeeze(-1) if self.kind == "multiple_choice" else logits[:, 0]
        out = {"logits": logits}
        if labels is None:
            return out
        l_task = task_loss(logits, labels, regression=self.regression)
        out["task_loss"] = l_task.detach()
        l_lm = None
        if self.lm_coef > 0:
            targets, row_denom = lm_targets(flat_ids, flat_mask, mean=self.lm_loss_mean)
            l_lm, _ = lm_loss(self.lm, hidden, lm_logits, targets, row_denom=row_denom)
            out["lm_loss"] = l_lm.detach()
        out["loss"] = combined_loss(l_task, l_lm, self.lm_coef)
        return out
