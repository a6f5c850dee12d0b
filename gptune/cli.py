"""The ``gptune`` command. Each command: flags -> recipe overrides -> one runner -> summary.

Heavy imports (torch, transformers) happen inside command bodies so ``gptune --help`` stays fast.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from gptune.cli_recipes import SetOpt, recipes_app
from gptune.errors import GptuneError

app = typer.Typer(
    name="gptune",
    help="GPT-1's recipe on the Hugging Face stack: pretrain on books, fine-tune with task-aware inputs "
    "and an auxiliary LM loss, evaluate.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ResumeOpt = Annotated[str | None, typer.Option(help="Continue a run: 'auto' (latest checkpoint of the run "
                                                     "folder) or a checkpoint / run folder path.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing run in the output folder.")]
OutDirOpt = Annotated[str | None, typer.Option("--out-dir", help="Run folder (default runs/<recipe name>).")]
PushOpt = Annotated[str | None, typer.Option("--push-to-hub", help="Upload final/ with its model card to this "
                                                                 "hub repo (owner/name) when training ends; checked first.")]
ProcsOpt = Annotated[int | None, typer.Option("--num-processes", help="Start N processes through "
                                                                       "accelerate launch (same as accelerate launch -m gptune ...); "
                                                                       "with --num-machines: all machines together.")]
MachinesOpt = Annotated[int, typer.Option("--num-machines", help="Machines taking part (run the same command on "
                                                                 "each, with its --machine-rank).")]
MachineRankOpt = Annotated[int, typer.Option("--machine-rank", help="This machine's rank, 0 .. num-machines - 1 "
                                                                    "(0 hosts the main process).")]
MainIpOpt = Annotated[str | None, typer.Option("--main-process-ip", help="Address of machine 0, reachable from "
                                                                         "every machine (needed with --num-machines > 1).")]
MainPortOpt = Annotated[int | None, typer.Option("--main-process-port", help="Port of the main process (default: a "
                                                                             "free one; 29500 across machines).")]
ConfigFileOpt = Annotated[str | None, typer.Option("--config-file", help="With --num-processes: an Accelerate config "
                                                                      "(a file, or a shipped name: ddp, fsdp, deepspeed_zero2, "
                                                                      "deepspeed_zero3, cpu2; `gptune recipes list`).")]

app.add_typer(recipes_app, name="recipes")
LAUNCH_FLAGS = ("--num-processes", "--num-machines", "--machine-rank", "--main-process-ip", "--main-process-port",
                "--config-file")


LAUNCH_OPTIONS = {"num_processes": (ProcsOpt, None), "num_machines": (MachinesOpt, 1),
                  "machine_rank": (MachineRankOpt, 0), "main_process_ip": (MainIpOpt, None),
                  "main_process_port": (MainPortOpt, None), "config_file": (ConfigFileOpt, None)}
"""The options of every command that can start several processes, declared once (``launchable``)."""


def launchable(command):
    """A command that also takes the launch options (``LAUNCH_OPTIONS``) and, when they ask for several
    processes, re-runs itself under ``accelerate launch`` before its body runs."""
    import functools
    import inspect

    sig = inspect.signature(command, eval_str=True)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)
             for name, (ann, default) in LAUNCH_OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(**kwargs):
        _relaunch(**{name: kwargs.pop(name) for name in LAUNCH_OPTIONS})
        return command(**kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])
    wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
    return wrapper


def _command_line() -> str:
    return "gptune " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _relaunch(num_processes: int | None, num_machines: int = 1, machine_rank: int = 0,
              main_process_ip: str | None = None, main_process_port: int | None = None,
              config_file: str | None = None) -> bool:
    """With --num-processes N (N > 1, or several machines) and not yet launched: re-run this command under
    accelerate launch, without the launch flags."""
    if os.environ.get("ACCELERATE_LAUNCHED_GPTUNE"):
        return False
    if num_processes is None:
        if num_machines > 1 or config_file:
            flag = f"--num-machines {num_machines}" if num_machines > 1 else f"--config-file {config_file}"
            raise GptuneError(f"{flag}: also pass --num-processes (all machines together)")
        return False
    if num_processes < 1:
        raise GptuneError(f"--num-processes must be >= 1, got {num_processes}")
    if num_processes == 1 and num_machines == 1:
        return False
    from gptune.distributed import Machines, launch

    machines = Machines(num_machines, machine_rank, main_process_ip, main_process_port, config_file)
    raise typer.Exit(launch(num_processes, _strip_launch_flags(sys.argv[1:]), machines))


def _strip_launch_flags(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in LAUNCH_FLAGS:
            skip = True
            continue
        if a.split("=", 1)[0] in LAUNCH_FLAGS:
            continue
        out.append(a)
    return out


@app.command()
@launchable
def pretrain(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, run folder, or a shipped recipe's name (books, gpt1: "
                                                "`gptune recipes list`; recipes/books.yaml names the shipped one too).")],
    set_: SetOpt = None,
    resume: ResumeOpt = None,
    out_dir: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
    max_steps: Annotated[int | None, typer.Option(help="Shortcut for --set train.max_steps=N.")] = None,
    push_to_hub: PushOpt = None,
) -> None:
    """Causal-LM pretraining of a GPT on packed text (random init or a pretrained checkpoint)."""
    from gptune.recipes import load_recipe

    r = load_recipe(recipe, {"out_dir": out_dir, "train.max_steps": max_steps}, set_)
    _check_push(push_to_hub)
    from gptune.runners.pretrain import run_pretrain

    summary = run_pretrain(r, resume=resume, overwrite=overwrite, command=f"gptune pretrain {r.run_dir}/recipe.yaml")
    _push(summary, push_to_hub)


@app.command()
def prepare(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (or a shipped recipe's name) whose data (and tokenizer) "
                                                "to prepare.")],
    set_: SetOpt = None,
    out_dir: OutDirOpt = None,
) -> None:
    """Tokenize and pack the recipe's corpus into token shards on disk, once (pretrain then memory-maps them)."""
    from gptune.recipes import load_recipe

    r = load_recipe(recipe, {"out_dir": out_dir}, set_)
    from gptune.runners.prepare import run_prepare

    run_prepare(r)


