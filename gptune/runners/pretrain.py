"""``gptune pretrain``: causal-LM pretraining on packed text. Reads like a table of contents."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch

from gptune.config import Recipe
from gptune.console import say
from gptune.data.collate import loader_kwargs
from gptune.errors import GptuneError
from gptune.training.checkpoint import TrainState
from gptune.training.loop import EpochSampler, StepOutput, compile_in_place
from gptune.training.run import Run, RunSummary


def choose_corpus(recipe: Recipe) -> tuple[Recipe, str]:
    """The recipe with the corpus it will read (``embedded`` for missing books offline), and its name."""
    from gptune.data.books import choose_corpus as choose

    data, label = choose(recipe.data)
    return dataclasses.replace(recipe, data=data), label


def fetch_corpus(recipe: Recipe, accelerator) -> None:
    """``data.download_books``: fill a missing ``data.path`` from the hub (main process only)."""
    from gptune.data.books import fetch_corpus as fetch

    with accelerator.main_process_first():
        if accelerator.is_main_process:
            fetch(recipe.data)


def load_lm_data(recipe: Recipe, tokenizer, accelerator, faults=None):
    """The memory-mapped token shards; the main process prepares them when missing while the others poll
    for them (no barrier: a long preparation cannot hit a collective timeout). With ``data.clean`` on, its
    report is printed and copied into the run folder."""
    from gptune.data.clean import report_clean
    from gptune.data.prepare import prepare_lm_data

    data = prepare_lm_data(recipe.data, tokenizer, seed=recipe.seed, main=accelerator.is_main_process, faults=faults)
    report_clean(data.folder, recipe.run_dir)
    return data


def build_loaders(recipe: Recipe, data):
    micro = recipe.train.micro_batch_size
    if len(data.train) < micro:
        raise GptuneError(f"data.path: the corpus gives {len(data.train)} training blocks of "
                          f"{recipe.data.block_size} tokens, fewer than train.micro_batch_size={micro}")
    train_loader = torch.utils.data.DataLoader(
        data.train, batch_size=micro, sampler=EpochSampler(len(data.train), recipe.seed), drop_last=True,
        # each new iterator draws a seed; from its own generator it leaves the global RNG (dropout) alone,
        # so a run resumed mid-epoch sees the same dropout masks as an uninterrupted one
        generator=torch.Generator().manual_seed(recipe.seed), **loader_kwargs(recipe.train.num_workers),
    )
    val_loader = None
    if data.val is not None and len(data.val):
        val_loader = torch.utils.data.DataLoader(data.val, batch_size=micro, shuffle=False,
                                                 **loader_kwargs(recipe.train.num_workers))
    return train_loader, val_loader


def lm_step(model, batch) -> StepOutput:
    loss, n = model(batch["input_ids"], batch.get("attention_mask"))
    return StepOutput(loss=loss, tokens=int(batch["input_ids"].numel()))


@torch.no_grad()
def evaluate_lm(accelerator, model, loader, max_batches: int | None) -> dict:
    """Token-weighted validation loss and perplexity over processes; ``gather_for_metrics`` drops the
    samples Accelerate repeats to even out the last batch, so every block counts exactly once. The NLL
    comes from the wrapped model's own forward, so sharded weights are gathered as in training."""
    from gptune.losses import IGNORE_INDEX, shift_targets

    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        targets = shift_targets(ids, mask)  # (B, T)
        per_tok = model(ids, mask, targets=targets, per_token=True)  # (B, T)
        seq_nll = per_tok.sum(1).double()  # (B,)
        seq_n = (targets != IGNORE_INDEX).sum(1).double()  # (B,)
        seq_nll, seq_n = accelerator.gather_for_metrics((seq_nll, seq_n))
        nll += seq_nll.sum()
        count += seq_n.sum()
    mean = float(nll / count.clamp(min=1))
    return {"val_loss": mean, "val_ppl": math.exp(mean), "val_tokens": int(count)}


def sliding_window_val(accelerator, model, data, tokenizer, block_size: int) -> dict:
    """The ``eval --ppl`` measure on the validation text (``validation_text``: with ``data.val_split`` tail or
    documents, contiguous held-out text) with windows of block_size and stride block_size / 2
    (``gptune eval --ppl --max-length B --stride B/2`` on the run gives the same)."""
    from gptune.data.eval_text import encode_text
    from gptune.data.prepared import validation_text
    from gptune.evaluation.perplexity import perplexity_report, sliding_window_nll

    text = validation_text(data, tokenizer)
    result = sliding_window_nll(model, encode_text(tokenizer, text), max_length=block_size, stride=block_size // 2,
                                accelerator=accelerator if accelerator.num_processes > 1 else None)
    report = perplexity_report(result, text)
    return {"val_ppl_sliding": report["perplexity"], "val_bits_per_byte": report["bits_per_byte"],
            "val_sliding_stride": result.stride}


