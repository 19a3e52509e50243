"""Session 33: can a batch's question reads overlap on the host? 8 questions (32 tokens) on one 32K document
(8B shape, random weights): read one after another, then from 2, 4 and 8 Python threads (no engine lock:
sessions are separate, the document is only read), each read's logits compared bit for bit with the
sequential ones. ARCH, N from the environment."""
import os, time, torch
from concurrent.futures import ThreadPoolExecutor
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model, ARCHS
from actqkv_llm.attention.step import QUESTION

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ARCHS["tiny"] = dict(ARCHS["llama-3.1-8b"], hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                     num_attention_heads=8, num_key_value_heads=2, vocab_size=1000)
arch = os.environ.get("ARCH", "llama-3.1-8b")
net = build_random_model(arch, DEV, torch.bfloat16 if DEV == "cuda" else torch.float32)
V = min(100000, net.config.vocab_size)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, V, (int(os.environ.get("N", "32768")),), generator=g))
qs = [torch.randint(0, V, (32,), generator=g) for _ in range(8)]
sync = torch.cuda.synchronize if DEV == "cuda" else (lambda: None)


def read(q):
    return eng._session_for(doc).forward(q, phase=QUESTION)


def run(threads):
    sync(); t0 = time.perf_counter()
    if threads == 1:
        out = [read(q) for q in qs]
    else:
        with ThreadPoolExecutor(threads) as ex:
            out = list(ex.map(read, qs))
    sync()
    return 1000 * (time.perf_counter() - t0), out


ref = None
for threads in (1, 1, 2, 4, 8, 1, 2, 4):
    ms, out = run(threads)
    if ref is None:
        ref = out
    same = all(torch.equal(a, b) for a, b in zip(ref, out))
    print(f"threads {threads}: 8 reads {ms:.0f} ms ({ms / 8:.1f} per read), logits identical to the first run: {same}", flush=True)
