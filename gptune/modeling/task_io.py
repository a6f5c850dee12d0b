"""Build, save and reload task models. A ``final/`` folder rebuilds everything from itself alone:

    task.json                      TaskSpec + input style + max_length + base model + special-token ids
    tokenizer files                the tokenizer with the GPT-1 markers added
    clf_head.safetensors           the task head
    LoRA:  adapter_config.json + adapter_model.safetensors   a CAUSAL_LM PEFT adapter on the bare LM
                                   (LoRA A/B, new token rows), loadable by PeftModel / lm-eval
    full:  config.json + model.safetensors (the LM, resized)

The base model of a LoRA folder is recorded portably: a hub id as is; a local folder relative to the
folder holding task.json (so a run tree moved as a whole still finds it), and in adapter_config.json
relative to the working directory of the training run (what ``AutoPeftModelForCausalLM`` resolves).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from gptune.config import LoraConfig, ModelConfig, TaskConfig
from gptune.errors import GptuneError
from gptune.tasks import TaskSpec
from gptune.transforms import SpecialIds

TASK_FILE = "task.json"
HEAD_FILE = "clf_head.safetensors"
FORMAT = 2  # 2: the adapter sits on the bare LM; clf_head.safetensors beside it


@dataclass
class TaskModelInfo:
    """What ``task.json`` holds besides the task spec."""

    task: TaskSpec
    input_style: str
    max_length: int
    base_model: str
    lora: bool
    special_ids: SpecialIds | None

    def to_dict(self) -> dict:
        return {"format": FORMAT, "task": self.task.to_dict(), "input_style": self.input_style,
                "max_length": self.max_length, "base_model": self.base_model, "lora": self.lora,
                "special_ids": None if self.special_ids is None else vars(self.special_ids)}

    @classmethod
    def read(cls, folder: Path) -> TaskModelInfo:
        path = Path(folder) / TASK_FILE
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if d.get("lora") and d.get("format", 1) < FORMAT:
                raise GptuneError(f"{path}: a LoRA folder written by an older gptune (adapter on the task model); "
                                  "fine-tune again to get a standard PEFT adapter")
            marks = d.get("special_ids")
            if marks is not None and "end" in marks:  # task.json written before the field was named extract
                marks["extract"] = marks.pop("end")
            return cls(TaskSpec.from_dict(d["task"]), d["input_style"], int(d["max_length"]), d["base_model"],
                       bool(d["lora"]), None if marks is None else SpecialIds(**marks))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GptuneError(f"{path}: not a valid task.json ({type(e).__name__}: {e})") from None


def is_task_model(folder: str | Path) -> bool:
    return (Path(folder) / TASK_FILE).is_file()


def check_model_folder(spec: str, flag: str = "--model") -> None:
    """A local folder must hold a model (config.json) or an adapter (adapter_config.json)."""
    from gptune.hub import is_local

    p = Path(spec).expanduser()
    if not is_local(spec):
        return
    if not p.is_dir():
        raise GptuneError(f"{flag} {spec}: no such folder")
    if not any((p / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise GptuneError(f"{flag} {spec}: not a model folder (no config.json or adapter_config.json); "
                          "pass a folder written by gptune, e.g. runs/<name>/final")


def prepare_base(spec: str, tokenizer, *, flag: str, trust_remote_code: bool = False, dropout: float | None = None,
                 new_token_init: str = "mean"):
    """The base LM with embeddings grown for the GPT-1 markers, new rows initialised deterministically."""
    from transformers.utils import logging as hf_logging

    from gptune.modeling.gpt import fit_tokenizer, load_pretrained_lm, set_dropout
    from gptune.modeling.heads import init_new_rows

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model is noise in a CLI

    lm = load_pretrained_lm(spec, trust_remote_code=trust_remote_code, field=flag)
    if dropout is not None:
        set_dropout(lm, dropout)
    n_old = lm.get_input_embeddings().weight.shape[0]
    fit_tokenizer(lm, tokenizer, source=spec)
    init_new_rows(lm, n_old, new_token_init)
    return lm


def build_task_model(mcfg: ModelConfig, tcfg: TaskConfig, lcfg: LoraConfig, task: TaskSpec, tokenizer,
                     special_ids: SpecialIds | None):
    """Base LM + task head (+ LoRA) for training, from the ``model``, ``task`` and ``lora`` sections."""
    from gptune.modeling.gpt import enable_gradient_checkpointing, reinit_blocks_above
    from gptune.modeling.heads import GPT1TaskModel
    from gptune.modeling.lora import apply_lora

    lm = prepare_base(mcfg.name_or_path, tokenizer, flag="--model", trust_remote_code=mcfg.trust_remote_code,
                      dropout=mcfg.config.dropout, new_token_init=tcfg.new_token_init)
    if mcfg.transfer_layers is not None:
        reinit_blocks_above(lm, mcfg.transfer_layers)
    if mcfg.gradient_checkpointing:
        enable_gradient_checkpointing(lm)
    if lcfg.enabled:
        new_ids = [] if special_ids is None else [special_ids.start, special_ids.delim, special_ids.extract]
        lm = apply_lora(lm, lcfg, new_ids)
    return GPT1TaskModel(lm, task, lm_coef=tcfg.lm_coef, clf_dropout=tcfg.clf_dropout, lm_loss_mean=tcfg.lm_loss_mean)


def base_reference(spec: str, folder: Path) -> str:
    """How task.json in ``folder`` refers to the base model: the hub id, or a local path relative to ``folder``."""
    import os

    from gptune.hub import is_local

    if not is_local(spec):
        return spec
    rel = Path(os.path.relpath(Path(spec).expanduser().resolve(), Path(folder).resolve())).as_posix()
    return rel if rel.startswith("..") else f"./{rel}"  # a leading dot: never mistaken for a hub id


def resolve_base(info: TaskModelInfo, folder: Path, override: str | None = None) -> str:
    """The base model of a LoRA task folder: ``--base-model`` when given, else the hub id or the local path
    recorded in task.json (relative to ``folder``), checked to exist."""
    if override is not None:
        check_model_folder(override, "--base-model")
        return override
    from gptune.hub import is_hub_id

    spec = info.base_model
    if is_hub_id(spec, base=folder):  # base_reference writes a local base as ./x or ../x
        return spec
    path = Path(spec).expanduser() if spec.startswith("~") or Path(spec).is_absolute() else Path(folder) / spec
    if not (path / "config.json").is_file():
        raise GptuneError(f"{Path(folder) / TASK_FILE}: base model {spec} not found (looked in {path}); "
                          "pass --base-model DIR (the model this adapter was trained on)")
    return str(path)


def save_task_model(model, state_dict: dict | None, tokenizer, info: TaskModelInfo, out: Path, *,
                    embeddings: bool = True) -> None:
    """Write a ``final/``-style folder (main process only). ``model``: the unwrapped GPT1TaskModel (its ``lm``
    a PeftModel under LoRA); ``state_dict``: the full state dict (from ``accelerator.get_state_dict``) or None.
    ``info.base_model`` is the base as the run was given it (hub id or local path); ``embeddings``: see
    ``lora.save_embeddings``."""
    import os

    from safetensors.torch import save_file

    from gptune.hub import is_local
    from gptune.modeling.lora import save_adapter

    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    if info.lora:
        base = info.base_model
        if is_local(base):  # what AutoPeftModelForCausalLM opens, relative to the working directory
            base = Path(os.path.relpath(Path(base).expanduser().resolve())).as_posix()
        model.lm.peft_config["default"].base_model_name_or_path = base
        # under FSDP/ZeRO-3 the model's own tensors are shards: the adapter comes from the consolidated dict
        lm_sd = None if state_dict is None else {k.removeprefix("lm."): v for k, v in sd.items() if k.startswith("lm.")}
        save_adapter(model.lm, out, state_dict=lm_sd, embeddings=embeddings)
    else:
        from gptune.modeling.gpt import without_tied_copies

        lm_sd = without_tied_copies(model.lm, {k.removeprefix("lm."): v for k, v in sd.items() if k.startswith("lm.")})
        model.lm.save_pretrained(str(out), state_dict=lm_sd, safe_serialization=True)
    head = {k.removeprefix("clf_head."): v.detach().contiguous().cpu() for k, v in sd.items()
            if k.startswith("clf_head.")}
    save_file(head, str(out / HEAD_FILE))
    tokenizer.save_pretrained(str(out))
    record = dataclasses.replace(info, base_model=base_reference(info.base_model, out))
    (out / TASK_FILE).write_text(json.dumps(record.to_dict(), indent=2), encoding="utf-8")


def load_task_model(folder: str | Path, *, flag: str = "--model", base_model: str | None = None):
    """(model in eval mode, tokenizer, TaskModelInfo) from a folder written by ``save_task_model``;
    ``base_model`` overrides the base recorded for a LoRA folder."""
    from safetensors.torch import load_file

    from gptune.modeling.heads import GPT1TaskModel
    from gptune.tokenization import load_tokenizer

    folder = Path(folder).expanduser()
    check_model_folder(str(folder), flag)
    if not is_task_model(folder):
        raise GptuneError(f"{flag} {folder}: a language model, not a task model (no {TASK_FILE}); "
                          "fine-tune it first: gptune finetune --task T --model " + str(folder))
    info = TaskModelInfo.read(folder)
    head = folder / HEAD_FILE
    if not head.is_file():
        raise GptuneError(f"{flag} {folder}: missing {HEAD_FILE} (the task head weights)")
    tokenizer = load_tokenizer(str(folder), field=flag)
    if info.lora:
        from peft import PeftModel

        base = prepare_base(resolve_base(info, folder, base_model), tokenizer, flag=f"{folder / TASK_FILE} base_model")
        lm = PeftModel.from_pretrained(base, str(folder))
    else:
        from gptune.modeling.gpt import load_pretrained_lm

        lm = load_pretrained_lm(str(folder), field=flag)
    model = GPT1TaskModel(lm, info.task)
    model.clf_head.load_state_dict(load_file(str(head)))
    model.eval()
    return model, tokenizer, info


def merge_lora(folder: Path, out: Path) -> Path:
    """Fold the adapter saved in ``folder`` (and the new token rows) into the base weights; write a full
    task-model folder. Rebuilt from the saved folder, never copied from a (possibly sharded) live model."""
    from gptune.modeling.heads import GPT1TaskModel

    model, tokenizer, info = load_task_model(folder)
    merged = GPT1TaskModel(model.lm.merge_and_unload(), info.task)
    merged.clf_head.load_state_dict(model.clf_head.state_dict())
    full = dataclasses.replace(info, lora=False)
    save_task_model(merged, None, tokenizer, full, out)
    return out
