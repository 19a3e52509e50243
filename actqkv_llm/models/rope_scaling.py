"""Rotary position scaling applied to a loaded model: YaRN (arXiv 2309.00071), the extension Qwen2.5
recommends past its 32K window, done the way the model's own config would do it.

The model's rotary embedding is rebuilt from its config with ``rope_type="yarn"``; every
consumer (Hugging Face's own forward, and this library's rope tables, which it asks for cos/sin)
then sees the scaled positions. ``max_position_embeddings`` becomes ``factor x`` the original, so
``positions="auto"`` keeps memory at true positions that far.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, UnsupportedModelError

SCALABLE = ("llama", "mistral", "qwen2", "qwen3")


def apply_yarn(model: torch.nn.Module, factor: float) -> None:
    """Extend ``model``'s positions ``factor`` times with YaRN, in place (before engines are built on it)."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 < factor <= 64:
        raise ConfigError(f"YaRN factor must be a number in (1, 64], got {factor!r}")
    cfg = getattr(model.config, "text_config", None) or model.config
    if cfg.model_type not in SCALABLE:
        raise UnsupportedModelError(f"YaRN scaling is supported for {', '.join(SCALABLE)}, not {cfg.model_type!r}")
    params = dict(cfg.rope_parameters or {})
    if params.get("rope_type", "default") != "default":
        raise ConfigError(f"the model's positions are already scaled ({params.get('rope_type')!r})")
    original = int(cfg.max_position_embeddings)
    params.update(rope_type="yarn", factor=float(factor), original_max_position_embeddings=original)
    cfg.rope_parameters = params
    cfg.max_position_embeddings = int(original * factor)
    old = model.model.rotary_emb
    new = type(old)(config=cfg)
    model.model.rotary_emb = new.to(old.inv_freq.device)


