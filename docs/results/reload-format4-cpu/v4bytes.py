"""First question on a cold-reloaded document: bytes read from the blocks file, format 4 vs 3
(SmolLM2-135M shape, random weights, 2-core CPU; key bounds saved as a GPU save keeps them)."""
import sys, json, shutil, tempfile, time, torch
sys.path.insert(0, "tests")
from pathlib import Path
from test_cache_trust import as_older_version
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
from actqkv_llm.persist import load_document, state as state_mod
from actqkv_llm.persist.bench import bytes_read_from_disk, drop_page_cache

n = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
net = build_random_model("smollm2-135m", "cpu", torch.float32)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 49000, (n,), generator=g))
q = torch.randint(0, 49000, (32,), generator=g)
real = state_mod.bounds_to_keep
state_mod.bounds_to_keep = lambda d: (("exact" if d.n_tokens + 1 <= d.engine.native_window else "fixed"))
root = Path(tempfile.mkdtemp())
v4 = doc.save(root / "v4")
state_mod.bounds_to_keep = real
shutil.copytree(v4, root / "v3")
as_older_version(root / "v3", 3)
file_bytes = (v4 / "blocks.safetensors").stat().st_size
print(f"{n} tokens, {doc.n_blocks} blocks per layer, blocks file {file_bytes / 2**20:.1f} MiB")
for name in ("v4", "v3"):
    for f in (root / name).iterdir():
        drop_page_cache(f)
    loaded = load_document(eng, root / name)
    t = time.perf_counter()
    out = eng.generate_ids(loaded, q, max_new_tokens=1)
    dt = time.perf_counter() - t
    b = bytes_read_from_disk(loaded)
    print(f"format {name[1]}: first token {out}, {dt:.2f} s, read {b / 2**20:.1f} MiB ({b / file_bytes:.1%} of the file)")
