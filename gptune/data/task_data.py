"""A fine-tuning task's data, ready for the loop: its splits read and tokenized (cached), the collator
and the loaders. Shared by ``gptune finetune`` and ``gptune eval --task`` / ``predict``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptune.console import warn
from gptune.errors import GptuneError
from gptune.tasks import TaskSpec
from gptune.transforms import SpecialIds


@dataclass
class TaskData:
    train: object
    evals: dict
    train_rows: int
    eval_rows: dict
    cached: bool


def load_task_data(task: TaskSpec, tokenizer, special_ids: SpecialIds | None, accelerator, *, data_dir: str | None,
                   style: str, max_length: int, cache_dir: str | None = None, train_split: bool = True,
                   eval_splits: tuple[str, ...] | None = None) -> TaskData:
    """Read the splits (custom files, glue_data folder or hub) and tokenize them once (cached)."""
    from gptune.data.features import encode_split
    from gptune.data.glue import load_task_split

    def encode(split_name):
        split = load_task_split(task, split_name, data_dir)
        if split.warning():
            warn(split.warning())
        return encode_split(task, split, tokenizer, style=style, special_ids=special_ids, max_length=max_length,
                            cache_dir=cache_dir, first=accelerator.main_process_first)

    train_ds, cached = encode("train") if train_split else (None, True)
    evals = {}
    for s in task.eval_splits if eval_splits is None else eval_splits:
        evals[s], c = encode(s)
        cached = cached and c
    return TaskData(train_ds, evals, len(train_ds) if train_ds is not None else 0,
                    {k: len(v) for k, v in evals.items()}, cached)


def build_collator(task: TaskSpec, tokenizer, special_ids: SpecialIds | None, style: str):
    from gptune.data.collate import TaskCollator

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    extract = special_ids.extract if style == "gpt1" else None
    return TaskCollator(pad, extract, task.is_regression)


def build_task_loaders(data: TaskData, collate, *, micro_batch_size: int, seed: int = 0,
                       num_workers: int | None = None):
    """The train loader (length-grouped, seeded) and one loader per eval split (batches of twice the micro
    batch, longest rows first)."""
    from gptune.data.collate import LengthGroupedSampler, loader_kwargs

    micro, options = micro_batch_size, loader_kwargs(num_workers)
    train_loader = None
    if data.train is not None:
        if len(data.train) < micro:
            raise GptuneError(f"task train split: {len(data.train)} rows, fewer than train.micro_batch_size={micro}")
        sampler = LengthGroupedSampler(data.train["length"], micro, seed)
        # its own generator: creating the epoch's iterator then draws no number from the global RNG, so
        # dropout after a mid-epoch resume matches the uninterrupted run
        train_loader = torch.utils.data.DataLoader(data.train, batch_size=micro, sampler=sampler, drop_last=True,
                                                   collate_fn=collate, generator=torch.Generator().manual_seed(0),
                                                   **options)
    evals = {}
    for name, ds in data.evals.items():
        # visit rows longest first: the least padding; predictions are put back in row order
        order = sorted(range(len(ds)), key=lambda i, lengths=ds["length"]: -lengths[i])
        evals[name] = torch.utils.data.DataLoader(ds, batch_size=micro * 2, sampler=order, collate_fn=collate,
                                                  **options)
    return train_loader, evals
