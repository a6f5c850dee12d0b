"""``gptune prepare``: tokenize and pack a recipe's corpus into token shards once (``gptune pretrain`` then
memory-maps them). Reads like a table of contents."""

from __future__ import annotations

from pathlib import Path

from gptune.config import Recipe
from gptune.console import say


def run_prepare(recipe: Recipe):
    """Prepare (or find prepared) the shards of ``recipe.data``; returns the ``LMData``."""
    from gptune.data.prepare import load_pretrain_tokenizer, prepare_lm_data, report_clean

    if recipe.data.download_books and not Path(recipe.data.path).exists():
        from gptune.data.books import ensure_books

        say(f"data.path {recipe.data.path} is missing: downloading public-domain books from the hub")
        ensure_books(Path(recipe.data.path))
    tokenizer = load_pretrain_tokenizer(recipe, recipe.run_dir)
    data = prepare_lm_data(recipe.data, tokenizer, seed=recipe.seed)
    report_clean(data, recipe.run_dir)
    say(data.stats.summary(data.folder))
    return data
