"""``gptune eval --ppl``: sliding-window perplexity of a model folder, a run, or a hub model."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gptune.console import say, summary_table, warn
from gptune.errors import GptuneError
from gptune.training.checkpoint import newest_final


def load_lm_for_ppl(spec: str, base_model: str | None = None):
    """(causal LM in eval mode, tokenizer, recipe dict or None) for a model folder, a gptune run's
    ``final/`` (a fine-tuned task model: its LM, with any LoRA merged in), a PEFT adapter, or a hub id."""
    from gptune.hub import is_local
    from gptune.modeling.gpt import load_pretrained_lm
    from gptune.modeling.task_io import is_task_model, load_task_model
    from gptune.tokenization import open_tokenizer

    path = Path(spec).expanduser()
    recipe = None
    if is_local(spec) and (path / "recipe.yaml").is_file():
        recipe = yaml.safe_load((path / "recipe.yaml").read_text()) or {}
    if is_local(spec) and is_task_model(path):
        model, tokenizer, info = load_task_model(path, base_model=base_model)
        lm = model.lm.merge_and_unload() if info.lora else model.lm
        return lm.eval(), tokenizer, recipe
    if is_local(spec) and (path / "adapter_config.json").is_file():
        try:
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(str(path)).merge_and_unload()
        except (OSError, ValueError) as e:
            raise GptuneError(f"--model {spec}: cannot load the adapter or its base model ({e})") from None
    else:
        model = load_pretrained_lm(spec, field="--model")
    tokenizer = open_tokenizer(str(path) if is_local(spec) else spec, field="--model")
    return model.eval(), tokenizer, recipe


def run_validation_text(recipe: dict, tokenizer) -> tuple[str, str]:
    """(text, description) of a run's own validation data, read from its recipe.yaml.

    Pretraining: ``data.val_path`` when set, else the held-out validation text (``validation_text``).
    Fine-tuning: the task's dev split texts, one document per example.
    """
    task = (recipe.get("task") or {}).get("name")
    if task:
        from gptune.data.glue import load_task_split
        from gptune.recipes import build_recipe
        from gptune.tasks import build_task_spec

        r = build_recipe(recipe)
        spec = build_task_spec(r.task)
        split = spec.eval_splits[0]
        rows = load_task_split(spec, split, r.task.data_dir).rows
        texts = [" ".join(spec.texts(row)) for row in rows]
        return "\n\n".join(texts), f"{spec.name} {split} ({len(rows)} examples)"
    data = recipe.get("data") or {}
    if data.get("val_path"):
        from gptune.data.eval_text import load_eval_text

        return load_eval_text(data["val_path"]), str(data["val_path"])
    from gptune.data.prepare import prepare_lm_data
    from gptune.data.prepared import validation_text
    from gptune.recipes import build_recipe

    # a run from before data.val_split held out random blocks: read its recipe as it was trained
    r = build_recipe({**recipe, "data": {"val_split": "blocks", **data}})
    lm = prepare_lm_data(r.data, tokenizer, seed=r.seed, progress=False)
    return validation_text(lm, tokenizer), f"validation split of {r.data.path} ({r.data.val_split})"


def prefix_token_id(tokenizer) -> int:
    """The token lm-eval prepends for rolling log-likelihoods: BOS, else EOS."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    raise GptuneError("--prepend-eos: the tokenizer has neither a BOS nor an EOS token to prepend")


def run_ppl_eval(*, model: str | None = None, data: str | None = None, max_length: int | None = None,
                 stride: int | None = None, batch_size: int | None = None, json_path: str | None = None,
                 prepend_eos: bool = False, base_model: str | None = None, precision: str = "fp32") -> dict:
    """``precision``: fp32, or bf16 autocast (within 0.1% of fp32's NLL on a tiny model, measured 2.6e-5:
    tests/test_ppl_cli.py; the bf16-native CPUs and GPUs are where it is faster)."""
    from gptune.data.eval_text import encode_text
    from gptune.evaluation.perplexity import perplexity_report, resolve_windowing, sliding_window_nll
    from gptune.modeling.gpt import set_threads

    set_threads()
    model = _newest_model() if model is None else model
    lm, tokenizer, recipe = load_lm_for_ppl(model, base_model)
    text, where = text_to_score(model, data, recipe, tokenizer)
    if prepend_eos and stride is not None:
        raise GptuneError("--stride: not used with --prepend-eos (lm-eval's windows: each predicts max_length "
                          "tokens after one token of context); drop one of the two")
    prefix = prefix_token_id(tokenizer) if prepend_eos else None
    max_length, stride = resolve_windowing(lm.config, max_length, max_length if prepend_eos else stride)
    say(f"eval --ppl: model {model} | data {where} | max_length {max_length}, "
        + ("lm-eval rolling windows (EOS prepended)" if prepend_eos else f"stride {stride}") + f" | {precision}")
    accelerator = precision_accelerator(precision)
    lm = lm.to(accelerator.device)
    ids = encode_text(tokenizer, text)
    with accelerator.autocast():
        result = sliding_window_nll(lm, ids, max_length=max_length, stride=stride, batch_size=batch_size or 8,
                                    accelerator=accelerator if accelerator.num_processes > 1 else None,
                                    prefix_token=prefix)
    report = perplexity_report(result, text, tokenizer)
    report.update(model=model, data=where, precision=precision)
    summary_table("perplexity", {k: report[k] for k in (
        "perplexity", "nll", "bits_per_byte", "word_perplexity", "tokens", "max_length", "stride", "windows",
        "tokens_per_second")})
    if json_path and accelerator.is_main_process:
        Path(json_path).write_text(json.dumps(report, indent=2), encoding="utf-8")
    from gptune.training.run import finish

    finish(accelerator)
    return report


def _newest_model() -> str:
    """``--model`` when absent: the newest runs/*/final here."""
    found = newest_final()
    if found is None:
        raise GptuneError("eval --ppl: no runs/*/final in this folder; pass --model DIR (or a hub id)")
    return str(found)


def text_to_score(model: str, data: str | None, recipe: dict | None, tokenizer) -> tuple[str, str]:
    """(text, description): ``--data``, else the validation data of the run ``model`` comes from."""
    from gptune.data.eval_text import load_eval_text

    if data is not None:
        return load_eval_text(data), data
    if recipe is None:
        raise GptuneError(f"eval --ppl: {model} is not a gptune run folder, so it has no validation split; "
                          "pass --data FILE")
    return run_validation_text(recipe, tokenizer)


def precision_accelerator(precision: str):
    """The evaluation's Accelerator for ``--precision`` (fp32 or bf16 autocast), warning where bf16 is slow."""
    from gptune.hardware import precision_warning
    from gptune.training.loop import inference_accelerator

    mixed = {"fp32": "no", "bf16": "bf16"}.get(precision)
    if mixed is None:
        raise GptuneError(f"--precision {precision}: choose fp32 or bf16")
    if (warning := precision_warning(mixed, "--precision bf16", "use fp32")) is not None:
        warn(warning)
    return inference_accelerator(mixed)
