import os, sys, torch
sys.path.insert(0, "tests")
from tiny_models import byte_tokenizer, tiny_model
from actqkv_llm import Engine
from actqkv_llm.attention import static_decode as sd
tok = byte_tokenizer()
small = dict(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=4 + 64 + 8 * 4, prefill_chunk=96)
model = tiny_model(os.environ.get("ARCH", "llama")).to(torch.float32)
F = float(os.environ.get("F", 1))
for layer in model.model.layers:
    layer.self_attn.q_proj.weight.mul_(F)
ref = Engine(model, tok, progress=False, cache=False, allow_past_window=True, decode_graph=False, **small)
fast = Engine(model, tok, progress=False, cache=False, allow_past_window=True, decode_graph=True, decode_kernel="torch", **small)
import string
ALPH = string.ascii_letters + string.digits + " .,"
RTEXT = "".join(ALPH[i] for i in torch.randint(0, len(ALPH), (1400,), generator=torch.Generator().manual_seed(1)).tolist())
doc = ref.prefill(RTEXT) if os.environ.get("RAND") else ref.prefill(" ".join(f"word{i} is {i * 7 % 13}." for i in range(120)))
questions = ([5, 6, 7, 8], [9, 8], [11, 12, 13])[:int(os.environ.get("NR", 3))]
margins = []
orig = sd.choose_torch
def wrapped(mass, n_take, hi, ranks=None):
    s = mass.sort(-1, descending=True).values
    for r in range(mass.shape[0]):
        n = int(min(n_take[r], hi))
        for j in range(mass.shape[1]):
            a, b = float(s[r, j, n - 1]), float(s[r, j, n]) if n < s.shape[-1] else float("-inf")
            if abs(a) != float("inf") and abs(b) != float("inf"):
                margins.append((step, r, (a - b) / max(abs(a), 1e-30), a))
    return orig(mass, n_take, hi, ranks)
sd.choose_torch = wrapped
step = -1
fs = [fast._session_for(doc) for _ in questions]
ls = [s.forward(torch.tensor(q), phase="question") for s, q in zip(fs, questions)]
g = fast.decode_graph
for step in range(40):
    toks = [int(x.argmax()) for x in ls]
    out = g.step_rows(list(zip(fs, toks)))
    ls = [s.forward(torch.tensor([t]), phase="decode") if o is None else o for o, s, t in zip(out, fs, toks)]
margins.sort(key=lambda m: m[2])
z = [m for m in margins if m[2] == 0]; nz = [m for m in margins if m[2] > 0]
print(len(margins), "zero margins", len(z), "values", sorted({m[3] for m in z})[:5]); print("smallest nonzero", [(a, b, f"{c:.1e}", f"{d:.2e}") for a, b, c, d in nz[:10]])
