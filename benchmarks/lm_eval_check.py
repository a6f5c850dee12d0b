"""lm-evaluation-harness and ``gptune eval --ppl --prepend-eos`` on the same model and text: the two
log-likelihoods must agree to 1e-6 relative (docs/interop.md). A pretrained/full folder is loaded by
lm-eval as ``pretrained=MODEL``; a LoRA ``final/`` as ``pretrained=BASE,peft=FINAL,tokenizer=FINAL``.

    python benchmarks/lm_eval_check.py --model runs/books/final --text $GPTUNE_DATA/wikitext-2/wiki.test.raw
    python benchmarks/lm_eval_check.py --model runs/books/final --peft runs/finetune/sst2-lora/final \\
        --text $GPTUNE_DATA/wikitext-2/wiki.test.raw

Prints one table (nll, relative difference, word perplexity, bits per byte, tokens, windows); exits 1
when the difference exceeds 1e-6.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def lm_eval_rolling(text: str, max_length: int, batch_size: int, **model_args) -> float:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(batch_size=batch_size, device="cpu", max_length=max_length, **model_args)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    return lm.loglikelihood_rolling([request], disable_tqdm=True)[0]


def gptune_ppl(model: str, text: Path, max_length: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ppl.json"
        subprocess.run([sys.executable, "-m", "gptune", "eval", "--ppl", "--prepend-eos", "--model", model,
                        "--data", str(text), "--max-length", str(max_length), "--json", str(out)], check=True)
        return json.loads(out.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a gptune final/ (pretrained or full) or, with --peft, the base")
    p.add_argument("--peft", default=None, help="a LoRA final/: lm-eval loads it with peft= on --model")
    p.add_argument("--text", required=True, help="a UTF-8 text file, scored as one document")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()

    text = Path(args.text).read_text(encoding="utf-8")
    t0 = time.perf_counter()
    if args.peft:
        loglik = lm_eval_rolling(text, args.max_length, args.batch_size, pretrained=args.model, peft=args.peft,
                                 tokenizer=args.peft)
    else:
        loglik = lm_eval_rolling(text, args.max_length, args.batch_size, pretrained=args.model)
    t1 = time.perf_counter()
    report = gptune_ppl(args.peft or args.model, Path(args.text), args.max_length)
    t2 = time.perf_counter()
    rel = abs(report["nll_sum"] + loglik) / abs(loglik)
    words, nbytes = report["words"], len(text.encode("utf-8"))
    rows = [
        ("text", f"{args.text} ({nbytes:,} bytes, {words:,} words)"),
        ("lm-eval loglikelihood_rolling", f"{loglik:.5f} ({t1 - t0:.0f} s)"),
        ("gptune eval --ppl --prepend-eos nll_sum", f"{report['nll_sum']:.5f} ({t2 - t1:.0f} s)"),
        ("relative difference", f"{rel:.2e}"),
        ("word perplexity: lm-eval / gptune", f"{math.exp(-loglik / words):.4f} / {report['word_perplexity']:.4f}"),
        ("bits per byte: lm-eval / gptune",
         f"{-loglik / nbytes / math.log(2):.6f} / {report['bits_per_byte']:.6f}"),
        ("token perplexity (gptune)", f"{report['perplexity']:.3f}"),
        ("tokens, windows", f"{report['tokens']:,}, {report['windows']:,}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0 if rel <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
