"""GLUE fine-tuning throughput and dev metric: gptune finetune vs the Hugging Face Trainer driven as
``run_glue.py`` drives it (``padding="max_length"``, ``max_seq_length`` 128, ``default_data_collator``,
``AutoModelForSequenceClassification``, ``TrainingArguments`` defaults), plus gptune LoRA vs full.

Same model for every contender: a randomly initialised GPT-2 (6 layers, 384 wide, 6 heads, vocab 50257,
dropout 0.1) saved once with ``save_pretrained``; batch 16 examples per optimizer step for everyone;
the same number of steps (hence examples) for everyone before the dev split is scored.

gptune is measured twice: with its default ``task.lm_coef 0.5`` (GPT-1's auxiliary LM loss: a 50k-vocabulary
head over every token, work run_glue does not do) and with ``lm_coef 0`` (the like-for-like comparison:
the same objective as run_glue).

    python benchmarks/glue.py --quick [--tasks sst2,rte]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from common import Worker, alternate, data_root, print_table, rates, row, write_json

BATCH = 16
MAX_LEN = 128
TASKS = {"sst2": ("SST-2", ("sentence",)), "rte": ("RTE", ("sentence1", "sentence2"))}


def make_model(root: Path, folder: Path) -> Path:
    """A random-init GPT-2 (the pretraining benchmark's architecture) + GPT-2 tokenizer, saved once."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(str(root / "tokenizers" / "gpt2-hf"))
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=384, n_layer=6, n_head=6,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- contenders (worker side)


def gptune_worker(pacer, *, task: str, model: str, glue_dir: str, out_dir: str, max_steps: int,
                  lm_coef: float, lora: bool):
    import gptune.runners.finetune as rf
    from gptune.recipes import build_recipe

    step = rf.task_step

    def paced(m, batch):
        pacer()
        return step(m, batch)

    rf.task_step = paced  # run_finetune hands the module's task_step to the loop: time each step
    recipe = build_recipe({
        "name": "bench", "seed": 0, "out_dir": out_dir,
        "model": {"name_or_path": model},
        "task": {"name": task, "data_dir": glue_dir, "max_length": MAX_LEN, "lm_coef": lm_coef,
                 "eval_every_epoch": False},
        "data": {"cache_dir": str(Path(out_dir).parent / "task-cache")},
        "train": {"max_steps": max_steps, "micro_batch_size": BATCH, "global_batch_size": BATCH,
                  "lr": 6.25e-5, "schedule": "linear", "warmup": 0.002, "eval_every": 0, "save_every": 0,
                  "log_every": 50, "mixed_precision": "no"},  # fp32, as run_glue without --bf16
        "lora": {"enabled": lora},
    })
    summary = rf.run_finetune(recipe, overwrite=True)
    return {"dev": summary.metrics}


def trainer_worker(pacer, *, task: str, model: str, glue_dir: str, out_dir: str, max_steps: int):
    """run_glue.py with local TSV files: ``--max_seq_length 128`` (pad to max length), Trainer defaults."""
    import numpy as np
    from datasets import load_dataset
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    folder, keys = TASKS[task]
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
                             max_steps=max_steps, report_to="none", seed=0)
    set_seed(args.seed)
    files = {"train": str(Path(glue_dir) / folder / "train.tsv"), "validation": str(Path(glue_dir) / folder / "dev.tsv")}
    raw = load_dataset("csv", data_files=files, delimiter="\t", quoting=3, cache_dir=str(Path(out_dir) / "hf-cache"))
    label_list = sorted(raw["train"].unique("label"))
    label_to_id = {v: i for i, v in enumerate(label_list)}
    config = AutoConfig.from_pretrained(model, num_labels=len(label_list))
    tok = AutoTokenizer.from_pretrained(model)
    tok.pad_token = tok.eos_token  # GPT-2 has no pad token; run_glue users set it to EOS
    config.pad_token_id = tok.pad_token_id
    net = AutoModelForSequenceClassification.from_pretrained(model, config=config)

    def preprocess_function(examples):
        texts = (examples[keys[0]],) if len(keys) == 1 else (examples[keys[0]], examples[keys[1]])
        result = tok(*texts, padding="max_length", max_length=MAX_LEN, truncation=True)
        result["labels"] = [label_to_id[v] for v in examples["label"]]
        return result

    with args.main_process_first(desc="dataset map pre-processing"):
        ds = raw.map(preprocess_function, batched=True, remove_columns=raw["train"].column_names)

    def compute_metrics(p):
        preds = np.argmax(p.predictions, axis=1)
        return {"accuracy": float((preds == p.label_ids).mean())}

    class Pace(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            pacer()

    trainer = Trainer(model=net, args=args, train_dataset=ds["train"], eval_dataset=ds["validation"],
                      compute_metrics=compute_metrics, processing_class=tok, data_collator=default_data_collator,
                      callbacks=[Pace()])
    trainer.train()
    return {"dev": {"accuracy": trainer.evaluate()["eval_accuracy"]}}


# ----------------------------------------------------------------------------- driver


def _accuracy(report: dict) -> float:
    dev = report.get("dev") or {}
    for k, v in dev.items():
        if k.endswith("accuracy") or k == "acc":
            return float(v)
    return float("nan")


def run_task(task: str, *, quick: bool, root: Path, work: Path, log_dir: Path, model: Path) -> list[dict]:
    # variable-length batches (dynamic padding): a window must hold enough batches to sample the length mix;
    # --full times 80 batches per contender (RTE: half an epoch of 16-example batches)
    warm, steps, rounds = (2, 4, 3) if quick else (2, 20, 4)
    total = warm + steps * rounds + 1
    glue_dir = str(root / "glue")
    common = dict(task=task, model=str(model), glue_dir=glue_dir, max_steps=total)
    peer = "HF Trainer (run_glue)"
    names = {"full, lm_coef 0.5": dict(lm_coef=0.5, lora=False), "full, lm_coef 0": dict(lm_coef=0.0, lora=False),
             "LoRA, lm_coef 0.5": dict(lm_coef=0.5, lora=True)}
    workers = [Worker(f"gptune {task} {n}", "glue:gptune_worker", log_dir,
                      out_dir=str(work / f"{task}-{i}"), **kw, **common) for i, (n, kw) in enumerate(names.items())]
    workers.append(Worker(f"{peer} {task}", "glue:trainer_worker", log_dir, out_dir=str(work / f"{task}-trainer"),
                          **common))
    try:
        windows = alternate(workers, warmup_steps=warm, steps=steps, rounds=rounds)
        reports = {w.name: w.finish() for w in workers}
    finally:
        for w in workers:
            if w.proc.is_alive():
                w.stop()
    r = {w.name: rates(windows[w.name], BATCH) for w in workers}
    acc = {w.name: _accuracy(reports[w.name]) for w in workers}
    n_dev = {"sst2": 872, "rte": 277}[task]
    se = lambda p: 100 * math.sqrt(p * (1 - p) / n_dev) if p == p else float("nan")  # noqa: E731
    target = {"sst2": ">= 3x", "rte": ">= 1.5x"}[task]
    pr = r[f"{peer} {task}"]
    full05, full0, lora = (r[f"gptune {task} {n}"] for n in names)
    # one window of every timed batch: all examples over all seconds
    pooled = {w.name: rates([[t for win in windows[w.name] for t in win]], BATCH).median for w in workers}
    like = f"gptune {task} full, lm_coef 0"
    rows = [
        row(f"GLUE {task}", "examples/s, lm_coef 0 (like-for-like)", full0, pr, peer, target=target, digits=1,
            note=f"pooled over all timed batches: {pooled[like]:.1f} vs {pooled[f'{peer} {task}']:.1f} examples/s, "
                 f"{pooled[like] / pooled[f'{peer} {task}']:.2f}x"),
        row(f"GLUE {task}", "examples/s, lm_coef 0.5 (gptune default)", full05, pr, peer, target=target,
            note="gptune also trains the auxiliary LM loss (50k-vocabulary head on every token); run_glue does not", digits=1),
        row(f"GLUE {task}", "LoRA step examples/s vs full (lm_coef 0.5)", lora, full05, "gptune full", target=">= 1.0x", digits=1),
    ]
    for n in names:
        a = acc[f"gptune {task} {n}"]
        row_ = row(f"GLUE {task}", f"dev accuracy % ({n})", 100 * a, 100 * acc[f"{peer} {task}"], peer, digits=1,
                   target="equal within noise",
                   note=f"after the same {total} steps x {BATCH} examples from the same random-init model; "
                        f"binomial s.e. on {n_dev} dev rows ~{se(a if a == a else 0.5):.1f} points")
        rows.append(row_)
    return rows


def run(*, quick: bool, data: str | None = None, out_dir: Path | None = None, tasks=("sst2", "rte")) -> list[dict]:
    root = data_root(data)
    work = Path(tempfile.mkdtemp(prefix="gptune-bench-glue-"))
    log_dir = out_dir or (Path(__file__).resolve().parent / "results")
    log_dir.mkdir(parents=True, exist_ok=True)
    model = make_model(root, work / "model")
    rows = []
    for t in tasks:
        rows += run_task(t, quick=quick, root=root, work=work, log_dir=log_dir, model=model)
        print_table(rows, f"GLUE so far ({t} done)")  # each task takes minutes: show it as soon as it is done
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--full", action="store_true")
    p.add_argument("--tasks", default="sst2,rte")
    p.add_argument("--data", default=None)
    a = p.parse_args(argv)
    rows = run(quick=not a.full, data=a.data, tasks=tuple(a.tasks.split(",")))
    print_table(rows, "GLUE fine-tuning")
    print("json:", write_json("glue", {"rows": rows}))


if __name__ == "__main__":
    main()
