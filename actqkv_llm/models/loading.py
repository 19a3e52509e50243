"""Find and load the causal LM an engine drives. Everything here works offline: nothing is downloaded.

Sources ``load_model`` accepts:

* a local Hugging Face model directory (``config.json`` + safetensors);
* a Hugging Face hub id whose files are already in the local HF cache (read with ``local_files_only``);
* a ``.gguf`` file, or a directory (or cached hub id) plus ``gguf_file=``.

A GGUF is dequantized by transformers once (tens of seconds on a CPU) into a plain safetensors model
directory under ``model_cache_root()/models/<sha256 of the GGUF>/``; every later load reads that
directory (about a second). The GGUF's content hash is memoized by (path, size, mtime, inode) in
``model_cache_root()/hashes/`` so it too is computed once per file.

Real models that ship as PyPI packages are known by short names (``smollm2``, ``gemma3-270m``,
``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``): see :mod:`actqkv_llm.models.registry`. ``load_model``
accepts such a name wherever it accepts a path (an existing path of the same name wins).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import ConfigError, ModelNotFoundError, UnsupportedModelError
from ..files.digest import sha256_file, sha256_text
from .cache_dir import file_sha256 as _file_sha256
from .cache_dir import model_cache_root, remember_sha256
from .cache_dir import private_dir as _private_dir
from .cache_dir import write_json as _write_json
from .tokenizer_check import check_tokenizer

# config.model_type values this library drives. "gemma3" (a multimodal Gemma 3 config) is accepted
# only when its text part is "gemma3_text".
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3")


# Bump when the layout of a converted GGUF directory changes: older conversions are then redone.
# Version 2 records every converted file's size and sha256 (checked before each load).
CONVERSION_FORMAT = 2
MANIFEST_NAME = "actqkv-source.json"

_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}
# config.json keys that say how a model was saved or loaded, not what it is.
_VOLATILE_CONFIG_KEYS = frozenset({"_name_or_path", "transformers_version", "dtype", "torch_dtype",
                                   "_attn_implementation", "attn_implementation", "_commit_hash"})
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_TOKENIZER_FILES = frozenset({"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json",
                              "merges.txt", "vocab.txt", "spiece.model", "special_tokens_map.json",
                              "added_tokens.json"})
_STALE_TMP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`load_model` loaded, besides the model and tokenizer.

    Attributes:
        model_id: the path (resolved) or hub id the model was loaded from; for a GGUF, the GGUF's path.
        fingerprint: JSON-serialisable identity of everything that shapes the model's KV: source,
            revision or weights sha256, config hash, dtype, tokenizer hash and chat-template hash.
        native_window: the model's trained context, ``config.max_position_embeddings``.
        model_type: ``config.model_type`` (of the text part for a multimodal Gemma 3 config).
        model_dir: the directory the weights were actually read from (the converted one for a GGUF).
        gguf_path: the GGUF file, when the model came from one.
        from_cache: True when a GGUF's earlier conversion was reused, False when it was converted now
            (always False for non-GGUF sources).
        has_chat_template: whether the tokenizer carries a chat template.
        load_seconds: wall time of the whole call.
    """

    model_id: str
    fingerprint: dict[str, Any]
    native_window: int
    model_type: str
    model_dir: Path
    gguf_path: Path | None = None
    from_cache: bool = False
    has_chat_template: bool = True
    load_seconds: float = field(default=0.0, compare=False)


# The name some callers know it by.
LoadedModel = ModelInfo


# ---------------------------------------------------------------------------------------- bundled GGUFs
def default_gguf_path(cache_dir: str | Path | None = None) -> Path:
    """The default model's GGUF (:data:`registry.DEFAULT_MODEL`, Qwen2.5-Coder-0.5B-Instruct),
    assembled from its packages once and sha256-verified; see :mod:`actqkv_llm.models.registry`.

    Raises:
        ModelNotFoundError: its package is missing or corrupt (the message gives the pip command).
    """
    from . import registry

    return registry.gguf_path(registry.DEFAULT_MODEL, cache_dir)


