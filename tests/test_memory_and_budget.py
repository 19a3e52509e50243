"""Beyond the window: memory blocks form, the KV attended per step stays within the budget, and
questions never leak into the document or into each other."""

import pytest
import torch

from actqkv_llm import RetrievalConfig
from actqkv_llm.retrieval.budget import DynamicCutoff, normalized_entropy
from actqkv_llm.retrieval.probe import ActivationStats, activation_probe, mean_probe
from tiny_models import SMALL


def _prefill_logged(eng, n, seed=0):
    ids = torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(seed))
    doc = eng.prefill_ids(ids)
    return doc


@pytest.mark.parametrize("method", ["actqkv", "actqkv-paper", "quest", "infllm", "acre", "streaming"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_kv_attended_per_step_never_exceeds_budget(make_engine, method, arch):
    extra = dict(l1_budget=8) if method == "acre" else {}
    eng = make_engine(arch, method=method, **SMALL, **extra)
    cfg = eng.config
    sess = eng.prefill_ids(torch.randint(0, 250, (20,))).session()  # any session will do
    sess.record_kv = True
    sess.forward(torch.randint(0, 250, (700,), generator=torch.Generator().manual_seed(3)))
    for _ in range(5):
        sess.forward(torch.randint(0, 250, (1,)), phase="decode")
    mem_layers = eng.adapter.memory_layers
    assert sess.memory[mem_layers[0]].n_blocks > 10 or method == "streaming"
    checked = 0
    for step in sess.kv_log:
        slots = {s for s, _ in step}
        for slot in slots:
            per_layer = {layer: n for (s, layer), n in step.items() if s == slot and layer in mem_layers}
            assert max(per_layer.values()) <= cfg.max_kv_per_layer
            assert sum(per_layer.values()) <= len(mem_layers) * cfg.budget
            checked += 1
    assert checked > 40


def test_memory_is_linear_in_document_length(make_engine):
    """Every token is stored exactly once (sinks + blocks + window) and the work per step is bounded."""
    eng = make_engine(**SMALL)
    for n in (300, 900):
        doc = _prefill_logged(eng, n)
        mem = doc.state.memory[0]
        assert mem.n_sink + mem.n_blocks * eng.config.block_size + mem.n_local == n
        assert mem.n_local <= eng.config.n_local


def test_questions_do_not_leak(make_engine):
    eng = make_engine(**SMALL)
    doc = eng.prefill("The pass key is 4242. " + "Filler text goes here. " * 40)
    before = (doc.n_blocks, doc.state.memory[0].local_k.clone(), doc.state.n_tokens,
              doc.state.retrieval[0].stats.count)
    a1 = eng.ask(doc, "What is the pass key?", max_new_tokens=12)
    eng.ask(doc, "Something else entirely, and much longer than the first question was. " * 3, max_new_tokens=12)
    a3 = eng.ask(doc, "What is the pass key?", max_new_tokens=12)
    assert a1 == a3
    assert doc.n_blocks == before[0] and doc.state.n_tokens == before[2]
    assert torch.equal(doc.state.memory[0].local_k, before[1])
    assert doc.state.retrieval[0].stats.count == before[3]


def test_long_question_is_processed_in_chunks(make_engine):
    eng = make_engine(**SMALL)
    doc = eng.prefill("Some document text. " * 30)
    q = "Please consider this long question. " * 10  # > n_local tokens (byte tokenizer)
    assert len(eng.tokenizer(q)["input_ids"]) > eng.config.n_local
    ans = eng.answer(doc, q, max_new_tokens=4)
    assert ans.usage.prompt_tokens > doc.n_tokens + eng.config.n_local


def test_offloaded_blocks_give_the_same_answer(make_engine):
    """Blocks in host memory behind the device-side LRU cache give exactly what in-place blocks give."""
    text = "alpha beta gamma delta " * 40
    base = make_engine(**SMALL)
    off = make_engine(**SMALL, offload=True, device_cache_blocks=6)
    d1, d2 = base.prefill(text), off.prefill(text)
    torch.testing.assert_close(d1.last_logits, d2.last_logits)
    assert base.ask(d1, "Which words?", max_new_tokens=8) == off.ask(d2, "Which words?", max_new_tokens=8)
    cache = d2.state.memory[0].blocks.cache
    assert cache.misses > 0 and cache.hits > 0


def test_sources_point_at_document_blocks(make_engine):
    eng = make_engine(**SMALL)
    doc = eng.prefill("Lorem ipsum dolor sit amet. " * 40)
    ans = eng.answer(doc, "What?", max_new_tokens=3)
    assert ans.sources, "retrieval attended to no block"
    for s in ans.sources:
        assert 0 <= s.start < s.end <= doc.n_tokens and 0 < s.score <= 1
        assert s.text == eng.tokenizer.decode(doc.token_ids[s.start:s.end].tolist())
    assert [s.score for s in ans.sources] == sorted((s.score for s in ans.sources), reverse=True)


# ---------------------------------------------------------------------- retrieval pieces
def test_dynamic_cutoff_shares_total_and_favours_high_entropy():
    entropies = {0: 0.9, 1: 0.1, 2: 0.5, 3: 0.5}
    cut = DynamicCutoff(avg=10, lo=3, hi=20, memory_layers=[0, 1, 2, 3], entropy=entropies.__getitem__)
    ks = [cut.blocks_for(0, layer, 100) for layer in range(4)]
    assert sum(ks) <= 40 and all(3 <= k <= 20 for k in ks)
    assert ks[0] > ks[2] > ks[1]


def test_dynamic_cutoff_respects_available_blocks():
    cut = DynamicCutoff(avg=10, lo=3, hi=20, memory_layers=[0, 1], entropy=lambda i: 1.0)
    assert cut.blocks_for(0, 0, 4) == 4
    assert cut.blocks_for(0, 1, 100) <= 20


def test_normalized_entropy_bounds():
    assert float(normalized_entropy(torch.zeros(16))) == pytest.approx(1.0)
    assert float(normalized_entropy(torch.tensor([100.0] + [0.0] * 15))) < 0.01


def test_activation_probe_is_dominated_by_the_anchor_token():
    torch.manual_seed(0)
    q = torch.randn(2, 32, 8) * 0.1
    q[:, 7] = 5.0  # an outlier "anchor" token
    stats = ActivationStats(16, torch.device("cpu"))
    stats.update(q.permute(1, 0, 2).reshape(32, 16))
    p = activation_probe(q, kv_heads=2, stats=stats)
    m = mean_probe(q, kv_heads=2)
    anchor = q[:, 7]
    cos = torch.nn.functional.cosine_similarity
    assert cos(p.flatten(), anchor.flatten(), 0) > 0.99
    assert cos(p.flatten(), anchor.flatten(), 0) > cos(m.flatten(), anchor.flatten(), 0)


def test_stats_are_per_document(make_engine):
    eng = make_engine(**SMALL)
    d1 = eng.prefill("one document " * 30)
    d2 = eng.prefill("another text " * 10)
    n1, n2 = (d.state.retrieval[1].stats.count for d in (d1, d2))
    assert n1 == d1.n_tokens and n2 == d2.n_tokens


def test_config_defaults_follow_actqkv_for_8k_models():
    cfg = RetrievalConfig.for_model(8192)
    assert (cfg.block_size, cfg.n_sink, cfg.n_local, cfg.exec_block, cfg.repr_topk) == (32, 64, 512, 256, 4)
    assert cfg.avg_blocks == 46 and cfg.block_range == (32, 92)
    assert cfg.n_sink + cfg.n_local + cfg.avg_blocks * cfg.block_size == 2048


def test_entropy_means_match_the_running_mean_read_in_one_go():
    from actqkv_llm.retrieval.methods import LayerRetrievalState, entropy_means

    a, b, fresh = LayerRetrievalState(), LayerRetrievalState(), LayerRetrievalState()
    for h in (0.2, 0.4, 0.9):
        a.observe_entropy(torch.tensor(h))
    b.observe_entropy(0.5)  # a plain float (restored from a cache) mixes with device values
    means = entropy_means([a, b, fresh])
    assert means == pytest.approx([0.5, 0.5, 1.0])
    assert a.entropy_mean == pytest.approx(0.5) and fresh.entropy_mean == 1.0


def test_an_entropy_observed_again_is_added_on_the_host():
    """Held candidates' entropy is observed at every decode step: once read, observing the same
    tensor again adds its value on the host (no device call, nothing left to read); a new tensor
    waits for the next read; the running mean is the sum of every observation in order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from actqkv_llm.retrieval.methods import LayerRetrievalState, entropy_means

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    st = LayerRetrievalState()
    held, other = torch.tensor(0.25), torch.tensor(0.75)
    st.observe_entropy(held)
    st.observe_entropy(held)            # before any read: counted twice, read once
    assert len(st.unread) == 1 and st.unread[0][1] == 2
    assert entropy_means([st]) == [pytest.approx(0.25)]
    with Calls() as calls:
        for _ in range(5):
            st.observe_entropy(held)
        means = entropy_means([st])
    assert calls.n == 0 and st.unread == [] and st.entropy_count == 7
    assert means == [pytest.approx(0.25)]
    st.observe_entropy(other)
    assert len(st.unread) == 1 and st.entropy_total == pytest.approx(7 * 0.25)
    want = 0.0
    for v in [0.25] * 7 + [0.75]:
        want += v
    assert st.entropy_mean == want / 8
    fork = st.fork()
    assert (fork.entropy_total, fork.entropy_count) == (st.entropy_total, 8) and fork.unread == []


def test_stacked_blocks_gather_mixes_document_and_question_blocks():
    from actqkv_llm.memory.blocks import GrowableBlocks, StackedBlocks

    base_k = torch.arange(3 * 2 * 4 * 5, dtype=torch.float32).reshape(3, 2, 4, 5)
    base = GrowableBlocks.from_tensors(base_k, -base_k)
    own = GrowableBlocks(2, 4, 5, torch.float32, "cpu")
    own.append(base_k[:2] + 1000, -(base_k[:2] + 1000))
    stacked = StackedBlocks(base, own)
    idx = torch.tensor([0, 2, 3, 4])  # two document blocks, then both question blocks
    k, v = stacked.gather(idx, torch.device("cpu"))
    expect = torch.cat([base_k[0], base_k[2], base_k[0] + 1000, base_k[1] + 1000], 1)
    assert torch.equal(k, expect) and torch.equal(v, -expect)
    k_doc, _ = stacked.gather(torch.tensor([1]), torch.device("cpu"))
    assert torch.equal(k_doc, base_k[1])


def test_gather_parts_reads_what_the_stores_gather():
    """One read of each device-resident store (the static decode step's new scoring) and a sliced
    range (a new block's digests) give the blocks StackedBlocks.gather gives: shared and per-head ids,
    ids in the question's own blocks, none there, and a store that lives elsewhere has no device parts."""
    from actqkv_llm.memory.block_cache import HostBlocks
    from actqkv_llm.memory.blocks import GrowableBlocks, StackedBlocks, gather_parts, range_of_parts

    g = torch.Generator().manual_seed(0)
    base = GrowableBlocks.from_tensors(torch.randn(6, 2, 4, 5, generator=g), torch.randn(6, 2, 4, 5, generator=g))
    own = GrowableBlocks(2, 4, 5, torch.float32, "cpu")
    stacked = StackedBlocks(base, own)
    cpu = torch.device("cpu")
    for idx in (torch.tensor([[0, 3, 5]]), torch.tensor([[0, 1, 5], [2, 4, 5]])):   # no own blocks yet
        want = stacked.gather(idx[0] if idx.shape[0] == 1 else idx, cpu)
        assert all(torch.equal(a, b) for a, b in zip(gather_parts(idx, stacked.device_parts(cpu)), want))
    own.append(torch.randn(3, 2, 4, 5, generator=g), torch.randn(3, 2, 4, 5, generator=g))
    for idx in (torch.tensor([[0, 2, 6, 8]]), torch.tensor([[1, 5, 6, 7], [0, 2, 3, 8]]), torch.tensor([[1, 2, 3, 4]])):
        want = stacked.gather(idx[0] if idx.shape[0] == 1 else idx, cpu)
        got = gather_parts(idx, stacked.device_parts(cpu))
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    for a, b in ((0, 6), (2, 5), (5, 8), (7, 9), (0, 9)):   # ranges in the document's, across, in the own
        want = stacked.gather(torch.arange(a, b), cpu)
        got = range_of_parts(stacked.device_parts(cpu), a, b)
        assert all(torch.equal(x, y) for x, y in zip(got, want))
        assert range_of_parts(stacked.device_parts(cpu), a, b, values=False)[1] is None
    assert base.device_parts(torch.device("meta")) is None
    host = HostBlocks(GrowableBlocks(2, 4, 5, torch.float32, "cpu"), cpu, capacity=4)
    assert StackedBlocks(host, own).device_parts(cpu) is None


def test_one_query_token_probes_as_the_probe_does():
    """A decode step's probe (one query token) skips the statistics: the same tokens, bit for bit,
    as every probe gives with them, and no weight tensor (None: weight 1, what every probe gives
    one token)."""
    from actqkv_llm.retrieval.methods import PROBES, LayerRetrievalState

    g = torch.Generator().manual_seed(0)
    stats = ActivationStats(4 * 8, torch.device("cpu"))
    stats.update(torch.randn(20, 4 * 8, generator=g))
    state = LayerRetrievalState(stats)
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(4, 1, 8, generator=g).to(dtype)
        for name, probe in PROBES.items():
            tokens, weights = probe()(q, state)
            fast_tokens, fast_weights = probe().one_token(q)
            assert fast_tokens.dtype == tokens.dtype and torch.equal(fast_tokens, tokens), name
            assert fast_weights is None and torch.equal(weights.float(), torch.ones(1)), name


def test_source_tally_accumulates_on_device_and_grows():
    from actqkv_llm.session import SourceTally

    t = SourceTally()
    t.add_picked(torch.tensor([0, 2]), 3)
    t.add_mass(torch.tensor([0, 2]), torch.tensor([0.25, 0.5]), 3)
    t.add_picked(torch.tensor([2, 7]), 8)
    t.add_mass(torch.tensor([7]), torch.tensor([1.0]), 8)
    assert t.picks_by_block() == {0: 1, 2: 2, 7: 1}
    assert t.mass_by_block() == pytest.approx({0: 0.25, 2: 0.5, 7: 1.0})


def test_cosine_scores_match_the_definition_with_cached_norms():
    import torch.nn.functional as F

    from actqkv_llm.memory.summaries import SummaryKeys
    from actqkv_llm.retrieval.score import cosine_scores

    g = torch.Generator().manual_seed(0)
    keys = SummaryKeys(2, 8, torch.float32, "cpu")
    keys.append(torch.randn(5, 2, 8, generator=g))
    child = keys.fork()
    child.append(torch.randn(3, 2, 8, generator=g))
    probe, question = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    flat = child.all().reshape(8, -1)
    expect = F.cosine_similarity(flat, probe.reshape(1, -1)) + 4.0 * F.cosine_similarity(flat, question.reshape(1, -1))
    got = cosine_scores(probe, child.parts(), question, 4.0, child.inverse_norms())
    assert torch.allclose(got, expect, atol=1e-5)
    child.append(torch.randn(2, 2, 8, generator=g))  # the cache follows appends
    flat = child.all().reshape(10, -1)
    expect = F.cosine_similarity(flat, probe.reshape(1, -1))
    assert torch.allclose(cosine_scores(probe, child.parts(), None, 0.0, child.inverse_norms()), expect, atol=1e-5)


def test_activation_stats_single_token_updates_match_batched_ones():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g) * 3 + 1
    one, batched = ActivationStats(6, torch.device("cpu")), ActivationStats(6, torch.device("cpu"))
    batched.update(x[:30])
    batched.update(x[30:])
    one.update(x[:30])
    for row in x[30:]:
        one.update(row[None])
    assert torch.allclose(one.mean, x.mean(0), atol=1e-5) and torch.allclose(one.mean, batched.mean, atol=1e-5)
    assert torch.allclose(one.var, x.var(0, unbiased=False), atol=1e-4)
    assert torch.allclose(one.var, batched.var, atol=1e-4)


def test_device_block_cache_keeps_its_slots_when_a_block_is_asked_twice():
    """StackedBlocks clamps indices, so one request can name a block twice: it takes one slot."""
    from actqkv_llm.memory.block_cache import DeviceBlockCache

    store = torch.arange(10 * 2 * 4 * 3, dtype=torch.float32).reshape(10, 2, 4, 3)
    cache = DeviceBlockCache(lambda b, h, k, v: (store[b, h], -store[b, h]), 10, (2, 4, 3), torch.float32, "cpu", 4)
    k, _ = cache.gather(torch.tensor([9, 9, 9]), torch.device("cpu"))
    assert torch.equal(k, store[[9, 9, 9]].permute(1, 0, 2, 3).reshape(2, 12, 3))
    assert cache.resident == 2 and cache.resident + cache.free == 8   # one slot per head, none lost
    for ids in ([0, 1, 2], [3, 4, 5], [6, 7, 8]):               # needs all four slots in turn
        k, v = cache.gather(torch.tensor(ids), torch.device("cpu"))
        assert torch.equal(v, -store[ids].permute(1, 0, 2, 3).reshape(2, 12, 3))


def test_device_block_cache_holds_each_heads_own_blocks_not_every_head_of_them():
    """Per-head selection: two heads asking for eight different blocks fill eight (block, head)
    slots of a four-block cache; asked again, nothing is read (a cache of whole blocks would have
    read all eight blocks through, on every step)."""
    from actqkv_llm.memory.block_cache import DeviceBlockCache

    store = torch.randn(10, 2, 4, 3)
    reads = []

    def reader(b, h, keys, values):
        reads.append(len(b))
        return store[b, h], -store[b, h]

    cache = DeviceBlockCache(reader, 10, (2, 4, 3), torch.float32, "cpu", 4)
    idx = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    want = torch.stack([store[idx[h], h].reshape(16, 3) for h in range(2)])
    for _ in range(2):
        k, v = cache.gather(idx, torch.device("cpu"))
        torch.testing.assert_close(k, want, rtol=0, atol=0)
        torch.testing.assert_close(v, -want, rtol=0, atol=0)
    assert reads == [8, 8] and (cache.misses, cache.hits) == (8, 8)
    cache.gather(torch.tensor([[8, 9, 0, 1], [8, 9, 4, 5]]), torch.device("cpu"))  # evicts only what it must
    assert reads == [8, 8, 4, 4] and cache.resident == 8   # keys and values of each pair read once


def test_sink_keys_are_placed_once_per_set_of_sinks_and_forks_share_them():
    from actqkv_llm.memory.layer_memory import LayerMemory

    mem = LayerMemory(2, 4, torch.float32, "cpu", block_size=4)
    mem.sink_k = torch.randn(2, 3, 4)
    calls = []

    def place(k):
        calls.append(k)
        return k * 2

    first = mem.placed_sink_keys(place)
    assert mem.placed_sink_keys(place) is first and len(calls) == 1
    assert mem.fork().placed_sink_keys(place) is first and len(calls) == 1
    mem.sink_k = torch.cat([mem.sink_k, torch.randn(2, 1, 4)], 1)      # a new set of sinks: placed again
    torch.testing.assert_close(mem.placed_sink_keys(place), mem.sink_k * 2)
    assert len(calls) == 2


def test_device_block_cache_reads_only_the_parts_asked_for():
    """The rerank gathers its candidates' keys only: their values are read when attention first
    asks for them, and never for the candidates it drops."""
    from actqkv_llm.memory.block_cache import DeviceBlockCache

    store = torch.randn(10, 2, 4, 3)
    reads = []

    def reader(b, h, keys, values):
        reads.append((len(b), keys, values))
        return (store[b, h] if keys else None), (-store[b, h] if values else None)

    cache = DeviceBlockCache(reader, 10, (2, 4, 3), torch.float32, "cpu", 8)
    k, v = cache.gather(torch.tensor([0, 1, 2, 3]), torch.device("cpu"), values=False)
    assert v is None and torch.equal(k, store[[0, 1, 2, 3]].permute(1, 0, 2, 3).reshape(2, 16, 3))
    assert reads == [(8, True, False)]
    k, v = cache.gather(torch.tensor([1, 2]), torch.device("cpu"), keys=False)
    assert k is None and torch.equal(v, -store[[1, 2]].permute(1, 0, 2, 3).reshape(2, 8, 3))
    assert reads[1:] == [(4, False, True)]
    k, v = cache.gather(torch.tensor([1, 2]), torch.device("cpu"))  # both held now: nothing read
    assert len(reads) == 2 and torch.equal(v, -store[[1, 2]].permute(1, 0, 2, 3).reshape(2, 8, 3))


@pytest.mark.parametrize("offload", [False, True])
def test_a_prefill_allocates_its_block_store_once(make_engine, offload, monkeypatch):
    """The store takes room for the whole document up front (on the device or, offloaded, in host
    memory) instead of doubling as blocks arrive; a question's own blocks still grow."""
    from actqkv_llm.memory.blocks import GrowableBlocks

    grown = []
    real = GrowableBlocks._grow
    monkeypatch.setattr(GrowableBlocks, "_grow", lambda self, cap: (grown.append(cap), real(self, cap))[1])
    eng = make_engine(prefill_chunk=384, offload=offload)
    n = 1500
    doc = eng.prefill_ids(torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(0)))
    most = -(-n // eng.config.block_size)
    layers = [m for m, k in zip(doc.state.memory, eng.adapter.kinds) if k.memory and k.window is None]
    assert grown == [most] * len(layers)          # one allocation per layer, none while prefilling
    for mem in layers:
        store = mem.blocks.store if offload else mem.blocks
        assert mem.n_blocks > 0 and store._k.shape[0] == most >= mem.n_blocks
    grown.clear()
    eng.generate_ids(doc, torch.randint(0, 256, (700,)), max_new_tokens=1)   # a long question adds blocks
    assert grown and all(cap < most for cap in grown)


def test_layers_forked_together_store_their_blocks_at_once_as_each_alone():
    """A question's own blocks of every layer live in one joint store: blocks appended by one layer
    at a time (growing it) and blocks leaving every layer at once (``leave_together``) give each
    layer the blocks, windows and positions that each layer's own eviction gives."""
    from actqkv_llm.memory.blocks import LayeredBlocks
    from actqkv_llm.memory.layer_memory import EvictionPolicy, LayerMemory, fork_layers, leave_together

    g = torch.Generator().manual_seed(0)
    policy = EvictionPolicy(capacity=40, n_sink=4, block_size=8, keep_blocks=True, keep_summaries=False)

    def layers():
        out = []
        for _ in range(3):
            m = LayerMemory(2, 16, torch.float32, torch.device("cpu"), 8)
            m.append_local(torch.randn(2, 44, 16, generator=g), torch.randn(2, 44, 16, generator=g))
            m.make_room(8, policy)   # 4 sinks, one block stored, 32 tokens in the window
            out.append(m)
        return out

    doc = layers()
    alone, together = [m.fork() for m in doc], fork_layers(doc)
    joint = together[0].blocks.own._joint
    assert isinstance(joint, LayeredBlocks) and [m.blocks.own for m in together] == joint.layers
    for a, b in zip(alone, together):   # one layer at a time, past the joint's capacity of 4
        for _ in range(5):
            k, v = torch.randn(2, 8, 16, generator=g), torch.randn(2, 8, 16, generator=g)
            a.append_local(k, v)
            b.append_local(k, v)
            a.make_room(8, policy)
            b.make_room(8, policy)
    assert joint._k.shape[1] >= 5 and all(m.blocks.own.n_blocks == 5 for m in together)
    k_all = torch.stack([m.local_k[:, :16] for m in together])
    v_all = torch.stack([m.local_v[:, :16] for m in together])
    for m in alone:
        m.leave_as_blocks(16, policy)
    assert leave_together(together, 16, policy, k_all, v_all)
    for a, b in zip(alone, together):
        assert (a.n_blocks, a.n_local, a.local_start) == (b.n_blocks, b.n_local, b.local_start) == (8, 16, 12 + 7 * 8)
        ids = torch.arange(a.n_blocks)
        for x, y in zip(a.blocks.gather(ids, "cpu"), b.blocks.gather(ids, "cpu")):
            assert torch.equal(x, y)
        assert torch.equal(a.local_k, b.local_k) and torch.equal(a.local_v, b.local_v)
    # not together: layers forked one by one, layers holding different counts, summary keys kept
    assert not leave_together(alone, 8, policy, k_all[:, :, :8], v_all[:, :, :8])
    together[1].make_room(40, policy)
    n_before = [m.n_blocks for m in together]
    assert not leave_together(together, 8, policy, k_all[:, :, :8], v_all[:, :, :8])
    assert [m.n_blocks for m in together] == n_before
    assert not leave_together(fork_layers(doc), 8, EvictionPolicy(40, 4, 8, True), k_all[:, :, :8], v_all[:, :, :8])


def test_forks_of_one_document_from_several_threads_read_its_entropies_one_at_a_time(make_engine, monkeypatch):
    """Questions on one document from several threads (LangChain's batch, a server): the first forks
    of a fresh document read its unread entropies into its totals, one fork at a time, so every fork
    starts from the totals one fork alone gives (two at once added them twice: a flaky batch test)."""
    import threading
    import time

    from actqkv_llm import session as session_mod
    from actqkv_llm.retrieval.methods import entropy_means

    eng = make_engine("llama", method="actqkv", block_size=8, n_sink=4, n_local=32, exec_block=16, budget=60)
    ids = torch.randint(0, 250, (300,), generator=torch.Generator().manual_seed(3))
    want = [(st.entropy_total, st.entropy_count) for st in eng.prefill_ids(ids).session(eng).retrieval]
    doc = eng.prefill_ids(ids)
    assert any(st.unread for st in doc._state.retrieval)   # a fresh document: its entropies not read yet
    inside, most = [0], [0]

    def slow(states):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.05)   # wide enough for the other threads to enter too, without the lock
        try:
            return entropy_means(states)
        finally:
            inside[0] -= 1
    monkeypatch.setattr(session_mod, "entropy_means", slow)
    start, forks = threading.Barrier(4), []

    def fork():
        start.wait()
        forks.append(doc.session(eng))
    threads = [threading.Thread(target=fork) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and len(forks) == 4
    for s in forks:
        assert [(st.entropy_total, st.entropy_count) for st in s.retrieval] == want
