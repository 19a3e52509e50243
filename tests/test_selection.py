"""Block selection: key bounds, per-head gathers, the method presets, ACRE's refill volume and the
recall meter that judges them against full attention."""

import json

import pytest
import torch

from actqkv_llm import RetrievalConfig
from actqkv_llm.bench.meter import RecallMeter
from actqkv_llm.errors import ConfigError
from actqkv_llm.memory import GrowableBlocks, HostBlocks, StackedBlocks
from actqkv_llm.retrieval.budget import EntropyRefill
from actqkv_llm.retrieval.score import bound_logits, reduce_tokens
from tiny_models import SMALL


def test_bound_is_an_upper_bound_of_every_key_and_tight_for_one_key_blocks():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 3, 16, generator=g)           # 4 query heads, 3 tokens
    keys = torch.randn(10, 2, 8, 16, generator=g)     # 10 blocks, 2 KV heads, 8 tokens
    u = bound_logits(q, keys.amin(2), keys.amax(2))   # [4, 3, 10]
    kv_of_head = torch.arange(4) // 2
    true_best = torch.einsum("htd,nhbd->htnb", q, keys[:, kv_of_head]).amax(-1)
    assert (u >= true_best - 1e-5).all()
    one = keys[:, :, :1]
    exact = torch.einsum("htd,nhd->htn", q, one[:, kv_of_head, 0])
    torch.testing.assert_close(bound_logits(q, one.amin(2), one.amax(2)), exact)


def test_softmax_reduction_is_a_mass_estimate_per_kv_head():
    logits = torch.randn(4, 5, 7)
    w = torch.full((5,), 0.2)
    ev = reduce_tokens(logits, w, kv_heads=2, how="softmax", scaling=1.0)
    assert ev.shape == (2, 7)
    torch.testing.assert_close(ev.sum(-1), torch.full((2,), 2.0))   # 2 query heads per KV head
    mx = reduce_tokens(logits, w, kv_heads=2, how="max", scaling=1.0)
    torch.testing.assert_close(mx, logits.view(2, 2, 5, 7).amax((1, 2)))
    # no weights (a decode step's one token): weight 1, the query heads of a group summed
    one = logits[:, :1]
    torch.testing.assert_close(reduce_tokens(one, None, kv_heads=2, how="softmax", scaling=0.5),
                               reduce_tokens(one, torch.ones(1), kv_heads=2, how="softmax", scaling=0.5))
    torch.testing.assert_close(reduce_tokens(one, None, kv_heads=2, how="softmax", scaling=1.0),
                               torch.softmax(one, -1).view(2, 2, 7).sum(1))


def test_pinned_edges_are_the_first_block_and_the_last_available_one():
    from actqkv_llm.retrieval.methods import pin_edges

    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 9):
        ev = torch.randn(2, n, generator=g)
        for n_avail in sorted({1, max(1, n - 1), n}):
            want = ev.clone()
            want[:, 0] = float("inf")
            want[:, n_avail - 1] = float("inf")
            assert torch.equal(pin_edges(ev, n_avail), want), (n, n_avail)
            assert torch.equal(pin_edges(ev, torch.full((2,), n_avail)), want), (n, n_avail)
        assert not torch.isinf(ev).any()   # the evidence itself untouched


