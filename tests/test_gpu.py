"""Fast paths on a GPU checked against the reference path (skipped without CUDA; run on the
GPU machine: ``python -m pytest -m gpu tests/test_gpu.py``)."""

import string

import pytest
import torch

from tiny_models import SMALL, separated, tiny_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


TEXT = " ".join(f"word{i} is {i * 7 % 13}." for i in range(120))


def _decode_model(arch: str, dtype: torch.dtype) -> torch.nn.Module:
    """The decode tests' model: in float32, where they ask for the reference's logits within
    rounding, with sharpened attention (``separated`` says why: on a nearly uniform attention the
    fast path's own summation order may choose another block on rounding alone; the thirtieth
    session's H100 run failed the three-row test so, at a one-ulp margin)."""
    model = tiny_model(arch)
    return (separated(model) if dtype == torch.float32 else model).to("cuda", dtype)


def _decode_document(engine, dtype: torch.dtype):
    """The decode tests' document: 1,400 random letters, digits and stops in float32 (with
    ``_decode_model``), the repeating text in bf16 (compared within bf16 rounding)."""
    if dtype == torch.float32:
        alphabet = string.ascii_letters + string.digits + " .,"
        picks = torch.randint(0, len(alphabet), (1400,), generator=torch.Generator().manual_seed(1))
        return engine.prefill("".join(alphabet[i] for i in picks.tolist()))
    return engine.prefill(TEXT)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scoring", ["torch", "triton"])
def test_batched_prefill_on_the_gpu_matches_the_reference_loop(tokenizer, arch, dtype, scoring):
    """The batched prefill (its chunk's block evidence from PyTorch ops or the Triton passes)
    against the loop over execution blocks."""
    from actqkv_llm import Engine
    from actqkv_llm.devices import triton_available

    if scoring == "triton" and not triton_available(torch.device("cuda")):
        pytest.skip("needs Triton")
    ids = torch.randint(0, 256, (1700,), generator=torch.Generator().manual_seed(1))
    question = torch.randint(0, 256, (5,), generator=torch.Generator().manual_seed(2))

    def prefill(batch: bool, dt: torch.dtype):
        model = tiny_model(arch).to("cuda", dt)
        eng = Engine(model, tokenizer, progress=False, cache=False, batch_prefill=batch,
                     prefill_kernel=scoring if batch else "torch")
        doc = eng.prefill_ids(ids)
        return doc.last_logits.float(), eng.generate_ids(doc, question, max_new_tokens=8)

    (ref_logits, ref_tokens), (got_logits, got_tokens) = prefill(False, dtype), prefill(True, dtype)
    if dtype == torch.float32:
        torch.testing.assert_close(got_logits, ref_logits, atol=1e-4, rtol=1e-4)
        assert got_tokens == ref_tokens
    else:
        # In bf16 the loop is no exact yardstick: the loop, the batch's PyTorch scoring (bf16
        # logits) and the Triton passes (float32 logits) round block scores differently, and a
        # random tiny model's near-tied blocks then flip either way. Both are measured against the float32 loop: the
        # batch may be no further from it than the bf16 loop is, up to a margin. (A random model's
        # logits are nearly flat, so its greedy tokens are no test of bf16 paths.)
        exact, _ = prefill(False, torch.float32)
        rel = lambda a: float((a - exact).norm() / exact.norm())
        assert rel(got_logits) <= 1.5 * rel(ref_logits) + 2e-2, (rel(got_logits), rel(ref_logits))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_fast_path_answers_the_quality_samples_as_the_reference_path(tokenizer, arch):
    """The quality benchmark's own samples (bench/tasks.py: a passkey, a needle in prose, a needle
    among distractors, each at two depths) prefilled and answered through `bench quality`'s call
    (raw completion, greedy) by the GPU's fast path, the defaults on CUDA (batched prefill scored by
    the Triton passes where Triton runs, decode steps replayed as CUDA graphs), and by the reference
    path (the loop over execution blocks, PyTorch scoring, the reference decode step), in float32:
    the same answer on every sample."""
    from actqkv_llm import Engine
    from actqkv_llm.attention.chunk import batches_on
    from actqkv_llm.bench import tasks as T
    from actqkv_llm.bench.quality import _answer
    from actqkv_llm.devices import triton_available

    model = tiny_model(arch).to("cuda")
    ref = Engine(model, tokenizer, progress=False, cache=False, allow_past_window=True, batch_prefill=False,
                 prefill_kernel="torch", decode_graph=False, **SMALL)
    fast = Engine(model, tokenizer, progress=False, cache=False, allow_past_window=True, **SMALL)
    assert batches_on(fast.config.batch_prefill, torch.device("cuda"))
    assert fast.decode_graph is not None and fast.decode_graph.use_graph
    for task in ("passkey", "niah_single", "niah_multikey"):
        for depth in (0.25, 0.75):
            sample = T.make_sample(task, 1500, depth, T.byte_counter, seed=3)
            want, got = (_answer(e, "actqkv", sample, 12) for e in (ref, fast))
            assert want["error"] is None and got["error"] is None
            assert got["output"] == want["output"], (task, depth)
    assert fast.decode_graph.replays > 0
    verdicts = fast.method.scorer.mass_kernel._verdicts
    if triton_available(torch.device("cuda")):  # the passes scored the chunks, having agreed on this GPU
        assert verdicts and all(verdicts.values())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel, compile_layers, joined", [("auto", "auto", False), ("auto", False, False),
                                                             ("torch", "auto", False), ("torch", False, False),
                                                             ("auto", "auto", True), ("auto", False, True)])
