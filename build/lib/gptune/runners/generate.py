"""``gptune generate``: sample text from a model folder."""

from __future__ import annotations

from gptune.errors import GptuneError


def generation_device():
    """Where sampling runs: the GPU when there is one (then Apple's MPS), else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def run_generate(model_spec: str, prompt: str, *, max_new_tokens: int = 60, temperature: float = 0.8,
                 top_k: int = 50, top_p: float = 0.95, num_samples: int = 1, seed: int = 0) -> list[str]:
    import torch
    from transformers import AutoTokenizer

    from gptune.modeling.gpt import load_pretrained_lm

    if max_new_tokens <= 0:
        raise GptuneError(f"--max-new-tokens must be > 0, got {max_new_tokens}")
    if temperature < 0:
        raise GptuneError(f"--temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise GptuneError(f"--top-p must be in (0, 1], got {top_p}")
    device = generation_device()
    model = load_pretrained_lm(model_spec, field="--model").eval().to(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_spec)
    except (OSError, ValueError) as e:
        raise GptuneError(f"--model: no tokenizer saved with {model_spec} ({e})") from None
    torch.manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt").input_ids if prompt else None
    if ids is None or ids.shape[1] == 0:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([[start]])
        strip = 1
    else:
        strip = 0
    ids = ids.to(device)
    do_sample = temperature > 0
    with torch.inference_mode():
        out = model.generate(
            ids.repeat(num_samples, 1), attention_mask=torch.ones_like(ids).repeat(num_samples, 1),
            max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature if do_sample else None, top_k=top_k if do_sample and top_k else None,
            top_p=top_p if do_sample else None, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return [tokenizer.decode(seq[strip:], skip_special_tokens=True) for seq in out]