def save_final(accelerator, model, tokenizer, run: Run, metrics: dict) -> Path:
    """``final/``: a save_pretrained model + tokenizer that AutoModelForCausalLM/AutoTokenizer load,
    with the recipe and metrics beside it (``Run.save``: written whole or not at all)."""
    from gptune.modeling.gpt import without_tied_copies

    def write(tmp: Path, inner, state_dict: dict) -> None:
        lm = inner.lm
        lm.save_pretrained(tmp, state_dict=without_tied_copies(lm, {k.removeprefix("lm."): v
                                                                    for k, v in state_dict.items()}),
                           safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return run.save(write, metrics)


def check_context(recipe: Recipe) -> None:
    """``data.block_size`` against the model's context, before the run folder exists: a random init's
    ``model.config.n_positions``, a pretrained model's (or ``model.config_file``'s) own config. Pretraining's
    check alone: ``data.block_size`` means nothing to a fine-tuning recipe."""
    spec = recipe.model.name_or_path or recipe.model.config_file
    if spec is None:
        a = recipe.model.config
        context = a.extra.get("max_position_embeddings", a.extra.get("n_positions", a.n_positions))
    else:
        from transformers import AutoConfig

        from gptune.modeling.gpt import context_length

        try:
            context = context_length(AutoConfig.from_pretrained(spec, trust_remote_code=recipe.model.trust_remote_code))
        except (OSError, ValueError):
            return  # not readable here: loading the model names the problem
    if context is not None and recipe.data.block_size > context:
        where = "model.config.n_positions" if spec is None else spec
        raise GptuneError(f"data.block_size={recipe.data.block_size} is larger than the model's context "
                          f"({context}, {where}); lower it" + (" or raise model.config.n_positions" if spec is None else ""))


def build_model(recipe: Recipe, tokenizer):
    """The causal LM from ``model`` (random init or pretrained), wrapped with the chunked loss; compiled
    when ``train.compile``."""
    from gptune.modeling.gpt import LMWithLoss, build_causal_lm

    model = LMWithLoss(build_causal_lm(recipe.model, tokenizer))
    if recipe.train.compile:
        compile_in_place(model)
    return model


def describe(model, data, block_size: int) -> None:
    from gptune.modeling.gpt import count_parameters

    say(f"  {count_parameters(model.lm) / 1e6:.2f}M parameters; {data.stats.tokens:,} tokens, {len(data.train)} "
        f"train / {len(data.val) if data.val is not None else 0} validation blocks of {block_size}"
        f"{' (cached)' if data.stats.cached else ''}")
    if not data.stats.cached:
        say("  " + data.stats.summary(data.folder))
    if data.stats.dropped_tokens:
        say(f"  packing dropped the final partial block: {data.stats.dropped_tokens} tokens")


def run_pretrain(recipe: Recipe, *, resume: str | None = None, overwrite: bool = False,
                 command: str = "gptune pretrain") -> RunSummary:
    from accelerate.utils import set_seed

    from gptune.data.prepare import load_pretrain_tokenizer
    from gptune.modeling.gpt import set_threads

    t0 = time.perf_counter()
    set_threads()
    recipe, corpus = choose_corpus(recipe)
    say(f"pretrain: model {recipe.model.name_or_path or recipe.model.arch + ' (random init)'} | "
        f"data {corpus} | out {recipe.run_dir}")
    check_context(recipe)
    run = Run(recipe, resume=resume, overwrite=overwrite, command=command, started=t0)
    accelerator = run.accelerator
    set_seed(recipe.seed)
    fetch_corpus(recipe, accelerator)
    with accelerator.main_process_first():  # the main process trains/saves the tokenizer, the others reuse it
        tokenizer = load_pretrain_tokenizer(recipe.model, recipe.data, run.dir, seed=recipe.seed)
    model = build_model(recipe, tokenizer)
    data = load_lm_data(recipe, tokenizer, accelerator, run.faults)  # the run's one Faults object
    describe(model, data, recipe.data.block_size)
    train_loader, val_loader = build_loaders(recipe, data)
    run.prepare(model, train_loader, {"validation": val_loader} if val_loader is not None else {})
    val = run.eval_loaders.get("validation")

    def evaluate_fn(st: TrainState) -> dict:
        if val is None:
            return {}
        out = evaluate_lm(accelerator, run.model, val, recipe.train.eval_batches)
        run.metrics.write("eval", step=st.step, **out)
        return out

    state = run.train(lm_step, evaluate_fn=evaluate_fn, description="pretrain")
    final_metrics = {}
    if val is not None:
        final_metrics = evaluate_lm(accelerator, run.model, val, None)
        final_metrics.update(sliding_window_val(accelerator, run.model, data, tokenizer, recipe.data.block_size))
        run.metrics.write("eval", step=state.step, final=True, **final_metrics)
    final = save_final(accelerator, run.model, tokenizer, run, {"step": state.step, **final_metrics})
    return run.end(final, state, final_metrics, "pretrain finished")
