import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from tiny_models import byte_tokenizer, tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Tests never write into the user's real cache, and never start a resident server unless they
    ask for one (tests/test_server.py)."""
    monkeypatch.setenv("ACTQKV_CACHE_DIR", str(tmp_path / "actqkv-cache"))
    monkeypatch.setenv("ACTQKV_SERVER", "off")


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def make_engine(tokenizer):
    """Engine over a tiny random model: make_engine(arch="llama", method="actqkv", **options)."""
    from actqkv_llm import Engine

    def make(arch: str = "llama", method: str = "actqkv", cache=False, **options):
        return Engine(tiny_model(arch), tokenizer, method=method, progress=False, cache=cache, **options)

    return make