def _store(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(n, 2, 4, 8, generator=g), torch.randn(n, 2, 4, 8, generator=g)
    return GrowableBlocks.from_tensors(k, v), k, v


def test_per_head_gather_gives_each_head_its_own_blocks_in_every_store():
    store, k, v = _store()
    idx = torch.tensor([[1, 5, 7], [0, 5, 11]])
    want_k = torch.stack([k[idx[h], h].reshape(-1, 8) for h in range(2)])
    want_v = torch.stack([v[idx[h], h].reshape(-1, 8) for h in range(2)])
    for s in (store, HostBlocks(store, torch.device("cpu"), capacity=4)):
        gk, gv = s.gather(idx, torch.device("cpu"))
        torch.testing.assert_close(gk, want_k)
        torch.testing.assert_close(gv, want_v)
    # a question's blocks stacked on the document's: ids past the document come from its own store
    own, ok, ov = _store(3, seed=1)
    stacked = StackedBlocks(store, own)
    idx2 = torch.tensor([[2, 12, 14], [3, 4, 13]])
    gk, _ = stacked.gather(idx2, torch.device("cpu"))
    all_k = torch.cat([k, ok])
    torch.testing.assert_close(gk, torch.stack([all_k[idx2[h], h].reshape(-1, 8) for h in range(2)]))


def test_keys_or_values_alone_match_a_full_gather_in_every_store():
    store, _, _ = _store()
    own, _, _ = _store(3, seed=1)
    cpu = torch.device("cpu")
    for s, idx in ((store, torch.tensor([1, 5, 7])), (store, torch.tensor([[1, 5, 7], [0, 5, 11]])),
                   (HostBlocks(store, cpu, capacity=4), torch.tensor([[1, 5, 7], [0, 5, 11]])),
                   (StackedBlocks(store, own), torch.tensor([[2, 12, 14], [3, 4, 13]]))):
        k, v = s.gather(idx, cpu)
        k_only, none = s.gather(idx, cpu, values=False)
        none_k, v_only = s.gather(idx, cpu, keys=False)
        assert none is None and none_k is None
        torch.testing.assert_close(k_only, k, rtol=0, atol=0)
        torch.testing.assert_close(v_only, v, rtol=0, atol=0)


@pytest.mark.parametrize("per_head,positions", [(True, "exact"), (False, "fixed"), (True, "fixed")])
def test_rerank_hands_attention_the_same_keys_it_would_gather(make_engine, monkeypatch, per_head, positions):
    """The rerank stage passes the picked blocks' keys on (attention then gathers values only):
    the answer's logits equal those of gathering and placing the keys again, bit for bit."""
    from actqkv_llm.retrieval.methods import BlockRetrieval

    def run():
        eng = make_engine("llama", method="actqkv", per_head=per_head, positions=positions, rerank=3, **SMALL)
        doc = eng.prefill_ids(torch.randint(0, 250, (400,), generator=torch.Generator().manual_seed(6)))
        sess = doc.session()
        sess.forward(torch.tensor([3, 4, 5]), phase="question")
        return [sess.forward(torch.tensor([t]), phase="decode") for t in (7, 8, 9)]

    reused = run()
    rerank = BlockRetrieval._rerank_among
    monkeypatch.setattr(BlockRetrieval, "_rerank_among", lambda *a, **k: (rerank(*a, **k)[0], None))
    gathered = run()
    for a, b in zip(reused, gathered):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("method,probe,scorer,per_head", [
    ("actqkv", "activation-tokens", "bound", True), ("actqkv-paper", "activation", "cosine", False),
    ("infllm", "mean", "dot", False), ("quest", "tokens", "bound", True), ("acre", "tokens", "l1", True)])
def test_method_presets_and_overrides(method, probe, scorer, per_head):
    cfg = RetrievalConfig(method=method)
    assert (cfg.selection("probe"), cfg.selection("scorer"), cfg.selection("per_head")) == (probe, scorer, per_head)
    if scorer == "bound":
        assert RetrievalConfig(method=method, per_head=False).selection("per_head") is False


@pytest.mark.parametrize("options,match", [
    (dict(probe="median"), "probe must be one of"),
    (dict(method="actqkv-paper", per_head=True), "one block set per layer"),
    (dict(method="infllm", probe="tokens"), "takes one probe query"),
    (dict(method="actqkv", scorer="l1"), "only with method 'acre'"),
    (dict(method="acre", l1_budget=2000), "leaves room for"),
    (dict(positions="true"), "positions must be one of"),
])
def test_bad_selection_options_are_refused_clearly(options, match):
    with pytest.raises(ConfigError, match=match):
        RetrievalConfig(**options)


def test_selection_overrides_are_part_of_the_documents_kv_options():
    assert "scorer" not in RetrievalConfig(method="actqkv").kv_options()
    assert RetrievalConfig(method="actqkv", scorer="dot", probe="mean", per_head=False).kv_options()["scorer"] == "dot"


def test_acre_refills_few_blocks_for_focused_attention_and_many_for_diffuse():
    refill = EntropyRefill(2, 10)
    assert refill.blocks_for(0, 0, 100, torch.tensor(0.0)) == 2
    assert refill.blocks_for(0, 0, 100, torch.tensor(1.0)) == 10
    assert refill.blocks_for(0, 0, 100, torch.tensor(0.5)) == 6
    assert refill.blocks_for(0, 0, 4, torch.tensor(1.0)) == 4        # never more than there are
    assert refill.chosen == [2, 10, 6, 4]


def _measured(make_engine, method, n=500, **options):
    eng = make_engine("llama", method=method, **{**SMALL, **options})
    eng.meter = RecallMeter(document_every=1)
    doc = eng.prefill_ids(torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(4)))
    eng.generate_ids(doc, [5, 6, 7], max_new_tokens=3)
    return eng.meter.table()


def test_rerank_weighs_a_head_by_what_its_window_leaves_for_memory():
    """Two query heads share a KV head: A likes block 0 but looks almost only at its window, B likes
    block 1 and has little else to look at. Full attention gives block 1 more mass, and so must the
    rerank; a softmax over the candidates alone would let A's block win."""
    from types import SimpleNamespace

    from actqkv_llm.retrieval.methods import MemoryQuery, make_method

    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)    # [blocks, Hkv, B, d]
    mem = SimpleNamespace(blocks=GrowableBlocks.from_tensors(keys, keys.clone()), n_blocks=2,
                          kv_heads=1, block_size=1)
    q = torch.tensor([[[3.0, 0.0]], [[0.0, 2.0]]])                      # [H=2, T=1, d]
    method = make_method(RetrievalConfig(method="actqkv", keep_edges=False, rerank=2))
    evidence = torch.zeros(1, 2)

    def pick(context_lse):
        mq = MemoryQuery("fixed", lambda x: x, None, 1.0, "decode", context_lse=context_lse)
        cand = method._candidate_ids(mem, evidence, 1)
        keys = method._candidate_keys(mem, mq, cand, q.device)
        return method._rerank_among(q, mem, mq, cand, keys, 1)[0].tolist()

    assert pick(None) == [[0]]
    assert pick(lambda: torch.tensor([[[10.0], [0.0]]])) == [[1]]     # [Hkv, G*T, 1]


