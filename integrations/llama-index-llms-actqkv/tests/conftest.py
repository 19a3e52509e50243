"""Tiny random models for these tests come from the repository's tests/tiny_models.py (offline:
built from configs, a byte tokenizer with a ChatML template)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Tests never write into the user's real cache."""
    monkeypatch.setenv("ACTQKV_CACHE_DIR", str(tmp_path / "actqkv-cache"))