def test_decode_graph_matches_the_reference_step(tokenizer, arch, dtype, kernel, compile_layers, joined):
    """Decode steps replayed as a CUDA graph give the reference step's tokens (float32) or logits
    within bf16 rounding, with the answer's sources on the same blocks: with the Triton kernel
    ("auto" on a GPU with Triton) and with PyTorch ops, with the layers' code compiled ("auto" on
    a GPU with Triton) and as it is, with the projections joined (decode_joined_projections) or not."""
    from actqkv_llm import Engine

    model = _decode_model(arch, dtype)
    ref = Engine(model, tokenizer, progress=False, cache=False, allow_past_window=True, decode_graph=False, **SMALL)
    fast = Engine(model, tokenizer, progress=False, cache=False, allow_past_window=True, decode_kernel=kernel,
                  decode_compile=compile_layers, decode_joined_projections=joined, **SMALL)
    assert fast.decode_graph is not None and fast.decode_graph.use_graph  # "auto" on CUDA
    assert fast.decode_graph.joined_layers == (len(fast.adapter.layers) if joined else 0)
    assert fast.decode_graph.kernel == ("triton" if kernel == "auto" else "torch")
    doc = _decode_document(ref, dtype)
    question = [5, 6, 7, 8]
    sess = [e._session_for(doc) for e in (ref, fast)]
    logits = [s.forward(torch.tensor(question), phase="question") for s in sess]
    steps = [[], []]
    for _ in range(40):
        tok = int(logits[0].argmax())  # both follow the reference's tokens: logits compared step by step
        logits = [e._decode_step(s, tok) for e, s in zip((ref, fast), sess)]
        for i in range(2):
            steps[i].append(logits[i])
    want, got = torch.stack(steps[0]), torch.stack(steps[1])
    assert fast.decode_graph.replays >= 30 and fast.decode_graph.graphs
    # steps that scored every block again (blocks leaving the window) ran between captured segments
    g = fast.decode_graph
    assert g.rescore_steps >= 3 and g.segment_steps == g.rescore_steps
    assert None not in g.segments.values()
    # every layer scored with static shapes ("auto" on CUDA): the document's first such step
    # eagerly, then each layer's captured scoring replayed at its cut
    assert g.static_scored == g.rescore_steps and g.scoring_replays >= (g.static_scored - 1) * len(g.adapter.layers)
    assert g.scorings and all(None not in sc.graphs.values() for sc in g.scorings.values())
    # compiled where asked, not fallen back to the plain layers
    assert fast.decode_graph.compile_layers == compile_layers
    assert (fast.adapter._compiled is not None) == bool(compile_layers)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
        assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    else:
        assert float((got - want).norm() / want.norm()) < 2e-2
    a = ref.answer(doc, "What is word3?", max_new_tokens=24)
    b = fast.answer(doc, "What is word3?", max_new_tokens=24)
    if dtype == torch.float32:
        assert b.text == a.text
        assert [s.start for s in b.sources] == [s.start for s in a.sources]
    many = fast.answer_many(doc, ["What is word3?", "Hi"], max_new_tokens=24)
    assert many[0].text == b.text


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_rows_decoded_together_in_one_graph_match_the_reference(tokenizer, dtype, kernel):
    """Three sessions stepped as rows of one CUDA graph (answer_many's path) follow the reference
    step of each alone: logits step by step (float32 within rounding, bf16 within bf16 rounding),
    and in float32 answer_many's tokens are each question's own (float32: sharpened attention, random
    text: ``_decode_model``)."""
    from actqkv_llm import Engine

    model = _decode_model("llama", dtype)
    ref = Engine(model, tokenizer, progress=False, cache=False, allow_past_window=True, decode_graph=False, **SMALL)
    fast = Engine(model, tokenizer, progress=False, cache=False, allow_past_window=True, decode_kernel=kernel, **SMALL)
    doc = _decode_document(ref, dtype)
    questions = ([5, 6, 7, 8], [9, 8], [11, 12, 13])
    ref_s = [ref._session_for(doc) for _ in questions]
    fast_s = [fast._session_for(doc) for _ in questions]
    ref_l = [s.forward(torch.tensor(q), phase="question") for s, q in zip(ref_s, questions)]
    for s, q in zip(fast_s, questions):
        s.forward(torch.tensor(q), phase="question")
    graph = fast.decode_graph
    want, got = [], []
    for _ in range(40):
        toks = [int(x.argmax()) for x in ref_l]   # every row follows its reference's tokens
        ref_l = [ref._decode_step(s, t) for s, t in zip(ref_s, toks)]
        out = graph.step_rows(list(zip(fast_s, toks)))
        out = [s.forward(torch.tensor([t]), phase="decode") if o is None else o for o, s, t in zip(out, fast_s, toks)]
        want.append(torch.stack(ref_l))
        got.append(torch.stack(out))
    want, got = torch.stack(want), torch.stack(got)
    assert graph.replays >= 3 * 30 and any(key[0] == 3 for key in graph.graphs)
    assert graph.segment_steps >= 3 and graph.segments.get((3, False)) is not None
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
        assert fast.generate_ids_many(doc, list(questions), max_new_tokens=24) == \
            [ref.generate_ids(doc, q, max_new_tokens=24) for q in questions]
    else:
        assert float((got - want).norm() / want.norm()) < 2e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_dense_rows_give_answers_decoded_together_the_one_by_one_tokens(tokenizer, dtype):
    """decode_pad_rows=8: the static step's dense products have one shape for one row and for three,
    so with the attention's fixed-order kernels each answer of a batch gets the bits it gets alone
    (the CPU test shows the same for the eager step)."""
    from actqkv_llm import Engine

    model = tiny_model("llama").to("cuda", dtype)
    fast = Engine(model, tokenizer, progress=False, cache=False, allow_past_window=True, decode_pad_rows=8, **SMALL)
    doc = fast.prefill(TEXT)
    questions = [[5, 6, 7, 8], [9, 8], [11, 12, 13]]
    one_by_one = [fast.generate_ids(doc, q, max_new_tokens=40) for q in questions]
    assert fast.generate_ids_many(doc, questions, max_new_tokens=40) == one_by_one
    assert fast.decode_graph.segment_steps >= 3 and any(key[0] == 3 for key in fast.decode_graph.graphs)


