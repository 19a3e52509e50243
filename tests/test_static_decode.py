"""The static decode step (attention/static_decode.py) against the reference step: the same tokens,
logits within float32 rounding, the same blocks picked, the state handed back to the session
intact, and the reference taking over wherever the static step does not apply. On the CPU it runs
eagerly (``decode_graph=True``); tests/test_gpu.py replays it as a CUDA graph."""

import gc
import weakref

import pytest
import torch

from tiny_models import SMALL, tiny_model

from actqkv_llm import Engine
from actqkv_llm.attention.static_decode import DecodeGraph, graph_capable
from actqkv_llm.attention.step import DECODE, QUESTION, StepContext
from actqkv_llm.errors import ConfigError
from actqkv_llm.generation import Sampling

TEXT = " ".join(f"word{i} is {i * 7 % 13}." for i in range(120))


def _engines(tokenizer, arch="llama", dtype=torch.float64, **options):
    """The reference engine and the static-step engine on one model (float64 weights: the two paths
    differ only by the attention's float32 rounding)."""
    model = tiny_model(arch).to(dtype)
    opts = dict(progress=False, cache=False, allow_past_window=True, **{**SMALL, **options})
    return Engine(model, tokenizer, decode_graph=False, **opts), Engine(model, tokenizer, decode_graph=True, **opts)


