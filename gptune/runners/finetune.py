"""``gptune finetune``: GPT-1 fine-tuning (task-aware inputs + auxiliary LM loss), full or LoRA.
Reads like a table of contents; each ``build_*`` / ``load_*`` builds one thing."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from gptune.config import Recipe, TaskConfig
from gptune.console import console, is_main_process, say, summary_table, warn
from gptune.errors import GptuneError
from gptune.runners.common import RunSummary, finish, open_run, prepare_training, publish_final
from gptune.tasks import TaskSpec, custom_task, get_task
from gptune.training.checkpoint import TrainState
from gptune.training.loop import StepOutput, train

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "finetune.yaml"
HUB_MODEL = "openai-community/openai-gpt"
AUTO = "auto"


# ----------------------------------------------------------------------------- resolving the recipe
def newest_pretrained_run(root: Path = Path("runs")) -> Path | None:
    """The newest ``runs/*/final`` written by ``gptune pretrain`` (its recipe has no task)."""
    found = []
    for final in root.glob("*/final"):
        if not (final / "config.json").is_file() or (final / "task.json").exists():
            continue
        try:
            saved = yaml.safe_load((final / "recipe.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if (saved.get("task") or {}).get("name"):
            continue
        found.append((final.stat().st_mtime, final))
    return max(found)[1] if found else None


def default_model() -> str:
    """``--model`` when absent: the newest local pretraining run, else GPT-1 from the hub."""
    run = newest_pretrained_run()
    return str(run) if run is not None else HUB_MODEL


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick look (DNS + TCP connect) before asking the hub, whose client retries for ~50 s offline."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return False


def check_sources(recipe: Recipe, task: TaskSpec, *, auto_model: bool) -> None:
    """Fail in one line, before any download attempt, when a hub source is needed but unreachable."""
    from gptune.data.glue import find_glue_dir
    from gptune.modeling.gpt import is_local

    spec = recipe.model.name_or_path
    need_model = not is_local(spec) and not _hub_cached(spec)
    need_data = bool(task.glue_dir) and find_glue_dir(recipe.task.data_dir) is None
    if not (need_model or need_data) or hub_reachable():
        return
    problems = []
    if need_model and auto_model:
        problems.append(f"no model given, no runs/*/final from gptune pretrain here, and the Hugging Face hub is "
                        f"unreachable for {spec}; pass --model DIR (a local model folder)")
    elif need_model:
        problems.append(f"--model {spec}: not a local folder and the Hugging Face hub is unreachable; "
                        "pass a local model folder with --model")
    if need_data:
        problems.append(f"task {task.name}: no local GLUE data and the Hugging Face hub is unreachable; pass "
                        f"--data-dir DIR (glue_data layout, e.g. DIR/{task.glue_dir}/train.tsv) or set GPTUNE_GLUE_DIR")
    raise GptuneError(*problems)


def run_folder(task: str, lora: bool, *, reuse: bool) -> Path:
    """runs/finetune/<task>-<lora|full>, or with a numeric suffix when it already holds a run and
    ``reuse`` (--resume / --overwrite) is off. With ``reuse``: the newest existing one."""
    base = Path("runs/finetune") / f"{task}-{'lora' if lora else 'full'}"
    taken = [base] + sorted((p for p in base.parent.glob(base.name + "-*") if p.name.rsplit("-", 1)[1].isdigit()),
                            key=lambda p: int(p.name.rsplit("-", 1)[1]))
    taken = [p for p in taken if p.exists()]
    if reuse:
        return taken[-1] if taken else base
    if not taken:
        return base
    n = 2
    while (base.parent / f"{base.name}-{n}").exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


def resolve_recipe(recipe: Recipe, *, reuse: bool) -> Recipe:
    """Fill in what the recipe leaves to the run: the model (``auto``), the learning rate of the
    chosen mode (``lora.lr`` under LoRA), the run folder and name."""
    model = recipe.model.name_or_path
    if model in (None, AUTO):
        model = default_model()
    train_cfg = recipe.train
    if recipe.lora.enabled and recipe.lora.lr is not None:
        train_cfg = dataclasses.replace(train_cfg, lr=recipe.lora.lr)
    task = build_task_spec(recipe.task)
    name = f"{task.name}-{'lora' if recipe.lora.enabled else 'full'}"
    out_dir = recipe.out_dir or str(run_folder(task.name, recipe.lora.enabled, reuse=reuse))
    return dataclasses.replace(recipe, name=name, out_dir=out_dir, train=train_cfg,
                               model=dataclasses.replace(recipe.model, name_or_path=model))


def build_task_spec(cfg: TaskConfig) -> TaskSpec:
    """A GLUE task by name, or a custom task from ``task.kind`` + files."""
    if cfg.kind is None:
        if not cfg.name:
            raise GptuneError("task.name: no task given; pass --task NAME (a GLUE task) or a recipe with a task section")
        try:
            return get_task(cfg.name)
        except GptuneError as e:
            raise GptuneError(f"{e}; for your own data set task.kind, task.train_file and task.text_fields") from None
    problems = []
    if not cfg.train_file:
        problems.append("task.train_file: must be set for a custom task (task.kind is set)")
    if not cfg.text_fields:
        problems.append("task.text_fields: must list the text columns of a custom task")
    if problems:
        raise GptuneError(*problems)
    files = {"train": cfg.train_file}
    if cfg.eval_file:
        files["validation"] = cfg.eval_file
    return custom_task(cfg.name or "custom", cfg.kind, cfg.text_fields, cfg.label_field, cfg.labels, files)


# ----------------------------------------------------------------------------- data
@dataclass
class TaskData:
    train: object
    evals: dict
    train_rows: int
    eval_rows: dict
    cached: bool


def load_task_data(recipe: Recipe, task: TaskSpec, tokenizer, ids, accelerator, *, train_split: bool = True,
                   eval_splits: tuple[str, ...] | None = None) -> TaskData:
    """Read the splits (custom files, glue_data folder or hub) and tokenize them once (cached)."""
    from gptune.data.features import encode_split
    from gptune.data.glue import load_task_split

    def encode(split_name):
        split = load_task_split(task, split_name, recipe.task.data_dir)
        if split.warning():
            warn(split.warning())
        ds, cached = encode_split(task, split, tokenizer, style=recipe.task.input_style, ids=ids,
                                  max_length=recipe.task.max_length, cache_dir=recipe.data.cache_dir,
                                  first=accelerator.main_process_first)
        return ds, cached

    train_ds, cached = encode("train") if train_split else (None, True)
    evals = {}
    for s in task.eval_splits if eval_splits is None else eval_splits:
        evals[s], c = encode(s)
        cached = cached and c
    return TaskData(train_ds, evals, len(train_ds) if train_ds is not None else 0,
                    {k: len(v) for k, v in evals.items()}, cached)


def build_collator(recipe: Recipe, task: TaskSpec, tokenizer, ids):
    from gptune.data.collate import TaskCollator

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    extract = ids.end if recipe.task.input_style == "gpt1" else None
    return TaskCollator(pad, extract, task.is_regression)


def build_task_loaders(recipe: Recipe, data: TaskData, collate):
    from gptune.data.collate import LengthGroupedSampler

    micro = recipe.train.micro_batch_size
    train_loader = None
    if data.train is not None:
        if len(data.train) < micro:
            raise GptuneError(f"task train split: {len(data.train)} rows, fewer than train.micro_batch_size={micro}")
        sampler = LengthGroupedSampler(data.train["length"], micro, recipe.seed)
        # its own generator: creating the epoch's iterator then draws no number from the global RNG, so
        # dropout after a mid-epoch resume matches the uninterrupted run
        train_loader = torch.utils.data.DataLoader(data.train, batch_size=micro, sampler=sampler, drop_last=True,
                                                   collate_fn=collate, generator=torch.Generator().manual_seed(0))
    evals = {}
    for name, ds in data.evals.items():
        # visit rows longest first: the least padding; predictions are put back in row order
        order = sorted(range(len(ds)), key=lambda i, lengths=ds["length"]: -lengths[i])
        evals[name] = torch.utils.data.DataLoader(ds, batch_size=micro * 2, sampler=order, collate_fn=collate)
    return train_loader, evals


def task_step(model, batch) -> StepOutput:
    out = model(**batch)
    parts = {k: out[k] for k in ("task_loss", "lm_loss") if k in out}
    return StepOutput(loss=out["loss"], parts=parts, tokens=int(batch["attention_mask"].sum()))


# ----------------------------------------------------------------------------- the run
def fit_max_length(recipe: Recipe, spec: str) -> Recipe:
    """A task.max_length beyond the model's context is lowered to it (and said), before anything is tokenized."""
    import dataclasses

    from transformers import AutoConfig

    from gptune.modeling.gpt import context_length

    try:
        ctx = context_length(AutoConfig.from_pretrained(spec, trust_remote_code=recipe.model.trust_remote_code))
    except (OSError, ValueError):
        return recipe  # an adapter folder or unreachable hub id: checked again once the model is built
    if recipe.task.max_length <= ctx:
        return recipe
    say(f"  task.max_length {recipe.task.max_length} lowered to the model's context ({ctx})")
    return dataclasses.replace(recipe, task=dataclasses.replace(recipe.task, max_length=ctx))


def run_finetune(recipe: Recipe, *, resume: str | None = None, overwrite: bool = False,
                 command: str = "gptune finetune", merge: bool | None = None) -> RunSummary:
    from accelerate.utils import set_seed

    from gptune.evaluation.glue import evaluate_splits, flat_metrics
    from gptune.modeling.gpt import context_length, count_parameters, set_threads
    from gptune.modeling.heads import add_task_tokens
    from gptune.modeling.task_io import build_task_model, check_model_folder, load_tokenizer

    t0 = time.perf_counter()
    set_threads()
    auto_model = recipe.model.name_or_path in (None, AUTO)
    recipe = resolve_recipe(recipe, reuse=bool(resume) or overwrite)
    task = build_task_spec(recipe.task)
    spec = recipe.model.name_or_path
    check_model_folder(spec)
    check_sources(recipe, task, auto_model=auto_model)
    mode = "lora" if recipe.lora.enabled else "full"
    if is_main_process():  # one unwrapped line: what runs, on what, where
        console.print(f"finetune {task.name} ({mode}): model {spec} | data {_data_where(task, recipe.task.data_dir)}"
                      f" | out {recipe.run_dir}", soft_wrap=True)
    recipe = fit_max_length(recipe, spec)
    accelerator, run_dir, ckpt = open_run(recipe, resume=resume, overwrite=overwrite, command=command)
    set_seed(recipe.seed)
    tokenizer = load_tokenizer(recipe.model.tokenizer or spec)
    ids = add_task_tokens(tokenizer) if recipe.task.input_style == "gpt1" else None
    data = load_task_data(recipe, task, tokenizer, ids, accelerator)
    model = build_task_model(recipe, task, tokenizer, ids)
    if recipe.task.max_length > context_length(_lm_config(model)):
        raise GptuneError(f"task.max_length={recipe.task.max_length} is larger than the model's context "
                          f"({context_length(_lm_config(model))}); lower it")
    say(f"  {count_parameters(model) / 1e6:.2f}M params, {count_parameters(model, True) / 1e6:.3f}M trainable | "
        f"{data.train_rows} train rows, eval {data.eval_rows}{' (cached)' if data.cached else ''}")
    collate = build_collator(recipe, task, tokenizer, ids)
    train_loader, eval_loaders = build_task_loaders(recipe, data, collate)
    t = prepare_training(accelerator, recipe, model, train_loader, run_dir=run_dir, ckpt=ckpt, command=command)
    model, metrics = t.model, t.metrics
    eval_loaders = {k: accelerator.prepare(v) for k, v in eval_loaders.items()}

    def evaluate_fn(st: TrainState) -> dict:
        if not eval_loaders:
            return {}
        out = flat_metrics(evaluate_splits(accelerator, model, eval_loaders, task))
        metrics.write("eval", step=st.step, epoch=st.epoch, **out)
        say(f"  eval step {st.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items()))
        return out

    def on_epoch_end(st: TrainState) -> None:
        if recipe.task.eval_every_epoch and st.step < st.total_steps:
            st.history = evaluate_fn(st)

    state = train(accelerator=accelerator, model=model, optimizer=t.optimizer, scheduler=t.scheduler,
                  loader=t.loader, cfg=recipe.train, state=t.state, step_fn=task_step, evaluate_fn=evaluate_fn,
                  checkpointer=t.checkpointer, metrics=metrics, on_epoch_end=on_epoch_end,
                  description=f"finetune {task.name}")
    if recipe.train.save_every and state.step % recipe.train.save_every:
        t.checkpointer.save(state)
    final_metrics = evaluate_fn(state)
    final = save_final_task(accelerator, model, tokenizer, recipe, task, ids, run_dir, t.recipe_yaml,
                            {"step": state.step, **final_metrics},
                            merge=recipe.lora.merge if merge is None else merge)
    metrics.close()
    if accelerator.is_main_process:
        from gptune.plot import write_curves

        write_curves(run_dir)
    finish(accelerator)
    summary = RunSummary(run_dir, final, state.step, state.tokens, time.perf_counter() - t0, final_metrics)
    summary_table(f"finetune {task.name} ({mode}) finished", summary.rows())
    return summary


def _lm_config(model):
    return model.lm.config  # under LoRA a PeftModel, which forwards .config to the LM


def _data_where(task: TaskSpec, data_dir: str | None) -> str:
    if not task.glue_dir:
        return ", ".join(task.splits.values())
    from gptune.data.glue import find_glue_dir

    folder = find_glue_dir(data_dir)
    return str(folder / task.glue_dir) if folder is not None else f"hub nyu-mll/glue:{task.hub_name}"


def save_final_task(accelerator, model, tokenizer, recipe: Recipe, task: TaskSpec, ids, run_dir: Path,
                    recipe_yaml: str, metrics: dict, *, merge: bool = False) -> Path:
    """``final/``: adapter or full model + tokenizer + task.json + metrics.json + recipe.yaml
    (``final/merged``: the LoRA folded in). Written to a temporary folder, then renamed."""
    from gptune.modeling.task_io import TaskModelInfo, merge_lora, save_task_model

    final = run_dir / "final"
    accelerator.wait_for_everyone()
    inner = accelerator.unwrap_model(model)
    state_dict = None if recipe.lora.enabled else accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        info = TaskModelInfo(task, recipe.task.input_style, recipe.task.max_length,
                             recipe.model.name_or_path, recipe.lora.enabled, ids)

        def write(tmp: Path) -> None:
            save_task_model(inner, state_dict, tokenizer, info, tmp, embeddings=recipe.lora.save_embeddings)
            if merge and recipe.lora.enabled:
                merge_lora(inner, tokenizer, info, tmp / "merged")

        publish_final(run_dir, write, recipe_yaml, metrics)
    accelerator.wait_for_everyone()
    return final
