"""``gptune finetune``: GPT-1 fine-tuning (task-aware inputs + auxiliary LM loss), full or LoRA.
Reads like a table of contents; each ``build_*`` / ``load_*`` builds one thing."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from gptune.config import Recipe
from gptune.console import console, is_main_process, say
from gptune.errors import GptuneError
from gptune.hub import hub_reachable
from gptune.recipes import build_recipe, read_recipe_file
from gptune.tasks import GLUE_TASKS, TaskSpec, build_task_spec
from gptune.training.checkpoint import TrainState, newest_final
from gptune.training.loop import StepOutput, compile_in_place
from gptune.training.run import Run, RunSummary

DEFAULT_RECIPE = "finetune"
"""The shipped recipe ``gptune finetune`` reads without ``--recipe`` (``gptune recipes cp finetune`` to edit it)."""
HUB_MODEL = "openai-community/openai-gpt"
AUTO = "auto"


# ----------------------------------------------------------------------------- resolving the recipe
def default_model() -> str:
    """``--model`` when absent: the newest local pretraining run, else GPT-1 from the hub."""
    run = newest_final(pretrained_only=True)
    return str(run) if run is not None else HUB_MODEL


def _hub_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return False


def check_sources(recipe: Recipe, task: TaskSpec, *, auto_model: bool) -> None:
    """Fail in one line, before any download attempt, when a hub source is needed but unreachable."""
    from gptune.data.glue import find_glue_dir
    from gptune.hub import is_local

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


def finetune_recipe(path: str | Path | None, flags: dict, sets: list[str] | None) -> Recipe:
    """The recipe of ``gptune finetune``: the file (default: the shipped ``finetune``) < flags < ``--set``. An
    lr the user typed (``--set train.lr=``) wins over the mode's default (``lora.lr`` replaces ``train.lr``
    under LoRA) unless ``lora.lr`` is typed too."""
    sets = list(sets or [])
    typed = {item.split("=", 1)[0].strip() for item in sets}
    if "train.lr" in typed and "lora.lr" not in typed:
        sets.append("lora.lr=null")
    return build_recipe(read_recipe_file(path or DEFAULT_RECIPE), flags, sets, source=str(path or DEFAULT_RECIPE))


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


# ----------------------------------------------------------------------------- the run
def task_step(model, batch) -> StepOutput:
    out = model(**batch)
    parts = {k: out[k] for k in ("task_loss", "lm_loss") if k in out}
    return StepOutput(loss=out["loss"], parts=parts, tokens=batch["attention_mask"].sum())  # stays on device


def fit_max_length(recipe: Recipe, spec: str) -> Recipe:
    """``task.max_length`` absent: the model's context (GPT-1's choice); beyond the context: lowered to it
    (and said). Settled before anything is tokenized."""
    from transformers import AutoConfig

    from gptune.modeling.gpt import context_length

    wanted = recipe.task.max_length
    try:
        ctx = context_length(AutoConfig.from_pretrained(spec, trust_remote_code=recipe.model.trust_remote_code))
    except (OSError, ValueError):
        ctx = None  # an adapter folder: checked again once the model is built
    if ctx is None:
        if wanted is None:
            raise GptuneError(f"task.max_length: the context length of {spec} cannot be read from its config; "
                              "set task.max_length")
        return recipe
    if wanted is not None and wanted <= ctx:
        return recipe
    if wanted is not None:
        say(f"  task.max_length {wanted} lowered to the model's context ({ctx})")
    return dataclasses.replace(recipe, task=dataclasses.replace(recipe.task, max_length=ctx))


def prepare_recipe(recipe: Recipe, *, reuse: bool) -> tuple[Recipe, TaskSpec]:
    """Everything settled before the run folder exists: the model, lr, folder, sources and max_length."""
    from gptune.modeling.task_io import check_model_folder

    auto_model = recipe.model.name_or_path in (None, AUTO)
    recipe = resolve_recipe(recipe, reuse=reuse)
    task = build_task_spec(recipe.task)
    check_model_folder(recipe.model.name_or_path)
    check_sources(recipe, task, auto_model=auto_model)
    if is_main_process():  # one unwrapped line: what runs, on what, where
        console.print(f"finetune {task.name} ({_mode(recipe)}): model {recipe.model.name_or_path} | data "
                      f"{_data_where(task, recipe.task.data_dir)} | out {recipe.run_dir}", soft_wrap=True)
    return fit_max_length(recipe, recipe.model.name_or_path), task


def build_model(recipe: Recipe, task: TaskSpec, tokenizer, special_ids):
    """The task model (LM + classifier head, LoRA when enabled), compiled when ``train.compile``."""
    from gptune.modeling.gpt import context_length
    from gptune.modeling.task_io import build_task_model

    model = build_task_model(recipe.model, recipe.task, recipe.lora, task, tokenizer, special_ids)
    if recipe.train.compile:
        compile_in_place(model)
    context = context_length(_lm_config(model))
    if context is not None and recipe.task.max_length > context:
        raise GptuneError(f"task.max_length={recipe.task.max_length} is larger than the model's context "
                          f"({context}); lower it")
    return model


def run_finetune(recipe: Recipe, *, resume: str | None = None, overwrite: bool = False,
                 command: str = "gptune finetune", merge: bool | None = None) -> RunSummary:
    from accelerate.utils import set_seed

    from gptune.data.task_data import build_collator, build_task_loaders, load_task_data
    from gptune.modeling.gpt import count_parameters, set_threads

    t0 = time.perf_counter()
    set_threads()
    recipe, task = prepare_recipe(recipe, reuse=bool(resume) or overwrite)
    merge = recipe.lora.merge if merge is None else merge
    if merge and not recipe.lora.enabled:
        say("  --merge: nothing to fold in, a full fine-tune's final/ is already a full model")
    run = Run(recipe, resume=resume, overwrite=overwrite, command=command, started=t0)
    set_seed(recipe.seed)
    tokenizer, special_ids = build_tokenizer(recipe)
    tc = recipe.task
    data = load_task_data(task, tokenizer, special_ids, run.accelerator, data_dir=tc.data_dir, style=tc.input_style,
                          max_length=tc.max_length, cache_dir=recipe.data.cache_dir)
    model = build_model(recipe, task, tokenizer, special_ids)
    say(f"  {count_parameters(model) / 1e6:.2f}M params, {count_parameters(model, True) / 1e6:.3f}M trainable | "
        f"{data.train_rows} train rows, eval {data.eval_rows}{' (cached)' if data.cached else ''}")
    collate = build_collator(task, tokenizer, special_ids, tc.input_style)
    run.prepare(model, *build_task_loaders(data, collate, micro_batch_size=recipe.train.micro_batch_size,
                                           seed=recipe.seed, num_workers=recipe.train.num_workers))

    def save(st: TrainState, out: dict, name: str = "final") -> Path:
        return save_final_task(run.accelerator, run.model, tokenizer, recipe, task, special_ids, run,
                               {"step": st.step, **out}, merge=merge, name=name)

    events = _Evaluations(run, task, save)
    state = run.train(task_step, evaluate_fn=events.evaluate, on_epoch_end=events.on_epoch_end,
                      description=f"finetune {task.name}")
    final, final_metrics = events.final(state)
    return run.end(final, state, final_metrics, f"finetune {task.name} ({_mode(recipe)}) finished")


def build_tokenizer(recipe: Recipe):
    """(tokenizer, ids of GPT-1's task markers) of a fine-tuning run: the markers are added under
    ``task.input_style=gpt1`` (else None)."""
    from gptune.modeling.heads import add_task_tokens
    from gptune.tokenization import load_tokenizer

    tokenizer = load_tokenizer(recipe.model.tokenizer or recipe.model.name_or_path,
                               field="model.tokenizer" if recipe.model.tokenizer else "--model")
    return tokenizer, add_task_tokens(tokenizer) if recipe.task.input_style == "gpt1" else None


class _Evaluations:
    """A fine-tuning run's dev-split scores: after each epoch (``task.eval_every_epoch``), every
    ``train.eval_every`` steps and at the end; with ``task.keep_best`` the best one's weights are kept and
    become ``final/``. ``save(state, metrics, name)`` writes ``final/`` (or ``best/``)."""

    def __init__(self, run: Run, task: TaskSpec, save):
        self.run, self.task, self.save = run, task, save

    def evaluate(self, st: TrainState) -> dict:
        from gptune.evaluation.glue import evaluate_splits, flat_metrics

        run = self.run
        if not run.eval_loaders:
            return {}
        out = flat_metrics(evaluate_splits(run.accelerator, run.model, run.eval_loaders, self.task))
        run.metrics.write("eval", step=st.step, epoch=st.epoch, **out)
        say(f"  eval step {st.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items()))
        if run.recipe.task.keep_best:
            self._keep_if_best(st, out)
        return out

    def _keep_if_best(self, st: TrainState, out: dict) -> None:
        loaders, metric = self.run.eval_loaders, self.task.main_metric
        key = metric if len(loaders) == 1 else f"{next(iter(loaders))}/{metric}"
        if st.best and out[key] <= st.best["value"]:
            return
        st.best = {"step": st.step, "metric": key, "value": out[key], "metrics": out}
        self.save(st, out, name="best")
        say(f"  best {key} so far ({out[key]:.4f}): kept in {self.run.dir / 'best'}")

    def on_epoch_end(self, st: TrainState) -> None:
        if self.run.recipe.task.eval_every_epoch and st.step < st.total_steps:
            st.history = self.evaluate(st)

    def final(self, state: TrainState) -> tuple[Path, dict]:
        """The end of the run: (``final/``, its metrics): the last evaluation's, or the best one's."""
        final_metrics = self.evaluate(state)
        if self.run.recipe.task.keep_best and state.best:
            return self.run.promote_best(), {**state.best["metrics"], "best_step": state.best["step"]}
        return self.save(state, final_metrics), final_metrics


def _mode(recipe: Recipe) -> str:
    return "lora" if recipe.lora.enabled else "full"


def _lm_config(model):
    return model.lm.config  # under LoRA a PeftModel, which forwards .config to the LM


def _data_where(task: TaskSpec, data_dir: str | None) -> str:
    if not task.glue_dir:
        return ", ".join(task.splits.values())
    from gptune.data.glue import find_glue_dir

    folder = find_glue_dir(data_dir)
    return str(folder / task.glue_dir) if folder is not None else f"hub nyu-mll/glue:{task.hub_name}"


def save_final_task(accelerator, model, tokenizer, recipe: Recipe, task: TaskSpec, special_ids, run: Run,
                    metrics: dict, *, merge: bool = False, name: str = "final") -> Path:
    """``final/``: adapter or full model + tokenizer + task.json + metrics.json + recipe.yaml
    (``final/merged``: the LoRA folded in), through ``Run.save`` (written whole or not at all)."""
    from gptune.modeling.task_io import TaskModelInfo, merge_lora, save_task_model

    info = TaskModelInfo(task, recipe.task.input_style, recipe.task.max_length,
                         recipe.model.name_or_path, recipe.lora.enabled, special_ids)

    def write(tmp: Path, inner, state_dict: dict) -> None:
        save_task_model(inner, state_dict, tokenizer, info, tmp, embeddings=recipe.lora.save_embeddings)
        if merge and recipe.lora.enabled:
            merge_lora(tmp, tmp / "merged")

    return run.save(write, metrics, name)


# ----------------------------------------------------------------------------- gptune eval --task / --glue
def run_task_eval(model: str, *, task: str | None = None, data_dir: str | None = None, split: str | None = None,
                  base_model: str | None = None) -> dict:
    """``gptune eval --task``: {split: metrics} of a task model folder (RUN/final) on its eval split(s) (or
    ``split``). A plain LM is first fine-tuned on ``task`` with the shipped recipe (LoRA, as ``eval --glue``
    does), then its ``final/`` is scored."""
    from gptune.evaluation.task_model import score_task_model
    from gptune.modeling.task_io import is_task_model

    if not is_task_model(model):
        if task is None:
            raise GptuneError(f"--model {model}: not a task model; pass --task to fine-tune it on one first")
        model = str(finetune_for_eval(task, model, data_dir, lora=True).final_dir)
    return score_task_model(model, task=task, data_dir=data_dir, split=split, base_model=base_model)


def finetune_for_eval(task: str, model: str, data_dir: str | None, *, lora: bool, sets: list[str] | None = None,
                      recipe_path: str | None = None) -> RunSummary:
    """Fine-tune ``model`` on ``task`` with the shipped recipe into runs/glue/<model>/<task>-<mode>."""
    raw = read_recipe_file(recipe_path or DEFAULT_RECIPE)
    r = build_recipe(raw, {"task.name": task, "model.name_or_path": model, "task.data_dir": data_dir,
                           "lora.enabled": lora}, sets)
    out = Path("runs/glue") / Path(model).name.replace("/", "_") / f"{task}-{'lora' if lora else 'full'}"
    r = dataclasses.replace(r, out_dir=str(out))
    return run_finetune(r, overwrite=True, command=f"gptune finetune --task {task} --model {model}")


def run_glue_eval(model: str, *, data_dir: str | None = None, lora: bool = True, sets: list[str] | None = None,
                  recipe_path: str | None = None) -> dict:
    """Fine-tune + evaluate every GLUE task with local data; one table with the GLUE-style average
    (``metrics.glue_average``) and the GPT-1 paper's number beside each task."""
    from gptune.data.glue import has_local_files
    from gptune.evaluation.metrics import glue_average, paper_scores, task_score

    tasks = [t for t in GLUE_TASKS.values() if has_local_files(t, data_dir, ("train", *t.eval_splits))]
    if not tasks:
        raise GptuneError("--glue: no GLUE task has train and dev files here; pass --data-dir DIR "
                          "(glue_data layout, e.g. DIR/RTE/train.tsv) or set GPTUNE_GLUE_DIR")
    say(f"eval --glue: model {model} | tasks {', '.join(t.name for t in tasks)}")
    results = {}
    for t in tasks:
        summary = finetune_for_eval(t.name, model, data_dir, lora=lora, sets=sets, recipe_path=recipe_path)
        m = summary.metrics
        results[t.name] = ({s: {k.split('/', 1)[1]: v for k, v in m.items() if k.startswith(s + "/")}
                            for s in t.eval_splits} if len(t.eval_splits) > 1 else dict(m))
    paper = paper_scores()
    if is_main_process():
        from rich.table import Table

        table = Table(title=f"GLUE dev: {model}", title_justify="left")
        for col in ("task", "metrics (x100)", "score", "GPT-1 paper (test)"):
            table.add_column(col, justify="left" if col in ("task", "metrics (x100)") else "right")
        for name, m in results.items():
            flat = m if not any(isinstance(v, dict) for v in m.values()) else \
                {f"{s}/{k}": v for s, d in m.items() for k, v in d.items()}
            table.add_row(name, ", ".join(f"{k} {100 * v:.1f}" for k, v in flat.items()),
                          f"{100 * task_score(m):.1f}",
                          ", ".join(f"{k} {v:.1f}" for k, v in paper.get(name, {}).items()) or "-")
        avg = glue_average(results)
        table.add_row("average", f"{len(results)} of 9 tasks (mean of per-task scores)", f"{avg:.1f}", "72.8 (all 9)")
        console.print(table)
    return results
