"""The examples in examples/ run offline on the embedded model (slow: real weights on a CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, cache_dir: Path, *args: str, timeout: float = 600) -> str:
    env = {**os.environ, "ACTQKV_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One cache for every example run here: the model is converted once, documents are reused."""
    return tmp_path_factory.mktemp("examples-cache")


@pytest.mark.parametrize("name", ["langchain_long_text.py", "llama_index_folder.py"])
def test_example_help(name, tmp_path):
    """Fast: the example imports and parses its arguments (no model is loaded)."""
    out = run_example(name, tmp_path, "--help", timeout=120)
    assert "usage:" in out


def test_example_data_is_shipped():
    assert (EXAMPLES / "data" / "harrowmere_chronicle.txt").stat().st_size > 5000
    assert len(list((EXAMPLES / "data" / "folder").glob("*.txt"))) >= 3


@pytest.mark.slow
def test_langchain_long_text(cache_dir):
    out = run_example("langchain_long_text.py", cache_dir)
    assert "Read harrowmere_chronicle.txt:" in out and "memory blocks" in out
    assert out.count("\nQ: ") == 3 and out.count("\nA: ") == 3
    assert "document tokens reused" in out and "source tokens" in out


@pytest.mark.slow
def test_llama_index_folder_reuses_the_cache_in_a_second_run(cache_dir):
    first = run_example("llama_index_folder.py", cache_dir)
    assert "cache: 0/3 documents reused" in first and first.count("cache miss") == 3
    picked = first.split("documents picked: ")[1].splitlines()[0]
    assert "observatory.txt" in picked and "orchard.txt" in picked and "lighthouse.txt" not in picked
    assert "sources:" in first
    second = run_example("llama_index_folder.py", cache_dir)
    assert "cache: 3/3 documents reused" in second and second.count("cache hit") == 3
    # greedy decoding on the same cached state: the same answers
    assert first.split("Q (the folder)")[1].split("   (")[0] == second.split("Q (the folder)")[1].split("   (")[0]
