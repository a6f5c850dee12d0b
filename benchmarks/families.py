"""Every GPT family of ``gptune.modeling.families`` against GPT-2 on the same tiny shape: one training step
(forward, LM loss, backward, fused AdamW) through gptune's ``LMWithLoss``, each model built by gptune's own
random init (``model.arch``). The families are interleaved step by step (gpt2, openai-gpt, gpt_neo, ...,
gpt2, openai-gpt, ...) so a busy patch of the shared machine hits all of them; the median step time, its
spread (min-max) and the median of the paired ratio to GPT-2's step are printed. ``--full-logits`` also
times each family through the model's own logits (the fallback for a family outside the table).

    python benchmarks/families.py                      # the tests' shape: 2 x 32 (4 heads), 8 x 64 tokens, vocab 320
    python benchmarks/families.py --shape small --steps 20    # 4 x 256 (8 heads), 8 x 128 tokens, vocab 8192
"""

from __future__ import annotations

import argparse
import statistics

# the script's own folder is on sys.path; gptune is the installed package
from common import interleaved_step_times, machine_line, measured_machine

SHAPES = {  # n_layer, n_embd, n_head, batch, seq, vocab
    "tiny": (2, 32, 4, 8, 64, 320),
    "small": (4, 256, 8, 8, 128, 8192),
}


def build(family: str, shape: tuple, chunked: bool = True):
    import torch
    from transformers import AutoModelForCausalLM

    from gptune.config import ArchConfig, ModelConfig
    from gptune.modeling.gpt import LMWithLoss, random_config, use_sdpa_attention

    n_layer, n_embd, n_head, _, seq, vocab = shape
    mcfg = ModelConfig(arch=family, tokenizer="-", config=ArchConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                                                     n_positions=seq, dropout=0.0))
    torch.manual_seed(0)
    lm = use_sdpa_attention(AutoModelForCausalLM.from_config(random_config(mcfg, vocab, bos_id=None, eos_id=None)))
    model = LMWithLoss(lm).train()
    model.chunked = chunked
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def main(argv=None) -> None:
    import torch

    from gptune.modeling.families import FAMILIES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="tiny")
    p.add_argument("--steps", type=int, default=30, help="timed steps per contender (after 3 warm-up steps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--full-logits", action="store_true", help="also time each family through its full logits")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    measured_machine()  # the peaks, before the steps
    shape = SHAPES[a.shape]
    n_layer, n_embd, n_head, batch, seq, vocab = shape
    contenders = {f: build(f, shape) for f in FAMILIES}
    if a.full_logits:
        contenders.update({f"{f} (full logits)": build(f, shape, chunked=False) for f in FAMILIES})
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    times = interleaved_step_times(contenders, ids, steps=a.steps, warmup=3)
    cpu = machine_line()
    print(f"one training step, {n_layer} layers x {n_embd} wide, {n_head} heads, {batch} x {seq} tokens, "
          f"vocab {vocab}, {a.steps} interleaved steps, {a.threads} thread(s), torch {torch.__version__}, {cpu}")
    print("| family | parameters | step median (ms) | min-max (ms) | paired ratio to gpt2 (median) |")
    print("|---|---|---|---|---|")
    base = times["gpt2"]
    for name, ts in times.items():
        n = sum(p.numel() for p in contenders[name][0].parameters())
        ratio = statistics.median(t / b for t, b in zip(ts, base, strict=True))
        print(f"| {name} | {n / 1e3:.1f}k | {statistics.median(ts) * 1e3:.1f} | {min(ts) * 1e3:.1f}-"
              f"{max(ts) * 1e3:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
