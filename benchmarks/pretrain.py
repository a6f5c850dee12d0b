"""Pretraining throughput, MFU and peak memory: gptune pretrain vs the Hugging Face Trainer driven as
``run_clm.py`` drives it (``load_dataset("text")`` -> ``tokenizer`` map -> ``group_texts`` map ->
``Trainer`` with ``TrainingArguments`` defaults and ``default_data_collator``).

Same model for both: GPT-2 architecture, 6 layers, 384 wide, 6 heads, vocab 50257 (GPT-2 tokenizer),
context 256, dropout 0; micro-batch 8 sequences of 256 tokens, one optimizer step per micro-batch,
AdamW, gradient clipping at 1.0 (both defaults). Each side runs its real loop in its own process, at the
same precision: fp32 (``train.mixed_precision: no``) or ``--precision bf16`` (``bf16`` / the Trainer's
``bf16=True``). MFU is against the matmul peak of that precision, measured between windows.

    python benchmarks/pretrain.py --quick [--precision bf16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import (
    Stat,
    Worker,
    alternate,
    data_root,
    measure_peak_gflops,
    measured_machine,
    print_table,
    rates,
    row,
    write_json,
)

ARCH = dict(n_layer=6, n_head=6, n_embd=384, n_positions=256, dropout=0.0)
SEQ, MICRO = 256, 8
CORPUS_BYTES = 3_000_000  # enough blocks for every window; tokenization is benchmarked in pack.py


def flops_per_token(n_layer=6, d=384, vocab=50257, seq=SEQ) -> float:
    """6 N (N = every matmul weight: blocks + the tied LM head; position embeddings do no matmul)
    + attention scores and values, 6 * 2 * n_layer * seq * d (forward + backward, PaLM's convention)."""
    n = n_layer * 12 * d * d + vocab * d
    return 6 * n + 12 * n_layer * seq * d


def _corpus(data: Path, work: Path) -> Path:
    """A slice (~3 MB) of the Gutenberg books as .txt files, the same files for both sides."""
    out = work / "corpus"
    if out.exists():
        return out
    out.mkdir(parents=True)
    used = 0
    for f in sorted((data / "books" / "gutenberg").glob("*.txt")):
        raw = f.read_bytes()
        text = raw.decode("utf-8", errors="replace") if raw else ""
        (out / f.name).write_text(text, encoding="utf-8")
        used += len(text)
        if used >= CORPUS_BYTES:
            break
    return out


# ----------------------------------------------------------------------------- contenders (worker side)


MIXED = {"fp32": "no", "bf16": "bf16"}  # --precision -> train.mixed_precision


def gptune_worker(pacer, *, corpus: str, tokenizer: str, out_dir: str, max_steps: int, compile: bool = False,
                  precision: str = "fp32"):
    import torch

    import gptune.runners.pretrain as rp
    from gptune.recipes import build_recipe

    torch.manual_seed(0)
    step = rp.lm_step

    def paced(model, batch):
        pacer()
        return step(model, batch)

    rp.lm_step = paced  # run_pretrain passes the module's lm_step to the loop: time each optimizer step
    recipe = build_recipe({
        "name": "bench", "seed": 0, "out_dir": out_dir,
        "model": {"arch": "gpt2", "tokenizer": tokenizer, "config": ARCH},
        "data": {"path": corpus, "block_size": SEQ, "val_fraction": 0.0, "num_proc": 2,
                 "cache_dir": str(Path(out_dir).parent / "pack-cache")},
        "train": {"max_steps": max_steps, "micro_batch_size": MICRO, "global_batch_size": MICRO,
                  "eval_every": 0, "save_every": 0, "log_every": 50, "compile": compile,
                  "mixed_precision": MIXED[precision]},
    })
    rp.run_pretrain(recipe, overwrite=True)
    return {}


def trainer_worker(pacer, *, corpus: str, tokenizer: str, out_dir: str, max_steps: int, precision: str = "fp32"):
    """run_clm.py's data path and Trainer setup, with the arguments it would get from the command line
    ``--model_type gpt2 --config_overrides ... --per_device_train_batch_size 8 --block_size 256``."""
    from itertools import chain

    import torch
    from datasets import load_dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GPT2Config,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=MICRO, max_steps=max_steps,
                             report_to="none", seed=0, bf16=precision == "bf16", use_cpu=True)
    set_seed(args.seed)
    files = sorted(str(p) for p in Path(corpus).glob("*.txt"))
    raw = load_dataset("text", data_files={"train": files}, keep_linebreaks=True,
                       cache_dir=str(Path(out_dir) / "hf-cache"))
    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = GPT2Config(vocab_size=len(tok), n_positions=ARCH["n_positions"], n_embd=ARCH["n_embd"],
                        n_layer=ARCH["n_layer"], n_head=ARCH["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = AutoModelForCausalLM.from_config(config)

    def tokenize_function(examples):
        return tok(examples["text"])

    with args.main_process_first(desc="dataset map tokenization"):
        tokenized = raw.map(tokenize_function, batched=True, num_proc=2, remove_columns=["text"])
    block_size = SEQ

    def group_texts(examples):  # run_clm.py's group_texts
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // block_size) * block_size
        result = {k: [t[i : i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    with args.main_process_first(desc="grouping texts together"):
        lm_datasets = tokenized.map(group_texts, batched=True, num_proc=2)

    class Pace(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            pacer()

    trainer = Trainer(model=model, args=args, train_dataset=lm_datasets["train"], processing_class=tok,
                      data_collator=default_data_collator, callbacks=[Pace()])
    trainer.train()
    return {"optim": str(args.optim), "torch_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- driver (parent side)


def run(*, quick: bool, data: str | None = None, out_dir: Path | None = None, compile: bool = False,
        precision: str = "fp32") -> list[dict]:
    root = data_root(data)
    warm, steps, rounds = (2, 3, 3) if quick else (2, 8, 6)
    total = warm + steps * rounds + 1  # +1: an untimed last step, so the timed ones end before the final save
    work = Path(tempfile.mkdtemp(prefix="gptune-bench-pretrain-"))
    corpus = _corpus(root, work)
    tokenizer = str(root / "tokenizers" / "gpt2-hf")
    log_dir = out_dir or (Path(__file__).resolve().parent / "results")
    log_dir.mkdir(parents=True, exist_ok=True)
    common = dict(corpus=str(corpus), tokenizer=tokenizer, max_steps=total, precision=precision)
    ours_name = ("gptune (compile)" if compile else "gptune") + ("" if precision == "fp32" else f" {precision}")
    workers = [Worker(ours_name, "pretrain:gptune_worker", log_dir, out_dir=str(work / "gptune"),
                      compile=compile, **common),
               Worker("HF Trainer (run_clm)", "pretrain:trainer_worker", log_dir, out_dir=str(work / "trainer"),
                      **common)]
    peaks: list[float] = []
    try:
        windows = alternate(workers, warmup_steps=warm, steps=steps, rounds=rounds,
                            between=lambda: peaks.append(measure_peak_gflops("bfloat16" if precision == "bf16"
                                                                             else "float32")))
        reports = {w.name: w.finish() for w in workers}
    finally:
        for w in workers:
            if w.proc.is_alive():
                w.stop()
    tokens = SEQ * MICRO
    ours, peer = rates(windows[ours_name], tokens), rates(windows["HF Trainer (run_clm)"], tokens)
    peak = Stat(peaks)
    fpt = flops_per_token()
    mfu = lambda s: Stat([v * fpt / 1e9 / peak.median for v in s.values])  # noqa: E731
    rss = lambda n, k: reports[n].get(k, float("nan"))  # noqa: E731
    rows = [
        row("pretrain", "tokens/s", ours, peer, "HF Trainer (run_clm)", target=">= 1.10x"),
        row("pretrain", f"MFU (% of measured {precision} peak)", mfu(Stat([100 * v for v in ours.values])),
            mfu(Stat([100 * v for v in peer.values])), "HF Trainer (run_clm)", target="gptune >= 70%", digits=1,
            note=f"{fpt / 1e6:.1f} MFLOP/token (6N + attention); peak = median of {len(peaks)} {precision} "
                 f"matmul peaks measured between windows: {peak.median:.1f} GFLOP/s ({peak.lo:.1f}-{peak.hi:.1f})"),
        row("pretrain", "peak RSS, whole process (MB)", rss(ours_name, "peak_rss_mb"),
            rss("HF Trainer (run_clm)", "peak_rss_mb"), "HF Trainer (run_clm)", target="<= 0.8x",
            higher_is_better=False, note="each side in its own process; includes data loading and the final save"),
        row("pretrain", "peak RSS, training steps (MB)", rss(ours_name, "train_peak_mb"),
            rss("HF Trainer (run_clm)", "train_peak_mb"), "HF Trainer (run_clm)", higher_is_better=False,
            note="VmHWM reset at the first optimizer step"),
    ]
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--full", action="store_true")
    p.add_argument("--compile", action="store_true", help="gptune with train.compile=true")
    p.add_argument("--precision", choices=MIXED, default="fp32", help="both sides at this precision")
    p.add_argument("--data", default=None, help="data root (default $GPTUNE_DATA)")
    a = p.parse_args(argv)
    measured_machine()  # CPU, flags and peaks at the start
    rows = run(quick=not a.full, data=a.data, compile=a.compile, precision=a.precision)
    print_table(rows, f"pretraining ({a.precision})")
    print("json:", write_json("pretrain", {"rows": rows}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    main()
