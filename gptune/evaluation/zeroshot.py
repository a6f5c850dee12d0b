"""Zero-shot behaviours of a pretrained LM, no fine-tuning (GPT-1 section 5, Fig. 2 right).

The LM alone, scored on a task by comparing the probabilities it gives to a few continuations:

    sst2   "<sentence> very" followed by " positive" vs " negative"        (accuracy; chance 50)
    rte    "<premise> question: <hypothesis> true or false? answer:"
           followed by " true" (entailment) vs " false"                     (accuracy; chance 50)
    cola   mean token log-probability of the sentence, thresholded; the
           threshold maximises MCC on calibration rows (the train split)    (MCC; chance 0)

A continuation's score is the summed log-probability of all its tokens (one BPE word may be several
tokens). Every sequence starts with the tokenizer's BOS (GPT-2: <|endoftext|>), so the first real
token is scored too; sequences longer than the model's context keep their last tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gptune.errors import GptuneError

ZERO_SHOT_TASKS = ("sst2", "cola", "rte")
CHANCE = {"sst2": 0.5, "rte": 0.5, "cola": 0.0}
"""Score of a random guess with balanced classes: accuracy 0.5; MCC 0 for any input-independent guess."""
METRIC = {"sst2": "accuracy", "rte": "accuracy", "cola": "matthews_correlation"}
CHOICES = {"sst2": (" negative", " positive"), "rte": (" true", " false")}
"""Continuations in label-id order (SST-2: 0 negative, 1 positive; RTE: 0 entailment, 1 not_entailment)."""


def prompt_for(task: str, row: dict) -> str:
    if task == "sst2":
        return f"{row['sentence'].strip()} very"
    if task == "rte":
        return f"{row['sentence1'].strip()} question: {row['sentence2'].strip()} true or false? answer:"
    if task == "cola":
        return ""
    raise GptuneError(f"zero-shot task {task}: not one of {', '.join(ZERO_SHOT_TASKS)}")


@torch.no_grad()
def continuation_logprobs(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str], *,
                          batch_size: int = 16) -> list[tuple[float, int]]:
    """(sum of log p(continuation tokens | BOS + prompt), number of continuation tokens) for each pair."""
    from gptune.modeling.gpt import context_length

    ctx = context_length(model.config)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    seqs = []
    for prompt, cont in zip(prompts, continuations, strict=True):
        p = ([bos] if bos is not None else []) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(cont, add_special_tokens=False)["input_ids"]
        if not c:
            raise GptuneError(f"zero-shot: empty continuation {cont!r}")
        ids = (p + c)[-ctx:] if ctx else p + c
        seqs.append((ids, min(len(c), len(ids) - 1)))
    model.eval()
    out = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, (ids, _) in enumerate(chunk):  # right padding: positions of real tokens do not move
            input_ids[j, :len(ids)] = torch.tensor(ids)
            mask[j, :len(ids)] = 1
        logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
        for j, (ids, n_cont) in enumerate(chunk):
            # the logits at position n predict token n+1: the continuation's tokens are predicted by the
            # n_cont positions before the last token (log-softmax only over those rows, not all B x T)
            rows = torch.log_softmax(logits[j, len(ids) - 1 - n_cont:len(ids) - 1].float(), dim=-1)  # (n_cont, V)
            targets = input_ids[j, len(ids) - n_cont:len(ids)]
            out.append((float(rows.gather(-1, targets[:, None]).sum()), n_cont))
    return out


def predict_choice(model, tokenizer, task: str, rows: Sequence[dict], *, batch_size: int = 16) -> list[int]:
    """The label id whose continuation the LM finds most probable (ties: the first)."""
    choices = CHOICES[task]
    prompts = [prompt_for(task, r) for r in rows]
    scores = [[s for s, _ in continuation_logprobs(model, tokenizer, prompts, [c] * len(rows), batch_size=batch_size)]
              for c in choices]
    return [max(range(len(choices)), key=lambda k, i=i: scores[k][i]) for i in range(len(rows))]


def mean_token_logprobs(model, tokenizer, texts: Sequence[str], *, batch_size: int = 16) -> list[float]:
    """Mean log-probability per token of each text after BOS (CoLA's acceptability score)."""
    res = continuation_logprobs(model, tokenizer, [""] * len(texts), [t.strip() for t in texts], batch_size=batch_size)
    return [s / n for s, n in res]


def best_threshold(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The cut between consecutive distinct scores that maximises MCC of "label 1 iff score > cut"
    (every cut at once from cumulative counts; ties: the lowest cut)."""
    import numpy as np

    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    values = np.unique(s)
    cuts = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2])
    order = np.sort(s)
    # predicted positive = score > cut: counts from the sorted scores
    n_below = np.searchsorted(order, cuts, side="right")  # rows with score <= cut
    pos_sorted = np.cumsum(y[np.argsort(s, kind="stable")])
    pos_below = np.where(n_below > 0, pos_sorted[np.maximum(n_below - 1, 0)], 0)
    n, p = len(s), int(y.sum())
    tp = p - pos_below
    fp = (n - n_below) - tp
    fn = pos_below
    tn = n_below - fn
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn).astype(np.float64))
    mcc = np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1), 0.0)
    return float(cuts[int(np.argmax(mcc))])


@dataclass
class ZeroShotResult:
    task: str
    metric: str
    value: float
    chance: float
    rows: int
    predictions: list[int]
    threshold: float | None = None

    def to_dict(self) -> dict:
        d = {"task": self.task, "metric": self.metric, "value": self.value, "chance": self.chance,
             "rows": self.rows, "positive_rate": sum(self.predictions) / max(1, len(self.predictions))}
        if self.threshold is not None:
            d["threshold"] = self.threshold
        return d


def zero_shot(model, tokenizer, task: str, rows: Sequence[dict], *, calibration: Sequence[dict] = (),
              batch_size: int = 16) -> ZeroShotResult:
    """Score ``rows`` (dicts with the task's text fields and an integer ``label``) zero-shot."""
    from gptune.evaluation.metrics import compute_metrics
    from gptune.tasks import get_task

    threshold = None
    if task == "cola":
        if not calibration:
            raise GptuneError("zero-shot cola: needs calibration rows to choose the threshold")
        cal = mean_token_logprobs(model, tokenizer, [r["sentence"] for r in calibration], batch_size=batch_size)
        threshold = best_threshold(cal, [r["label"] for r in calibration])
        scores = mean_token_logprobs(model, tokenizer, [r["sentence"] for r in rows], batch_size=batch_size)
        preds = [int(s > threshold) for s in scores]
    else:
        preds = predict_choice(model, tokenizer, task, rows, batch_size=batch_size)
    m = compute_metrics(get_task(task), preds, [r["label"] for r in rows])
    return ZeroShotResult(task, METRIC[task], float(m[METRIC[task]]), CHANCE[task], len(rows), preds, threshold)


def load_checkpoint_lm(ckpt: Path, like: Path):
    """The bare causal LM of a pretraining checkpoint ``RUN/step-NNNNNN`` (its ``model.safetensors`` holds
    the ``LMWithLoss`` state: keys ``lm.*``), built from the config of ``like`` (e.g. ``RUN/final``)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from gptune.modeling.families import tied_keys

    weights = Path(ckpt) / "model.safetensors"
    if not weights.is_file():
        raise GptuneError(f"{ckpt}: no model.safetensors (not a gptune pretraining checkpoint)")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(like))
    state = {k.removeprefix("lm."): v for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = tied_keys(model)
    if unexpected or set(missing) - tied:
        raise GptuneError(f"{ckpt}: weights do not fit {like}/config.json "
                          f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    return model.eval()
