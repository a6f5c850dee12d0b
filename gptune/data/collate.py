"""Batches for task fine-tuning: dynamic padding and length-grouped, per-epoch seeded order.

Each example holds one or more token sequences (similarity: 2, multiple choice: K). A batch is
padded to the longest sequence *in the batch*, not to ``task.max_length``; the length-grouped
sampler puts sequences of similar length together so little padding is left.
"""

from __future__ import annotations

import torch


class TaskCollator:
    """Rows ``{"input_ids": [[int]] * n, "label": int | float}`` -> tensors:

    input_ids (B, n, T) right-padded with ``pad_id``; attention_mask (B, n, T); extract_pos (B, n):
    the position of the extract token (``extract_id``) or, when it is None (plain inputs), of the last
    real token; row (B,): dataset positions; labels (B,) (absent when the rows have no labels: -1 / NaN).
    """

    def __init__(self, pad_id: int, extract_id: int | None, regression: bool):
        self.pad_id, self.extract_id, self.regression = pad_id, extract_id, regression

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        n = len(rows[0]["input_ids"])
        t = max(len(s) for r in rows for s in r["input_ids"])
        ids = torch.full((len(rows), n, t), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), n, t), dtype=torch.long)
        pos = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            for j, seq in enumerate(r["input_ids"]):
                ids[i, j, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[i, j, : len(seq)] = 1
                if self.extract_id is None:
                    pos[i, j] = len(seq) - 1
                else:
                    # the last occurrence: the marker ends the sequence (text cannot produce it)
                    pos[i, j] = len(seq) - 1 - seq[::-1].index(self.extract_id)
        batch = {"input_ids": ids, "attention_mask": mask, "extract_pos": pos,
                 "row": torch.tensor([r["row"] for r in rows], dtype=torch.long)}
        labels = [r["label"] for r in rows]
        if self.regression:
            lab = torch.tensor(labels, dtype=torch.float)
            if not torch.isnan(lab).any():
                batch["labels"] = lab
        elif min(labels) >= 0:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch


class LengthGroupedSampler(torch.utils.data.Sampler):
    """A seeded random order per epoch in which neighbouring examples have similar lengths.

    The dataset is shuffled with a generator seeded by (seed, epoch), cut into mega-batches of
    ``batch_size * mega`` examples, and each mega-batch is sorted by length and cut into batches, shuffled among themselves.
    Batches of ``batch_size`` consecutive indices are then nearly uniform in length; the order depends only
    on (seed, epoch), so a resumed run sees the batches an uninterrupted one would (as ``EpochSampler``).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, shuffle: bool = True, mega: int = 50):
        self.lengths, self.batch_size, self.seed, self.shuffle, self.mega = lengths, batch_size, seed, shuffle, mega
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        n = len(self.lengths)
        if not self.shuffle:
            return iter(range(n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(n, generator=g).tolist()
        size = self.batch_size * self.mega
        out = []
        for s in range(0, n, size):
            chunk = sorted(perm[s : s + size], key=lambda i: -self.lengths[i])
            batches = [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
            # full batches in a seeded random order, so lengths do not fall steadily within a mega-batch
            full = [b for b in batches if len(b) == self.batch_size]
            order = torch.randperm(len(full), generator=g).tolist()
            out += [i for k in order for i in full[k]] + [i for b in batches if len(b) < self.batch_size for i in b]
        return iter(out)


def loader_kwargs(num_workers: int | None = None) -> dict:
    """DataLoader worker and pinning options: ``train.num_workers`` (default 0 on CPU, where the cores train,
    and 2 on CUDA, where batches are then prepared while the GPU computes) and pinned memory on CUDA."""
    cuda = torch.cuda.is_available()
    workers = num_workers if num_workers is not None else (2 if cuda else 0)
    return {"num_workers": workers, "pin_memory": cuda, "persistent_workers": workers > 0}
