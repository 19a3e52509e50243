"""The on-disk format of one cached document: file names, the manifest schema, its version, the
cache key, and the checks that decide whether a cache may be used by an engine.

See docs/cache-format.md for the full description. Only JSON and safetensors are ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CacheError, CacheMismatchError
from ..files.digest import sha256_stream, sha256_text
from ..files.paths import open_regular, read_regular

FORMAT_NAME = "actqkv-document"   # also the ownership marker: a directory whose manifest says so is ours
# Version 3 stores summary keys only for the scorers that read them (dot, cosine); a version 2
# reader would find them missing, so the version says it. Version 4 checksums each KV head of a
# block on its own, so that a question reads only the heads its per-head selection picks. Version
# 2 and 3 caches are read as they are (whole blocks verified together).
FORMAT_VERSION = 4
# Oldest version this reader accepts (version 1 stored KV in the compute dtype, unverified keys).
MIN_FORMAT_VERSION = 2
MANIFEST = "manifest.json"
STATE = "state.safetensors"
BLOCKS = "blocks.safetensors"
TENSOR_FILES = (STATE, BLOCKS)
KEY_RE = re.compile(r"^[0-9a-f]{64}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# Block checksums: sha256 truncated to 128 bits, one for the keys and one for the values of each
# block and KV head (version 4), or of each whole block (versions 2 and 3).
BLOCK_CHECKSUMS = "sha256-128-per-head"
WHOLE_BLOCK_CHECKSUMS = "sha256-128"


def checksums_of(version: int) -> str:
    """The block checksum scheme a format version uses."""
    return BLOCK_CHECKSUMS if version >= 4 else WHOLE_BLOCK_CHECKSUMS
DIGEST_BYTES = 16
# KV dtype on disk: bf16 by default whatever the compute dtype (half of fp32), read back into it.
DEFAULT_KV_DTYPE = "bfloat16"
KV_DTYPES = ("bfloat16", "float16", "float32")
# Bounds on what a manifest may ask of the reader (a damaged or hostile one is refused, not obeyed).
MAX_MANIFEST_BYTES = 1 << 20
MAX_JSON_DEPTH = 12
MAX_LAYERS = 4096
MAX_DIM = 1 << 16
MAX_TOKENS = 1 << 40

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


def sha256_ids(ids: torch.Tensor) -> str:
    """Digest of token ids as little-endian int64 (the way state.safetensors stores them)."""
    arr = torch.as_tensor(ids, dtype=torch.long).flatten().contiguous().cpu().numpy()
    return hashlib.sha256(arr.astype("<i8", copy=False).tobytes()).hexdigest()


def sha256_cache_file(path: Path, expected_bytes: int | None = None, chunk: int = 8 << 20) -> str:
    """sha256 of a cache file: a regular file only (never a symlink, FIFO or device), of exactly
    ``expected_bytes`` when given. CacheError naming the file otherwise."""
    fd, _ = open_regular(path, expected_bytes)
    try:
        with open(fd, "rb", closefd=False) as f:
            return sha256_stream(f, chunk)
    except OSError as exc:
        raise CacheError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


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
    kv_dtype: str = DEFAULT_KV_DTYPE   # of every KV tensor on disk (``dtype`` is the compute dtype)
    created: float = field(default_factory=time.time)
    created_by: str = ""
    block_checksums: str = BLOCK_CHECKSUMS   # per block and KV head (v4), of keys and of values, in state.safetensors
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
        """Read and validate ``directory/manifest.json`` (schema and version; nothing else is opened).
        A regular file of at most 1 MiB only (never a symlink, FIFO or device); JSON nested at most
        12 deep; every error a :class:`CacheError` naming the file and the field."""
        path = Path(directory) / MANIFEST
        try:
            raw = read_regular(path, MAX_MANIFEST_BYTES)
        except CacheError as exc:
            if "is missing" in str(exc):
                raise CacheError(f"{path} is missing: {directory} is not a complete document cache "
                                 "(an interrupted save leaves no manifest)") from None
            raise
        if _bracket_depth(raw) > MAX_JSON_DEPTH:
            raise CacheError(f"{path} is corrupt: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise CacheError(f"{path} is corrupt (not valid JSON: {exc})") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: Path | str = MANIFEST) -> "Manifest":
        def bad(why: str) -> CacheError:
            return CacheError(f"{path} is corrupt or not an actqkv document manifest: {why}")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        if data.get("format") != FORMAT_NAME:
            raise bad(f"field 'format' is {_short(data.get('format'))}, expected {FORMAT_NAME!r}")
        version = data.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise bad(f"field 'format_version' is {_short(version)}")
        if version > FORMAT_VERSION:
            raise CacheMismatchError(
                f"{path} has cache format version {version}, newer than this actqkv_llm supports "
                f"(up to version {FORMAT_VERSION}): upgrade actqkv-llm, or remove the entry "
                "('actqkv rm KEY') and prefill the document again")
        if version < MIN_FORMAT_VERSION:
            raise CacheMismatchError(
                f"{path} has cache format version {version}, older than this actqkv_llm reads (version "
                f"{MIN_FORMAT_VERSION} and up: KV stored as bf16, keys verified): remove the entry "
                "('actqkv rm KEY', or 'actqkv gc') and prefill the document again")
        types = {"key": str, "fingerprint": dict, "kv_options": dict, "layout": str, "n_tokens": int,
                 "text_sha256": str, "token_ids_sha256": str, "dtype": str, "kv_dtype": str, "n_layers": int,
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
        if data["dtype"] not in KV_DTYPES:
            raise bad(f"field 'dtype' is {_short(data['dtype'])}")
        if data["kv_dtype"] not in KV_DTYPES:
            raise bad(f"field 'kv_dtype' is {_short(data['kv_dtype'])}")
        if data["block_checksums"] != checksums_of(version):
            raise bad(f"field 'block_checksums' is {_short(data['block_checksums'])}")
        limits = {"n_tokens": (0, MAX_TOKENS), "n_layers": (1, MAX_LAYERS), "kv_heads": (1, MAX_DIM),
                  "head_dim": (1, MAX_DIM), "block_size": (1, MAX_DIM)}
        for name, (lo, hi) in limits.items():
            if not lo <= data[name] <= hi:
                raise bad(f"field {name!r} is {_short(data[name])}, outside {lo}..{hi}")
        nb = data["n_blocks"]
        if len(nb) != data["n_layers"] or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in nb):
            raise bad("field 'n_blocks' must list one non-negative count per layer")
        if any(n * data["block_size"] > data["n_tokens"] for n in nb):
            raise bad("field 'n_blocks' holds more tokens than field 'n_tokens'")
        if _depth(data["fingerprint"]) > 4 or _depth(data["kv_options"]) > 4:
            raise bad("field 'fingerprint' or 'kv_options' is nested too deeply")
        files = {}
        for fname in TENSOR_FILES:
            entry = data["files"].get(fname)
            if not isinstance(entry, dict) or isinstance(entry.get("bytes"), bool) \
                    or not isinstance(entry.get("bytes"), int) or not 8 <= entry["bytes"] <= MAX_TOKENS * MAX_DIM \
                    or not isinstance(entry.get("sha256"), str) or not SHA_RE.match(entry["sha256"]):
                raise bad(f"field 'files.{fname}' must give bytes and sha256")
            files[fname] = FileEntry(entry["bytes"], entry["sha256"])
        kw = {name: data[name] for name in types}
        kw["files"] = files
        manifest = cls(**kw, format=FORMAT_NAME, format_version=version)
        if manifest.content_key() != manifest.key:
            raise bad("field 'key' does not match the manifest's content (text_sha256, token_ids_sha256, "
                      "layout, fingerprint, kv_options)")
        return manifest

    def content_key(self) -> str:
        """The key this manifest's own fields give (must equal ``key``)."""
        return document_key(self.fingerprint, self.kv_options, self.layout, self.text_sha256,
                            self.token_ids_sha256)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion on hostile input)."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        item, d = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                return d
            todo.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _bracket_depth(raw: bytes) -> int:
    """Deepest ``[``/``{`` nesting of JSON text, strings skipped (checked before parsing)."""
    depth = deepest = 0
    in_string = escaped = False
    for b in raw:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:
                escaped = True
            elif b == 0x22:
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest


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
    compare("block_size", engine.config.block_size, manifest.block_size)
    return out


def check_compatible(manifest: Manifest, engine: Any, directory: Path) -> None:
    bad = mismatches(manifest, engine)
    if bad:
        raise CacheMismatchError(
            f"{Path(directory) / MANIFEST} was built for another model or option set; mismatching "
            f"field(s): {'; '.join(bad)}. Prefill the document with this engine instead")
