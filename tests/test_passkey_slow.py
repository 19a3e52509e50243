"""Beyond the window, on real weights: SmolLM2-135M-Instruct (8K native window; named, not the default) finds a
passkey in a 32K-token document (4x its window) with ActQKV, where sinks + window alone cannot.

Slow (a few minutes on two CPU cores): run with ``python -m pytest -m slow``. It uses the benchmark's
own generator, so the sample is the one `actqkv bench quality --tasks passkey --lengths 32K` builds
at depth 0.5 (the GPU run in docs/benchmarks.md answered it correctly too).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_passkey_at_4x_the_native_window(tmp_path):
    from actqkv_llm import Engine
    from actqkv_llm.bench.quality import run_quality

    eng = Engine.from_name("smollm2", progress=False, cache=False)
    assert eng.native_window == 8192
    summary = run_quality(tmp_path, engine=eng, methods=["actqkv", "streaming"], tasks=["passkey"],
                          lengths=[32768], depths=[0.5], samples=1, progress=False, plots=False,
                          command="pytest")
    rows = {r["method"]: r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())}
    actqkv, streaming = rows["actqkv"], rows["streaming"]
    assert actqkv["doc_tokens"] > 4 * 8192 - 100            # the document really is 4x the window
    assert actqkv["error"] is None and actqkv["correct"], actqkv["first_line"]
    assert not streaming["correct"]                         # the needle is neither sink nor window
    assert summary["n_results"] == 2