def _steps(eng, doc, n, question=(5, 6, 7, 8, 9, 10), after_question=None):
    """Greedy decode of ``n`` tokens after ``question``; every step's logits, the session."""
    sess = eng._session_for(doc)
    sess.track_sources = True
    sess.record_kv = True
    logits = sess.forward(torch.tensor(question), phase=QUESTION)
    if after_question is not None:
        after_question(sess)
    out = []
    for _ in range(n):
        logits = eng._decode_step(sess, int(logits.argmax()))
        out.append(logits)
    return torch.stack(out), sess


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_static_steps_give_the_reference_tokens_and_logits(tokenizer, arch):
    ref, fast = _engines(tokenizer, arch)
    doc = ref.prefill(TEXT)
    assert doc.n_blocks > 100
    want, s_ref = _steps(ref, doc, 40)
    got, s_fast = _steps(fast, doc, 40)
    graph = fast.decode_graph
    # every step is the static one: a block leaving the window (every block_size steps) and the
    # new scoring that follows run in it too
    assert graph.replays == 40
    assert graph.rescores >= len(s_fast.memory) * (40 // SMALL["block_size"] - 1)
    assert graph.row_evictions >= 40 // SMALL["block_size"] - 1   # the row moved its window down
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # handed back: the windows, the step count and the activation statistics go on as the reference's
    s_fast.settle()
    assert s_fast.n_tokens == s_ref.n_tokens
    for a, b, before in zip(s_ref.memory, s_fast.memory, doc.state.memory):
        assert (a.n_local, a.local_start, a.n_blocks) == (b.n_local, b.local_start, b.n_blocks)
        assert b.n_blocks > before.n_blocks    # blocks left the window while decoding
        # the keys of the tokens decoded: projections of hidden states that carry the rounding
        torch.testing.assert_close(b.local_k, a.local_k, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b.local_score, a.local_score)
        new = torch.arange(before.n_blocks, b.n_blocks)
        for x, y in zip(b.blocks.gather(new, "cpu"), a.blocks.gather(new, "cpu")):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    for a, b in zip(s_ref.retrieval, s_fast.retrieval):
        assert a.stats.count == b.stats.count and a.entropy_count == b.entropy_count
        torch.testing.assert_close(b.stats.mean, a.stats.mean, atol=1e-6, rtol=1e-5)  # float32 statistics
        torch.testing.assert_close(b.stats.var, a.stats.var, atol=1e-6, rtol=1e-5)
    # every step attended the same amount of KV, within the per-step bound
    assert s_fast.kv_log == s_ref.kv_log
    bound = ref.config.max_kv_per_layer
    assert all(n <= bound for log in s_fast.kv_log for n in log.values())


@pytest.mark.parametrize("options", [dict(rescore_every=3), dict(rescore_every=3, per_head=False, keep_edges=False),
                                     dict(rescore_every=5, rerank=2)])
def test_a_new_scoring_runs_inside_the_static_step(tokenizer, options):
    """A step whose held candidates are spent (or too few for its share: rerank 2) scores every
    block again inside the static step: the same tokens, logits, statistics, entropies, KV per step
    and sources as the reference, which scores them again in its own step."""
    ref, fast = _engines(tokenizer, **options)
    doc = ref.prefill(TEXT)
    want, s_ref = _steps(ref, doc, 40)
    got, s_fast = _steps(fast, doc, 40)
    graph = fast.decode_graph
    # only steps where a block leaves the window go to the reference now (one in block_size)
    assert graph.replays >= 40 - 40 // SMALL["block_size"] - 1
    n_layers = len(s_fast.memory)
    assert graph.rescores >= n_layers * (40 // options["rescore_every"] - 40 // SMALL["block_size"])
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    s_fast.settle()
    for a, b in zip(s_ref.retrieval, s_fast.retrieval):
        assert a.stats.count == b.stats.count and a.entropy_count == b.entropy_count
        torch.testing.assert_close(b.stats.mean, a.stats.mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.stats.var, a.stats.var, atol=1e-6, rtol=1e-5)
        assert float(b.entropy_total) == pytest.approx(float(a.entropy_total), rel=1e-5)
        assert b.candidates.uses_left == a.candidates.uses_left
        assert torch.equal(b.candidates.cand, a.candidates.cand)
    assert s_fast.kv_log == s_ref.kv_log
    assert s_fast.retrieved == s_ref.retrieved
    mass_a, mass_b = s_ref.attention_mass, s_fast.attention_mass
    assert mass_b.keys() == mass_a.keys()
    assert all(mass_b[k] == pytest.approx(v, rel=1e-4, abs=1e-6) for k, v in mass_a.items())


def test_a_window_moved_down_in_the_row_until_spent_then_reloaded(tokenizer):
    """A block leaving the window moves the row's window down in place while the row holds the
    tokens that leave (loaded from the session's window); once the loaded window is spent the row
    hands the state back and reloads. Over 80 steps (10 blocks leaving) both happen, and the
    tokens, logits, windows, new blocks and statistics are the reference's."""
    ref, fast = _engines(tokenizer)
    doc = ref.prefill(TEXT)
    want, s_ref = _steps(ref, doc, 80)
    got, s_fast = _steps(fast, doc, 80)
    graph = fast.decode_graph
    assert graph.replays == 80
    s_fast.settle()
    left = s_fast.memory[0].n_blocks - doc.state.memory[0].n_blocks
    assert left == s_ref.memory[0].n_blocks - doc.state.memory[0].n_blocks >= 9
    assert 1 <= graph.row_evictions < left   # moved down in the row, and reloaded at least once
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for a, b, before in zip(s_ref.memory, s_fast.memory, doc.state.memory):
        assert (a.n_local, a.local_start, a.n_blocks) == (b.n_local, b.local_start, b.n_blocks)
        torch.testing.assert_close(b.local_k, a.local_k, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b.local_v, a.local_v, atol=1e-5, rtol=1e-4)
        new = torch.arange(before.n_blocks, b.n_blocks)
        for x, y in zip(b.blocks.gather(new, "cpu"), a.blocks.gather(new, "cpu")):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    for a, b in zip(s_ref.retrieval, s_fast.retrieval):
        assert a.stats.count == b.stats.count
        torch.testing.assert_close(b.stats.mean, a.stats.mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.stats.var, a.stats.var, atol=1e-6, rtol=1e-5)
    assert s_fast.kv_log == s_ref.kv_log
    assert s_fast.retrieved == s_ref.retrieved


def test_candidates_too_few_for_the_share_are_scored_again(tokenizer):
    """Held candidates that do not serve a step's share are taken (their entropy observed, not the
    new scoring's, as the reference does) and scored again inside the static step."""
    def named_for_none(sess):
        for st in sess.retrieval:
            st.candidates.n = 0   # serves no step: every layer scores again at the first step

    ref, fast = _engines(tokenizer)
    doc = ref.prefill(TEXT)
    want, s_ref = _steps(ref, doc, 6, after_question=named_for_none)
    got, s_fast = _steps(fast, doc, 6, after_question=named_for_none)
    graph = fast.decode_graph
    assert graph.replays == 6 and graph.rescores >= len(s_fast.memory)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for a, b in zip(s_ref.retrieval, s_fast.retrieval):
        assert a.entropy_count == b.entropy_count
        assert float(b.entropy_total) == pytest.approx(float(a.entropy_total), rel=1e-5)
        assert b.candidates.uses_left == a.candidates.uses_left and torch.equal(b.candidates.cand, a.candidates.cand)


def test_candidates_keys_are_held_once_and_read_again_for_the_reference(tokenizer):
    """Once a row holds the candidates' keys, the session's copy goes (HeldCandidates.drop_keys); a
    reference step after it reads them from memory again: the same keys, the reference's logits."""
    ref, fast = _engines(tokenizer)
    doc = ref.prefill(TEXT)
    want, _ = _steps(ref, doc, 4)
    got, sess = _steps(fast, doc, 3)
    graph = fast.decode_graph
    c0, b = graph.c0, fast.config.block_size
    for layer, st in enumerate(sess.retrieval):
        held = st.candidates
        assert held.known is None and held.fetch is not None
        m = held.cand.shape[-1]
        assert torch.equal(held.keys, graph.keys[layer, 0, :, c0:c0 + m * b])   # read again: the same bits
    sess.settle()
    last = sess.forward(torch.tensor([int(got[-1].argmax())]), phase=DECODE)   # the reference step
    torch.testing.assert_close(last, want[3], atol=1e-4, rtol=1e-4)


def test_a_question_holds_no_candidate_keys_where_the_row_reads_them(tokenizer):
    """With the static step a question's held candidates keep their ids only (the keys it read go
    after its own rerank); the first decode step reads them into the row's slots: the keys the
    reference engine's question held, and the reference's logits."""
    ref, fast = _engines(tokenizer)
    doc = ref.prefill(TEXT)
    held_ref, held_fast = {}, {}

    def keep(into):
        return lambda s: into.update({i: (st.candidates.known, st.candidates.cand.clone())
                                      for i, st in enumerate(s.retrieval) if st.candidates is not None})

    want, _ = _steps(ref, doc, 2, after_question=keep(held_ref))
    got, sess = _steps(fast, doc, 1, after_question=keep(held_fast))
    assert held_ref and held_fast.keys() == held_ref.keys()
    assert all(k is None for k, _ in held_fast.values()) and all(k is not None for k, _ in held_ref.values())
    graph, b = fast.decode_graph, fast.config.block_size
    for layer, (k, cand) in held_ref.items():
        assert torch.equal(held_fast[layer][1], cand)
        m = cand.shape[-1]
        assert torch.equal(graph.keys[layer, 0, :, graph.c0:graph.c0 + m * b], k)
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    # under a recall meter every step is the reference's: the question keeps the keys it read
    fast.meter = object.__new__(type("Meter", (), {"observe": lambda *a, **k: None}))
    held_meter = {}
    _steps(fast, doc, 1, after_question=keep(held_meter))
    assert held_meter and all(k is not None for k, _ in held_meter.values())


def test_rows_score_again_each_for_itself(tokenizer):
    """answer_many's rows score every block again inside the static step, each row for its own
    session: the tokens of each answer alone on the reference."""
    ref, fast = _engines(tokenizer, rescore_every=4)
    doc = ref.prefill(TEXT)
    want = [ref.generate_ids(doc, q, max_new_tokens=30) for q in QUESTIONS]
    got = fast.generate_ids_many(doc, [list(q) for q in QUESTIONS], max_new_tokens=30)
    assert got == want
    assert fast.decode_graph.rescores > 0


def test_static_steps_pick_the_reference_blocks(tokenizer):
    """Over the first steps (one load, no rescoring), the blocks picked and the mass they received,
    per block, are the reference's."""
    ref, fast = _engines(tokenizer)
    doc = ref.prefill(TEXT)
    for n in (1, 3):
        _, a = _steps(ref, doc, n)
        _, b = _steps(fast, doc, n)
        assert fast.decode_graph.loaded_for(b) is not None and fast.decode_graph.loaded_for(b).steps == n
        assert b.retrieved == a.retrieved
        mass_a, mass_b = a.attention_mass, b.attention_mass
        assert mass_b.keys() == mass_a.keys()
        assert all(mass_b[k] == pytest.approx(v, rel=1e-4, abs=1e-6) for k, v in mass_a.items())


def test_answers_and_sources_through_the_static_step(tokenizer):
    ref, fast = _engines(tokenizer)
    doc = ref.prefill(TEXT)
    a = ref.answer(doc, "What is word3?", max_new_tokens=24)
    b = fast.answer(doc, "What is word3?", max_new_tokens=24)
    assert fast.decode_graph.replays > 12
    assert (b.text, b.usage, b.stop_reason) == (a.text, a.usage, a.stop_reason)
    assert [s.start for s in b.sources] == [s.start for s in a.sources]
    assert [s.score for s in b.sources] == pytest.approx([s.score for s in a.sources], rel=1e-3)
    # streaming and answer_many (which decodes rows on the reference path) agree with it
    assert "".join(fast.stream(doc, "What is word3?", max_new_tokens=24)) == a.text
    many = fast.answer_many(doc, ["What is word3?", "Hi"], max_new_tokens=24)
    assert many[0].text == a.text
    assert [s.start for s in many[0].sources] == [s.start for s in a.sources]
    assert [s.score for s in many[0].sources] == pytest.approx([s.score for s in a.sources], rel=1e-3)
    assert many[1].text == ref.answer(doc, "Hi", max_new_tokens=24).text


QUESTIONS = ([5, 6, 7], [9, 8], [11, 12, 13, 14, 15], [20])


def test_answers_decoded_together_take_one_row_each(tokenizer):
    """answer_many's rows: one static step for every answer still going, each row over its own
    session's window and candidates; the tokens are those of each answer alone on the reference."""
    ref, fast = _engines(tokenizer)
    doc = ref.prefill(TEXT)
    want = [ref.generate_ids(doc, q, max_new_tokens=30) for q in QUESTIONS]
    graph = fast.decode_graph
    got = fast.generate_ids_many(doc, [list(q) for q in QUESTIONS], max_new_tokens=30)
    assert got == want
    assert graph.n_rows == len(QUESTIONS)
    # every row step ran here (a block leaving the window and the new scoring after it included)
    assert graph.replays == sum(len(w) - 1 for w in want)
    # one answer alone afterwards: row 0 again, the rows of the batch handed back
    assert fast.generate_ids(doc, QUESTIONS[1], max_new_tokens=30) == want[1]


def test_more_answers_than_rows_wait_for_a_row(tokenizer, monkeypatch):
    """Rows are capped by device memory (rows_for): answers beyond the cap take the row of one that
    ended, and every answer is still its own."""
    ref, fast = _engines(tokenizer)
    doc = ref.prefill(TEXT)
    want = [ref.generate_ids(doc, q, max_new_tokens=n) for q, n in zip(QUESTIONS, (6, 20, 9, 14))]
    graph = fast.decode_graph
    monkeypatch.setattr(graph, "rows_for", lambda n: 2)
    plans = [Sampling.make(max_new_tokens=n, stop_on_repetition=False) for n in (6, 20, 9, 14)]
    runs = [fast._start(doc, torch.tensor(q), plan, ids_only=True) for q, plan in zip(QUESTIONS, plans)]
    fast._decode_together([r for r, _ in runs], [x for _, x in runs])
    assert [r.text.ids for r, _ in runs] == want
    assert graph.n_rows == 2 and graph.replays > 20


def test_rows_for_counts_free_device_memory(tokenizer, monkeypatch):
    """As many rows as fit in half the free memory (plus the rows held), at least one; free memory
    counts the blocks PyTorch's allocator holds unused beside the driver's free memory."""
    _, fast = _engines(tokenizer)
    graph = fast.decode_graph
    per_row = graph.row_bytes()
    assert per_row > graph.keys[0, 0].numel() * graph.keys.element_size() * 2
    assert graph.rows_for(5) == 5            # the CPU: every answer its row
    monkeypatch.setattr(graph, "device", torch.device("cuda"))
    cached = {"reserved": 0, "allocated": 0}
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: cached["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: cached["allocated"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(per_row * 4.5), 1 << 40))
    assert graph.rows_for(8) == 2            # (4.5 + 1 held) x 0.5 rows
    cached.update(reserved=9 * per_row, allocated=4 * per_row)   # 5 rows' worth cached, unused
    assert graph.rows_for(8) == 5            # (4.5 + 5 + 1) x 0.5 rows
    cached.update(reserved=0, allocated=0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 1 << 40))
    assert graph.rows_for(8) == 1


def _three_questions(eng, doc):
    """Three sessions on ``doc``, each after its question of ``QUESTIONS``; their logits."""
    sessions = [eng._session_for(doc) for _ in QUESTIONS[:3]]
    return sessions, [s.forward(torch.tensor(q), phase=QUESTION) for s, q in zip(sessions, QUESTIONS)]


def test_rows_stepped_together_match_each_session_stepped_alone(tokenizer):
    """step_rows against step: the same logits per row, a row that sits a step out (None) changes
    nothing for the others, and each session's state is handed back intact."""
    _, fast = _engines(tokenizer)
    doc = fast.prefill(TEXT)
    graph = fast.decode_graph

    alone, logits = _three_questions(fast, doc)
    want = [[], [], []]
    for i, s in enumerate(alone):          # each session alone through the static step
        row = logits[i]
        for step in range(6):
            if i == 1 and step == 3:
                break                       # the second answer ends after three steps
            row = fast._decode_step(s, int(row.argmax()))
            want[i].append(row)
    together, logits = _three_questions(fast, doc)
    got = [[], [], []]
    ran_here = 0
    for step in range(6):
        feed = [(s, int(logits[i].argmax())) if not (i == 1 and step >= 3) else None
                for i, s in enumerate(together)]
        before = graph.replays
        out = graph.step_rows(feed)
        ran_here += graph.replays - before
        for i, (o, f) in enumerate(zip(out, feed)):
            if f is not None:
                o = f[0].forward(torch.tensor([f[1]]), phase=DECODE) if o is None else o  # the reference's step
                got[i].append(o)
                logits[i] = o
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.stack(a), torch.stack(b), atol=1e-5, rtol=1e-5)
    assert ran_here >= 12
    assert graph.n_rows == 3 and graph.rows[1] is None     # the row that sat out holds nothing
    for a, b in zip(together, alone):
        a.settle(), b.settle()
        assert a.n_tokens == b.n_tokens
        for x, y in zip(a.memory, b.memory):
            torch.testing.assert_close(x.local_k, y.local_k)
    with pytest.raises(ValueError, match="one row"):
        graph.step_rows([(together[0], 1), (together[0], 2)])


def test_two_sessions_interleaved_keep_their_own_state(tokenizer):
    """The buffers hold one session at a time: switching hands the other's state back first."""
    ref, fast = _engines(tokenizer)
    doc = ref.prefill(TEXT)
    want = [ref.generate_ids(doc, q, max_new_tokens=20) for q in ([5, 6, 7], [9, 8])]
    sessions = [fast._session_for(doc) for _ in range(2)]
    logits = [s.forward(torch.tensor(q), phase=QUESTION) for s, q in zip(sessions, ([5, 6, 7], [9, 8]))]
    got = [[], []]
    for _ in range(20):
        for i, s in enumerate(sessions):
            tok = int(logits[i].argmax())
            got[i].append(tok)
            logits[i] = fast._decode_step(s, tok)
    assert got == want
    assert fast.decode_graph.replays > 20


def test_the_reference_runs_where_the_static_step_does_not_apply(tokenizer):
    ref, fast = _engines(tokenizer)
    doc = ref.prefill(TEXT)
    # a recall meter watches every step: the reference path
    fast.meter = object.__new__(type("Meter", (), {"observe": lambda *a, **k: None}))
    fast.generate_ids(doc, [5, 6], max_new_tokens=12)
    assert fast.decode_graph.replays == 0
    fast.meter = None
    fast.generate_ids(doc, [5, 6], max_new_tokens=12)
    assert fast.decode_graph.replays > 0
    # methods without held rerank candidates, and models with sliding-window layers, never use it
    for method in ("actqkv-paper", "infllm", "quest", "acre"):
        assert Engine(tiny_model("llama"), tokenizer, method=method, progress=False, cache=False,
                      decode_graph=True, **{**SMALL, "l1_budget": 4}).decode_graph is None
    gemma = Engine(tiny_model("gemma3"), tokenizer, progress=False, cache=False, decode_graph=True, **SMALL)
    assert not graph_capable(gemma.method, gemma.adapter) and gemma.decode_graph is None
    # rescoring every step leaves nothing held to rerank
    assert fast.with_method("actqkv", rescore_every=1).decode_graph is None
    # "auto" uses it on CUDA only; the CPU keeps the reference step
    assert Engine(tiny_model("llama"), tokenizer, progress=False, cache=False, **SMALL).decode_graph is None


def test_padded_dense_rows_give_a_row_the_same_bits_alone_and_beside_others(tokenizer):
    """decode_pad_rows: with the dense layers always run on 4 rows, a session's logits are bit for bit
    the same stepped alone as stepped beside two others (float32, where one row's and three rows'
    products round differently), and answers decoded together are the one-by-one answers."""
    _, fast = _engines(tokenizer, dtype=torch.float32, decode_pad_rows=4)
    assert fast.decode_graph.pad_rows == 4
    doc = fast.prefill(TEXT)
    graph = fast.decode_graph

    alone, logits = _three_questions(fast, doc)
    want = []
    for s, row in zip(alone, logits):
        steps = []
        for _ in range(12):                 # crosses a block leaving the window (one in 8 here)
            row = fast._decode_step(s, int(row.argmax()))
            steps.append(row)
        want.append(torch.stack(steps))
    together, logits = _three_questions(fast, doc)
    got = [[], [], []]
    rescored = graph.rescore_steps
    for _ in range(12):
        out = graph.step_rows([(s, int(x.argmax())) for s, x in zip(together, logits)])
        assert all(o is not None for o in out)
        for i, o in enumerate(out):
            got[i].append(o)
        logits = out
    assert graph.rescore_steps > rescored    # steps that scored again are covered too
    for a, b in zip(got, want):
        assert torch.equal(torch.stack(a), b)
    questions = [list(q) for q in QUESTIONS[:3]]
    assert fast.generate_ids_many(doc, questions, max_new_tokens=12) == \
        [fast.generate_ids(doc, q, max_new_tokens=12) for q in questions]
    with pytest.raises(ConfigError, match="decode_pad_rows must be an integer from 1 to 64"):
        Engine(tiny_model("llama"), tokenizer, progress=False, cache=False, decode_pad_rows=0, **SMALL)


def test_decode_graph_option_is_validated(tokenizer):
    with pytest.raises(ConfigError, match="decode_graph must be True, False or 'auto'"):
        Engine(tiny_model("llama"), tokenizer, progress=False, cache=False, decode_graph="yes", **SMALL)


def test_a_session_left_in_the_buffers_is_freed(tokenizer):
    """The buffers name their session weakly: an answer that ends leaves nothing alive."""
    _, fast = _engines(tokenizer)
    doc = fast.prefill(TEXT)
    gc.collect()
    gc.disable()
    try:
        sess = fast._session_for(doc)
        logits = sess.forward(torch.tensor([5, 6]), phase=QUESTION)
        for _ in range(3):
            logits = fast._decode_step(sess, int(logits.argmax()))
        assert fast.decode_graph.rows[0].session() is sess
        ref = weakref.ref(sess)
        del sess
        assert ref() is None
        fast.decode_graph.release()  # a dead session: nothing to hand back
        assert fast.decode_graph.rows == [None]
    finally:
        gc.enable()


def test_a_document_of_another_engine_with_the_same_method_uses_it(tokenizer):
    ref, fast = _engines(tokenizer)
    doc = ref.prefill(TEXT)
    assert isinstance(fast.decode_graph, DecodeGraph)
    fast.generate_ids(doc, [5, 6], max_new_tokens=10)
    assert fast.decode_graph.replays > 0


def test_an_answer_that_crosses_the_native_window_switches_positions(tokenizer, monkeypatch):
    """Memory at true positions while the step fits the native window (1024 here), at the fixed
    angle past it: the held candidates are placed for one of them, so crossing scores again and
    the static step goes on with the other placement."""
    ref, fast = _engines(tokenizer)
    doc = ref.prefill(" ".join(f"w{i} is {i % 7}." for i in range(99)))
    assert 1024 - 50 < doc.n_tokens + 6 < 1024   # the answer crosses position 1024
    modes = []
    plan = DecodeGraph.plan
    monkeypatch.setattr(DecodeGraph, "plan", lambda self, s: (lambda r: (modes.append(r and r[0]), r)[1])(plan(self, s)))
    want, _ = _steps(ref, doc, 60)
    got, _ = _steps(fast, doc, 60)
    assert {"exact", "fixed"} <= set(modes)
    assert fast.decode_graph.replays >= 40
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_offloaded_blocks_feed_the_static_step(tokenizer):
    """With the blocks in host memory the held candidates' values are read from there once per load."""
    ref, fast = _engines(tokenizer, offload=True, device_cache_blocks=16)
    doc = ref.prefill(TEXT)
    want, _ = _steps(ref, doc, 30)
    got, _ = _steps(fast, doc, 30)
    assert fast.decode_graph.replays >= 20
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_engines_made_with_with_method_share_the_buffers(tokenizer):
    """One set of decode buffers per model and key: an integration that derives an engine per call
    must not allocate (and capture) them again each time."""
    _, fast = _engines(tokenizer)
    same = fast.with_method("actqkv")
    other = fast.with_method("actqkv", rerank=4)
    assert same.decode_graph is fast.decode_graph
    assert other.decode_graph is not None and other.decode_graph is not fast.decode_graph
    assert fast.with_method("infllm").decode_graph is None
    doc = fast.prefill(TEXT)
    want = fast.generate_ids(doc, [5, 6], max_new_tokens=12)
    assert same.generate_ids(doc, [5, 6], max_new_tokens=12) == want


def test_a_reloaded_document_decodes_through_the_static_step(tokenizer, tmp_path):
    """Blocks read from a cache file (format 4: only the heads and parts asked for) feed the static
    step's candidates as they feed the reference step."""
    from actqkv_llm.persist import load_document

    ref, fast = _engines(tokenizer, dtype=torch.float32)   # a cache stores bf16, fp16 or fp32 KV
    path = ref.prefill(TEXT).save(tmp_path / "doc")
    want, _ = _steps(ref, load_document(ref, path), 30)
    loaded = load_document(fast, path)
    got, _ = _steps(fast, loaded, 30)
    assert fast.decode_graph.replays >= 20
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert any(m.blocks.file.bytes_read for m in loaded.state.memory if m.n_blocks)


_INTERPRETED = """
import sys, torch
sys.path.insert(0, "tests")
from tiny_models import byte_tokenizer
import test_static_decode as t
ref, fast = t._engines(byte_tokenizer(), "llama", torch.float32)
doc = ref.prefill(t.TEXT)
want, _ = t._steps(ref, doc, 24)
got, _ = t._steps(fast, doc, 24)
g = fast.decode_graph
assert g.kernel == "triton" and g.gather_kernel, (g.kernel, g.gather_kernel)
assert g.replays >= 24 - 24 // t.SMALL["block_size"] - 2, g.replays
assert g.rescores > 0 and g.row_evictions > 0   # new scorings read their candidates with the gather kernel
assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
qs = ([5, 6, 7], [9, 8])   # rows of one step: each reads its own visibility row in the kernel
assert fast.generate_ids_many(doc, qs, max_new_tokens=12) == [ref.generate_ids(doc, q, max_new_tokens=12) for q in qs]
assert g.n_rows == 2
print("ok", g.replays)
"""


@pytest.mark.slow
def test_the_triton_kernel_decodes_as_the_reference_interpreted_on_the_cpu(tmp_path):
    """The static step with its Triton kernel (Triton's interpreter, set before Triton is imported:
    a fresh process) gives the reference's tokens and logits; tests/test_gpu.py runs it compiled."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1", ACTQKV_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]


def test_decode_kernel_option(tokenizer):
    """"torch" and "auto" on a CPU without Triton's interpreter decode with PyTorch ops; an explicit
    "triton" that cannot run is a clear error; anything else is refused when the config is made."""
    import os

    with pytest.raises(ConfigError, match="decode_kernel must be 'auto', 'triton' or 'torch'"):
        _engines(tokenizer, decode_kernel="cuda")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("Triton's interpreter runs the kernel on the CPU in this process")
    for setting in ("auto", "torch"):
        _, fast = _engines(tokenizer, decode_kernel=setting)
        assert fast.decode_graph.kernel == "torch"
    _, fast = _engines(tokenizer, decode_kernel="triton")
    with pytest.raises(ConfigError, match="decode_kernel='triton' needs a CUDA device"):
        fast.decode_graph


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_compiled_layers_give_the_reference_tokens_and_logits(tokenizer, arch):
    """``decode_compile``: the model's own layer code around our attention through torch.compile
    (on the CPU too when asked), compiled once for every layer and step: the reference's tokens,
    logits within float rounding, every step through the static step (Qwen3: q/k norms inside the
    compiled code)."""
    pytest.importorskip("torch._inductor")
    from torch._dynamo.utils import counters

    # compiled code and recompile limits left by earlier tests of the process (tests/test_gpu.py on a
    # GPU machine compiles the same layer function for many models) must not decide the count below
    torch._dynamo.reset()
    ref, fast = _engines(tokenizer, arch, decode_compile=True)
    assert fast.decode_graph.compile_layers is True
    doc = ref.prefill(TEXT)
    want, _ = _steps(ref, doc, 24)
    graphs = []
    got, _ = _steps(fast, doc, 24, after_question=lambda s: graphs.append(counters["stats"]["unique_graphs"]))
    assert fast.adapter._compiled is not None and fast.decode_graph.replays == 24
    assert fast.decode_graph.rescores > 0   # blocks left the window: eager steps ran the layers too
    # compiled: the code before our attention, after it, and around the attention module's call;
    # not once more per layer or per step (3 layers, 24 steps, blocks leaving the window among them)
    assert 0 < counters["stats"]["unique_graphs"] - graphs[0] <= 6
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_decode_compile_option(tokenizer):
    """"auto" compiles on CUDA only; an unknown value is refused when the config is made."""
    with pytest.raises(ConfigError, match="decode_compile must be True, False or 'auto'"):
        _engines(tokenizer, decode_compile="max")
    _, fast = _engines(tokenizer)
    assert fast.decode_graph.compile_layers is False


def test_a_failed_compile_falls_back_to_the_plain_layers_under_auto(tokenizer, monkeypatch):
    """decode_compile="auto" (what a CUDA device gets): a compiler that fails while the step warms up
    leaves a warning and the plain layers and placement; an explicit True raises instead."""
    from actqkv_llm.attention import static_decode

    _, fast = _engines(tokenizer)
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no C compiler")

    for setting in ("auto", True):
        graph = DecodeGraph(fast.adapter, fast.config, fast.method, use_graph=False, compile_layers=setting)
        monkeypatch.setattr(fast.adapter, "compiled_layer", lambda: broken)
        if setting is True:
            with pytest.raises(RuntimeError, match="no C compiler"):
                graph._warm_up(1)
            continue
        with pytest.warns(RuntimeWarning, match="decode_compile: compiling the model's layers failed"):
            graph._warm_up(1)
        assert graph.compile_layers is False and graph._place is static_decode.place_token
        assert int(graph.cursor[0, 0]) == 1    # the plain step ran once, from slot 0
    assert len(calls) == 2


@pytest.mark.parametrize("positions", ["exact", "fixed"])
def test_blocks_leaving_the_window_are_bounded_for_every_layer_at_once(tokenizer, positions):
    """At a step where a block leaves the window, the static step measures the new blocks' key
    bounds for all layers at once: the bits each layer's scorer would measure (measure_bounds over
    the stored keys, at their true positions in ``exact`` mode), and the scorers measure nothing."""
    from actqkv_llm.memory.digests import measure_bounds
    from actqkv_llm.retrieval.methods import BoundScorer

    _, fast = _engines(tokenizer, positions=positions)
    assert isinstance(fast.method.scorer, BoundScorer)
    doc = fast.prefill(TEXT)
    measured = []

    def counting(fn):
        def measure(blocks, a, b, device, rotate):
            measured.append((a, b))
            return fn(blocks, a, b, device, rotate)
        return measure

    def watch(sess):
        for mem in sess.memory:
            for key, d in mem.digests.items():
                d.measure = counting(d.measure)
    stored_alone = []

    def watch_stores(sess):
        watch(sess)
        for mem in sess.memory:    # a layer storing its leaving blocks on its own (not the joint copy)
            mem.leave_as_blocks = lambda count, policy, mem=mem: stored_alone.append(count)
    _, sess = _steps(fast, doc, 3 * SMALL["block_size"], after_question=watch_stores)
    graph = fast.decode_graph
    assert graph.row_evictions >= 2 and graph.rescores >= 2 * len(sess.memory)
    assert measured == []                      # every new block's bounds came from the step
    assert stored_alone == []                  # and the blocks went into every layer's store at once
    for layer, mem in enumerate(sess.memory):
        d = mem.digests["bounds", positions]
        assert d.n_known == mem.n_blocks - doc.state.memory[layer].n_blocks >= 2
        mq = StepContext(sess, DECODE).memory_query(sess.adapter.kinds[layer], mem, mem.n_local, 1, 1.0)
        assert mq.mode == positions
        want = measure_bounds(mem.blocks, d.n_parent, mem.n_blocks, mem.device, mq.rotate_blocks)
        assert all(torch.equal(a, b) for a, b in zip(d.known, want))


@pytest.mark.parametrize("keep_edges", [True, False])
def test_edge_flags_of_a_row_are_its_first_and_last_candidates(tokenizer, keep_edges):
    """The row's edge flags (made once per candidate count from the pinned edges' positions) are the
    candidates that are the memory's first and last block, at every step and layer, in steps that
    score again and after blocks leave the window; none without ``keep_edges``."""
    _, fast = _engines(tokenizer, rescore_every=3, keep_edges=keep_edges)
    doc = fast.prefill(TEXT)
    sess = fast._session_for(doc)
    logits = sess.forward(torch.tensor((5, 6, 7, 8, 9, 10)), phase=QUESTION)
    graph, checked = fast.decode_graph, 0
    for _ in range(20):
        logits = fast._decode_step(sess, int(logits.argmax()))
        r = graph._row_of(sess)
        loaded = graph.rows[r]
        for layer, (held, mem) in enumerate(zip(loaded.held, sess.memory)):
            m = held.cand.shape[-1]
            edge = graph.cand_edge[layer, r]
            want = (held.cand == 0) | (held.cand == mem.n_blocks - 1) if keep_edges else torch.zeros_like(held.cand, dtype=torch.bool)
            assert torch.equal(edge[:, :m], want.expand_as(edge[:, :m]))
            assert not edge[:, m:].any()
            checked += int(want.any())
    assert graph.rescores > 0 and (checked > 0) == keep_edges


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_joined_projections_give_the_reference_tokens_and_logits(tokenizer, arch):
    """decode_joined_projections: every Llama-like layer runs 4 products instead of 7 in the static
    step (query/key/value and gate/up joined); the model's parameters are views of the joined
    weights (same values, no second copy); tokens and logits as the reference's; the model's own
    forward unchanged."""
    ref, fast = _engines(tokenizer, arch, decode_joined_projections=True)
    model = fast.adapter.model
    x = torch.randint(0, 200, (1, 12))
    before = model(x).logits
    doc = ref.prefill(TEXT)
    want, _ = _steps(ref, doc, 12)
    got, _ = _steps(fast, doc, 12)
    graph = fast.decode_graph
    assert graph.joined_layers == len(fast.adapter.layers) and graph.replays > 0
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    layer = fast.adapter.layers[0]
    j = layer._actqkv_joined
    attn, mlp = layer.self_attn, layer.mlp
    assert attn.q_proj.weight.data_ptr() == j.qkv.data_ptr()
    assert attn.v_proj.weight.data_ptr() == j.qkv[j.split[0] + j.split[1]:].data_ptr()
    assert mlp.up_proj.weight.data_ptr() == j.gate_up[mlp.gate_proj.weight.shape[0]:].data_ptr()
    torch.testing.assert_close(model(x).logits, before, atol=0, rtol=0)
    # another adapter on the same model finds the layers joined: the same tensors, nothing joined twice
    from actqkv_llm.models.adapter import ModelAdapter

    assert ModelAdapter(model).join_projections() == len(fast.adapter.layers)
    assert layer._actqkv_joined is j and attn.q_proj.weight.data_ptr() == j.qkv.data_ptr()


def test_a_layer_whose_joined_result_differs_runs_the_models_code(tokenizer, monkeypatch):
    """A layer the joined call does not reproduce is left to the model's own code, with a warning
    (here: the joined call made wrong on purpose)."""
    from actqkv_llm.models import joined as joined_mod

    real = joined_mod.joined_layer_call

    def wrong(layer, j, hidden, attention, kwargs):
        return real(layer, j, hidden, attention, kwargs) + 1.0
    monkeypatch.setattr(joined_mod, "joined_layer_call", wrong)
    with pytest.warns(RuntimeWarning, match="differs from the model's layer"):
        _, fast = _engines(tokenizer, decode_joined_projections=True)
        fast.decode_graph
    assert fast.decode_graph.joined_layers == 0


def test_decode_joined_projections_option_is_validated():
    from actqkv_llm.config import RetrievalConfig

    with pytest.raises(ConfigError, match="decode_joined_projections"):
        RetrievalConfig(decode_joined_projections="yes")


def test_joined_projections_compiled_give_the_reference_tokens_and_logits(tokenizer):
    """decode_joined_projections with decode_compile: the joined layer code compiled around our
    attention, every step through the static step."""
    pytest.importorskip("torch._inductor")
    torch._dynamo.reset()
    ref, fast = _engines(tokenizer, "qwen3", decode_compile=True, decode_joined_projections=True)
    doc = ref.prefill(TEXT)
    want, _ = _steps(ref, doc, 16)
    got, _ = _steps(fast, doc, 16)
    assert fast.adapter._compiled_joined is not None and fast.decode_graph.joined_layers == 3
    assert fast.decode_graph.replays == 16
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_joined_parameters_stay_plain_tensors_when_joined_in_inference_mode(tokenizer):
    """Joining happens at the static step's first use, under inference mode: the model's parameters
    must not become inference tensors (they would fail outside it), and keep requires_grad."""
    from actqkv_llm.models.adapter import ModelAdapter

    model = tiny_model("llama").requires_grad_(True)
    with torch.inference_mode():
        assert ModelAdapter(model).join_projections() == len(model.model.layers)
    w = model.model.layers[0].self_attn.k_proj.weight
    assert not w.is_inference() and w.requires_grad
    loss = model(torch.randint(0, 200, (1, 5))).logits.sum()
    loss.backward()   # autograd through the joined views works
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


def _joint_syncs(monkeypatch) -> list[bool]:
    """What each ``RowOwnBlocks._sync_joint`` call returns, in order (whether a row took its session's
    own blocks in one copy for all layers)."""
    from actqkv_llm.attention.static_scoring import RowOwnBlocks

    out: list[bool] = []
    real = RowOwnBlocks._sync_joint

    def spy(self, *args):
        out.append(real(self, *args))
        return out[-1]
    monkeypatch.setattr(RowOwnBlocks, "_sync_joint", spy)
    return out


@pytest.mark.parametrize("arch,options", [("llama", {}), ("qwen2", {}), ("llama", dict(positions="fixed")),
                                          ("llama", dict(rescore_every=3, per_head=False, keep_edges=False))])
def test_scoring_with_static_shapes_gives_the_reference_candidates(tokenizer, arch, options, monkeypatch):
    """decode_static_scoring: the steps where every layer scores again read the document's bounds and
    a padded copy of the session's own blocks (taken in one copy, the bounds the question measured),
    with static shapes: the reference's tokens, logits, candidates, entropies, KV per step and sources."""
    joint = _joint_syncs(monkeypatch)
    ref, fast = _engines(tokenizer, arch, decode_static_scoring=True, **options)
    doc = ref.prefill(TEXT)
    want, s_ref = _steps(ref, doc, 40)
    got, s_fast = _steps(fast, doc, 40)
    graph = fast.decode_graph
    assert joint == [True]
    assert graph.replays == 40
    # every step that scored again did it with static shapes, every layer
    assert graph.rescore_steps >= 40 // SMALL["block_size"] and graph.static_scored == graph.rescore_steps
    assert graph.rescores == graph.static_scored * len(s_fast.memory)
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    s_fast.settle()
    for a, b in zip(s_ref.retrieval, s_fast.retrieval):
        assert a.entropy_count == b.entropy_count
        assert float(b.entropy_total) == pytest.approx(float(a.entropy_total), rel=1e-6)
        assert b.candidates.uses_left == a.candidates.uses_left and b.candidates.n_blocks == a.candidates.n_blocks
        assert torch.equal(b.candidates.cand, a.candidates.cand)
        torch.testing.assert_close(b.candidates.evidence, a.candidates.evidence, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.candidates.keys, a.candidates.keys)   # read again from memory
    assert s_fast.kv_log == s_ref.kv_log
    assert s_fast.retrieved == s_ref.retrieved
    mass_a, mass_b = s_ref.attention_mass, s_fast.attention_mass
    assert mass_b.keys() == mass_a.keys()
    assert all(mass_b[k] == pytest.approx(v, rel=1e-4, abs=1e-6) for k, v in mass_a.items())


