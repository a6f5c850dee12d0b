"""GPT-1's own choices as recipe keys, each checked for its effect: the sequence-mean auxiliary LM loss,
the cosine floor, Adam's betas, the new tokens' init, task.max_length up to the context; and
task.input_style=plain as run_glue's input and pooling exactly."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from gptune.config import TrainConfig
from gptune.recipes import build_recipe
from gptune.tasks import get_task


def _hand_sequence_mean(logits, ids, mask):
    """GPT-1's code: per sequence, sum of next-token NLL over scored positions / their count; then the mean."""
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
    m = mask[:, 1:].to(nll.dtype)
    return ((nll * m).sum(1) / m.sum(1)).mean()


def test_sequence_mean_lm_loss_equals_hand_computation_loss_and_gradients():
    from gptune.losses import causal_lm_loss

    g = torch.Generator().manual_seed(0)
    b, t, c, v = 3, 7, 8, 11
    hidden = torch.randn(b, t, c, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, c, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate((7, 3, 2)):  # three lengths: 6, 2 and 1 scored tokens
        mask[i, :n] = 1
    loss, n_tok = causal_lm_loss(hidden, weight, ids, mask, mean="sequence")
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    ref = _hand_sequence_mean(hidden @ weight.T, ids, mask)
    rh, rw = torch.autograd.grad(ref, (hidden, weight))
    assert int(n_tok) == 9
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gh, rh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-12)
    # the token mean weighs the long sequence more: a different number on this batch
    token, _ = causal_lm_loss(hidden, weight, ids, mask, mean="token")
    assert abs(token.item() - ref.item()) > 1e-3


def test_lm_loss_mean_reaches_the_task_model(tiny_model_dir, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from gptune.data.collate import TaskCollator
    from gptune.data.features import encode_rows
    from gptune.modeling.heads import add_task_tokens
    from gptune.modeling.task_io import build_task_model

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    ids = add_task_tokens(tok)
    task = get_task("rte")
    rows = [{"sentence1": "the cat sat on the mat and the dog ran", "sentence2": "a dog", "label": 0, "idx": 0},
            {"sentence1": "a king", "sentence2": "the sun", "label": 1, "idx": 1}]
    cols = encode_rows(task, rows, tok, style="gpt1", special_ids=ids, max_length=64)
    batch = TaskCollator(0, ids.extract, False)([dict(zip(cols, v, strict=True)) for v in zip(*cols.values(), strict=True)])
    losses = {}
    for mean in ("sequence", "token"):
        recipe = build_recipe({"model": {"name_or_path": tiny_model_dir, "config": {"dropout": 0.0}},
                               "train": {"max_steps": 1}, "task": {"lm_loss_mean": mean, "clf_dropout": 0.0}})
        torch.manual_seed(0)
        model = build_task_model(recipe.model, recipe.task, recipe.lora, task, tok, ids).eval()
        with torch.no_grad():
            out = model(**batch)
            logits = model.lm(input_ids=batch["input_ids"][:, 0], attention_mask=batch["attention_mask"][:, 0]).logits
        losses[mean] = out["lm_loss"]
    mask = batch["attention_mask"][:, 0]
    torch.testing.assert_close(losses["sequence"], _hand_sequence_mean(logits, batch["input_ids"][:, 0], mask))
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 0, 1:], reduction="none")
    torch.testing.assert_close(losses["token"], (nll * mask[:, 1:]).sum() / mask[:, 1:].sum())


def _lrs(cfg: TrainConfig, total: int) -> tuple[list[float], torch.optim.Optimizer]:
    from gptune.training.optim import build_optimizer, build_scheduler, plan_lr

    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, plan_lr(cfg, total))
    lrs = [sched.get_last_lr()[0]]
    for _ in range(total):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    return lrs, opt


def test_cosine_floor_min_lr_ratio_zero_anneals_to_zero_and_betas_reach_adam():
    cfg = TrainConfig(max_steps=20, lr=2.5e-4, warmup=4, min_lr_ratio=0.0, beta2=0.999)
    lrs, opt = _lrs(cfg, 20)
    # lrs[s]: the rate of step s + 1; warmup to the peak, then strictly down, 0 after the last step
    assert lrs[:5] == pytest.approx([2.5e-4 * k / 4 for k in (1, 2, 3, 4, 4)])
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert lrs[-1] == 0.0 and 0 < lrs[-2] < 2.5e-4 * 0.01
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    floor, _ = _lrs(TrainConfig(max_steps=20, lr=2.5e-4, warmup=4), 20)  # the default floor: lr / 10
    assert floor[-1] == pytest.approx(2.5e-5)


