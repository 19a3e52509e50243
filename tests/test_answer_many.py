"""Several questions about one document answered as one batch (Engine.answer_many, forward_rows):
the same answers as one by one, each row with its own retrieval, within the per-step KV bound."""

import pytest
import torch

from tiny_models import SMALL, tiny_model

from actqkv_llm import Engine
from actqkv_llm.attention.step import DECODE, QUESTION, StepContext, context_attention
from actqkv_llm.errors import InputError
from actqkv_llm.session import forward_rows

QUESTIONS = ["What is word3?", "What is word 200 and why?", "Hi",
             "Tell me about word77 please, in as much detail as you can."]


def _document(eng):
    return eng.prefill(" ".join(f"word{i} is {i * 7 % 13}." for i in range(120)))


def _generated_ids(eng, doc, question, n):
    seen = []
    eng.chat(doc, [{"role": "user", "content": question}], max_new_tokens=n,
             logits_processor=lambda ids, logits: (seen.append(list(ids)), logits)[1])
    return seen[-1]


def _check_many(eng, doc, n=16):
    """answer_many equals one-by-one answers, with an end-of-turn token that some answers meet early
    (rows leave the batch at different steps); returns the answers' lengths."""
    first = _generated_ids(eng, doc, QUESTIONS[0], n)
    eng.eos_ids = frozenset({first[2]})  # the first answer ends at its third token
    one = [eng.answer(doc, q, max_new_tokens=n) for q in QUESTIONS]
    many = eng.answer_many(doc, QUESTIONS, max_new_tokens=n)
    assert [a.text for a in many] == [a.text for a in one]
    assert [(a.usage, a.stop_reason, a.finish_reason) for a in many] == \
        [(a.usage, a.stop_reason, a.finish_reason) for a in one]
    for a, b in zip(many, one):  # the same blocks, with the same shares (up to rounding: ties may swap)
        assert {s.start: pytest.approx(s.score, abs=1e-4) for s in a.sources} == \
            {s.start: s.score for s in b.sources}
    assert one[0].stop_reason == "eos" and one[0].usage.completion_tokens <= 2
    return [a.usage.completion_tokens for a in one]


@pytest.mark.parametrize("method", ["actqkv", "actqkv-paper", "infllm", "acre", "quest", "full"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_answer_many_gives_the_answers_of_one_by_one(tokenizer, arch, method):
    # float64: the batch's matmuls round differently from one row's, and in float32 that can swap
    # two nearly tied blocks of a random model; in float64 the rows must match one by one exactly
    extra = dict(budget=4 + 64 + 8 * 6, l1_budget=8) if method == "acre" else {}
    eng = Engine(tiny_model(arch).double(), tokenizer, method=method, progress=False, cache=False,
                 allow_past_window=True, **{**SMALL, **extra})
    doc = _document(eng)
    if method != "full":
        assert doc.n_blocks > 20  # retrieval has blocks to choose between
    _check_many(eng, doc)


def test_answer_many_rows_leave_the_batch_as_they_end(make_engine):
    eng = make_engine("llama", **SMALL)  # float32, the tiny models' own dtype
    lengths = _check_many(eng, _document(eng))
    assert lengths[0] <= 2 and max(lengths) == 16  # one row ended early, another ran to the limit


def test_answer_many_with_seeded_sampling_samples_each_answer_as_alone(make_engine):
    eng = make_engine(**SMALL)
    doc = _document(eng)
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=5)
    assert [a.text for a in eng.answer_many(doc, QUESTIONS, **kw)] == [eng.ask(doc, q, **kw) for q in QUESTIONS]


def test_forward_rows_matches_each_session_alone_and_keeps_the_kv_bound(make_engine):
    eng = make_engine("qwen2", **SMALL)
    doc = eng.prefill_ids(torch.randint(0, 250, (700,), generator=torch.Generator().manual_seed(0)))
    prompts = [torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 17, 40)]
    alone, rows = [doc.session() for _ in prompts], [doc.session() for _ in prompts]
    for a, b, p in zip(alone, rows, prompts):
        a.forward(p, phase=QUESTION)
        b.forward(p, phase=QUESTION)
        b.record_kv = True
    toks = torch.tensor([5, 77, 200])
    for step in range(4):
        expect = torch.stack([s.forward(toks[i:i + 1], phase=DECODE) for i, s in enumerate(alone)])
        got = forward_rows(rows, toks, DECODE)
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)
        toks = expect.argmax(-1)
    for s, a in zip(rows, alone):
        assert s.n_tokens == a.n_tokens and len(s.kv_log) == 4
        for log in s.kv_log:
            assert log and max(log.values()) <= eng.config.max_kv_per_layer


def test_forward_rows_refuses_mismatched_rows(make_engine):
    eng = make_engine(**SMALL)
    other = make_engine(**SMALL)
    doc, doc2 = eng.prefill_ids(torch.arange(50)), other.prefill_ids(torch.arange(50))
    with pytest.raises(ValueError, match="sessions for"):
        forward_rows([doc.session()], torch.tensor([1, 2]), DECODE)
    with pytest.raises(ValueError, match="same model"):
        forward_rows([doc.session(), doc2.session()], torch.tensor([1, 2]), DECODE)


