"""OpenAI-GPT (GPT-1) against GPT-2 on the same shape: one training step (forward, chunked LM loss,
backward, fused AdamW) through gptune's ``LMWithLoss``, for GPT-2, OpenAI-GPT with transformers' eager
attention, and OpenAI-GPT through SDPA (``gptune.modeling.gpt.use_sdpa_attention``, what gptune runs).
The contenders are interleaved step by step (A, B, C, A, B, C, ...) so a busy patch of the shared machine
hits all three; the median and the spread (min-max) of the step times are printed.

    python benchmarks/openai_gpt.py                  # books.yaml's shape: 4 x 256, 8 x 128 tokens, vocab 8192
    python benchmarks/openai_gpt.py --shape tiny     # the tests' shape: 2 x 32, 8 x 64 tokens, vocab 320
    python benchmarks/openai_gpt.py --shape gpt1     # one 12 x 768 step of 2 x 512 tokens (slow on a CPU)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="books")
    p.add_argument("--steps", type=int, default=12, help="timed steps per contender (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    shape = SHAPES[a.shape]
    contenders = {"gpt2 (sdpa)": build("gpt2", shape, False), "openai-gpt eager": build("openai-gpt", shape, False),
                  "openai-gpt sdpa": build("openai-gpt", shape, True)}
    batch, seq, vocab = shape[3], shape[4], shape[5]
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    times = {k: [] for k in contenders}
    for i in range(2 + a.steps):
        for name, (model, opt) in contenders.items():
            t = time.perf_counter()
            loss, _ = model(ids)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    n_layer, n_embd = shape[0], shape[1]
    print(f"shape {a.shape}: {n_layer} layers x {n_embd}, {batch} x {seq} tokens, vocab {vocab}, "
          f"{a.threads} thread(s), {a.steps} interleaved steps each")
    ref = statistics.median(times["gpt2 (sdpa)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:18s} step {med * 1e3:8.1f} ms  (min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f})"
              f"  x{med / ref:.2f} of gpt2")


if __name__ == "__main__":
    main()
