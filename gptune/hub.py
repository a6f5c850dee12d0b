"""The Hugging Face Hub side of a ``final/`` folder: its model card (``README.md``, the Hub's format) and
the upload (``--push-to-hub`` / ``gptune push``).

The card is built from the folder alone (``recipe.yaml``, ``metrics.json``, ``task.json``,
``adapter_config.json``), so a finished run can be carded and pushed later. No torch import here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from gptune.data.books import EMBEDDED
from gptune.errors import GptuneError

CARD_FILE = "README.md"
GLUE_HUB_ID = "nyu-mll/glue"
# pretraining metrics of metrics.json -> (model-index metric type, display name)
_LM_METRICS = {
    "val_loss": ("loss", "validation loss (nats/token)"),
    "val_ppl": ("perplexity", "validation perplexity"),
    "val_ppl_sliding": ("perplexity", "sliding-window validation perplexity"),
    "val_bits_per_byte": ("bits_per_byte", "validation bits per byte"),
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ----------------------------------------------------------------------------- reaching the hub
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick request through huggingface_hub's own client before asking the hub for files (its
    downloads retry for ~50 s offline). The client applies what every download does: HF_HUB_OFFLINE
    (no request at all), HF_ENDPOINT and the HTTPS_PROXY / HTTP_PROXY / NO_PROXY variables."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # noqa: BLE001 - offline mode, DNS, proxy, TLS, timeout: all mean "not reachable now"
        return False
    return True



# ----------------------------------------------------------------------------- the model card
def _read(final: Path) -> tuple[dict, dict, dict | None, dict | None]:
    def load(name: str, parse):
        path = final / name
        return parse(path.read_text(encoding="utf-8")) if path.is_file() else None

    recipe = load("recipe.yaml", yaml.safe_load) or {}
    metrics = load("metrics.json", json.loads) or {}
    return recipe, metrics, load("task.json", json.loads), load("adapter_config.json", json.loads)


def _is_hub_id(spec: str | None) -> bool:
    return bool(spec) and not spec.startswith((".", "/", "~")) and not Path(spec).exists()


def _lm_results(recipe: dict, metrics: dict) -> tuple[list[dict], list[str]]:
    data = recipe.get("data") or {}
    path = str(data.get("path", ""))
    # a local folder (even one download_books filled from the hub) is named by its folder, not claimed as a hub set
    hub = path.split(":")[0] if _is_hub_id(path) and path != EMBEDDED else None
    found = [{"type": t, "value": metrics[k], "name": name} for k, (t, name) in _LM_METRICS.items() if k in metrics]
    results = []
    if found:
        results.append({"task": {"type": "text-generation", "name": "Causal language modeling"},
                        "dataset": {"name": hub or Path(path).name or "text", "type": hub or "text",
                                    "split": "validation"},
                        "metrics": found})
    return results, [hub] if hub else []


def _task_results(task: dict, metrics: dict) -> tuple[list[dict], list[str]]:
    glue = bool(task.get("glue_dir"))
    by_split: dict[str, list[dict]] = {}
    for key, value in metrics.items():
        split, _, name = key.rpartition("/")
        if name in task["metrics"]:
            by_split.setdefault(split or task["eval_splits"][0], []).append(
                {"type": name, "value": value, "name": f"{name} ({split})" if split else name})
    results = []
    for split, found in by_split.items():
        dataset = {"name": f"GLUE {task['name'].upper()}" if glue else task["name"],
                   "type": GLUE_HUB_ID if glue else task["name"], "split": split}
        if glue:
            dataset["config"] = task.get("hub_name") or task["name"]
        results.append({"task": {"type": "text-classification", "name": f"{task['kind']} ({task['name']})"},
                        "dataset": dataset, "metrics": found})
    return results, [GLUE_HUB_ID] if glue else []


def card_metadata(final: Path) -> dict[str, Any]:
    """The YAML front matter of ``final``'s card: library, base model, data sets, tags, measured metrics."""
    recipe, metrics, task_info, adapter = _read(final)
    name = recipe.get("name") or final.parent.name
    base = (task_info or {}).get("base_model") or (recipe.get("model") or {}).get("name_or_path")
    tags = ["gptune", "gpt", "causal-lm" if task_info is None else "gpt1-finetune"]
    if task_info is None:
        results, datasets = _lm_results(recipe, metrics)
    else:
        results, datasets = _task_results(task_info["task"], metrics)
        tags += [task_info["task"]["name"], "lora" if adapter else "full-finetune"]
    meta: dict[str, Any] = {"library_name": "peft" if adapter else "transformers"}
    if _is_hub_id(base):
        meta["base_model"] = base
    if datasets:
        meta["datasets"] = datasets
    if task_info is None:
        meta["pipeline_tag"] = "text-generation"
    meta["tags"] = tags
    meta["model-index"] = [{"name": name, "results": results}]
    return meta