def test_new_token_rows_normal_init_has_gpt1_std_and_mean_init_sits_at_the_mean(tiny_model_dir, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from gptune.modeling.heads import add_task_tokens
    from gptune.modeling.task_io import build_task_model

    rows = {}
    for mode in ("normal", "mean", "normal"):
        tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
        ids = add_task_tokens(tok)
        recipe = build_recipe({"model": {"name_or_path": tiny_model_dir}, "train": {"max_steps": 1},
                               "task": {"new_token_init": mode}})
        emb = build_task_model(recipe.model, recipe.task, recipe.lora, get_task("rte"), tok, ids).get_input_embeddings().weight.detach()
        n_old = emb.shape[0] - 3
        new = emb[n_old:]
        if mode in rows:
            assert torch.equal(new, rows[mode])  # seeded: a rebuilt base model has the very same rows
        rows[mode] = new
        if mode == "normal":
            assert new.shape == (3, 32)
            assert 0.016 < new.std().item() < 0.024 and abs(new.mean().item()) < 0.006
        else:
            mean_row = emb[:n_old].mean(0)
            assert (new - mean_row).norm(dim=1).max() < 0.2 * (emb[:n_old] - mean_row).norm(dim=1).mean()


def test_max_length_absent_is_the_model_context_and_larger_is_lowered(tiny_model_dir):
    from gptune.runners.finetune import fit_max_length

    def fitted(value):
        task = {} if value is None else {"max_length": value}
        r = build_recipe({"model": {"name_or_path": tiny_model_dir}, "train": {"max_steps": 1}, "task": task})
        return fit_max_length(r, tiny_model_dir).task.max_length

    assert fitted(None) == 64 and fitted(500) == 64 and fitted(40) == 40  # the tiny model's context is 64


# ----------------------------------------------------------------------------- plain = run_glue
def test_pair_truncation_is_the_tokenizers_longest_first(tiny_tokenizer_dir):
    from transformers import GPT2TokenizerFast

    from gptune.transforms import truncate_longest_first

    tok = GPT2TokenizerFast.from_pretrained(tiny_tokenizer_dir)
    rng = random.Random(0)
    words = "the cat sat on a mat and dog ran to house".split()
    for _ in range(60):
        a = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        b = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        ea, eb = tok(a)["input_ids"], tok(b)["input_ids"]
        budget = rng.randint(2, len(ea) + len(eb) + 1)
        got = [t for s in truncate_longest_first([ea, eb], budget) for t in s]
        assert got == tok(a, b, truncation=True, max_length=budget)["input_ids"], (len(ea), len(eb), budget)


@pytest.mark.parametrize("task_name", ["sst2", "mrpc"])
def test_plain_input_and_pooling_equal_run_glue_gpt2_for_sequence_classification(task_name, tiny_model_dir):
    """run_glue with GPT-2: tokenizer(text_a, text_b, truncation=True), padded with EOS, pooled at the last
    non-pad token by GPT2ForSequenceClassification. gptune's plain style, same weights: same logits."""
    from transformers import AutoTokenizer, GPT2ForSequenceClassification

    from gptune.data.collate import TaskCollator
    from gptune.data.features import encode_rows
    from gptune.modeling.heads import GPT1TaskModel
    from gptune.modeling.task_io import prepare_base

    task = get_task(task_name)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.eos_token
    rng = random.Random(1)
    words = "the cat sat on a mat and dog ran to house big red".split()
    texts = [[" ".join(rng.choice(words) for _ in range(rng.randint(2, 25))) for _ in task.text_fields]
             for _ in range(6)]
    max_length = 24  # some rows are truncated
    rows = [{**dict(zip(task.text_fields, t, strict=True)), "label": 0, "idx": i} for i, t in enumerate(texts)]
    cols = encode_rows(task, rows, tok, style="plain", special_ids=None, max_length=max_length)
    batch = TaskCollator(tok.pad_token_id, None, False)(
        [dict(zip(cols, v, strict=True)) for v in zip(*cols.values(), strict=True)])
    assert batch["input_ids"].shape[1] == 1  # one sequence, one order, for similarity too

    enc = tok(*zip(*texts, strict=True), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    assert batch["input_ids"][:, 0].tolist() == enc["input_ids"].tolist()  # run_glue's exact ids, no EOS added

    torch.manual_seed(0)
    ours = GPT1TaskModel(prepare_base(tiny_model_dir, tok, flag="--model", dropout=0.0), task, clf_dropout=0.0).eval()
    theirs = GPT2ForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2,
                                                           pad_token_id=tok.pad_token_id).eval()
    with torch.no_grad():
        theirs.score.weight.copy_(ours.clf_head.weight)
        ours.clf_head.bias.zero_()  # GPT-2's score layer has no bias
        got = ours(**batch)["logits"]
        want = theirs(**enc).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