def test_one_session_context_refuses_a_batch(make_engine):
    eng = make_engine(**SMALL)
    ctx = StepContext(eng.prefill_ids(torch.arange(50)).session(), DECODE)
    layer = eng.adapter.layers[0].self_attn
    q = torch.zeros(2, eng.adapter.n_heads, 1, eng.adapter.head_dim)
    k = torch.zeros(2, eng.adapter.n_kv_heads, 1, eng.adapter.head_dim)
    with pytest.raises(ValueError, match="forward_rows"):
        context_attention(layer, q, k, k, None, actqkv=ctx)


@pytest.mark.parametrize("bad", [[], "one question", [""], ["ok", 3], None])
def test_answer_many_rejects_bad_questions(make_engine, bad):
    eng = make_engine(**SMALL)
    doc = eng.prefill("some document text")
    with pytest.raises(InputError):
        eng.answer_many(doc, bad)


def test_answer_many_checks_the_document_is_its_own(make_engine):
    eng = make_engine(**SMALL)
    other = eng.with_method("infllm")
    doc = other.prefill("some document text " * 20)
    with pytest.raises(InputError, match="other retrieval options"):
        eng.answer_many(doc, ["q"])


def test_complete_many_gives_the_completions_of_one_by_one(tokenizer):
    eng = Engine(tiny_model("qwen2").double(), tokenizer, progress=False, cache=False, **SMALL)
    doc = eng.prefill(" ".join(f"word{i} is {i * 7 % 13}." for i in range(120)), chat=False)
    prompts = [" word3 is", "", " and then"]  # an empty prompt continues the document itself
    one = [eng.complete(doc, p, max_new_tokens=9) for p in prompts]
    many = eng.complete_many(doc, prompts, max_new_tokens=9)
    assert [(a.text, a.usage) for a in many] == [(a.text, a.usage) for a in one]
    with pytest.raises(InputError, match="prompts"):
        eng.complete_many(doc, " one prompt")
    with pytest.raises(InputError, match="prompt must be text"):
        eng.complete_many(doc, ["ok", None])
    with pytest.raises(InputError, match="empty"):
        eng.complete_many(None, ["ok", " "])


# questions in one execution block (96 tokens here), two of the first three and the last two letting
# the same tokens leave the window: read as two batches of rows, "Hi" alone
READ_TOGETHER = dict(SMALL, exec_block=96, n_local=128, budget=4 + 128 + 8 * 4, question_batch=True)
GROUPED = ["What is word3?", "What is word 20?", "What is word 55?", "Hi", "What is word 200 and why?",
           "Tell me about word77 please."]


def _spy_batches(monkeypatch) -> list[int]:
    """The rows of every batch QuestionRows runs, as they run."""
    from actqkv_llm.attention.question_rows import QuestionRows

    seen, batch = [], QuestionRows._batch

    def spy(self, layer, ctxs, *args, **kwargs):
        seen.append(len(ctxs))
        return batch(self, layer, ctxs, *args, **kwargs)

    monkeypatch.setattr(QuestionRows, "_batch", spy)
    return seen


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_answer_many_reads_its_questions_together_with_the_answers_of_one_by_one(tokenizer, arch, monkeypatch):
    eng = Engine(tiny_model(arch).double(), tokenizer, progress=False, cache=False, allow_past_window=True,
                 **READ_TOGETHER)
    doc = _document(eng)
    one = [eng.answer(doc, q, max_new_tokens=12) for q in GROUPED]
    seen = _spy_batches(monkeypatch)
    many = eng.answer_many(doc, GROUPED, max_new_tokens=12)
    memory_layers = sum(1 for kind in eng.adapter.kinds if kind.memory and kind.window is None)
    assert seen and len(seen) % memory_layers == 0 and set(seen) == {3}   # the grouped rows, in every such layer
    assert [(a.text, a.usage) for a in many] == [(a.text, a.usage) for a in one]
    for a, b in zip(many, one):   # the same blocks with the same shares (float32 tallies)
        assert {s.start: pytest.approx(s.score, abs=1e-6) for s in a.sources} == {s.start: s.score for s in b.sources}


