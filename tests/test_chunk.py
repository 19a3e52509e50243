"""A prefill chunk's execution blocks in one batch (attention/chunk.py) give the reference loop's result."""

import pytest
import torch

import actqkv_llm.attention.chunk as chunk
from actqkv_llm.retrieval.probe import ActivationStats


@pytest.fixture
def batched_calls(monkeypatch):
    """Counts the chunks that ran batched, so a test knows the batch really ran."""
    calls = []
    real = chunk.attend_chunk

    def spy(ctx, layer, plan, *args):
        calls.append(plan)
        return real(ctx, layer, plan, *args)

    monkeypatch.setattr("actqkv_llm.attention.step.attend_chunk", spy)
    return calls


@pytest.fixture
def aligned_calls(monkeypatch):
    """Per fused attention call of a batched chunk: ``(execution blocks, the first from which on the
    causal mask aligned to the keys' end serves, no mask built)``."""
    calls = []
    real = chunk._attend_fused

    def spy(q, *args):
        calls.append((q.shape[1], args[-1][0]))
        return real(q, *args)

    monkeypatch.setattr(chunk, "_attend_fused", spy)
    return calls


def _state(doc):
    out = []
    for m in doc.state.memory:
        out += [m.local_k, m.local_score, m.sink_k]
        if m.n_blocks:
            out += [m.summaries.all(), m.blocks.keys, m.blocks.values]
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
@pytest.mark.parametrize("method", ["actqkv", "quest"])
def test_batched_chunks_equal_the_reference_loop(make_engine, batched_calls, aligned_calls, arch, method):
    # 1700 tokens, window 1024: chunks at exact positions, at the fixed angle, and a short last one
    ids = torch.randint(0, 256, (1700,), generator=torch.Generator().manual_seed(1))
    question = torch.randint(0, 256, (5,), generator=torch.Generator().manual_seed(2))
    runs = []
    for batch in (False, True):
        eng = make_engine(arch, method=method, batch_prefill=batch)
        doc = eng.prefill_ids(ids)
        runs.append((doc, doc.last_logits, eng.generate_ids(doc, question, max_new_tokens=8)))
        if not batch:
            assert not batched_calls
    (ref, ref_logits, ref_tokens), (got, got_logits, got_tokens) = runs
    assert batched_calls and any(p.n_blocks[0] < p.n_blocks[-1] for p in batched_calls)
    assert {len(p.sizes) for p in batched_calls} >= {16, 6}   # full chunks and the padded last one
    # the default inside the window (exact positions, one fused call): execution blocks that see full
    # sinks, as many blocks and equal windows take the aligned causal mask: whole chunks, and the end
    # of a document's first chunk after the execution blocks that build theirs (quest keeps memory
    # at the fixed angle: no fused call)
    if method == "actqkv":
        assert any(a == 0 for _, a in aligned_calls) and any(0 < a < n for n, a in aligned_calls), aligned_calls
    else:
        assert not aligned_calls
    assert got_tokens == ref_tokens
    torch.testing.assert_close(got_logits, ref_logits, atol=1e-4, rtol=1e-4)
    for a, b in zip(_state(got), _state(ref)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for m in got.state.memory:   # the window holds its own storage, not the chunk's it came from
        for x in (m.local_k, m.local_v):
            assert x.untyped_storage().nbytes() == x.numel() * x.element_size()
    for r_got, r_ref in zip(got.state.retrieval, ref.state.retrieval):   # what the budget reads
        assert r_got.entropy_count == r_ref.entropy_count
        assert r_got.entropy_mean == pytest.approx(r_ref.entropy_mean, abs=1e-4)


def test_a_chunk_crossing_the_native_window_batches_in_two(make_engine, batched_calls):
    """A chunk crossing the native window batches twice: its execution blocks that end inside the
    window (memory at exact positions), then the rest (the fixed angle), numbered on from the
    first batch's; it gives the loop's logits and state (it used to loop up to the crossing: 32 of a
    16K piece's 64 execution blocks on an 8K-window model). A document's first
    chunk batches whole: its first execution blocks see no sinks and no blocks, the one that
    overflows the window makes the sinks, and each later one sees them."""
    eng = make_engine(prefill_chunk=384, batch_prefill=True)
    cfg = eng.config
    assert (cfg.exec_block, cfg.n_sink, cfg.n_local, eng.adapter.native_window) == (32, 8, 64, 1024)
    ids = torch.randint(0, 256, (1200,), generator=torch.Generator().manual_seed(1))
    doc = eng.prefill_ids(ids)
    layers = len(eng.adapter.memory_layers)
    assert len(batched_calls) == 5 * layers
    seen = sorted({(p.first_slot, sum(p.sizes)) for p in batched_calls})
    # 0..384 all batched; 384..768 all batched; 768..1152: 8 blocks up to 1024 batched at exact
    # positions, the 128 after them at the fixed angle; 1152..1200 batched
    assert seen == [(0, 48), (0, 256), (0, 384), (8, 128)]
    loop = make_engine(prefill_chunk=384, batch_prefill=False).prefill_ids(ids)
    torch.testing.assert_close(doc.last_logits, loop.last_logits, atol=1e-4, rtol=1e-4)
    for a, b in zip(_state(doc), _state(loop)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    first = batched_calls[0]
    # the window (64) overflows at the third execution block by 32 tokens: 8 leave as sinks, the other
    # 24 rounded up to 2 whole blocks of 16, as make_room has them leave
    assert cfg.block_size == 16
    assert first.to_sink == 8 and first.n_sinks[:3] == (0, 0, 8) and set(first.n_sinks[2:]) == {8}
    assert first.n_blocks[:3] == (0, 0, 2) and first.win_start[:3] == (0, 0, 40)


@pytest.mark.parametrize("n", [40, 97, 400])
def test_a_short_document_batched_from_its_first_token_equals_the_loop(make_engine, batched_calls, n):
    """Shorter than the window, overflowing it once, filling memory: the first chunk batched whole
    (no sinks nor blocks at first) gives the loop's logits, tokens, sinks and blocks."""
    ids = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n))
    runs = []
    for batch in (False, True):
        eng = make_engine(n_sink=4, n_local=48, exec_block=16, block_size=8, budget=4 + 48 + 8 * 3,
                          batch_prefill=batch)
        doc = eng.prefill_ids(ids)
        runs.append((doc.last_logits, eng.generate_ids(doc, [5, 6, 7], max_new_tokens=5),
                     [(m.n_sink, m.n_blocks) for m in doc.state.memory]))
    assert batched_calls and all(p.first_slot == 0 for p in batched_calls)
    torch.testing.assert_close(runs[1][0], runs[0][0], atol=1e-4, rtol=1e-4)
    assert runs[1][1:] == runs[0][1:]


