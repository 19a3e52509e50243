"""Choosing a model from the command line: short names, early option checks, the ``models`` listing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import registry


def check_engine_options(device: Any, dtype: Any, options: dict[str, Any]) -> None:
    """Raise the error a bad device, dtype or retrieval option would cause, before anything is loaded
    (and before any "loading ..." line is printed)."""
    from ..config import RetrievalConfig
    from .loading import resolve_device, resolve_dtype

    RetrievalConfig.for_model(1 << 20, **options)
    resolve_dtype(dtype, resolve_device(device))


def resolve_cli_model(model: str | None, cache_dir: str | Path | None = None,
                      gguf_file: str | None = None) -> tuple[str | Path, str]:
    """``--model`` -> (what to load, how to name it in the "loading ..." line).

    ``None`` is the default model, a registry short name is its verified GGUF (assembled into the
    cache on first use); anything else (a path or hub id) is passed through unchanged, once its
    files are found (so a wrong path fails before "loading ..." is printed).
    """
    if model is None or (gguf_file is None and registry.is_name(model)):
        spec = registry.default_spec() if model is None else registry.get(model)
        path = registry.gguf_path(spec, cache_dir)
        label = f"the default model, {spec.title}" if model is None else f"{spec.name}, {spec.title}"
        return path, label
    from .loading import locate

    locate(model, gguf_file)
    return model, str(model)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def models_table(rows: list[dict[str, Any]]) -> str:
    """The text ``actqkv models`` prints: one line per model, then how to install the missing ones."""
    lines = [f"{'NAME':<20} {'DEFAULT':<8} {'INSTALLED':<10} {'SIZE':>8} {'WINDOW':>7}  {'CHAT':<5} MODEL"]
    for r in rows:
        state = "yes" if r["installed"] else ("no" if r["missing_packages"] == len(r["requirements"])
                                              else f"partly ({r['missing_packages']} missing)")
        lines.append(f"{r['name']:<20} {'*' if r['default'] else '':<8} {state:<10} "
                     f"{human_size(r['size']):>8} {r['native_window'] // 1024:>6}K  "
                     f"{'yes' if r['chat'] else 'no':<5} {r['title']}")
    missing = [r for r in rows if not r["installed"]]
    if missing:
        lines += ["", "To install a model (then use it with --model NAME):"]
        lines += [f"  {r['name']}: {r['install']}" for r in missing]
    return "\n".join(lines)