@pytest.mark.parametrize("chunk", [1 << 22, 100])
def test_candidate_mass_is_each_blocks_share_of_full_attention(monkeypatch, chunk):
    """The rerank's mass, computed in place and in chunks of rows (100 logits: two rows at a time
    here), is each block's share of a softmax over [its context | every candidate key], summed over
    the rows and the block's keys."""
    from actqkv_llm.retrieval import methods

    monkeypatch.setattr(methods, "RERANK_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(0)
    hkv, rows, m, b, d = 2, 5, 6, 4, 8
    q, k = torch.randn(hkv, rows, d, generator=g), torch.randn(hkv, m * b, d, generator=g) * 2
    ctx = torch.randn(hkv, rows, 1, generator=g)
    logits = torch.cat([ctx, q @ k.transpose(1, 2) * 0.5], -1).double()
    want = logits.softmax(-1)[..., 1:].sum(1).view(hkv, m, b).sum(-1)
    got = methods.candidate_mass(q, k, 0.5, ctx, b)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    alone = (q @ k.transpose(1, 2) * 0.5).double().softmax(-1).sum(1).view(hkv, m, b).sum(-1)
    torch.testing.assert_close(methods.candidate_mass(q, k, 0.5, None, b).double(), alone, rtol=1e-5, atol=1e-7)
    assert torch.allclose(alone.sum(-1), torch.full((hkv,), float(rows), dtype=torch.float64))  # each row's whole mass


@pytest.mark.parametrize("n,want", [(1, 3 * 4), (4, 3 * 4), (20, 20)])
def test_the_rerank_names_rerank_times_the_average_blocks_as_candidates(n, want):
    """One candidate count for every layer and step (what the static decode step's buffers hold):
    rerank x the average blocks per layer, the best by the scorer's evidence, never fewer than the
    step picks."""
    from types import SimpleNamespace

    from actqkv_llm.retrieval.methods import MemoryQuery, make_method

    cfg = RetrievalConfig(method="actqkv", block_size=1, repr_topk=1, n_sink=4, n_local=8, exec_block=4,
                          budget=4 + 8 + 4, rerank=3)                     # 4 blocks per layer on average
    assert cfg.avg_blocks == 4
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(40, 1, 1, 2, generator=g)
    mem = SimpleNamespace(blocks=GrowableBlocks.from_tensors(keys, keys.clone()), n_blocks=40,
                          kv_heads=1, block_size=1)
    method = make_method(cfg)
    evidence = torch.randn(1, 40, generator=g)
    mq = MemoryQuery("fixed", lambda x: x, None, 1.0, "decode")
    cand = method._candidate_ids(mem, evidence, n)
    k = method._candidate_keys(mem, mq, cand, torch.device("cpu"))
    assert cand.shape == (1, want) and k.shape == (1, want, 2)
    assert set(cand[0].tolist()) == set(evidence[0].topk(want).indices.tolist())


@pytest.mark.parametrize("rows", [1, 2])
def test_the_question_reranks_the_best_of_the_candidates_by_evidence(rows):
    """question_rerank's share of the candidates: the m with the most evidence (per KV head when
    each head picks its own), still ascending, with exactly their keys; the others' positions and
    keys complete the set in candidate order."""
    from actqkv_llm.retrieval.methods import _best_positions, keys_at, _other_positions, _put_keys

    g = torch.Generator().manual_seed(3)
    evidence = torch.randn(rows, 30, generator=g)
    cand = torch.stack([torch.randperm(30, generator=g)[:10].sort().values for _ in range(rows)])
    keys = torch.randn(2, 10 * 4, 8, generator=g)
    pos = _best_positions(cand, evidence, 6)
    best, best_keys = cand.gather(1, pos), keys_at(keys, pos, 2, 4)
    assert best.shape == (rows, 6) and best_keys.shape == (2, 6 * 4, 8)
    for r in range(rows):
        ev = evidence[r, cand[r]]
        assert best[r].tolist() == sorted(cand[r, ev.topk(6).indices].tolist())
    for h in range(2):
        r = h if rows > 1 else 0
        at = [cand[r].tolist().index(b) for b in best[r].tolist()]
        want = keys[h].view(10, 4, 8)[at].reshape(-1, 8)
        torch.testing.assert_close(best_keys[h], want, rtol=0, atol=0)
    rest = _other_positions(pos, 10)
    assert rest.shape == (rows, 4)
    for r in range(rows):
        assert sorted(rest[r].tolist() + pos[r].tolist()) == list(range(10)) and rest[r].tolist() == sorted(rest[r].tolist())
    whole = torch.full((2, 10, 4, 8), float("nan"))
    _put_keys(whole, pos, best_keys, 2, 4)
    _put_keys(whole, rest, keys_at(keys, rest, 2, 4), 2, 4)
    torch.testing.assert_close(whole.view(2, 40, 8), keys, rtol=0, atol=0)


@pytest.mark.parametrize("per_head", [False, True])
def test_the_question_reads_only_its_share_of_the_candidates_keys(make_engine, per_head, monkeypatch):
    """With question_rerank below rerank the question reads the keys of its share of the candidates
    only; the first answer token reads the others, and then holds every candidate's keys exactly as
    one read of all of them places them."""
    from actqkv_llm.memory.block_cache import DeviceBlockCache
    from actqkv_llm.retrieval.methods import BlockRetrieval

    eng = make_engine("llama", method="actqkv", rerank=4, question_rerank=2, per_head=per_head, offload=True,
                      device_cache_blocks=4096, **SMALL)
    avg = eng.config.avg_blocks
    doc = eng.prefill_ids(torch.randint(0, 250, (800,), generator=torch.Generator().manual_seed(9)))
    assert doc.n_blocks > 4 * avg
    asked, mqs = [], {}
    gather, rerank = DeviceBlockCache.gather, BlockRetrieval._rerank_among
    monkeypatch.setattr(DeviceBlockCache, "gather", lambda self, idx, device, keys=True, values=True: (
        asked.append(idx.shape[-1]) if keys and not values else None) or gather(self, idx, device, keys, values))
    monkeypatch.setattr(BlockRetrieval, "_rerank_among", lambda self, q, mem, mq, *a: (
        mqs.setdefault(id(mem), mq), rerank(self, q, mem, mq, *a))[1])
    sess = doc.session()
    sess.forward(torch.tensor([5, 6, 7, 8]), phase="question")
    assert asked and set(asked) == {2 * avg}                   # the question: its share's keys only
    layers = [(st.candidates, m) for st, m in zip(sess.retrieval, sess.memory) if st.candidates is not None]
    assert layers and all(h.known is None for h, _ in layers)
    rows = {h.cand.shape[0] for h, _ in layers}
    assert rows == ({eng.adapter.n_kv_heads} if per_head else {1})
    asked.clear()
    for held, mem in layers:
        whole = held.keys                                      # the others, read on first use
        want = BlockRetrieval._candidate_keys(mem, mqs[id(mem)], held.cand, whole.device)
        torch.testing.assert_close(whole, want, rtol=0, atol=0)
    assert set(asked) == {2 * avg, 4 * avg}                    # the rest once per layer; the check's reads
    assert asked.count(2 * avg) == len(layers)


def test_the_question_reranks_a_share_of_the_candidates_the_answer_tokens_rerank_all(make_engine, monkeypatch):
    """question_rerank=3 of rerank=4: the question's rerank reads 3 x the average blocks, the answer
    tokens' rerank all 4 x (held from the question's scoring); with rerank given alone the question
    reads all of them; with neither, the actqkv preset's 16 of 16 (all of them)."""
    from actqkv_llm.retrieval.methods import BlockRetrieval

    seen = []
    real = BlockRetrieval._rerank_among
    monkeypatch.setattr(BlockRetrieval, "_rerank_among",
                        lambda self, q, mem, mq, cand, *a: seen.append((mq.phase, cand.shape[-1])) or
                        real(self, q, mem, mq, cand, *a))
    ids = torch.randint(0, 250, (500,), generator=torch.Generator().manual_seed(9))
    question = [5, 6, 7, 8]
    outs = {}
    for qr in (3, 4, None):
        eng = make_engine("llama", method="actqkv", rerank=4, question_rerank=qr, **SMALL)
        avg = eng.config.avg_blocks
        doc = eng.prefill_ids(ids)
        assert doc.n_blocks > 4 * avg
        seen.clear()
        outs[qr] = eng.generate_ids(doc, question, max_new_tokens=4)
        asked = {n for phase, n in seen if phase == "question"}
        answered = {n for phase, n in seen if phase == "decode"}
        assert asked == {(qr or 4) * avg} and answered == {4 * avg}
    assert outs[4] == outs[None]          # an explicit rerank alone: the question reads all of them
    # the preset (neither given): the question and the answer tokens rerank all 16x the average blocks
    eng = make_engine("llama", method="actqkv", **SMALL)
    doc = eng.prefill_ids(torch.randint(0, 250, (800,), generator=torch.Generator().manual_seed(9)))
    assert doc.n_blocks > 16 * eng.config.avg_blocks
    seen.clear()
    eng.generate_ids(doc, question, max_new_tokens=4)
    assert {n for phase, n in seen if phase == "question"} == {16 * eng.config.avg_blocks}
    assert {n for phase, n in seen if phase == "decode"} == {16 * eng.config.avg_blocks}


def test_every_answer_only_option_leaves_the_prefill_as_it_was(make_engine):
    """ANSWER_ONLY_OPTIONS are the options bench recall lets variants share a prefill across: a
    document prefilled with any of them changed has the same KV and the same last logits."""
    from actqkv_llm.config import ANSWER_ONLY_OPTIONS

    changed = dict(rerank=2, question_rerank=1, reselect_every=3, rescore_every=2, decode_graph=True,
                   decode_kernel="torch", decode_compile=False, decode_pad_rows=4,
                   decode_joined_projections=True, decode_static_scoring=True, question_batch=True)
    assert set(changed) == set(ANSWER_ONLY_OPTIONS)
    ids = torch.randint(0, 250, (300,), generator=torch.Generator().manual_seed(4))
    base_eng = make_engine("llama", method="actqkv", **SMALL)
    base = base_eng.prefill_ids(ids)
    for name, value in changed.items():
        eng = make_engine("llama", method="actqkv", **{**SMALL, name: value})
        assert eng.config.prefill_options() == base_eng.config.prefill_options(), name
        doc = eng.prefill_ids(ids)
        torch.testing.assert_close(doc.last_logits, base.last_logits, rtol=0, atol=0, msg=name)
        for layer in base_eng.adapter.memory_layers:
            mem = base.state.memory[layer]
            k, v = mem.blocks.gather(torch.arange(mem.n_blocks), torch.device("cpu"))
            k2, v2 = doc.state.memory[layer].blocks.gather(torch.arange(mem.n_blocks), torch.device("cpu"))
            assert torch.equal(k, k2) and torch.equal(v, v2), name


@pytest.mark.parametrize("method", ["actqkv", "infllm", "quest"])
def test_recall_never_beats_the_oracle(make_engine, method):
    rows = _measured(make_engine, method)
    assert {r["phase"] for r in rows} == {"document", "question", "decode"}
    for r in rows:
        assert 0.0 <= r["recall"] <= r["oracle"] + 1e-5 <= 1.0 + 1e-5
        assert r["oracle_shared"] <= r["oracle"] + 1e-5
        assert 0.0 < r["memory_share"] < 1.0


def test_picking_every_block_recalls_all_the_mass(make_engine):
    # a budget with room for more blocks than the document has: selection keeps everything
    rows = _measured(make_engine, "infllm", n=200, budget=4 + 64 + 8 * 40)
    assert rows and all(r["recall"] == pytest.approx(1.0, abs=1e-5) for r in rows)


def test_document_digests_are_measured_once_for_all_questions(make_engine):
    eng = make_engine("llama", method="actqkv", **SMALL)
    doc = eng.prefill_ids(torch.randint(0, 250, (400,), generator=torch.Generator().manual_seed(5)))
    layer = eng.adapter.memory_layers[0]
    n = doc.state.memory[layer].n_blocks
    first = eng.generate_ids(doc, [1, 2], max_new_tokens=2)
    assert doc.state.memory[layer].digests["bounds", "exact"].n_known == n     # kept on the document
    assert eng.generate_ids(doc, [1, 2], max_new_tokens=2) == first


def test_a_question_scores_its_documents_bounds_without_copying_them(make_engine):
    """A question's session adds blocks of its own: its scorer reads the document's bounds and its
    own as parts (the same values as one joined copy), and no joined copy is made."""
    eng = make_engine("llama", method="actqkv", **SMALL)
    doc = eng.prefill_ids(torch.randint(0, 250, (400,), generator=torch.Generator().manual_seed(5)))
    layer = eng.adapter.memory_layers[0]
    n_doc = doc.state.memory[layer].n_blocks
    sess = eng._session_for(doc)
    sess.forward(torch.randint(0, 250, (3 * SMALL["block_size"],), generator=torch.Generator().manual_seed(6)),
                 phase="question")
    mem = sess.memory[layer]
    digests = mem.digests["bounds", "exact"]
    assert mem.n_blocks > n_doc and digests._joined is None   # scored its own blocks, joined nothing
    parts = mem.bound_parts("exact")
    assert [lo.shape[0] for lo, _ in parts] == [n_doc, mem.n_blocks - n_doc]
    assert parts[0][0].data_ptr() == doc.state.memory[layer].bound_parts("exact")[0][0].data_ptr()
    lo, hi = mem.bounds("exact")
    assert torch.equal(torch.cat([p[0] for p in parts]), lo) and torch.equal(torch.cat([p[1] for p in parts]), hi)
    assert lo.dtype == torch.bfloat16    # bf16 values (rounded outward): kept in bf16


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_exact_positions_with_every_block_picked_are_full_attention(make_engine, arch):
    """Memory at its true positions, sinks and every evicted block picked, one softmax with the
    window: that is plain attention, far past the local window."""
    ids = torch.randint(0, 250, (300,), generator=torch.Generator().manual_seed(6))
    every = dict(SMALL, budget=4 + 64 + 8 * 40, budget_rule="fixed", positions="exact")  # room for 40 blocks
    eng = make_engine(arch, method="actqkv", **every)
    doc = eng.prefill_ids(ids)
    assert 10 < doc.n_blocks <= 40
    full = make_engine(arch, method="full").prefill_ids(ids)
    torch.testing.assert_close(doc.last_logits, full.last_logits, rtol=1e-4, atol=1e-4)
    at_fixed = make_engine(arch, method="actqkv", **dict(every, positions="fixed")).prefill_ids(ids)
    assert not torch.allclose(at_fixed.last_logits, full.last_logits, rtol=1e-4, atol=1e-4)


def test_rerank_over_every_block_picks_the_oracles_blocks(make_engine):
    """Exact positions, every block a candidate: the rerank weighs blocks as full attention does (one
    softmax with the sinks and window, mass summed over the question's tokens and heads), so the
    question and every decoded token recall exactly the oracle's mass."""
    rows = _measured(make_engine, "actqkv", positions="exact", rerank=1000, keep_edges=False)
    for phase in ("question", "decode"):
        got = [r for r in rows if r["phase"] == phase]
        assert got and all(r["recall"] == pytest.approx(r["oracle"], abs=1e-4) for r in got), phase
    decode = [r for r in rows if r["phase"] == "decode"]
    plain = [r for r in _measured(make_engine, "actqkv", positions="exact", rerank=1, keep_edges=False)
             if r["phase"] == "decode"]
    assert sum(r["recall"] for r in decode) >= sum(r["recall"] for r in plain) - 1e-6


def test_an_engine_asks_a_shared_document_with_its_own_question_time_options(make_engine):
    """A document prefilled by one engine and asked by another whose options differ only in what
    the document's KV does not depend on (here the budget: the document's blocks are the same) is
    answered with the asking engine's options, not silently with the prefilling engine's."""
    ids = torch.randint(0, 250, (500,), generator=torch.Generator().manual_seed(4))
    narrow = make_engine("llama", method="actqkv", **{**SMALL, "budget_rule": "fixed"})   # 4 blocks a step
    wide = narrow.with_method("actqkv", budget=4 + 64 + 8 * 20)                           # 20 blocks a step
    doc = narrow.prefill_ids(ids)

    def memory_tokens(eng):
        eng.meter = RecallMeter(document_every=10**9)
        try:
            eng.generate_ids(doc, [5, 6, 7], max_new_tokens=2)
            return {r["memory_tokens"] for r in eng.meter.table() if r["phase"] != "document"}
        finally:
            eng.meter = None

    assert memory_tokens(narrow) == {4 * 8}
    assert memory_tokens(wide) == {20 * 8}


def test_bench_recall_writes_its_tables_and_plot(tmp_path, make_engine):
    from actqkv_llm.bench.recall import run_recall

    eng = make_engine("llama", method="actqkv", **SMALL)
    summary = run_recall(tmp_path, engine=eng, variants=["full", "actqkv", "infllm+budget=92"],
                         task="passkey:filler", lengths=[600], samples=1, progress=False,
                         count_tokens=lambda text: len(text.encode()), max_new_tokens=3)
    assert list(summary) == ["full", "actqkv", "infllm+budget=92"]
    assert summary["full"]["phases"] == {} and summary["actqkv"]["phases"]["question"]["oracle"] > 0
    for name in ("recall.jsonl", "recall.json", "recall.md", "recall.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| actqkv |" in (tmp_path / "recall.md").read_text()


def test_bench_recall_shares_a_prefill_between_variants_that_differ_only_after_it(tmp_path, make_engine,
                                                                                   monkeypatch):
    """rerank acts on the question and answer only: two variants that differ in it prefill each sample
    once, and the variant that reuses the prefill records what it records when it runs alone."""
    from actqkv_llm import Engine
    from actqkv_llm.bench.recall import run_recall

    eng = make_engine("llama", method="actqkv", **{**SMALL, "positions": "exact"})
    prefills = []
    real = Engine.prefill
    monkeypatch.setattr(Engine, "prefill", lambda self, *a, **k: prefills.append(self) or real(self, *a, **k))
    run = dict(engine=eng, task="passkey:filler", lengths=[600], samples=2, progress=False, plots=False,
               count_tokens=lambda text: len(text.encode()), max_new_tokens=3, document_every=2)
    run_recall(tmp_path / "both", variants=["actqkv+rerank=1", "actqkv+rerank=1000", "infllm"], **run)
    assert len(prefills) == 2 * 2       # per sample: one for both actqkv variants, one for infllm
    prefills.clear()
    run_recall(tmp_path / "alone", variants=["actqkv+rerank=1000"], **run)
    assert len(prefills) == 2

    def records(name, variant):
        lines = (tmp_path / name / "recall.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines if json.loads(x)["variant"] == variant]

    both, alone = records("both", "actqkv+rerank=1000"), records("alone", "actqkv+rerank=1000")
    assert [r["prefill_shared"] for r in both] == [True, True] and not alone[0]["prefill_shared"]
    for a, b in zip(both, alone):
        assert a["output"] == b["output"]
        assert {r["phase"] for r in a["layers"]} == {"document", "question", "decode"}
        assert [(r["phase"], r["layer"], r["n"]) for r in a["layers"]] == \
            [(r["phase"], r["layer"], r["n"]) for r in b["layers"]]
        for ra, rb in zip(a["layers"], b["layers"]):
            assert ra["recall"] == pytest.approx(rb["recall"], abs=1e-5)


def test_a_recall_plot_without_measurements_says_so_without_warnings(tmp_path, recwarn):
    """bench recall --no-meter measures answers only: its plot says no recall was measured (no
    empty legend, no matplotlib warning in the middle of the run's output)."""
    pytest.importorskip("matplotlib")
    from actqkv_llm.bench.plots import plot_recall

    path = plot_recall({"actqkv": {"per_layer": []}}, tmp_path / "recall.png")
    assert path.stat().st_size > 0
    assert not [w for w in recwarn if "legend" in str(w.message)]


@pytest.mark.parametrize("layout", ["completion", "ask"])
def test_bench_recall_plain_attention_answers_like_full(tmp_path, make_engine, layout):
    """The 'hf' variant (plain Hugging Face SDPA) runs the same prompt as the engine: its greedy
    answer equals method full's, token for token (a random model's answers are noise, so any
    difference in the prompt or the decoding shows)."""
    import json

    from actqkv_llm.bench.recall import run_recall

    eng = make_engine("qwen2", method="actqkv", **SMALL)
    run_recall(tmp_path, engine=eng, variants=["full", "hf"], task="passkey:filler", lengths=[300],
               samples=2, progress=False, count_tokens=lambda text: len(text.encode()), max_new_tokens=6,
               layout=layout, meter=False, plots=False)
    rows = [json.loads(line) for line in (tmp_path / "recall.jsonl").read_text().splitlines()]
    full = [r for r in rows if r["variant"] == "full"]
    plain = [r for r in rows if r["variant"] == "hf"]
    assert len(full) == len(plain) == 2
    for a, b in zip(full, plain):
        assert a["output"] == b["output"] and a["n_tokens"] == b["n_tokens"]
        assert a["output"].strip()


def test_yarn_extends_positions_for_the_engine_and_for_plain_attention(make_engine):
    from actqkv_llm.bench import hf
    from actqkv_llm.errors import ConfigError
    from actqkv_llm.models.rope_scaling import apply_yarn

    eng = make_engine("llama", method="full")
    before = eng.adapter.rope_table("full_attention", 1500)[0][1200].clone()
    apply_yarn(eng.model, 2)
    with pytest.raises(ConfigError, match="already scaled"):
        apply_yarn(eng.model, 2)
    full = eng.with_method("full")
    assert full.native_window == 2048
    assert not torch.allclose(full.adapter.rope_table("full_attention", 1500)[0][1200], before)
    ids = torch.randint(0, 250, (1400,), generator=torch.Generator().manual_seed(0))
    ours = full.generate_ids(full.prefill_ids(ids[:-4]), ids[-4:], max_new_tokens=5)
    assert hf.greedy(full.model, ids, 5, set()) == ours


def test_measured_bounds_are_bf16_values_rounded_outward():
    from actqkv_llm.memory.blocks import GrowableBlocks
    from actqkv_llm.memory.digests import measure_bounds

    torch.manual_seed(0)
    k = torch.randn(6, 2, 8, 16) * 7
    store = GrowableBlocks.from_tensors(k, torch.randn_like(k))
    lo, hi = measure_bounds(store, 0, 6, torch.device("cpu"), None)
    true_lo, true_hi = k.amin(2), k.amax(2)
    assert (lo <= true_lo).all() and (hi >= true_hi).all()
    assert lo.dtype == hi.dtype == torch.bfloat16
    lo, hi = lo.float(), hi.float()
    assert ((hi - true_hi) <= true_hi.abs() / 64).all() and ((true_lo - lo) <= true_lo.abs() / 64).all()


@pytest.mark.parametrize("method, pinned", [("actqkv", True), ("quest", False), ("actqkv-paper", False)])
def test_the_blocks_next_to_the_sinks_and_the_window_are_kept_by_the_default(make_engine, monkeypatch, method, pinned):
    """Text that runs on from the sinks (or into the window) is not cut in two: the default always
    picks the first block and the newest one; the published methods keep their own choice."""
    from actqkv_llm.retrieval import methods

    picks = []
    real = methods.BlockRetrieval.select

    def spy(self, q, mem, *args):
        sel = real(self, q, mem, *args)
        if sel.blocks is not None:
            picks.append((sel.blocks, mem.n_blocks, sel.n_blocks))
        return sel

    monkeypatch.setattr(methods.BlockRetrieval, "select", spy)
    eng = make_engine("llama", method=method, **SMALL)
    assert eng.method.keep_edges is pinned
    doc = eng.prefill_ids(torch.randint(0, 250, (600,), generator=torch.Generator().manual_seed(2)))
    eng.generate_ids(doc, [3, 4, 5], max_new_tokens=3)
    assert picks
    both = [bool((b == 0).any(-1).all() and (b == n - 1).any(-1).all()) for b, n, k in picks if k >= 2]
    assert all(both) if pinned else not all(both)


def _decode_logits(make_engine, steps=20, after_question=None, doc_tokens=400, **options):
    """Prefill ``doc_tokens`` tokens, read a 3-token question, decode ``steps`` tokens; the decode logits."""
    eng = make_engine("llama", method="actqkv", **{**SMALL, **options})
    doc = eng.prefill_ids(torch.randint(0, 250, (doc_tokens,), generator=torch.Generator().manual_seed(6)))
    sess = doc.session()
    sess.forward(torch.tensor([3, 4, 5]), phase="question")
    if after_question is not None:
        after_question()
    return [sess.forward(torch.tensor([7 + i % 50]), phase="decode") for i in range(steps)]


def _decode_with_spy(make_engine, monkeypatch, steps=20, **options):
    """Prefill, a question and ``steps`` decode steps; returns the decode logits and, per layer and
    decode step, (whether the layer selected, its memory's blocks, the blocks attention read)."""
    from actqkv_llm.retrieval.methods import BlockRetrieval
    from actqkv_llm.session import Session

    log, selected = [], []
    select = BlockRetrieval.select

    def spy_select(self, q, mem, state, mq, *a, **k):
        if mq.phase == "decode":
            selected.append(True)
        return select(self, q, mem, state, mq, *a, **k)

    def spy_note(self, layer, picked, n_blocks):
        log.append((layer, bool(selected), n_blocks, picked.clone()))
        selected.clear()

    monkeypatch.setattr(BlockRetrieval, "select", spy_select)
    monkeypatch.setattr(Session, "note_retrieval", spy_note)
    logits = _decode_logits(make_engine, steps, after_question=log.clear, **options)
    monkeypatch.undo()
    return logits, log


@pytest.mark.parametrize("every", [1, 4, 1000])
def test_a_layer_selects_again_after_reselect_every_steps_or_when_a_block_leaves_the_window(
        make_engine, monkeypatch, every):
    _, log = _decode_with_spy(make_engine, monkeypatch, reselect_every=every)
    layers = sorted({entry[0] for entry in log})
    for layer in layers:
        rows = [e for e in log if e[0] == layer]
        age, last_blocks, n_evictions = 1, rows[0][2], 0   # the question's selection was made one step before
        for _, did_select, n_blocks, _ in rows:
            must = age >= every or n_blocks != last_blocks
            assert did_select == must, (layer, age, n_blocks, last_blocks)
            n_evictions += n_blocks != last_blocks
            age = 1 if did_select else age + 1
            last_blocks = n_blocks
        assert n_evictions >= 2   # the run covers blocks leaving the window, not reuse alone
    if every == 1000:  # between evictions nothing is selected
        assert sum(e[1] for e in log) < len(log) / 4


@pytest.mark.parametrize("positions", ["exact", "fixed"])
def test_a_reused_selection_attends_exactly_what_selecting_those_blocks_again_would(
        make_engine, monkeypatch, positions):
    """Decode with held selections, then again selecting every step but forced to the same blocks:
    the logits agree bit for bit (the held keys are placed as a fresh gather would place them)."""
    from actqkv_llm.retrieval.methods import BlockRetrieval, Selection

    held_logits, log = _decode_with_spy(make_engine, monkeypatch, reselect_every=6, positions=positions)
    assert any(not e[1] for e in log)
    queue = {}
    for layer, _, _, blocks in log:
        queue.setdefault(layer, []).append(blocks)
    select = BlockRetrieval.select

    def forced(self, q, mem, state, mq, budget, slot, layer, question):
        sel = select(self, q, mem, state, mq, budget, slot, layer, question)
        if mq.phase != "decode":
            return sel
        return Selection(queue[layer].pop(0), sel.evidence)

    monkeypatch.setattr(BlockRetrieval, "select", forced)
    again = _decode_logits(make_engine, len(held_logits), reselect_every=1, positions=positions)
    assert all(not q for q in queue.values())
    for a, b in zip(held_logits, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("every", [1, 4])
def test_decode_steps_score_every_block_only_every_rescore_every_steps(make_engine, monkeypatch, every):
    """With held rerank candidates a decode step still selects (reranks), but scores every block only
    when its candidates are ``every`` steps old or a block left the window."""
    from actqkv_llm.retrieval.methods import BlockRetrieval, BoundScorer

    events = []   # per decode select of layer 0: (scored, n_blocks)
    score, select = BoundScorer.__call__, BlockRetrieval.select

    def spy_select(self, q, mem, state, mq, budget, slot, layer, question):
        scored_before = len(scores)
        out = select(self, q, mem, state, mq, budget, slot, layer, question)
        if mq.phase == "decode" and layer == 0:
            events.append((len(scores) > scored_before, mem.n_blocks))
        return out

    scores = []
    monkeypatch.setattr(BoundScorer, "__call__", lambda *a, **k: scores.append(1) or score(*a, **k))
    monkeypatch.setattr(BlockRetrieval, "select", spy_select)
    _decode_logits(make_engine, rescore_every=every)
    age, last = 1, events[0][1]
    for scored, n_blocks in events:
        assert scored == (age >= every or n_blocks != last), (age, n_blocks, last)
        age, last = (1 if scored else age + 1), n_blocks
    if every > 1:
        assert sum(s for s, _ in events) < len(events)


# every block a candidate (a large rerank); for a held selection, every block picked (a large budget)
@pytest.mark.parametrize("hold", [{"rescore_every": 8}, {"reselect_every": 8, "budget": SMALL["budget"] + 8 * 200}])
def test_held_candidates_rerank_as_freshly_gathered_ones_would(make_engine, hold):
    """With a fixed top-k where scoring again names the same candidates (or picks the same blocks),
    holding them changes nothing, bit for bit: at either positions mode, and for an answer that runs
    past the native window (1024 tokens here), where ``auto`` moves memory from exact positions to
    the fixed angle mid-answer."""
    for positions, doc_tokens in (("exact", 400), ("fixed", 400), ("auto", 1000)):
        opts = dict(rerank=1000, budget_rule="fixed", positions=positions, doc_tokens=doc_tokens)
        knob = next(iter(hold))   # rescore_every or reselect_every: 1 = nothing held
        fresh = _decode_logits(make_engine, steps=30, **{**opts, **hold, knob: 1})
        held = _decode_logits(make_engine, steps=30, **{**opts, **hold})
        for a, b in zip(fresh, held):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_held_candidates_keep_their_keys_in_the_memorys_dtype(make_engine):
    """A question holds its rerank candidates' keys for every layer across decode steps: in a bf16
    model they are held in bf16 (placed at true positions in float32, then stored as attention reads them)."""
    eng = make_engine(**{**SMALL, "rerank": 8, "positions": "exact"})
    eng.model.to(torch.bfloat16)
    doc = eng.prefill_ids(torch.randint(0, 250, (600,), generator=torch.Generator().manual_seed(0)))
    sess = doc.session()
    sess.forward(torch.randint(0, 250, (12,)), phase="question")
    sess.forward(torch.tensor([7]), phase="decode")
    held = [r.candidates for r in sess.retrieval if r.candidates is not None]
    assert held and all(h.keys.dtype == torch.bfloat16 for h in held)


def test_bench_recall_from_a_later_sample_runs_the_same_samples(tmp_path, make_engine):
    """--first-sample N runs samples N.. of the seed's sequence: the same documents, needles,
    depths and answers as the same samples of a run from 0 (how a run cut short is finished)."""
    from actqkv_llm.bench.recall import run_recall
    from actqkv_llm.errors import ConfigError

    eng = make_engine("llama", method="actqkv", **SMALL)
    run = dict(engine=eng, variants=["actqkv"], task="passkey:filler", lengths=[400], progress=False,
               plots=False, meter=False, count_tokens=lambda text: len(text.encode()), max_new_tokens=3)
    run_recall(tmp_path / "all", samples=3, **run)
    run_recall(tmp_path / "rest", samples=2, first_sample=1, **run)

    def rows(name):
        return [json.loads(x) for x in (tmp_path / name / "recall.jsonl").read_text().splitlines()]

    whole, rest = rows("all"), rows("rest")
    assert [r["sample"] for r in rest] == [1, 2]
    keys = ("sample", "depth", "expected", "n_tokens", "output")
    assert [{k: r[k] for k in keys} for r in rest] == [{k: r[k] for k in keys} for r in whole[1:]]
    assert len({tuple(r["expected"]) for r in whole}) == 3     # the samples differ: the check can fail
    assert "(from sample 1)" in (tmp_path / "rest" / "recall.md").read_text()
    info = json.loads((tmp_path / "rest" / "recall.json").read_text())["info"]
    assert info["first_sample"] == 1 and info["fingerprint"] == eng.fingerprint   # what to compare across parts
    with pytest.raises(ConfigError, match="first_sample"):
        run_recall(tmp_path / "bad", samples=1, first_sample=-1, **run)


def test_pin_edges_ranks_the_first_and_last_available_blocks_first():
    """One count for every row (an int: an index, no host-to-device copy) or one per row (a tensor)
    pin the same blocks: the first and the last available; no blocks at all pins block 0 only."""
    from actqkv_llm.retrieval.methods import pin_edges

    ev = torch.rand((3, 2, 10))
    for n in (0, 1, 4, 10):
        by_int, by_tensor = pin_edges(ev, n), pin_edges(ev, torch.full((3,), n))
        assert torch.equal(by_int, by_tensor)
        pinned = by_int.isinf().nonzero()[:, -1].unique().tolist()
        assert pinned == sorted({0, max(n, 1) - 1})
        assert torch.equal(by_int.masked_fill(by_int.isinf(), 0), ev.masked_fill(by_int.isinf(), 0))
    rows = pin_edges(ev, torch.tensor([10, 3, 1]))
    assert rows[0, :, 9].isinf().all() and rows[1, :, 2].isinf().all() and not rows[1, :, 9].isinf().any()
