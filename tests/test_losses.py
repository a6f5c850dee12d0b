"""The chunked LM loss (losses.linear_cross_entropy) equals plain full-logits cross-entropy: the loss and
both gradients, across chunk boundaries, with padding, with only some head rows trainable, and for
targets whose probability underflows float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptune.losses import IGNORE_INDEX, causal_lm_loss, combined_loss, linear_cross_entropy


def _reference(hidden, weight, targets):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = F.cross_entropy(h @ w.t(), targets, ignore_index=IGNORE_INDEX)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _ours(hidden, weight, targets, **kw):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss, n = linear_cross_entropy(h, w, targets, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad, n


def _case(n=37, c=16, v=101, dtype=torch.float64, seed=0, ignore=(3, 4, 20, 36)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g, dtype=dtype)
    weight = torch.randn(v, c, generator=g, dtype=dtype) * 0.5
    targets = torch.randint(0, v, (n,), generator=g)
    targets[list(ignore)] = IGNORE_INDEX
    return hidden, weight, targets


@pytest.mark.parametrize("chunk", [None, 1, 5, 16, 1000])
def test_loss_and_gradients_equal_full_logits_cross_entropy(chunk):
    hidden, weight, targets = _case()
    ref_loss, ref_gh, ref_gw = _reference(hidden, weight, targets)
    loss, gh, gw, n = _ours(hidden, weight, targets, chunk=chunk)
    assert int(n) == 33
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-10, atol=1e-12)
    assert torch.all(gh[[3, 4, 20, 36]] == 0)  # ignored rows get no gradient


def test_float32_matches_the_float64_reference():
    hidden, weight, targets = _case(n=64, c=32, v=503)
    ref_loss, ref_gh, ref_gw = _reference(hidden, weight, targets)
    loss, gh, gw, _ = _ours(hidden.float(), weight.float(), targets, chunk=7)
    assert loss.dtype == gh.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh.double(), ref_gh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw.double(), ref_gw, rtol=1e-4, atol=1e-6)


def test_a_target_whose_probability_underflows_float32_still_gives_its_exact_loss():
    # logits spread over ~300 nats: exp(target - max) is 0 in float32, the loss must stay finite and exact
    hidden, weight, targets = _case(n=8, c=4, v=50, ignore=())
    hidden = hidden * 100
    logits = hidden @ weight.t()
    targets = logits.argmin(1)  # the least likely token of every row
    assert float((logits.amax(1) - logits.gather(1, targets[:, None]).squeeze(1)).min()) > 104  # below fp32's tiny
    ref_loss, ref_gh, ref_gw = _reference(hidden, weight, targets)
    loss, gh, gw, _ = _ours(hidden.float(), weight.float(), targets)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(gh.double(), ref_gh, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gw.double(), ref_gw, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [[0, 7, 100], [5], list(range(101))])
def test_grad_rows_gives_exactly_those_rows_of_the_full_gradient(rows):
    hidden, weight, targets = _case()
    targets[0], targets[1] = 7, 100  # some targets inside the trainable rows
    _, ref_gh, ref_gw = _reference(hidden, weight, targets)
    _, gh, gw, _ = _ours(hidden, weight, targets, chunk=6, grad_rows=torch.tensor(rows))
    torch.testing.assert_close(gh, ref_gh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw[rows], ref_gw[rows], rtol=1e-10, atol=1e-12)
    others = [i for i in range(weight.shape[0]) if i not in rows]
    assert torch.all(gw[others] == 0)


def test_all_padding_gives_zero_loss_not_nan():
    hidden, weight, targets = _case(n=4, ignore=(0, 1, 2, 3))
    loss, gh, gw, n = _ours(hidden, weight, targets)
    assert int(n) == 0 and float(loss) == 0.0
    assert torch.all(gh == 0) and torch.all(gw == 0)


def test_causal_lm_loss_shifts_and_masks_padding_like_the_model_loss():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    ids = torch.randint(0, 97, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    mask[2, 3:] = 0
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    with torch.no_grad():
        ref = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        hidden = lm.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        loss, n = causal_lm_loss(hidden, lm.lm_head.weight, ids, mask)
    assert int(n) == 11 + 6 + 2
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert combined_loss(torch.tensor(0.7), loss, 0.0) == torch.tensor(0.7)
    torch.testing.assert_close(combined_loss(torch.tensor(0.7), loss, 0.5), 0.7 + 0.5 * loss)