def _how_trained(recipe: dict, metrics: dict, task_info: dict | None, adapter: dict | None) -> str:
    model, train = recipe.get("model") or {}, recipe.get("train") or {}
    arch = model.get("config") or {}
    steps = metrics.get("step", train.get("max_steps"))
    opt = (f"AdamW, peak lr {train.get('lr')}, {train.get('schedule')} schedule, warmup {train.get('warmup')}, "
           f"global batch {train.get('global_batch_size')}, {steps} optimizer steps")
    if task_info is None:
        start = (f"from {model['name_or_path']}" if model.get("name_or_path") else
                 f"from scratch ({model.get('arch')}: {arch.get('n_layer')} layers, width {arch.get('n_embd')}, "
                 f"{arch.get('n_head')} heads, context {arch.get('n_positions')})")
        data = recipe.get("data") or {}
        return (f"Causal-LM pretraining {start} on `{data.get('path')}` in blocks of {data.get('block_size')} "
                f"tokens; {opt}.")
    t = task_info["task"]
    task_cfg = recipe.get("task") or {}
    how = (f"LoRA (r {adapter.get('r')}, alpha {adapter.get('lora_alpha')} on {', '.join(adapter.get('target_modules') or [])}; "
           "the new special-token rows trained as PEFT trainable tokens) with the task head `clf_head`"
           if adapter else "every weight")
    return (f"Fine-tuned from `{task_info.get('base_model')}` on {t['name']} ({t['kind']}) with GPT-1's recipe: "
            f"{task_info.get('input_style')} task-aware input transformation, a linear head on the extract token, "
            f"loss = task loss + {task_cfg.get('lm_coef')} x auxiliary LM loss; trained: {how}; {opt}.")


def _how_to_load(task_info: dict | None, adapter: dict | None) -> str:
    if task_info is None:
        return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                "model = AutoModelForCausalLM.from_pretrained(\"THIS_FOLDER_OR_REPO\")\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"THIS_FOLDER_OR_REPO\")\n```\n\n"
                "lm-evaluation-harness: `lm_eval --model hf --model_args pretrained=THIS_FOLDER_OR_REPO ...`; "
                "gptune: `gptune eval --ppl --model THIS_FOLDER_OR_REPO --data FILE`.\n")
    head = ("The task head is `clf_head.safetensors` (a linear layer on the hidden state at the extract token); "
            "`gptune eval --task` / `gptune predict --model THIS_FOLDER` rebuild the whole task model.\n")
    if adapter:
        return ("A standard PEFT `CAUSAL_LM` adapter on the bare GPT; the tokenizer in this folder adds GPT-1's "
                "start/delimiter/extract tokens, so the base model's embeddings are resized before the adapter "
                "loads (`AutoPeftModelForCausalLM` does it itself).\n\n"
                "```python\nfrom peft import AutoPeftModelForCausalLM, PeftModel\n"
                "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                "model = AutoPeftModelForCausalLM.from_pretrained(\"THIS_FOLDER\")\n"
                "# or, with the base model at hand:\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"THIS_FOLDER\")\n"
                "base = AutoModelForCausalLM.from_pretrained(\"BASE\")\n"
                "base.resize_token_embeddings(len(tokenizer))\n"
                "model = PeftModel.from_pretrained(base, \"THIS_FOLDER\")\n```\n\n" + head)
    return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            "lm = AutoModelForCausalLM.from_pretrained(\"THIS_FOLDER\")   # the fine-tuned LM\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"THIS_FOLDER\")\n```\n\n" + head)


