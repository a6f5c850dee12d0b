"""Training throughput from memory-mapped token shards vs the same blocks held in RAM (the old path).

One process, one model (the books recipe's), the same batches; windows of steps alternate between the two
datasets (mmap, RAM, mmap, ...) so a busy patch of the shared machine hits both. Also the loader alone
(batches/s, no model). The RAM side is the old ``PackedBlocks``: a (num_blocks, block_size) numpy array.

    python benchmarks/shards_train.py --recipe recipes/books.yaml --set data.path=$GPTUNE_DATA/books/gutenberg
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import Stat, print_table, row, write_json


class InRamBlocks(torch.utils.data.Dataset):
    """The old in-RAM path: every block in one array."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = blocks  # (N, T)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(np.asarray(self.blocks[i], dtype=np.int64))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="books", help="recipe file or shipped name")
    p.add_argument("--set", dest="sets", action="append", default=[])
    p.add_argument("--windows", type=int, default=6, help="windows per side")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per window")
    a = p.parse_args(argv)

    from gptune.data.prepare import load_pretrain_tokenizer, prepare_lm_data
    from gptune.modeling.gpt import LMWithLoss, build_causal_lm
    from gptune.recipes import load_recipe
    from gptune.training.loop import EpochSampler

    recipe = load_recipe(a.recipe, None, a.sets)
    tok = load_pretrain_tokenizer(recipe.model, recipe.data, recipe.run_dir, seed=recipe.seed)
    data = prepare_lm_data(recipe.data, tok, seed=recipe.seed)
    mm = data.train
    ram = InRamBlocks(np.stack([mm.block_ids(i) for i in range(len(mm))]))
    micro = recipe.train.micro_batch_size

    def loader(ds):
        return torch.utils.data.DataLoader(ds, batch_size=micro, drop_last=True,
                                           sampler=EpochSampler(len(ds), recipe.seed))

    torch.manual_seed(0)
    model = LMWithLoss(build_causal_lm(recipe.model, tok))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    iters = {"mmap": iter(loader(mm)), "ram": iter(loader(ram))}
    step_s = {"mmap": [], "ram": []}
    load_s = {"mmap": [], "ram": []}
    for w in range(2 * a.windows):
        name = ("mmap", "ram")[w % 2]
        t = time.perf_counter()
        for _ in range(a.steps):
            batch = next(iters[name])
            loss, _ = model(batch["input_ids"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        step_s[name].append(a.steps / (time.perf_counter() - t))
        t = time.perf_counter()
        for _ in range(200):
            next(iters[name])
        load_s[name].append(200 / (time.perf_counter() - t))
    rows = [
        row("train from shards", f"steps/s (micro batch {micro} x {recipe.data.block_size})", Stat(step_s["mmap"]),
            Stat(step_s["ram"]), "in-RAM blocks (old path)", target="= within noise", digits=2),
        row("train from shards", "loader batches/s (no model)", Stat(load_s["mmap"]), Stat(load_s["ram"]),
            "in-RAM blocks (old path)", digits=0),
    ]
    print(f"steps/s medians: mmap {statistics.median(step_s['mmap']):.2f}, ram {statistics.median(step_s['ram']):.2f}")
    print_table(rows, "training from memory-mapped shards")
    print("json:", write_json("shards_train", {"rows": rows, "steps_per_s": step_s, "batches_per_s": load_s}))


if __name__ == "__main__":
    main()
