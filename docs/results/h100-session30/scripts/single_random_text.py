import sys, torch
sys.path.insert(0, "tests")
from tiny_models import byte_tokenizer, tiny_model, separated
from actqkv_llm import Engine
tokenizer = byte_tokenizer()
for arch in ("llama", "qwen2"):
    small = dict(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=4 + 64 + 8 * 4, prefill_chunk=96)
    model = separated(tiny_model(arch))
    ref = Engine(model, tokenizer, progress=False, cache=False, allow_past_window=True, decode_graph=False, **small)
    fast = Engine(model, tokenizer, progress=False, cache=False, allow_past_window=True, decode_graph=True, decode_kernel="torch", **small)
    import string
    AL = string.ascii_letters + string.digits + " .,"
    doc = ref.prefill("".join(AL[i] for i in torch.randint(0, len(AL), (1400,), generator=torch.Generator().manual_seed(1)).tolist()))
    sess = [e._session_for(doc) for e in (ref, fast)]
    logits = [s.forward(torch.tensor([5, 6, 7, 8]), phase="question") for s in sess]
    steps = [[], []]
    for _ in range(40):
        tok = int(logits[0].argmax())
        logits = [e._decode_step(s, tok) for e, s in zip((ref, fast), sess)]
        for i in range(2):
            steps[i].append(logits[i])
    want, got = torch.stack(steps[0]), torch.stack(steps[1])
    g = fast.decode_graph
    print(arch, "replays", g.replays, "rescore_steps", g.rescore_steps, "max diff", float((got - want).abs().max()))
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    a = ref.answer(doc, "What is word3?", max_new_tokens=24); b = fast.answer(doc, "What is word3?", max_new_tokens=24)
    assert b.text == a.text and [s.start for s in b.sources] == [s.start for s in a.sources]
    many = fast.answer_many(doc, ["What is word3?", "Hi"], max_new_tokens=24)
    assert many[0].text == b.text
    print(arch, "ok", repr(a.text[:20]), [s.start for s in a.sources][:5])