@app.command()
def generate(
    model: Annotated[str, typer.Option(help="Model folder (e.g. runs/books/final) or hub id.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to sample.")] = 60,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0: all).")] = 50,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (1: off).")] = 0.95,
    num_samples: Annotated[int, typer.Option(help="Independent samples to print.")] = 1,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Sample text from a model folder."""
    from gptune.runners.generate import run_generate

    for text in run_generate(model, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p, num_samples=num_samples, seed=seed):
        typer.echo(text)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to overlay (each with metrics.jsonl).")],
    out: Annotated[Path | None, typer.Option(help="PNG to write (default: FIRST_RUN/curves.png).")] = None,
    x: Annotated[str, typer.Option(help="x axis: step or tokens.")] = "step",
) -> None:
    """Plot loss, LM/task loss, learning rate and validation metrics of one or more runs."""
    from gptune.plot import plot_runs

    typer.echo(str(plot_runs(runs, out, x=x)))


TaskOpt = Annotated[str | None, typer.Option("--task", help="GLUE task (cola sst2 mrpc stsb qqp mnli qnli rte wnli) "
                                                                 "or a custom task's name.")]
BaseModelOpt = Annotated[str | None, typer.Option("--base-model", help="A LoRA task model's base model folder "
                                                                     "(default: the one recorded in its task.json).")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="GLUE data in the glue_data layout (DIR/SST-2/"
                                                                   "train.tsv); else $GPTUNE_GLUE_DIR, ./glue_data, the hub.")]


@app.command()
@launchable
def finetune(
    task: TaskOpt = None,
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="Train LoRA adapters (+ head, new token rows) "
                                                                    "or every weight. Default: the recipe's lora.enabled.")] = None,
    model: Annotated[str | None, typer.Option(help="Pretrained model folder or hub id (default: newest runs/*/final "
                                                   "from gptune pretrain, else openai-community/openai-gpt).")] = None,
    recipe: Annotated[Path | None, typer.Option(help="Recipe YAML (default: the shipped finetune recipe; `gptune recipes cp finetune`).")] = None,
    data_dir: DataDirOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = None,
    out_dir: Annotated[str | None, typer.Option("--out-dir", help="Run folder (default runs/finetune/<task>-<lora|full>).")] = None,
    overwrite: OverwriteOpt = False,
    merge: Annotated[bool, typer.Option("--merge", help="Also write final/merged: the LoRA folded into a full model.")] = False,
    seed: Annotated[int | None, typer.Option(help="Seed (head init, data order, dropout).")] = None,
    push_to_hub: PushOpt = None,
) -> None:
    """Fine-tune a GPT on a task with GPT-1's input transformations and auxiliary LM loss (full or LoRA)."""
    from gptune.runners.finetune import finetune_recipe, run_finetune

    flags = {"task.name": task, "lora.enabled": lora, "model.name_or_path": model, "task.data_dir": data_dir,
             "out_dir": out_dir, "seed": seed, "lora.merge": True if merge else None}
    r = finetune_recipe(recipe, flags, set_)
    _check_push(push_to_hub)
    summary = run_finetune(r, resume=resume, overwrite=overwrite, command=_command_line())
    _push(summary, push_to_hub)