def gemma3_270m_gguf_path(cache_dir: str | Path | None = None) -> Path:
    """Gemma 3 270M (base, Q4_K_M GGUF), assembled once from its four chunk packages into
    ``model_cache_root(cache_dir)/gguf/`` and sha256-verified. It carries no chat template.

    Raises:
        ModelNotFoundError: a chunk package is missing or corrupt.
    """
    from . import registry

    return registry.gguf_path("gemma3-270m", cache_dir)


# ---------------------------------------------------------------------------------------- options
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> cuda if available else cpu; otherwise a valid, available torch device."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise ConfigError(f"device must be a string or torch.device, got {type(device).__name__} {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"invalid device {device!r} ({exc}); use e.g. 'cpu', 'cuda' or 'cuda:0'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but this torch build sees no CUDA device; "
                              "use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} asked for, but MPS is not available; use device='cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> bfloat16 on CUDA, float32 elsewhere; accepts bf16/fp16/fp32 as dtype or name."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    allowed = "bf16, bfloat16, fp16, float16, fp32, float32 (or the torch dtypes)"
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.bfloat16, torch.float16, torch.float32):
            return dtype
        raise ConfigError(f"dtype {dtype} is not supported; use one of {allowed}")
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
    raise ConfigError(f"unknown dtype {dtype!r}; use one of {allowed}")


# ---------------------------------------------------------------------------------------- loading
def load_model(model: str | Path, gguf_file: str | None = None, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, cache_dir: str | Path | None = None,
               progress: bool = True) -> tuple[torch.nn.Module, Any, ModelInfo]:
    """Load a causal LM and its tokenizer from local files only, ready for inference.

    Args:
        model: a model directory, a hub id already in the local HF cache, a ``.gguf`` file, or a
            directory / cached hub id holding ``gguf_file``.
        gguf_file: name (or path) of the GGUF inside ``model``.
        device: ``None`` (cuda if available, else cpu), a string or a ``torch.device``.
        dtype: ``None`` (bf16 on CUDA, fp32 otherwise), a torch dtype or one of
            bf16/bfloat16/fp16/float16/fp32/float32.
        cache_dir: root of this library's cache (see :func:`model_cache_root`); converted GGUFs
            live under ``<root>/models/``.
        progress: show transformers' progress bars and a note before a GGUF's one-time conversion.

    Returns:
        ``(model, tokenizer, info)``: the model in eval mode with gradients off and SDPA attention,
        its tokenizer unmodified, and a :class:`ModelInfo`.

    Raises:
        ModelNotFoundError: the files are not on this machine (nothing is ever downloaded).
        UnsupportedModelError: the architecture is not one of :data:`SUPPORTED_MODEL_TYPES`
            (checked on the config, before any weights are read).
        ConfigError: a bad ``device`` or ``dtype``.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if not isinstance(model, (str, Path)) or not str(model).strip():
        raise ModelNotFoundError(f"model must be a path or hub id (a non-empty string), got {model!r}")
    if gguf_file is not None and (not isinstance(gguf_file, (str, Path)) or not str(gguf_file).strip()):
        raise ModelNotFoundError(f"gguf_file must be a file name, got {gguf_file!r}")
    from . import registry

    if gguf_file is None and registry.is_name(model):
        model = registry.gguf_path(str(model), cache_dir)

    source = locate(model, gguf_file)
    root = model_cache_root(cache_dir)
    gguf_path: Path | None = source["gguf"]
    from_cache = False
    weights_sha256: str | None = None  # a hub snapshot is identified by its revision instead
    with _progress_bars(progress):
        if gguf_path is not None:
            weights_sha256 = _file_sha256(gguf_path, root)
            model_dir = root / "models" / weights_sha256
            from_cache = _converted_ok(model_dir, weights_sha256, root)
            if not from_cache:
                gguf_config = _gguf_config(gguf_path)
                _check_model_type(gguf_config.model_type, f"GGUF {gguf_path}")
                _convert_gguf(gguf_path, model_dir, weights_sha256, progress, gguf_config)
        else:
            model_dir = source["dir"]
        tokenizer = _load_tokenizer(model_dir, source["id"])
        if gguf_path is not None:
            tokenizer, from_cache = _sound_tokenizer(tokenizer, gguf_path, model_dir, weights_sha256, from_cache,
                                                     progress, source["id"])
        config = _load_config(model_dir, source["id"])
        model_type = _text_config(config).model_type
        if source["kind"] == "local":
            weights_sha256 = _weights_sha256(model_dir, root)
        hf_model = _load_weights(model_dir, config, dev, dt, source["id"])

    hf_model.eval()
    hf_model.requires_grad_(False)
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        warnings.warn(
            f"the tokenizer of {source['id']} has no chat template: chat-style prompts (ask/answer/chat) "
            "cannot be built for it; use raw completion, or load an instruction-tuned model that ships one",
            UserWarning, stacklevel=2,
        )
    fingerprint = {
        "model_id": source["id"],
        "source": source["kind"],
        "revision": source.get("revision"),
        "weights_sha256": weights_sha256,
        "model_type": model_type,
        "config_sha256": _config_sha256(model_dir),
        "dtype": str(dt),
        "tokenizer_sha256": _tokenizer_sha256(model_dir, root),
        "chat_template_sha256": _template_sha256(template),
    }
    info = ModelInfo(
        model_id=source["id"], fingerprint=fingerprint,
        native_window=int(_text_config(config).max_position_embeddings), model_type=model_type,
        model_dir=model_dir, gguf_path=gguf_path, from_cache=from_cache, has_chat_template=bool(template),
        load_seconds=time.perf_counter() - t0,
    )
    return hf_model, tokenizer, info


def locate(model: str | Path, gguf_file: str | Path | None = None) -> dict[str, Any]:
    """Where a model's files are (cheap: no weights read). A name that is neither a path nor a
    cached hub id gets the registry's short names in its error."""
    try:
        return _locate(model, gguf_file)
    except ModelNotFoundError as exc:
        if gguf_file is None and isinstance(model, str) and "/" not in model and os.sep not in model:
            from . import registry

            raise ModelNotFoundError(f"{exc}; or use a short name from 'actqkv models': "
                                     f"{', '.join(registry.MODELS)}") from exc
        raise


