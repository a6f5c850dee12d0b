"""Every GPT family of ``gptune.modeling.families`` (GPT-2, GPT-1, GPT-Neo, GPT-J, GPT-NeoX, OPT, BLOOM,
Llama, Qwen2) on a tiny random model: random init from the recipe, the one chunked loss kernel equal to the
model's own loss and gradients (untied heads, GPT-J's head bias, OPT's project_out, BLOOM's ALiBi, rotary),
perplexity equal to the model's own loss, the GPT-1 task model on every task kind, LoRA's exact trainable
set, gradient checkpointing. The commands end to end: test_families_commands.py."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, guide_loop
from gptune.errors import GptuneError
from gptune.recipes import build_recipe


def load(folder):
    from transformers import AutoTokenizer

    from gptune.modeling.gpt import load_pretrained_lm

    return load_pretrained_lm(folder).eval(), AutoTokenizer.from_pretrained(folder)


def sample_ids(tokenizer, n=2, t=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, len(tokenizer), (n, t), generator=g)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a, b, atol=1e-5):
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=atol, msg=name)


# ----------------------------------------------------------------------------- random init and presets
@pytest.mark.parametrize("family", FAMILIES)
def test_random_init_maps_the_recipe_shape_and_every_dropout(family, family_model_dir):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(family_model_dir(family))
    assert cfg.model_type == family
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (2, 32, 4)
    assert getattr(cfg, "max_position_embeddings", None) == 64
    rates = {k: v for k, v in cfg.to_dict().items() if k.endswith(("dropout", "pdrop"))}
    assert rates and set(rates.values()) == {0.0}, rates
    assert cfg.pad_token_id is None  # no pad id: OPT would freeze that embedding row
    derived = {"gpt_neox": {"intermediate_size": 128}, "opt": {"ffn_dim": 128, "word_embed_proj_dim": 16},
               "llama": {"intermediate_size": 88, "num_key_value_heads": 2}, "gptj": {"rotary_dim": 8},
               "gpt_neo": {"attention_layers": ["global", "local"]}}
    assert {k: getattr(cfg, k) for k in derived.get(family, {})} == derived.get(family, {})


# published parameter counts (model cards / config sums) with each model's own vocabulary
PRESET_SIZES = {"gpt2-small": (50257, 124_439_808), "gpt2-medium": (50257, 354_823_168),
                "gpt2-large": (50257, 774_030_080), "gpt2-xl": (50257, 1_557_611_200),
                "gpt1": (40478, 116_534_784), "pythia-70m": (50304, 70_426_624), "pythia-160m": (50304, 162_322_944),
                "pythia-410m": (50304, 405_334_016), "opt-125m": (50272, 125_239_296),
                "opt-350m": (50272, 331_196_416), "bloom-560m": (250880, 559_214_592),
                "gpt-neo-125m": (50257, 125_198_592), "gpt-j-6b": (50400, 6_050_882_784),
                "tinyllama-1.1b": (32000, 1_100_048_384), "llama2-7b": (32000, 6_738_415_616),
                "qwen2-0.5b": (151936, 494_032_768)}


@pytest.mark.parametrize("preset", sorted(PRESET_SIZES))
def test_presets_have_the_published_sizes(preset):
    from transformers import AutoModelForCausalLM

    from gptune.modeling.families import PRESETS
    from gptune.modeling.gpt import random_config

    assert set(PRESET_SIZES) == set(PRESETS)
    vocab, expected = PRESET_SIZES[preset]
    recipe = build_recipe({"model": {"arch": preset, "tokenizer": "t"}, "train": {"max_steps": 1}})
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(random_config(recipe.model, vocab, bos_id=0, eos_id=0))
    assert sum(p.numel() for p in lm.parameters()) == expected


def test_docs_list_every_family_and_preset():
    from pathlib import Path

    from gptune.modeling.families import FAMILIES as TABLE
    from gptune.modeling.families import PRESETS

    doc = (Path(__file__).parents[1] / "docs" / "models.md").read_text()
    assert set(TABLE) == set(FAMILIES)  # the tests run on every family of the table
    missing = [n for n in [*TABLE, *PRESETS] if f"`{n}`" not in doc]
    assert not missing, f"docs/models.md lacks {missing}"


def test_explicit_shape_keys_win_over_the_preset_and_errors_name_the_field(tmp_path):
    from gptune.modeling.gpt import random_config

    r = build_recipe({"model": {"arch": "gpt2-medium", "tokenizer": "t", "config": {"n_layer": 3}},
                      "train": {"max_steps": 1}})
    assert (r.model.config.n_layer, r.model.config.n_embd, r.model.config.n_head) == (3, 1024, 16)
    r = build_recipe({"model": {"arch": "tinyllama-1.1b", "tokenizer": "t", "config": {
        "extra": {"num_key_value_heads": 8}}}, "train": {"max_steps": 1}})
    assert random_config(r.model, 100, bos_id=0, eos_id=0).num_key_value_heads == 8  # extra wins over the preset
    with pytest.raises(GptuneError, match="model.arch: unknown architecture 'lama'; did you mean llama"):
        build_recipe({"model": {"arch": "lama", "tokenizer": "t"}, "train": {"max_steps": 1}})
    with pytest.raises(GptuneError, match="model.config.n_embd: must be divisible by model.config.n_head=5"):
        build_recipe({"model": {"arch": "llama", "tokenizer": "t", "config": {"n_head": 5, "n_embd": 32}},
                      "train": {"max_steps": 1}})
    bad = build_recipe({"model": {"arch": "gpt_neo", "tokenizer": "t", "config": {"n_layer": 2, "extra": {
        "attention_types": [[["global"], 3]]}}}, "train": {"max_steps": 1}})
    with pytest.raises(GptuneError, match="^model.config.extra: gpt_neo rejects this config"):
        random_config(bad.model, 100, bos_id=0, eos_id=0)
    # a config.json to start from: its family and its keys, the recipe's set keys on top
    from transformers import GPTNeoXConfig

    GPTNeoXConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                  use_parallel_residual=False).save_pretrained(tmp_path)
    r = build_recipe({"model": {"config_file": str(tmp_path / "config.json"), "tokenizer": "t",
                                "config": {"n_layer": 2, "dropout": 0.0}}, "train": {"max_steps": 1}})
    cfg = random_config(r.model, 100, bos_id=0, eos_id=0)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.use_parallel_residual,
            cfg.hidden_dropout) == ("gpt_neox", 2, 64, 96, False, 0.0)
    r = build_recipe({"model": {"config_file": str(tmp_path / "nope.json"), "tokenizer": "t"},
                      "train": {"max_steps": 1}})
    with pytest.raises(GptuneError, match="^model.config_file: cannot read"):
        random_config(r.model, 100, bos_id=0, eos_id=0)


def test_a_config_file_inits_a_family_outside_the_table_whose_loss_comes_from_its_logits(tmp_path):
    from transformers import AutoModelForCausalLM, MistralConfig

    from gptune.modeling.gpt import LMWithLoss, random_config

    MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, sliding_window=8).save_pretrained(tmp_path)
    r = build_recipe({"model": {"config_file": str(tmp_path), "tokenizer": "t", "config": {
        "dropout": 0.0, "n_positions": 64}}, "train": {"max_steps": 1}})
    cfg = random_config(r.model, 100, bos_id=0, eos_id=1)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.max_position_embeddings, cfg.sliding_window,
            cfg.attention_dropout) == ("mistral", 2, 64, 8, 0.0)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(cfg).eval()
    model = LMWithLoss(lm, fused_gelu=False)
    assert not model.chunked  # not in the table: the model's own logits
    ids = torch.randint(2, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(ids)[0], lm(input_ids=ids, labels=ids).loss, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the one chunked loss kernel
@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_loss_and_its_gradients_equal_the_models_own(family, family_model_dir):
    """LMWithLoss never builds the logits: its loss and every gradient equal transformers' own loss from
    full logits, padding included (ALiBi, rotary, project_out, untied and biased heads alike)."""
    from gptune.modeling import families
    from gptune.modeling.gpt import LMWithLoss

    lm, tok = load(family_model_dir(family))
    assert families.chunked_head(lm)
    ids = sample_ids(tok)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # right padding on the second row
    labels = ids.masked_fill(mask == 0, -100)
    model = LMWithLoss(lm, fused_gelu=False).train()
    loss, n = model(ids, mask)
    loss.backward()
    ours = grads(model.lm)
    model.zero_grad()
    ref = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert n == 23 + 16
    assert_same_grads(ours, grads(lm))
    with torch.no_grad():  # per-token NLL for perplexity: the same numbers
        per = model.eval()(ids, mask, per_token=True)
    torch.testing.assert_close(per.sum() / n, ref.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_sliding_window_perplexity_equals_the_models_own_loss(family, family_model_dir):
    from gptune.evaluation.perplexity import sliding_window_nll

    lm, tok = load(family_model_dir(family))
    ids = sample_ids(tok, n=1, t=150, seed=1)[0]
    nll, tokens = guide_loop(lm, ids, 48, 20)
    result = sliding_window_nll(lm, ids, max_length=48, stride=20, batch_size=3)
    assert result.tokens == tokens
    assert abs(result.nll_sum - nll) / nll < 1e-5


def test_a_family_outside_the_table_takes_its_loss_from_the_models_logits(family_model_dir, monkeypatch):
    from gptune.modeling import families
    from gptune.modeling.gpt import LMWithLoss

    lm, tok = load(family_model_dir("llama"))
    ids = sample_ids(tok)
    chunked = LMWithLoss(lm, fused_gelu=False)
    monkeypatch.delitem(families.FAMILIES, "llama")
    full = LMWithLoss(lm, fused_gelu=False)
    assert chunked.chunked and not full.chunked
    a, b = chunked(ids), full(ids)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert a[1] == b[1]


# ----------------------------------------------------------------------------- GPT-1 task model, every kind
def task_batches(tokenizer):
    from gptune.data.collate import TaskCollator
    from gptune.data.features import encode_rows
    from gptune.modeling.heads import add_task_tokens
    from gptune.tasks import custom_task, get_task

    ids = add_task_tokens(tokenizer)
    mc = custom_task("mc", "multiple_choice", ["ctx", "a0", "a1"], "label", ["0", "1"], {"train": "x.tsv"})
    rows = {"sst2": [{"sentence": "the cat sat on the mat"}, {"sentence": "a dog"}],
            "rte": [{"sentence1": "the cat sat", "sentence2": "a dog ran"}, {"sentence1": "a", "sentence2": "b c"}],
            "mrpc": [{"sentence1": "the king", "sentence2": "a queen saw"}, {"sentence1": "sun", "sentence2": "moon"}],
            "mc": [{"ctx": "the cat sat", "a0": "on the mat", "a1": "a dog"}, {"ctx": "a king", "a0": "saw", "a1": "ran"}]}
    out = {}
    for name, rs in rows.items():
        task = mc if name == "mc" else get_task(name)
        rs = [{**r, "label": i % 2, "idx": i} for i, r in enumerate(rs)]
        cols = encode_rows(task, rs, tokenizer, style="gpt1", special_ids=ids, max_length=40)
        items = [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]
        out[task.kind] = task, TaskCollator(tokenizer.pad_token_id, ids.extract, task.is_regression)(items)
    return ids, out


@pytest.mark.parametrize("family", FAMILIES)
def test_task_model_on_every_kind_with_the_aux_lm_loss_of_the_models_own_logits(family, family_model_dir):
    """The GPT-1 markers join any tokenizer (Llama's SentencePiece-style one included) as single tokens; the
    task model's auxiliary LM loss (sequence mean) equals one computed from the model's own logits, and its
    full-logits fallback gives the same loss and gradients as the chunked kernel."""
    from gptune.modeling import families
    from gptune.modeling.heads import GPT1TaskModel
    from gptune.modeling.task_io import prepare_base

    folder = family_model_dir(family)
    _, tok = load(folder)
    special, batches = task_batches(tok)
    assert "<|delim|>" in tok.tokenize("the<|delim|>cat")  # a marker is one token, whatever the tokenizer
    assert special.extract == len(tok) - 1
    lm = prepare_base(folder, tok, flag="--model", dropout=0.0)
    assert lm.get_input_embeddings().weight.shape[0] == len(tok)
    for kind, (task, batch) in batches.items():
        torch.manual_seed(0)
        model = GPT1TaskModel(lm, task, clf_dropout=0.0).train()
        out = model(**batch)
        out["loss"].backward()
        chunked = grads(model)
        model.zero_grad()
        b, n, t = batch["input_ids"].shape
        assert (batch["input_ids"][..., 0] == special.start).all()
        assert (batch["input_ids"].gather(2, batch["extract_pos"][..., None]) == special.extract).all()
        ids, mask = batch["input_ids"].view(b * n, t), batch["attention_mask"].view(b * n, t)
        logits = lm(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B*n, T-1, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        keep = mask[:, 1:].float()
        expected = ((nll * keep).sum(1) / keep.sum(1)).mean()  # each sequence's token mean, then the mean
        torch.testing.assert_close(out["lm_loss"], expected.detach(), rtol=1e-5, atol=1e-6, msg=kind)
        assert out["logits"].shape == ((b, n) if kind == "multiple_choice" else (b, 2))
        model.zero_grad()
        model.chunked = False  # as for a family outside the table
        again = model(**batch)
        again["loss"].backward()
        torch.testing.assert_close(again["loss"], out["loss"], rtol=1e-5, atol=1e-6)
        assert_same_grads(grads(model), chunked)
        model.zero_grad()
    assert families.chunked_head(lm)


# ----------------------------------------------------------------------------- LoRA
BLOCKS = {"gpt2": "transformer.h.{i}", "openai-gpt": "transformer.h.{i}", "gpt_neo": "transformer.h.{i}.attn",
          "gptj": "transformer.h.{i}", "gpt_neox": "gpt_neox.layers.{i}", "opt": "model.decoder.layers.{i}",
          "bloom": "transformer.h.{i}", "llama": "model.layers.{i}", "qwen2": "model.layers.{i}"}
TARGETS = {"gpt2": ["attn.c_attn"], "openai-gpt": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
           "gpt_neo": ["attention.q_proj", "attention.v_proj"], "gptj": ["attn.q_proj", "attn.v_proj"],
           "gpt_neox": ["attention.query_key_value"], "opt": ["self_attn.q_proj", "self_attn.v_proj"],
           "bloom": ["self_attention.query_key_value"], "llama": ["self_attn.q_proj", "self_attn.v_proj"],
           "qwen2": ["self_attn.q_proj", "self_attn.v_proj"]}
NEW_ROWS = {"gpt2": ["transformer.wte"], "openai-gpt": ["transformer.tokens_embed"], "gpt_neo": ["transformer.wte"],
            "gptj": ["transformer.wte"],  # the head has a bias, which PEFT's token wrapper would drop
            "gpt_neox": ["gpt_neox.embed_in", "lm_head"], "opt": ["model.decoder.embed_tokens"],
            "bloom": ["transformer.word_embeddings"], "llama": ["model.embed_tokens", "lm_head"],
            "qwen2": ["model.embed_tokens", "lm_head"]}
"""The exact trainable set of ``finetune --lora`` per family with the default targets (PEFT's table; GPT-1:
all-linear): LoRA A/B on these layers of both blocks, the GPT-1 markers' rows (an untied head's too)."""


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_exactly_the_familys_default_targets_and_the_new_rows(family, family_model_dir):
    from gptune.modeling.heads import GPT1TaskModel, add_task_tokens
    from gptune.modeling.task_io import build_task_model
    from gptune.tasks import get_task

    folder = family_model_dir(family)
    _, tok = load(folder)
    special = add_task_tokens(tok)
    recipe = build_recipe({"model": {"name_or_path": folder, "config": {"dropout": 0.0}},
                           "task": {"name": "rte", "clf_dropout": 0.0}, "lora": {"enabled": True, "dropout": 0.0},
                           "train": {"max_steps": 1}})
    model = build_task_model(recipe.model, recipe.task, recipe.lora, get_task("rte"), tok, special)
    pre = "lm.base_model.model."
    expected = {"clf_head.weight", "clf_head.bias"}
    expected |= {f"{pre}{m}.token_adapter.trainable_tokens_delta.default" for m in NEW_ROWS[family]}
    expected |= {f"{pre}{BLOCKS[family].format(i=i)}.{t}.lora_{ab}.default.weight"
                 for i in range(2) for t in TARGETS[family] for ab in "AB"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert model.lm.peft_config["default"].fan_in_fan_out == (family in ("gpt2", "openai-gpt"))
    _, batches = task_batches(tok)
    assert model.chunked  # the aux LM loss through the chunked kernel, the markers' trained rows in its matrix
    model.train()(**batches["entailment"][1])["loss"].backward()
    for name in NEW_ROWS[family]:  # every marker row learns, in the embedding and an untied head
        delta = dict(model.named_parameters())[f"{pre}{name}.token_adapter.trainable_tokens_delta.default"].grad
        assert delta.shape == (3, 32 if name != "model.decoder.embed_tokens" else 16)
        assert (delta.abs().sum(-1) > 0).all(), name
    model.zero_grad()
    for kind, (task, batch) in batches.items():  # every task kind on the adapter: chunked == the model's logits
        torch.manual_seed(0)
        on_kind = GPT1TaskModel(model.lm, task, clf_dropout=0.0).train()
        out = on_kind(**batch)
        out["loss"].backward()
        chunked = grads(on_kind)
        on_kind.zero_grad()
        on_kind.chunked = False  # through PEFT's wrappers
        again = on_kind(**batch)
        again["loss"].backward()
        torch.testing.assert_close(again["lm_loss"], out["lm_loss"], rtol=1e-5, atol=1e-6, msg=kind)
        assert_same_grads(grads(on_kind), chunked)
        on_kind.zero_grad()


def test_a_wrong_lora_target_lists_the_models_linear_layers(family_model_dir):
    from gptune.modeling.lora import lora_targets

    lm, _ = load(family_model_dir("llama"))
    with pytest.raises(GptuneError) as e:
        lora_targets(lm, ["c_attn", "q_proj"])
    assert str(e.value) == ("lora.target_modules: LlamaForCausalLM has no linear layer named c_attn; its linear "
                            "layers are down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj (or all-linear)")
    assert lora_targets(lm, ["all-linear"]) == "all-linear"


# ----------------------------------------------------------------------------- checkpointing (FSDP units: test_fsdp.py)
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(family, family_model_dir):
    from gptune.modeling.gpt import LMWithLoss, enable_gradient_checkpointing, load_pretrained_lm

    folder = family_model_dir(family)
    lm, tok = load(folder)
    ids = sample_ids(tok)
    plain = LMWithLoss(lm, fused_gelu=False).train()
    plain(ids)[0].backward()
    ckpt_lm = load_pretrained_lm(folder)
    enable_gradient_checkpointing(ckpt_lm)
    ckpt = LMWithLoss(ckpt_lm, fused_gelu=False).train()
    ckpt(ids)[0].backward()
    assert_same_grads(grads(plain), grads(ckpt))
