"""Tiny random Hugging Face models built locally with transformers + torch (no hub)."""

from __future__ import annotations

import math

import numpy as np
import torch
import transformers

FAMILIES = {
    # name: (config class, model class, extra config kwargs)
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen2_untied": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": False}),
    "qwen2_yarn": ("Qwen2Config", "Qwen2ForCausalLM", {
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10_000.0, "factor": 4.0,
                            "original_max_position_embeddings": 32}}),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),
    "llama_linear": ("LlamaConfig", "LlamaForCausalLM", {
        "tie_word_embeddings": True, "rope_parameters": {"rope_type": "linear", "rope_theta": 10_000.0, "factor": 2.0}}),
}


def build(family: str, out_dir: str, *, vocab: int = 96, hidden: int = 64, layers: int = 2, heads: int = 4,
          kv_heads: int = 2, seed: int = 0, dtype=torch.float32):
    """Saves a random tiny model of `family` to `out_dir` and returns the torch model (eval mode)."""
    config_cls, model_cls, extra = FAMILIES[family]
    config = getattr(transformers, config_cls)(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128, rms_norm_eps=1e-6,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    # Default init (std 0.02) gives near-zero logits that would hide errors; use O(1) logits.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    model = model.to(dtype)
    model.save_pretrained(out_dir)
    return model


def torch_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """HF logits with padding-aware position ids (what generation uses for left-padded prompts)."""
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    kwargs = {}
    if attention_mask is not None:
        mask = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
        kwargs = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits.float().numpy()


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]  # ids 0..5; the model's pad/bos/eos are 0/1/2


def build_tokenizer(out_dir: str, corpus: list[str], vocab_size: int = 320) -> int:
    """Trains a real byte-level BPE with `tokenizers` on `corpus`, saves it with a chat template; returns its size."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                                eos_token="<|im_end|>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return len(fast)