def test_questions_read_together_leave_each_session_as_its_own_read(make_engine, monkeypatch):
    from actqkv_llm.session import read_questions

    eng = make_engine("qwen2", **READ_TOGETHER)
    eng.model.double()
    doc = eng.prefill_ids(torch.randint(0, 250, (1500,), generator=torch.Generator().manual_seed(0)))
    questions = [torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(n)) for n in (20, 25, 31, 40)]
    alone, rows = [doc.session() for _ in questions], [doc.session() for _ in questions]
    for s in alone + rows:
        s.track_sources = s.record_kv = True
    expect = torch.stack([s.forward(q, phase=QUESTION) for s, q in zip(alone, questions)])
    seen = _spy_batches(monkeypatch)
    got = read_questions(rows, questions)
    assert seen and set(seen) == {2}      # 20 and 25 tokens let one block leave, 31 and 40 two
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)   # attention adds in float32
    for a, b in zip(rows, alone):
        assert a.n_tokens == b.n_tokens and a.kv_log == b.kv_log
        assert a.attention_mass.keys() == b.attention_mass.keys() and a.retrieved == b.retrieved
        for x, y in zip(a.memory, b.memory):
            assert x.n_blocks == y.n_blocks
            torch.testing.assert_close(x.local_k, y.local_k, rtol=1e-5, atol=1e-6)
        for x, y in zip(a.retrieval, b.retrieval):   # what the answer's decode steps start from
            assert (x.candidates is None) == (y.candidates is None)
            if x.candidates is not None:
                assert torch.equal(x.candidates.cand, y.candidates.cand) and x.candidates.n == y.candidates.n
            assert x.entropy_mean == pytest.approx(y.entropy_mean, abs=1e-6)   # float32 sums
            torch.testing.assert_close(x.stats.mean, y.stats.mean) if x.stats is not None else None
    with pytest.raises(ValueError, match="sessions for"):
        read_questions(rows[:1], questions)


def test_a_question_read_alone_or_beside_others_gets_the_same_bits(make_engine, monkeypatch):
    """Padded reads (where answers decode through the static decode step): a question read alone
    runs on the rows and positions it runs on beside others, so its logits and picks are bit for bit
    the same, whatever the other questions are."""
    from actqkv_llm.session import read_questions

    eng = make_engine("llama", **READ_TOGETHER)   # float32
    doc = eng.prefill_ids(torch.randint(0, 250, (1500,), generator=torch.Generator().manual_seed(1)))
    questions = [torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(n)) for n in (20, 25, 27, 30)]
    seen = _spy_batches(monkeypatch)
    alone = [doc.session() for _ in questions]
    one = torch.cat([read_questions([s], [q], 8, 32) for s, q in zip(alone, questions)])
    assert seen and set(seen) == {1}
    seen.clear()
    rows = [doc.session() for _ in questions]
    together = read_questions(rows, questions, 8, 32)
    assert seen and max(seen) > 1 and sum(seen) % len(questions) == 0   # grouped by the blocks they let leave
    assert torch.equal(together, one)
    for a, b in zip(rows, alone):
        for x, y in zip(a.retrieval, b.retrieval):
            if x.candidates is not None:
                assert torch.equal(x.candidates.cand, y.candidates.cand)


def test_answer_many_with_padded_reads_gives_the_tokens_of_one_by_one(make_engine):
    """The static decode step's engine with questions read as one batch (padded reads and decode
    rows) on the CPU, float32: answer_many's tokens are exactly those of each answer alone."""
    assert make_engine("qwen2", decode_graph=True, **{**READ_TOGETHER, "question_batch": False})._read_padding() == (1, 1)
    eng = make_engine("qwen2", decode_graph=True, **READ_TOGETHER)
    assert eng._read_padding() == (8, 32)
    doc = eng.prefill_ids(torch.randint(0, 250, (1500,), generator=torch.Generator().manual_seed(2)))
    questions = [torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(n)).tolist()
                 for n in (12, 20, 31, 33, 40, 64, 70)]
    one = [eng.generate_ids(doc, q, max_new_tokens=20) for q in questions]
    assert eng.generate_ids_many(doc, questions, max_new_tokens=20) == one


def test_generate_ids_reads_its_question_as_answers_read_theirs(make_engine, monkeypatch):
    """generate_ids (the speed benchmark's one-by-one answers) reads its question through the same
    padded batch as answer and answer_many: on a GPU an unpadded read rounds otherwise, and the
    benchmark then compared answer_many against other bits (thirty-fourth session's 3.3%)."""
    import actqkv_llm.engine as engine_module

    eng = make_engine("qwen2", decode_graph=True, **READ_TOGETHER)
    doc = eng.prefill_ids(torch.randint(0, 250, (600,), generator=torch.Generator().manual_seed(4)))
    reads, read = [], engine_module.read_questions

    def spy(sessions, questions, pad_rows=1, pad_tokens=1):
        reads.append((len(sessions), pad_rows, pad_tokens))
        return read(sessions, questions, pad_rows, pad_tokens)

    monkeypatch.setattr(engine_module, "read_questions", spy)
    seen = _spy_batches(monkeypatch)
    ids = eng.generate_ids(doc, [5, 6, 7, 8, 9], max_new_tokens=3)
    assert reads == [(1, 8, 32)] and seen and set(seen) == {1}
    assert ids == eng.generate_ids_many(doc, [[5, 6, 7, 8, 9], [9, 8, 7]], max_new_tokens=3)[0]


def test_question_batch_is_checked(make_engine):
    from actqkv_llm.errors import ConfigError

    with pytest.raises(ConfigError, match="question_batch must be True or False"):
        make_engine(question_batch="yes")