@pytest.mark.parametrize("positions", ["exact", "fixed"])
def test_own_blocks_not_yet_measured_are_measured_for_all_layers_at_once(tokenizer, monkeypatch, positions):
    """A row taking a session whose own blocks' bounds no layer has measured yet (a question read that
    left them unmeasured; here wiped after the question) measures every layer's at once and copies
    the blocks in one go (RowOwnBlocks._sync_joint): the reference's tokens and logits."""
    joint = _joint_syncs(monkeypatch)

    def unmeasured(sess):
        for mem in sess.memory:
            for key, d in mem.digests.items():
                if key[0] == "bounds":
                    d.forget()
                    assert d.n_known == 0
    ref, fast = _engines(tokenizer, decode_static_scoring=True, positions=positions)
    text = TEXT if positions == "fixed" else TEXT[:700]
    doc = ref.prefill(text)
    want, _ = _steps(ref, doc, 20, after_question=unmeasured)
    got, s_fast = _steps(fast, doc, 20, after_question=unmeasured)
    graph = fast.decode_graph
    assert joint == [True] and graph.static_scored == graph.rescore_steps > 0
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_an_answers_first_step_measures_only_the_block_its_eviction_added(tokenizer, monkeypatch):
    """The usual first step of an answer: the question measured its own block's bounds, then the
    step's first token evicts by the reference's rule (the row is loaded after it), adding a block no
    layer has measured. The row takes the known bounds from the digests and measures the new block
    for all layers at once (RowOwnBlocks._sync_joint; before, every layer measured it on its own):
    the reference's tokens and logits."""
    from actqkv_llm.attention.static_scoring import RowOwnBlocks, own_count

    seen = []
    real = RowOwnBlocks._sync_joint

    def spy(self, s, r, n, mode, measure_all):
        before = {mem.digests["bounds", mode].n_known for mem in s.memory}
        seen.append((n, before, real(self, s, r, n, mode, measure_all)))
        return seen[-1][-1]
    monkeypatch.setattr(RowOwnBlocks, "_sync_joint", spy)
    ref, fast = _engines(tokenizer, decode_static_scoring=True)
    doc = ref.prefill(TEXT)
    # a question that leaves the window full: one block leaves while it is read, one at the first token
    length = SMALL["n_local"] + SMALL["block_size"] - doc.session(ref).memory[0].n_local
    question = tuple(range(5, 5 + length))
    want, _ = _steps(ref, doc, 20, question=question)
    got, s_fast = _steps(fast, doc, 20, question=question)
    assert seen[0] == (2, {1}, True)
    # the digests keep what was measured: every layer knows all of the session's own blocks
    mode = fast.decode_graph.rows[0].mode
    assert {mem.digests["bounds", mode].n_known for mem in s_fast.memory} == {own_count(s_fast)}
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_session_with_too_many_own_blocks_scores_as_before(tokenizer, monkeypatch):
    """A session whose own blocks outgrow the row's padded copy scores again eagerly (the reference's
    scoring at each layer), with the same results; below the limit it scores with static shapes."""
    import actqkv_llm.attention.static_scoring as static_scoring

    ref, fast = _engines(tokenizer, decode_static_scoring=True)
    doc = ref.prefill(TEXT)
    want, _ = _steps(ref, doc, 40)
    monkeypatch.setattr(static_scoring, "OWN_BLOCKS", 3)   # the rows' copies are made with this size
    got, s_fast = _steps(fast, doc, 40)
    graph = fast.decode_graph
    assert graph.own.k.shape[2] == 3
    assert 0 < graph.static_scored < graph.rescore_steps     # until the session added its fourth block
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_rows_score_with_static_shapes_together(tokenizer):
    """answer_many's rows whose windows fill at the same steps score again together with static
    shapes, each over its own blocks: the tokens of each answer alone on the reference."""
    ref, fast = _engines(tokenizer, decode_static_scoring=True)
    doc = ref.prefill(TEXT)
    questions = ([5, 6, 7], [9, 8, 30], [11, 12, 13])
    want = [ref.generate_ids(doc, q, max_new_tokens=30) for q in questions]
    graph = fast.decode_graph
    got = fast.generate_ids_many(doc, [list(q) for q in questions], max_new_tokens=30)
    assert got == want
    assert graph.n_rows == 3 and graph.static_scored >= 3 * 2