def _check_push(repo_id: str | None) -> None:
    if repo_id is not None:
        from gptune.hub import check_push

        check_push(repo_id)


def _push(summary, repo_id: str | None) -> None:
    """After training: upload the run's final/ (main process) when --push-to-hub was given."""
    from gptune.console import is_main_process, say

    if repo_id is not None and is_main_process():
        from gptune.hub import push_final

        say(f"pushed {summary.final_dir} to {push_final(summary.final_dir, repo_id)}")


@app.command()
def push(
    run: Annotated[Path, typer.Argument(help="A finished run folder (or its final/).")],
    repo_id: Annotated[str, typer.Argument(help="Hub repo id, owner/name (created when missing).")],
    private: Annotated[bool, typer.Option(help="Create the repo as private.")] = False,
) -> None:
    """Upload a run's final/ with its model card (README.md) to the Hugging Face Hub."""
    from gptune.hub import check_push, find_final

    final = find_final(run)
    check_push(repo_id, flag="push")
    from gptune.console import say
    from gptune.hub import push_final

    say(f"pushed {final} to {push_final(final, repo_id, private=private)}")


@app.command("eval")
@launchable
def eval_(
    task: TaskOpt = None,
    glue: Annotated[bool, typer.Option("--glue", help="Fine-tune + evaluate every GLUE task with local data; one table.")] = False,
    model: Annotated[str | None, typer.Option(help="Task model folder (RUN/final) for --task; a pretrained model "
                                                   "for --glue / --ppl (default: newest runs/*/final, else the hub).")] = None,
    data_dir: DataDirOpt = None,
    split: Annotated[str | None, typer.Option(help="Split to score (default: the task's dev split(s)).")] = None,
    lora: Annotated[bool, typer.Option("--lora/--full", help="--glue: how each task is fine-tuned.")] = True,
    set_: SetOpt = None,
    ppl: Annotated[bool, typer.Option("--ppl", help="Perplexity of a causal LM on text (sliding window).")] = False,
    data: Annotated[str | None, typer.Option(help="--ppl: text file, folder or hub dataset id.")] = None,
    max_length: Annotated[int | None, typer.Option(help="--ppl: window length (default: the model's context).")] = None,
    stride: Annotated[int | None, typer.Option(help="--ppl: window stride.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="--ppl: windows per forward pass.")] = None,
    json_path: Annotated[str | None, typer.Option("--json", help="--ppl: also write the result to this JSON file.")] = None,
    prepend_eos: Annotated[bool, typer.Option("--prepend-eos", help="--ppl: lm-eval's convention: prepend EOS "
                                                                    "(BOS if any) so the first token is scored; windows "
                                                                    "predict max_length tokens after one of context.")] = False,
    base_model: BaseModelOpt = None,
    precision: Annotated[str, typer.Option(help="--ppl: fp32, or bf16 autocast (within 0.1% of fp32's NLL; slow on "
                                                "CPUs without bf16 units).")] = "fp32",
) -> None:
    """Evaluate: a task model on its dev split(s) (--task), all GLUE tasks (--glue), or perplexity (--ppl)."""
    chosen = [n for n, on in (("--ppl", ppl), ("--glue", glue), ("--task", task is not None)) if on]
    if ppl and glue or (glue and task is not None):
        raise GptuneError(f"eval: choose one of --task, --glue, --ppl (got {' and '.join(chosen)})")
    if ppl:
        from gptune.runners.perplexity import run_ppl_eval

        run_ppl_eval(model=model, data=data, max_length=max_length, stride=stride, batch_size=batch_size,
                     json_path=json_path, prepend_eos=prepend_eos, base_model=base_model, precision=precision)
        return
    if glue:
        from gptune.runners.finetune import run_glue_eval

        run_glue_eval(_model_or_default(model), data_dir=data_dir, lora=lora, sets=set_)
        return
    if model is None:
        raise GptuneError("eval --task: pass --model RUN/final (a folder written by gptune finetune)")
    from gptune.runners.finetune import run_task_eval

    run_task_eval(model, task=task, data_dir=data_dir, split=split, base_model=base_model)


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="Task model folder written by gptune finetune (RUN/final).")],
    task: TaskOpt = None,
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="Split to label (test, validation, ...).")] = "test",
    out: Annotated[str | None, typer.Option(help="Output TSV (default MODEL/predictions-<task>-<split>.tsv).")] = None,
    base_model: BaseModelOpt = None,
) -> None:
    """Label a split with a task model: a GLUE-submission TSV (index, prediction)."""
    from gptune.runners.evaluate import run_predict

    run_predict(model, task=task, data_dir=data_dir, split=split, out=out, base_model=base_model)


