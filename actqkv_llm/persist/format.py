"""The on-disk format of one cached document: file names, the manifest schema, its version, the
cache key, and the checks that decide whether a cache may be used by an engine.

See docs/cache-format.md for the full description. Only JSON and safetensors are ever read.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CacheError, CacheMismatchError

FORMAT_NAME = "actqkv-document"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "state.safetensors"
BLOCKS = "blocks.safetensors"
TENSOR_FILES = (STATE, BLOCKS)
KEY_RE = re.compile(r"^[0-9a-f]{64}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")

# torch dtype <-> safetensors dtype tag (the ones a KV cache or its bookkeeping can use)
ST_DTYPES: dict[torch.dtype, str] = {
    torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
TORCH_DTYPES: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in ST_DTYPES}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_ids(ids: torch.Tensor) -> str:
    """Digest of token ids as little-endian int64 (the way state.safetensors stores them)."""
    arr = torch.as_tensor(ids, dtype=torch.long).flatten().contiguous().cpu().numpy()
    return hashlib.sha256(arr.astype("<i8", copy=False).tobytes()).hexdigest()


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            buf = f.read(chunk)
            if not buf:
                break
            h.update(buf)
    return h.hexdigest()


def canonical(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, keys strings): what we compare."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def document_key(fingerprint: dict, kv_options: dict, layout: str, text_sha256: str,
                 token_ids_sha256: str) -> str:
    """The cache key: sha256 over the source text's and token ids' digests, the model fingerprint,
    the KV-shaping options and the layout (so a cache built for anything else has another key)."""
    payload = {"text_sha256": text_sha256, "token_ids_sha256": token_ids_sha256, "layout": layout,
               "fingerprint": canonical(fingerprint), "kv_options": canonical(kv_options)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def engine_key(engine: Any, text: str, layout: str, ids: torch.Tensor) -> str:
    return document_key(engine.fingerprint, engine.config.kv_options(), layout, sha256_text(text), sha256_ids(ids))


@dataclass
class FileEntry:
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """``manifest.json``: written last, so a directory without a valid one is never used."""

    key: str
    fingerprint: dict
    kv_options: dict
    layout: str
    n_tokens: int
    text_sha256: str
    token_ids_sha256: str
    dtype: str
    n_layers: int
    kv_heads: int
    head_dim: int
    block_size: int
    n_blocks: list[int]
    files: dict[str, FileEntry]
    created: float = field(default_factory=time.time)
    created_by: str = ""
    block_checksums: str = "sha256"   # one digest per block of keys and of values, in state.safetensors
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------------ (de)serialisation
    def to_json(self) -> str:
        data = asdict(self)
        data["fingerprint"], data["kv_options"] = canonical(self.fingerprint), canonical(self.kv_options)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @property
    def total_blocks(self) -> int:
        return sum(self.n_blocks)

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        """Read and validate ``directory/manifest.json`` (schema and version; nothing else is opened)."""
        path = Path(directory) / MANIFEST
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CacheError(f"{path} is missing: {directory} is not a complete document cache "
                             "(an interrupted save leaves no manifest)") from None
        except OSError as exc:
            raise CacheError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CacheError(f"{path} is corrupt (not valid JSON: {exc})") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: Path | str = MANIFEST) -> "Manifest":
        def bad(why: str) -> CacheError:
            return CacheError(f"{path} is corrupt or not an actqkv document manifest: {why}")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        if data.get("format") != FORMAT_NAME:
            raise bad(f"format is {data.get('format')!r}, expected {FORMAT_NAME!r}")
        version = data.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise bad(f"format_version is {version!r}")
        if version > FORMAT_VERSION:
            raise CacheMismatchError(
                f"{path} has cache format version {version}, newer than this actqkv_llm supports "
                f"(up to version {FORMAT_VERSION}): upgrade actqkv-llm, or remove the entry "
                "('actqkv rm KEY') and prefill the document again")
        types = {"key": str, "fingerprint": dict, "kv_options": dict, "layout": str, "n_tokens": int,
                 "text_sha256": str, "token_ids_sha256": str, "dtype": str, "n_layers": int,
                 "kv_heads": int, "head_dim": int, "block_size": int, "n_blocks": list, "files": dict,
                 "created": (int, float), "created_by": str, "block_checksums": str}
        for name, typ in types.items():
            if name not in data:
                raise bad(f"field {name!r} is missing")
            v = data[name]
            if isinstance(v, bool) or not isinstance(v, typ):
                raise bad(f"field {name!r} has the wrong type ({type(v).__name__})")
        if not KEY_RE.match(data["key"]):
            raise bad("key is not a sha256 hex digest")
        for name in ("text_sha256", "token_ids_sha256"):
            if not SHA_RE.match(data[name]):
                raise bad(f"{name} is not a sha256 hex digest")
        if data["layout"] not in ("chat", "raw"):
            raise bad(f"layout {data['layout']!r}")
        if data["dtype"] not in TORCH_DTYPES:
            raise bad(f"dtype {data['dtype']!r}")
        if data["block_checksums"] != "sha256":
            raise bad(f"block_checksums {data['block_checksums']!r}")
        for name in ("n_tokens", "n_layers", "kv_heads", "head_dim", "block_size"):
            if data[name] < (0 if name == "n_tokens" else 1):
                raise bad(f"{name} is {data[name]}")
        nb = data["n_blocks"]
        if len(nb) != data["n_layers"] or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in nb):
            raise bad("n_blocks must list one non-negative count per layer")
        files = {}
        for fname in TENSOR_FILES:
            entry = data["files"].get(fname)
            if not isinstance(entry, dict) or isinstance(entry.get("bytes"), bool) \
                    or not isinstance(entry.get("bytes"), int) or entry["bytes"] < 8 \
                    or not isinstance(entry.get("sha256"), str) or not SHA_RE.match(entry["sha256"]):
                raise bad(f"files[{fname!r}] must give bytes and sha256")
            files[fname] = FileEntry(entry["bytes"], entry["sha256"])
        kw = {name: data[name] for name in types}
        kw["files"] = files
        return cls(**kw, format=FORMAT_NAME, format_version=version)


def mismatches(manifest: Manifest, engine: Any) -> list[str]:
    """Every field where the cache differs from what ``engine`` would build: 'field: expected X, found Y'."""
    out: list[str] = []

    def compare(prefix: str, expected: Any, found: Any) -> None:
        if isinstance(expected, dict) and isinstance(found, dict):
            for k in sorted(set(expected) | set(found)):
                compare(f"{prefix}.{k}", expected.get(k, "<absent>"), found.get(k, "<absent>"))
        elif expected != found:
            out.append(f"{prefix}: expected {expected!r}, found {found!r}")

    compare("fingerprint", canonical(engine.fingerprint), manifest.fingerprint)
    compare("kv_options", canonical(engine.config.kv_options()), manifest.kv_options)
    adapter = engine.adapter
    compare("dtype", dtype_name(engine.dtype), manifest.dtype)
    compare("n_layers", adapter.n_layers, manifest.n_layers)
    compare("kv_heads", adapter.n_kv_heads, manifest.kv_heads)
    compare("head_dim", adapter.head_dim, manifest.head_dim)
    return out


def check_compatible(manifest: Manifest, engine: Any, directory: Path) -> None:
    bad = mismatches(manifest, engine)
    if bad:
        raise CacheMismatchError(
            f"{Path(directory) / MANIFEST} was built for another model or option set; mismatching "
            f"field(s): {'; '.join(bad)}. Prefill the document with this engine instead")