def test_methods_reading_summaries_never_batch(make_engine, batched_calls):
    for method in ("infllm", "actqkv-paper", "acre", "streaming"):
        make_engine(method=method, batch_prefill=True).prefill_ids(torch.randint(0, 256, (1200,)))
    assert not batched_calls


def test_auto_batches_on_accelerators_and_loops_on_the_cpu(make_engine, batched_calls):
    """The CPU default is the reference loop (measured faster there); an accelerator batches."""
    from actqkv_llm import RetrievalConfig
    from actqkv_llm.errors import ConfigError

    assert RetrievalConfig().batch_prefill == "auto"
    assert not chunk.batches_on("auto", torch.device("cpu")) and chunk.batches_on("auto", torch.device("cuda"))
    assert chunk.batches_on(True, torch.device("cpu")) and not chunk.batches_on(False, torch.device("cuda"))
    make_engine(prefill_chunk=384).prefill_ids(torch.randint(0, 256, (1200,)))
    assert not batched_calls
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="batch_prefill must be True, False or 'auto'"):
            RetrievalConfig(batch_prefill=bad)


def test_block_statistics_equal_token_by_block_updates():
    torch.manual_seed(0)
    x = torch.randn(70, 12) * 3 + 5
    seq, batch = ActivationStats(12, "cpu"), ActivationStats(12, "cpu")
    seq.update(x[:9])
    batch.update(x[:9])
    sizes = (16, 16, 16, 13)
    means, variances = batch.update_blocks(x[9:], sizes)
    a = 9
    for i, t in enumerate(sizes):
        seq.update(x[a:a + t])
        a += t
        torch.testing.assert_close(means[i], seq.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(variances[i], seq.var, atol=1e-4, rtol=1e-4)
    assert batch.count == seq.count == 70
    torch.testing.assert_close(batch.m2, seq.m2, atol=1e-3, rtol=1e-5)


def test_the_aligned_mask_starts_where_every_later_execution_block_sees_the_same_layout():
    """``aligned_from``: the suffix of execution blocks with full sinks, the largest pick and the last
    one's window length; none where the buffers' window is shorter than those keys need (a chunk
    ending in a short execution block whose old keys are more than the others')."""
    def plan(sizes, n_loc, n_sinks):
        n = len(sizes)
        return chunk.ChunkPlan(256, 0, sizes, (0,) * n, n_loc, (9,) * n, n_sinks, 0, 0)

    width = lambda p: max(a + b for a, b in zip(p.n_loc, p.sizes))
    p = plan((256, 256, 256, 44), (100, 200, 320, 320), (40, 64, 64, 64))
    assert chunk.aligned_from(p, [3, 5, 5, 5], 5, 64, width(p)) == 2      # the second's window is shorter
    assert chunk.aligned_from(p, [3, 5, 4, 5], 5, 64, width(p)) == 3      # the third picks fewer
    p = plan((256, 256), (320, 320), (64, 64))
    assert chunk.aligned_from(p, [5, 5], 5, 64, width(p)) == 0
    assert chunk.aligned_from(p, [5, 5], 5, 65, width(p)) == 2             # sinks not all formed
    p = plan((256, 44), (300, 320), (64, 64))
    assert chunk.aligned_from(p, [5, 5], 5, 64, width(p)) == 2             # 320 + 256 keys > the buffers' 556
