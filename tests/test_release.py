"""A document's memory is freed as soon as the last reference to it goes: no reference cycle may
hold a session (and its KV) until the garbage collector happens to run. One did (a closure over
the step in every memory query), and prefilling document after document in one process ran out
of memory."""

import gc
import weakref

import pytest

from actqkv_llm.session import Session

SMALL = dict(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=4 + 64 + 8 * 6, prefill_chunk=96)


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("method,extra", [("actqkv", {}), ("actqkv", {"batch_prefill": True}),
                                          ("actqkv", {"offload": True, "device_cache_blocks": 8}),
                                          ("actqkv-paper", {}), ("quest", {}), ("infllm", {}),
                                          ("acre", {"l1_budget": 8}), ("full", {})])
def test_sessions_are_freed_without_the_garbage_collector(make_engine, monkeypatch, no_gc, method, extra):
    eng = make_engine("llama", method=method, allow_past_window=True, **{**SMALL, **extra})
    made = []
    init = Session.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        made.append(weakref.ref(self))

    monkeypatch.setattr(Session, "__init__", spy)
    text = " ".join(f"word{i} is {i * 7 % 13}." for i in range(120))
    doc = eng.prefill(text)
    eng.answer(doc, "What is word3?", max_new_tokens=6)
    eng.answer_many(doc, ["What is word3?", "And word9?"], max_new_tokens=6)
    stream = eng.stream(doc, "Hi", max_new_tokens=4)
    "".join(stream)
    monkeypatch.undo()
    assert len(made) >= 5 and any(r() is not None for r in made)  # the document's own session lives
    del doc, stream
    alive = [r() for r in made if r() is not None]
    assert not alive, f"{len(alive)} of {len(made)} sessions outlived their document without gc.collect()"


def test_a_reloaded_document_is_freed_without_the_garbage_collector(make_engine, monkeypatch, no_gc, tmp_path):
    eng = make_engine("llama", **SMALL)
    doc = eng.prefill(" ".join(f"word{i} is {i * 7 % 13}." for i in range(120)))
    path = doc.save(tmp_path / "doc")
    del doc
    made = []
    init = Session.__init__
    monkeypatch.setattr(Session, "__init__", lambda self, *a, **k: (init(self, *a, **k), made.append(weakref.ref(self)))[0])
    loaded = eng.load(path)
    eng.answer(loaded, "What is word3?", max_new_tokens=6)
    monkeypatch.undo()
    assert made and made[0]() is not None
    del loaded
    assert not [r for r in made if r() is not None]