def test_rows_score_with_static_shapes_at_different_steps(tokenizer, monkeypatch):
    """answer_many's rows whose windows fill at different steps (questions of different lengths):
    the rows that score again at a step do it with static shapes while the others keep their
    candidates, each answer the reference's tokens alone."""
    import actqkv_llm.attention.static_decode as static_decode

    scored_rows = []
    real = static_decode.score_layer

    def spy(g, sc, layer, qm, scaling, rows):
        scored_rows.append(rows)
        return real(g, sc, layer, qm, scaling, rows)
    monkeypatch.setattr(static_decode, "score_layer", spy)
    ref, fast = _engines(tokenizer, decode_static_scoring=True)
    doc = ref.prefill(TEXT)
    questions = ([5, 6, 7], [9, 8, 30, 31, 32], [11, 12, 13, 14, 15, 16, 17])
    want = [ref.generate_ids(doc, q, max_new_tokens=30) for q in questions]
    graph = fast.decode_graph
    got = fast.generate_ids_many(doc, [list(q) for q in questions], max_new_tokens=30)
    assert got == want
    assert graph.n_rows == 3
    # every row step that scored again did so with static shapes, and some steps scored one row only
    assert graph.rescore_steps >= 3 * 2 and graph.static_scored == graph.rescore_steps
    assert {len(rows) for rows in scored_rows} == {1}