def _locate(model: str | Path, gguf_file: str | Path | None) -> dict[str, Any]:
    """Where the files are: {"kind": gguf|local|hub, "id", "dir", "gguf", "revision"}."""
    path = Path(model).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file():
            if gguf_file is not None:
                raise ModelNotFoundError(f"{path} is a file; gguf_file= names a file inside a directory")
            if path.suffix.lower() != ".gguf":
                raise ModelNotFoundError(f"{path} is a file but not a .gguf; pass a model directory "
                                         "(config.json + safetensors), a .gguf file or a cached hub id")
            return {"kind": "gguf", "id": str(path), "dir": path.parent, "gguf": path}
        if gguf_file is not None:
            gguf = _gguf_in(path, gguf_file, str(path))
            return {"kind": "gguf", "id": str(gguf), "dir": path, "gguf": gguf}
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = (f"; it holds GGUF file(s) {ggufs}: pass gguf_file=<name>" if ggufs
                    else "; a model directory needs config.json and the weights (safetensors)")
            raise ModelNotFoundError(f"{path} has no config.json{hint}")
        return {"kind": "local", "id": str(path), "dir": path, "gguf": None}

    name = str(model)
    if _looks_like_path(name):
        raise ModelNotFoundError(f"no such file or directory: {name}")
    snapshot = _hub_snapshot(name)
    revision = snapshot.name
    if gguf_file is not None:
        gguf = _gguf_in(snapshot, gguf_file, name)
        return {"kind": "gguf", "id": f"{name}/{Path(gguf_file).name}", "dir": snapshot, "gguf": gguf,
                "revision": revision}
    if not (snapshot / "config.json").is_file():
        raise ModelNotFoundError(f"the local HF cache holds {name} (revision {revision}) but not its "
                                 f"config.json{_download_hint(name)}")
    return {"kind": "hub", "id": name, "dir": snapshot, "gguf": None, "revision": revision}


