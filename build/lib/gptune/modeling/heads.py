"""GPT-1 task heads: one module holding the LM and a linear ``clf_head``, whose forward returns the
task logits and the loss parts.

The loss is computed inside ``forward`` because Accelerate/DDP wrap this module: the distributed
wrapper must see the forward that produces the loss (its gradient hooks are set up there).
The auxiliary LM loss goes through ``body_and_head`` + ``losses.causal_lm_loss`` (chunked over the
vocabulary) so the (tokens x vocabulary) logits are never built.

Pooling (Radford et al. 2018, 3.3): the hidden state at the extract token ``<|extract|>``;
similarity sums the two orderings' states before the head; multiple choice scores each candidate
(one output) and the softmax runs over candidates. ``input_style=plain`` pools the last non-pad token.
"""

from __future__ import annotations

import torch
from torch import nn

from gptune.losses import causal_lm_loss, combined_loss, task_loss
from gptune.modeling.gpt import block_class_names, body_and_head, head_weight, use_fused_gelu
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
    ``normal``: seeded N(0, 0.02), GPT-1's init (``task.new_token_init``). Deterministic, so rebuilding
    the base model for a saved adapter gives the very same rows."""
    emb = lm.get_input_embeddings().weight
    if emb.shape[0] <= n_old:
        return
    with torch.no_grad():
        g = torch.Generator().manual_seed(NEW_ROWS_SEED)
        noise = torch.randn(emb.shape[0] - n_old, emb.shape[1], generator=g)  # (new, C)
        if mode == "normal":
            emb[n_old:] = (noise * 0.02).to(emb.dtype)
            return
        old = emb[:n_old].float()
        emb[n_old:] = (old.mean(0, keepdim=True) + noise * old.std() * 0.1).to(emb.dtype)


def head_grad_rows(lm: nn.Module, weight: torch.Tensor) -> torch.Tensor | None:
    """The rows of the tied LM head matrix that can receive a gradient, when only some can: under PEFT's
    trainable tokens with a frozen base matrix, the head is ``index_copy(frozen, new_ids, deltas)``, so
    only the new tokens' rows lead to a parameter. None: every row (full fine-tuning) or none (frozen)."""
    inner = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    adapter = getattr(inner.get_input_embeddings(), "token_adapter", None)
    if adapter is None or not weight.requires_grad or adapter.get_base_layer().weight.requires_grad:
        return None
    rows = sorted({i for name in adapter.active_adapters for i in adapter.token_indices.get(name, [])})
    return torch.tensor(rows, dtype=torch.long, device=weight.device) if rows else None


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
        body, _ = body_and_head(self.lm)
        hidden = body(input_ids=flat_ids, attention_mask=flat_mask).last_hidden_state  # (B*n, T, C)
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
            weight = head_weight(self.lm)
            l_lm, _ = causal_lm_loss(hidden, weight, flat_ids, flat_mask, grad_rows=head_grad_rows(self.lm, weight),
                                     mean=self.lm_loss_mean)
            out["lm_loss"] = l_lm.detach()
        out["loss"] = combined_loss(l_task, l_lm, self.lm_coef)
        return out