def test_int8_offloaded_blocks_are_dequantized_on_the_gpu(tokenizer):
    """``host_kv_dtype="int8"``: blocks kept as int8 in host memory come back to the device as int8 and
    scales and are dequantized there, to the values dequantizing on the host gives; a prefill and its
    answer stay within rounding of the unquantized offload's."""
    from actqkv_llm import Engine
    from actqkv_llm.memory import Int8Blocks

    ids = torch.randint(0, 256, (1700,), generator=torch.Generator().manual_seed(3))
    docs = []
    for kind in ("model", "int8"):
        eng = Engine(tiny_model("llama").to("cuda"), tokenizer, progress=False, cache=False, offload=True,
                     host_kv_dtype=kind, device_cache_blocks=8)
        docs.append(eng.prefill_ids(ids))
    store = docs[1].state.memory[0].blocks.store
    assert isinstance(store, Int8Blocks) and store.device.type == "cpu"
    blocks, heads = torch.tensor([0, 3, 5]), torch.tensor([1, 0, 1])
    on_gpu, on_host = store.read_units(blocks, heads, device=torch.device("cuda")), store.read_units(blocks, heads)
    for a, b in zip(on_gpu, on_host):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, atol=0, rtol=1e-6)
    ref, got = docs[0].last_logits, docs[1].last_logits
    assert not torch.equal(ref, got) and float((got - ref).norm() / ref.norm()) < 5e-2