def _looks_like_path(name: str) -> bool:
    """True when ``name`` cannot be a hub id (so 'not found' means a missing path)."""
    if name.startswith((".", "/", "~")) or os.sep in name.replace("/", "") or name.lower().endswith(".gguf"):
        return True
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except Exception:  # HFValidationError, or a huggingface_hub without it
        return True
    return name.count("/") > 1


def _download_hint(name: str) -> str:
    return ("; this library never downloads. Get the files once with network access, e.g. "
            f"`hf download {name}` (or huggingface_hub.snapshot_download('{name}')), then load it again, "
            "or pass a local directory")


def _hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot directory of ``repo_id`` (its name is the commit hash), never downloading."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - transformers depends on huggingface_hub
        raise ModelNotFoundError(f"{repo_id!r} is not a local path and huggingface_hub is missing") from exc
    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        raise ModelNotFoundError(f"{repo_id!r} is neither a local path nor in the local Hugging Face cache"
                                 f"{_download_hint(repo_id)}") from exc
    if not snapshot.is_dir():
        raise ModelNotFoundError(f"{repo_id!r} is not in the local Hugging Face cache{_download_hint(repo_id)}")
    return snapshot


def _gguf_in(directory: Path, gguf_file: str | Path, where: str) -> Path:
    gguf = (directory / gguf_file).expanduser()
    if not gguf.is_file():
        present = sorted(p.name for p in directory.glob("*.gguf"))
        raise ModelNotFoundError(f"no GGUF file {str(gguf_file)!r} in {where}"
                                 + (f"; GGUF files there: {present}" if present else ""))
    return gguf.resolve()


def _check_model_type(model_type: str | None, what: str, text_type: str | None = None) -> str:
    """Refuse an architecture outside :data:`SUPPORTED_MODEL_TYPES`; returns the text model's type."""
    ok = model_type in SUPPORTED_MODEL_TYPES and (model_type != "gemma3" or text_type in (None, "gemma3_text"))
    if not ok:
        shown = f"{model_type!r}" + (f" with text part {text_type!r}" if model_type == "gemma3" else "")
        raise UnsupportedModelError(
            f"{what} has architecture (config.model_type) {shown}, which this library cannot drive; "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)} (gemma3 only with a gemma3_text "
            "text part)"
        )
    return text_type or model_type


def _text_config(config: Any) -> Any:
    """The language-model part of a config (a multimodal Gemma 3 config keeps it in text_config)."""
    return getattr(config, "text_config", None) or config


def _load_config(model_dir: Path, model_id: str) -> Any:
    """The model's config, its architecture checked before any weights are read."""
    from transformers import AutoConfig

    try:
        raw = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read the config.json of {model_id} in {model_dir}: {exc}") from exc
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else {}
    _check_model_type(raw.get("model_type"), model_id, text.get("model_type"))
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"could not read the config of {model_id} in {model_dir}: {exc}") from exc
    _check_model_type(config.model_type, model_id, getattr(_text_config(config), "model_type", None)
                      if config.model_type == "gemma3" else None)
    return config


