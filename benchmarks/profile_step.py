"""Where a gptune pretraining step goes: body forward, LM head + cross-entropy (forward and gradient in one
pass), body backward, clipping, fused AdamW, for the pretraining benchmark's config (GPT-2, 6 x 384,
vocab 50257, 8 x 256 tokens, fp32). Prints one line per step after two warm-up steps.

    python benchmarks/profile_step.py
"""

from __future__ import annotations

import time


def main(steps: int = 4) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptune.losses import causal_lm_loss
    from gptune.modeling.families import body_and_head
    from gptune.modeling.gpt import LMWithLoss

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=256, n_embd=384, n_layer=6, n_head=6,
                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    model = LMWithLoss(GPT2LMHeadModel(cfg)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, cfg.vocab_size, (8, 256))
    body, head = body_and_head(model.lm)
    for i in range(2 + steps):
        marks = [time.perf_counter()]
        hidden = body(input_ids=ids).last_hidden_state
        marks.append(time.perf_counter())
        cut = hidden.detach().requires_grad_()  # time the head apart from the body
        loss, _ = causal_lm_loss(cut, head.weight, ids)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        hidden.backward(cut.grad)
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        marks.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if i >= 2:
            parts = ("body fwd", "head fwd+grad", "head bwd", "body bwd", "clip", "adamw")
            spans = [b - a for a, b in zip(marks, marks[1:], strict=False)]
            total = marks[-1] - marks[0]
            print("  ".join(f"{p} {s:.3f}" for p, s in zip(parts, spans, strict=True))
                  + f"  total {total:.3f}  tok/s {ids.numel() / total:.0f}", flush=True)


if __name__ == "__main__":
    main()