def test_best_ids_take_the_earlier_of_equal_blocks_whatever_the_padding():
    from actqkv_llm.retrieval.methods import best_ids

    ev = torch.tensor([[0.5, 0.2, 0.5, 0.9, 0.2, 0.5], [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    assert best_ids(ev, 3).tolist() == [[0, 2, 3], [0, 1, 2]]
    padded = torch.cat([ev, torch.full((2, 50), float("-inf"))], 1)
    assert torch.equal(best_ids(padded, 3), best_ids(ev, 3))


def test_decode_static_scoring_option_is_validated(tokenizer):
    with pytest.raises(ConfigError, match="decode_static_scoring"):
        Engine(tiny_model("llama"), tokenizer, progress=False, cache=False, decode_static_scoring="yes", **SMALL)
    _, fast = _engines(tokenizer, decode_static_scoring=False)
    assert fast.decode_graph.own is None and not fast.decode_graph.static_scoring


def test_offloaded_blocks_take_no_copy_for_the_static_scoring(tokenizer):
    """With the blocks in host memory the static scoring cannot read them where they lie: the rows
    hold no copy of their sessions' own blocks, and steps score as before, with the reference's tokens."""
    ref, fast = _engines(tokenizer, decode_static_scoring=True, offload=True)
    doc = ref.prefill(TEXT)
    want, _ = _steps(ref, doc, 20)
    got, _ = _steps(fast, doc, 20)
    graph = fast.decode_graph
    assert graph.own is None and not graph.static_scoring and graph.static_scored == 0 and graph.rescore_steps > 0
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()


def test_static_scorings_are_kept_for_the_last_two_documents(tokenizer):
    """Each document (and positions mode) has its own static scoring; a third document's replaces the
    oldest, and every document's answer is still the reference's."""
    ref, fast = _engines(tokenizer, decode_static_scoring=True)
    graph = fast.decode_graph
    seen = []
    for i in range(3):
        text = " ".join(f"item{j + 40 * i} holds {(j * 5 + i) % 11}." for j in range(110))
        doc = ref.prefill(text)
        want, _ = _steps(ref, doc, 20)
        got, _ = _steps(fast, doc, 20)
        assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        seen.append(set(graph.scorings))
    assert graph.static_scored >= 3 * 2
    assert len(seen[0]) == 1 and len(seen[1]) == 2 and len(seen[2]) == 2
    assert seen[0] <= seen[1] and not seen[0] & seen[2]     # the first document's went