def model_card(final: Path) -> str:
    """``README.md`` for a ``final/`` folder: YAML front matter (``card_metadata``), then how the model was
    trained, its results, how to load it, and the recipe that reproduces it."""
    final = Path(final)
    recipe, metrics, task_info, adapter = _read(final)
    meta = card_metadata(final)
    rows = [f"| {r['dataset']['name']} ({r['dataset']['split']}) | {m['name']} | {m['value']:.6g} |"
            for r in meta["model-index"][0]["results"] for m in r["metrics"]]
    results = "\n".join(["| data | metric | value |", "|---|---|---|", *rows]) if rows else "No evaluation was run."
    recipe_text = (final / "recipe.yaml").read_text(encoding="utf-8") if (final / "recipe.yaml").is_file() else ""
    replay = "gptune pretrain recipe.yaml" if task_info is None else "gptune finetune --recipe recipe.yaml"
    body = f"""# {meta['model-index'][0]['name']}

Trained with gptune (GPT-1's recipe on the Hugging Face stack).

## How it was trained

{_how_trained(recipe, metrics, task_info, adapter)}

## Results

{results}

## How to load it

{_how_to_load(task_info, adapter)}
## Recipe

`{replay}` replays the run (the resolved recipe, as written next to the weights):

```yaml
{recipe_text.strip()}
```
"""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def write_card(final: Path) -> Path:
    path = Path(final) / CARD_FILE
    path.write_text(model_card(Path(final)), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- pushing
def check_push(repo_id: str, flag: str = "--push-to-hub") -> None:
    """Before any training: fail in one line when the upload could not happen (bad id, offline, no token)."""
    if not _REPO_ID.match(repo_id):
        raise GptuneError(f"{flag} {repo_id}: a hub repo id is 'owner/name'")
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import LocalTokenNotFoundError, OfflineModeIsEnabled

    offline = f"{flag} {repo_id}: HF_HUB_OFFLINE is set, nothing can be uploaded; unset it" + (
        "" if flag == "push" else ", or train now and push later with gptune push RUN REPO_ID")
    if constants.is_offline_mode():
        raise GptuneError(offline)
    try:
        HfApi().whoami()
    except OfflineModeIsEnabled:
        raise GptuneError(offline) from None
    except LocalTokenNotFoundError:
        raise GptuneError(f"{flag} {repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN") from None
    except Exception as e:  # noqa: BLE001 - any connection or auth failure reads the same to the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GptuneError(f"{flag} {repo_id}: the Hugging Face hub is unreachable or refused the token "
                          f"({type(e).__name__}: {first[:120]})") from None


def find_final(run: str | Path) -> Path:
    """A run folder's ``final/``, or the folder itself when it is one."""
    p = Path(run).expanduser()
    for folder in (p / "final", p):
        if any((folder / f).is_file() for f in ("config.json", "adapter_config.json")):
            return folder
    raise GptuneError(f"RUN {run}: no final model here (neither RUN/final nor RUN holds config.json or "
                      "adapter_config.json); pass a run folder whose training finished")


def push_final(final: Path, repo_id: str, *, private: bool = False) -> str:
    """Upload ``final/`` (its card written first when missing; ``merged/`` left out) to ``repo_id``; the URL."""
    from huggingface_hub import HfApi

    final = Path(final)
    if not (final / CARD_FILE).is_file():
        write_card(final)
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(final), ignore_patterns=["merged/**"],
                             commit_message=f"gptune: upload {final.parent.name}/{final.name}")
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")