def _model_or_default(model: str | None) -> str:
    if model is not None:
        return model
    from gptune.runners.finetune import default_model

    return default_model()


def main(argv: list[str] | None = None) -> None:
    """Entry point: one red line and exit code 2 for a user error (--debug shows the traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("GPTUNE_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    sys.argv = [sys.argv[0]] + args
    try:
        app(args=args, prog_name="gptune", standalone_mode=True)
    except GptuneError as e:
        if debug:
            raise
        from gptune.console import err_console, is_main_process

        if is_main_process():
            for line in e.problems or [str(e)]:
                err_console.print(f"[bold red]error:[/] {line}", soft_wrap=True)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - the last line of defence: known failures get a plain line
        from gptune.errors import Interrupted

        if isinstance(e, Interrupted):
            from gptune.console import err_console, is_main_process

            if is_main_process():
                where = f" (checkpoint {e.checkpoint})" if e.checkpoint else ""
                err_console.print(f"[yellow]{e}{where}; resume with the same command plus --resume auto[/]",
                                  soft_wrap=True)
            sys.exit(e.exit_code)
        if debug:
            raise
        from gptune.distributed import is_timeout

        if is_timeout(e):  # said by every process that waited: the main one may be the one that hung
            from gptune.console import err_console

            rank = os.environ.get("RANK", "0")
            err_console.print(f"[bold red]error:[/] process {rank}: the other processes did not answer within "
                              "train.dist_timeout seconds (one of them hung or died; see its output)", soft_wrap=True)
            sys.exit(2)
        if _is_oom(e):
            from gptune.console import err_console

            err_console.print("[bold red]error:[/] out of memory: lower train.micro_batch_size (keeping "
                              "train.global_batch_size, accumulation grows), data.block_size, or set "
                              "model.gradient_checkpointing=true", soft_wrap=True)
            sys.exit(2)
        raise


def _is_oom(e: BaseException) -> bool:
    name = type(e).__name__
    return isinstance(e, MemoryError) or name == "OutOfMemoryError" or "out of memory" in str(e).lower()


if __name__ == "__main__":
    main()
