"""OpenAI-GPT (GPT-1) against GPT-2 on the same shape: one training step (forward, chunked LM loss,
backward, fused AdamW) through gptune's ``LMWithLoss``, for GPT-2, OpenAI-GPT with transformers' eager
attention, and OpenAI-GPT through SDPA (``gptune.modeling.gpt.use_sdpa_attention``, what gptune runs).
The contenders are interleaved step by step (A, B, C, A, B, C, ...) so a busy patch of the shared machine
hits all three; the median and the spread (min-max) of the step times are printed.

    python benchmarks/openai_gpt.py                  # books.yaml's shape: 4 x 256, 8 x 128 tokens, vocab 8192
    python benchmarks/openai_gpt.py --shape tiny     # the tests' shape: 2 x 32, 8 x 64 tokens, vocab 320
    python benchmarks/openai_gpt.py --shape gpt1     # one 12 x 768 step of 2 x 512 tokens (slow on a CPU)
    python benchmarks/openai_gpt.py --shape gpt1 --attention-only   # one attention layer, eager vs SDPA
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import interleaved_step_times

SHAPES = {  # n_layer, n_embd, n_head, batch, seq, vocab
    "tiny": (2, 32, 2, 8, 64, 320),
    "books": (4, 256, 4, 8, 128, 8192),
    "gpt1": (12, 768, 12, 2, 512, 40479),
}


def build(arch: str, shape: tuple, sdpa: bool):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, OpenAIGPTConfig, OpenAIGPTLMHeadModel

    from gptune.modeling.gpt import LMWithLoss, use_sdpa_attention

    n_layer, n_embd, n_head, _, seq, vocab = shape
    kw = dict(vocab_size=vocab, n_positions=seq, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(**kw)) if arch == "gpt2" else OpenAIGPTLMHeadModel(OpenAIGPTConfig(**kw))
    if sdpa:
        use_sdpa_attention(lm)
    model = LMWithLoss(lm).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def attention_only(shape: tuple, steps: int) -> None:
    """One OpenAI-GPT attention layer, forward + backward, eager against SDPA (the part the swap changes)."""
    import torch
    from transformers import OpenAIGPTConfig
    from transformers.models.openai.modeling_openai import Attention

    from gptune.modeling.gpt import SdpaOpenAIGPTAttention

    n_layer, n_embd, n_head, batch, seq, _ = shape
    cfg = OpenAIGPTConfig(n_positions=seq, n_embd=n_embd, n_head=n_head, attn_pdrop=0.0, resid_pdrop=0.0)
    torch.manual_seed(0)
    eager = Attention(n_embd, seq, cfg, scale=True)
    sdpa = Attention(n_embd, seq, cfg, scale=True)
    sdpa.load_state_dict(eager.state_dict())
    sdpa.__class__ = SdpaOpenAIGPTAttention
    x = torch.randn(batch, seq, n_embd, requires_grad=True)
    times = {"eager": [], "sdpa": []}
    for i in range(2 + steps):
        for name, mod in (("eager", eager), ("sdpa", sdpa)):
            t = time.perf_counter()
            mod(x)[0].sum().backward()
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    ratios = [s / e for s, e in zip(times["sdpa"], times["eager"], strict=True)]
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    print(f"one attention layer, {batch} x {seq} tokens, {n_embd} wide, {n_head} heads, {steps} interleaved steps:")
    for name, ts in times.items():
        print(f"  {name:6s} fwd+bwd median {statistics.median(ts) * 1e3:7.1f} ms (min {min(ts) * 1e3:.1f}, "
              f"max {max(ts) * 1e3:.1f})")
    print(f"  paired ratio sdpa / eager: median {q2:.2f} (quartiles {q1:.2f}-{q3:.2f})")


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="books")
    p.add_argument("--steps", type=int, default=12, help="timed steps per contender (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attention-only", action="store_true", help="time one attention layer, eager vs SDPA")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    shape = SHAPES[a.shape]
    if a.attention_only:
        attention_only(shape, a.steps)
        return
    contenders = {"gpt2 (sdpa)": build("gpt2", shape, False), "openai-gpt eager": build("openai-gpt", shape, False),
                  "openai-gpt sdpa": build("openai-gpt", shape, True)}
    batch, seq, vocab = shape[3], shape[4], shape[5]
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    times = interleaved_step_times(contenders, ids, steps=a.steps, warmup=2)
    n_layer, n_embd = shape[0], shape[1]
    print(f"shape {a.shape}: {n_layer} layers x {n_embd}, {batch} x {seq} tokens, vocab {vocab}, "
          f"{a.threads} thread(s), {a.steps} interleaved steps each")
    ref = times["gpt2 (sdpa)"]
    for name, ts in times.items():
        # paired: each step against the gpt2 step run just before it, so a slow patch of the machine cancels
        ratios = [t / r for t, r in zip(ts, ref, strict=True)]
        q1, q2, q3 = statistics.quantiles(ratios, n=4)
        print(f"  {name:18s} step median {statistics.median(ts) * 1e3:7.1f} ms (min {min(ts) * 1e3:.1f}, "
              f"max {max(ts) * 1e3:.1f})  paired ratio to gpt2: median {q2:.2f} (quartiles {q1:.2f}-{q3:.2f})")


if __name__ == "__main__":
    main()
