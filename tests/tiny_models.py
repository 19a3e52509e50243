"""Tiny random-initialised models of each supported architecture and a byte-level tokenizer
with a ChatML template, built offline from configs (no downloads)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (Gemma3TextConfig, Gemma3ForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
VOCAB = 256 + len(SPECIALS)
# a memory small enough for these models and texts: blocks of 8 tokens, a window of 64, 4 blocks per
# step on average (the tests' shared configuration)
SMALL = dict(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=4 + 64 + 8 * 4, prefill_chunk=96)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte, plus ChatML specials."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for s in SPECIALS:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIALS)
    fast.chat_template = CHATML
    return fast


COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)

ARCHITECTURES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**COMMON, sliding_window=None)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=16)),
    "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(
        **{**COMMON, "num_hidden_layers": 4}, head_dim=16, sliding_window=24,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])),
}


def tiny_model(arch: str = "llama", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = ARCHITECTURES[arch]().eval()
    tok = byte_tokenizer()
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.requires_grad_(False)


def separated(model: torch.nn.Module, factor: float = 16.0) -> torch.nn.Module:
    """``model`` with every layer's query projection scaled by ``factor``, so its attention is far from
    uniform. A random model's attention is nearly uniform: on a document that repeats itself its
    blocks' rerank masses tie to the last bit (51 of 720 choices exactly, others one ulp apart, on
    the GPU tests' text), so a float32 fast path that sums them in another order may choose another
    block on rounding alone. With ``factor`` 16 and a random text the closest choice of those
    tests was 6.7e-5 apart (relative, ~1,000 ulps; measured on the CPU:
    docs/results/h100-session30/margins-random-F16.txt)."""
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.mul_(factor)
    return model


def rope_tables(n: int, d: int, device, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary cos and signed sin ``[n, d]`` (float32) of positions ``offset .. offset + n - 1``, laid
    out as Hugging Face's tables are (the frequencies repeated over both halves of the head)."""
    from actqkv_llm.attention.rope import signed_sin

    pos = torch.arange(offset, offset + n, device=device, dtype=torch.float32)[:, None]
    freq = 1.0 / (10000 ** (torch.arange(d // 2, device=device, dtype=torch.float32) / (d // 2)))
    ang = torch.cat([pos * freq, pos * freq], -1)
    return ang.cos(), signed_sin(ang.sin())
