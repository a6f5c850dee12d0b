"""``gptune prepare``: tokenize and pack a recipe's corpus into token shards once (``gptune pretrain`` then
memory-maps them). Reads like a table of contents."""

from __future__ import annotations

import dataclasses

from gptune.config import Recipe
from gptune.console import say


def run_prepare(recipe: Recipe):
    """Prepare (or find prepared) the shards of ``recipe.data``; returns the ``LMData``."""
    from gptune.data.books import choose_corpus, fetch_corpus
    from gptune.data.clean import report_clean
    from gptune.data.prepare import load_pretrain_tokenizer, prepare_lm_data

    data_cfg, corpus = choose_corpus(recipe.data)
    if corpus != recipe.data.path:  # embedded, or downloading: say so before the work
        say(f"prepare: data {corpus}")
    recipe = dataclasses.replace(recipe, data=data_cfg)
    fetch_corpus(recipe.data)
    tokenizer = load_pretrain_tokenizer(recipe.model, recipe.data, recipe.run_dir, seed=recipe.seed)
    data = prepare_lm_data(recipe.data, tokenizer, seed=recipe.seed)
    report_clean(data.folder, recipe.run_dir)
    say(data.stats.summary(data.folder))
    return data