def _load_tokenizer(model_dir: Path, model_id: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except OSError as exc:
        raise ModelNotFoundError(f"could not load the tokenizer of {model_id} from {model_dir}: {exc}") from exc


def _load_weights(model_dir: Path, config: Any, device: torch.device, dtype: torch.dtype,
                  model_id: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    # use_kernels=False: transformers >= 5.25 swaps layers for Hugging Face Hub kernels by default,
    # code fetched at run time (offline here) that would also run instead of the layers we drive
    kwargs: dict[str, Any] = dict(config=config, dtype=dtype, attn_implementation="sdpa", local_files_only=True,
                                  use_kernels=False)
    if device.type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    try:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except OSError as exc:
        raise ModelNotFoundError(f"could not load the files of {model_id} from {model_dir}: {exc}") from exc


def _sound_tokenizer(tokenizer: Any, gguf: Path, model_dir: Path, gguf_sha: str, from_cache: bool,
                     progress: bool, model_id: str) -> tuple[Any, bool]:
    """``tokenizer`` (converted from ``gguf``) if it reads text as its vocabulary says
    (:func:`~.tokenizer_check.check_tokenizer`); a conversion another transformers version made is
    made again by this one, once (a cache converted by transformers 5.17 holds a Gemma 3 tokenizer
    that cuts words into characters). Returns the tokenizer and whether it came from the cache."""
    from transformers import __version__ as running

    made_by = _conversion_version(model_dir)
    try:
        check_tokenizer(tokenizer, f"GGUF {gguf}", made_by)
        return tokenizer, from_cache
    except UnsupportedModelError:
        if not from_cache or made_by == running:
            raise
    _convert_gguf(gguf, model_dir, gguf_sha, progress, _gguf_config(gguf))
    tokenizer = _load_tokenizer(model_dir, model_id)
    check_tokenizer(tokenizer, f"GGUF {gguf}", running)
    return tokenizer, False


def _conversion_version(model_dir: Path) -> str | None:
    """The transformers version a converted model directory's record names (None if unreadable)."""
    try:
        version = json.loads((model_dir / MANIFEST_NAME).read_text()).get("transformers_version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Hide transformers' progress bars for the duration when ``enabled`` is False (then restore)."""
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------- GGUF
def _converted_ok(model_dir: Path, gguf_sha: str, root: Path | None = None) -> bool:
    """Whether ``model_dir`` holds a complete conversion of the GGUF ``gguf_sha``: its record matches,
    and every file it lists is a regular file of the recorded size (always checked) and sha256
    (memoized by path, size, mtime and inode: hashed again only after the file changed). A
    conversion that fails is reported with a warning and done again."""
    try:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("format") != CONVERSION_FORMAT \
            or manifest.get("gguf_sha256") != gguf_sha:
        return False
    problem = _verify_files(model_dir, manifest.get("files"), root)
    if problem:
        warnings.warn(f"the converted model in {model_dir} failed verification ({problem}); converting the "
                      "GGUF again", RuntimeWarning, stacklevel=3)
        return False
    return True


def _record_files(model_dir: Path, root: Path | None) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes", "sha256"}}`` for every file of a converted model directory."""
    out = {}
    for p in sorted(model_dir.iterdir()):
        if p.name != MANIFEST_NAME and p.is_file() and not p.is_symlink():
            out[p.name] = {"bytes": p.stat().st_size,
                           "sha256": _file_sha256(p, root) if root is not None else sha256_file(p)}
    return out


def _verify_files(model_dir: Path, files: Any, root: Path | None) -> str | None:
    """Why the converted files do not match their record (None: they do)."""
    import stat as stat_mod

    if not isinstance(files, dict) or not files:
        return "no file record"
    present = {p.name for p in model_dir.iterdir() if p.name != MANIFEST_NAME}
    weights = {n for n in present if n.endswith(_WEIGHT_SUFFIXES)}
    if not weights <= set(files):
        return f"unrecorded weight file(s) {sorted(weights - set(files))}"
    for name, entry in files.items():
        if not isinstance(name, str) or "/" in name or name in ("", ".", "..") or not isinstance(entry, dict):
            return "a malformed file record"
        path = model_dir / name
        try:
            st = os.lstat(path)
        except OSError:
            return f"{name} is missing"
        if not stat_mod.S_ISREG(st.st_mode):
            return f"{name} is not a regular file"
        if st.st_size != entry.get("bytes"):
            return f"{name} has {st.st_size} bytes, {entry.get('bytes')} recorded"
        digest = _file_sha256(path, root) if root is not None else sha256_file(path)
        if digest != entry.get("sha256"):
            return f"{name} does not match its recorded sha256"
    return None


def _gguf_config(gguf: Path) -> Any:
    """The model config transformers reads from a GGUF's metadata (``gguf.GGUFReader`` underneath;
    a multimodal Gemma 3 GGUF's text model comes back as ``gemma3_text``). Read once: the
    conversion takes it instead of parsing the file again."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    except (ValueError, KeyError, NotImplementedError, EOFError) as exc:
        raise UnsupportedModelError(
            f"transformers cannot read the GGUF {gguf} ({exc}); this library drives GGUF models of the "
            f"model types {', '.join(SUPPORTED_MODEL_TYPES)}") from exc


def _convert_gguf(gguf: Path, model_dir: Path, gguf_sha: str, progress: bool, config: Any) -> None:
    """Dequantize ``gguf`` (its config read by :func:`_gguf_config`) once into a float32 safetensors
    model directory at ``model_dir``.

    Written into a temporary sibling and renamed into place, so a reader never sees half a
    directory; if another process finished first, its result is kept.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if progress:
        print(f"actqkv: converting {gguf.name} to a local safetensors model once "
              f"(later loads reuse {model_dir})", file=sys.stderr, flush=True)
    parent = _private_dir(model_dir.parent)
    for stale in parent.glob(".tmp-*"):  # left by a conversion that was killed
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{gguf_sha[:16]}-", dir=parent))
    try:
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, config=config,
                dtype=torch.float32, local_files_only=True,
                quantization_config=GgufConfig(dequantize=True), use_kernels=False,
            )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        except (ValueError, KeyError, NotImplementedError) as exc:
            raise UnsupportedModelError(f"transformers cannot read the GGUF {gguf}: {exc}") from exc
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del hf_model
        from transformers import __version__ as transformers_version

        _write_json(tmp / MANIFEST_NAME, {
            "format": CONVERSION_FORMAT, "gguf_sha256": gguf_sha, "gguf_name": gguf.name,
            "gguf_size": gguf.stat().st_size, "transformers_version": transformers_version,
            "files": _record_files(tmp, None),
        })
        if model_dir.exists():  # a stale or foreign directory: replace it
            shutil.rmtree(model_dir, ignore_errors=True)
        try:
            os.rename(tmp, model_dir)
        except OSError:
            if not _converted_ok(model_dir, gguf_sha):
                raise
        with contextlib.suppress(OSError, ValueError):  # memoize the hashes: the next load only stats
            recorded = json.loads((model_dir / MANIFEST_NAME).read_text())["files"]
            for name, entry in recorded.items():
                remember_sha256(model_dir / name, entry["sha256"], root_of(model_dir))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def root_of(model_dir: Path) -> Path:
    """The cache root of a converted model directory (``<root>/models/<sha>``)."""
    return model_dir.parent.parent


# ---------------------------------------------------------------------------------------- hashing
def _template_sha256(template: Any) -> str | None:
    """Hash of a chat template (a string, or a dict of named templates); None when there is none."""
    if not template:
        return None
    return sha256_text(template if isinstance(template, str) else json.dumps(template, sort_keys=True))


def _weights_sha256(model_dir: Path, root: Path) -> str:
    """One digest over the weight files of a local model directory (each file's hash memoized)."""
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise ModelNotFoundError(f"{model_dir} has a config.json but no weights (*.safetensors / *.bin)")
    return sha256_text("".join(f"{p.name}:{_file_sha256(p, root)}\n" for p in files))


def _config_sha256(model_dir: Path) -> str:
    """Hash of config.json without the keys that record how it was saved or loaded."""
    try:
        raw = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read {model_dir / 'config.json'}: {exc}") from exc
    cleaned = {k: v for k, v in raw.items() if k not in _VOLATILE_CONFIG_KEYS}
    return sha256_text(json.dumps(cleaned, sort_keys=True))


def _tokenizer_sha256(model_dir: Path, root: Path) -> str:
    """Hash of the tokenizer files in ``model_dir`` (vocabulary, merges, special tokens, flags).

    Hashing the files (each memoized like the weights) rather than the in-memory tokenizer keeps a
    large vocabulary (Gemma's 262k entries) from costing half a second on every load.
    """
    files = sorted(p for p in model_dir.iterdir()
                   if p.is_file() and (p.name in _TOKENIZER_FILES or p.suffix == ".tiktoken"))
    if not files:
        raise ModelNotFoundError(f"{model_dir} holds no tokenizer files ({', '.join(sorted(_TOKENIZER_FILES))})")
    return sha256_text("".join(f"{p.name}:{_file_sha256(p, root)}\n" for p in files))
