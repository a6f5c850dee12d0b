"""Zero-shot scoring (GPT-1 Fig. 2 right): the batched, padded scores equal a hand computation one
sequence at a time; decisions, metrics and the CoLA threshold follow; step checkpoints load as LMs."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import make_workdir, run_cli
from gptune.evaluation import zeroshot as zs
from gptune.evaluation.metrics import compute_metrics
from gptune.tasks import get_task

WORDS = "the a cat dog sat on mat ran to house big small red blue saw old man good bad".split()


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def _rows(n, seed=0):
    rng = random.Random(seed)
    return [{"sentence": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))),
             "sentence1": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))),
             "sentence2": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))),
             "label": i % 2} for i in range(n)]


def _by_hand(model, tok, prompt, cont):
    """log p(cont | BOS prompt), one unpadded sequence, token by token."""
    p = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    total = 0.0
    for j, t in enumerate(c):
        pos = len(p) + j - 1  # the logits at pos predict token pos + 1
        total += torch.log_softmax(logits[pos].double(), -1)[t].item()
    return total, len(c)


def test_batched_padded_scores_equal_the_hand_computation(lm):
    model, tok = lm
    rows = _rows(7)
    prompts = [zs.prompt_for("rte", r) for r in rows]
    conts = [" true", " false", " positive", " negative", " very good", " a", " cat dog"]
    got = zs.continuation_logprobs(model, tok, prompts, conts, batch_size=3)  # mixed lengths -> padding
    for (s, n), prompt, cont in zip(got, prompts, conts, strict=True):
        ref, n_ref = _by_hand(model, tok, prompt, cont)
        assert n == n_ref
        assert s == pytest.approx(ref, abs=1e-4)


def test_choice_tasks_pick_the_more_probable_continuation(lm):
    model, tok = lm
    rows = _rows(10, seed=1)
    for task, choices in zs.CHOICES.items():
        prompts = [zs.prompt_for(task, r) for r in rows]
        hand = []
        for pr in prompts:
            scores = [_by_hand(model, tok, pr, c)[0] for c in choices]
            hand.append(max(range(len(choices)), key=lambda k, s=scores: s[k]))
        res = zs.zero_shot(model, tok, task, rows, batch_size=4)
        assert res.predictions == hand
        acc = sum(p == r["label"] for p, r in zip(hand, rows, strict=True)) / len(rows)
        assert res.value == pytest.approx(acc) and res.chance == 0.5 and res.metric == "accuracy"


def test_cola_threshold_maximises_mcc_and_scores_the_mean_token_logprob(lm):
    model, tok = lm
    cal, dev = _rows(16, seed=2), _rows(12, seed=3)
    means = zs.mean_token_logprobs(model, tok, [r["sentence"] for r in cal], batch_size=5)
    for m, r in zip(means, cal, strict=True):
        s, n = _by_hand(model, tok, "", r["sentence"])
        assert m == pytest.approx(s / n, abs=1e-5)
    labels = [r["label"] for r in cal]
    cut = zs.best_threshold(means, labels)
    mcc = lambda t: compute_metrics(get_task("cola"), [int(x > t) for x in means], labels)["matthews_correlation"]  # noqa: E731
    values = sorted(set(means))
    brute = max(mcc(t) for t in [values[0] - 1] + [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)])
    assert mcc(cut) == pytest.approx(brute)
    res = zs.zero_shot(model, tok, "cola", dev, calibration=cal)
    # the same scores batched differently (5 here, the default there): padding changes fp32 sums by ~1e-7
    assert res.threshold == pytest.approx(cut, rel=1e-6, abs=1e-6) and res.chance == 0.0
    dev_scores = zs.mean_token_logprobs(model, tok, [r["sentence"] for r in dev])
    assert res.predictions == [int(s > cut) for s in dev_scores]


def test_best_threshold_on_a_known_case():
    # positives exactly the scores above 0.5: the cut separates them, MCC 1
    assert 0.3 < zs.best_threshold([0.1, 0.2, 0.3, 0.7, 0.9], [0, 0, 0, 1, 1]) < 0.7
    assert zs.best_threshold([0.1, 0.2, 0.3, 0.7, 0.9], [0, 0, 0, 1, 1]) == pytest.approx(0.5)


def test_a_step_checkpoint_loads_as_the_lm_it_was(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    make_workdir(tmp_path, monkeypatch, {"a.txt": 300})
    (tmp_path / "r.yaml").write_text(
        "name: tiny\nmodel: {tokenizer: train, vocab_size: 320, config: {n_layer: 1, n_head: 2, n_embd: 32, "
        "n_positions: 32, dropout: 0.0}}\ndata: {path: books, block_size: 32, val_fraction: 0.05, num_proc: 1}\n"
        "train: {max_steps: 4, micro_batch_size: 4, global_batch_size: 4, lr: 3e-3, eval_every: 0, save_every: 2, "
        "keep_last: 5, log_every: 2}\n")
    assert run_cli("pretrain", "r.yaml") == 0
    run = tmp_path / "runs" / "tiny"
    assert sorted(p.name for p in run.glob("step-*")) == ["step-000002", "step-000004"]
    final = AutoModelForCausalLM.from_pretrained(run / "final")
    last = zs.load_checkpoint_lm(run / "step-000004", run / "final")
    first = zs.load_checkpoint_lm(run / "step-000002", run / "final")
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(last(input_ids=ids).logits, final(input_ids=ids).logits)
        assert not torch.equal(first(input_ids=ids).logits, final(input_ids=ids).logits)
    assert last.lm_head.weight.data_ptr() == last.transformer.wte.weight.data_ptr()
