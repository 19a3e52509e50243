"""Session 31: tile_stats_kernel's tiles per program (1, 2, 4, 8) on the 8B shape's decode buffers
(one row, 8 KV heads x 4 query heads, d 128, tiles of 32, ~754 tiles: [64 sinks | 736 candidates |
512 window] slots), bf16: time per call (CUDA events, median of 200) and bits against 1."""
import statistics as st, torch
from actqkv_llm.attention.tile_stats import tile_stats_triton

dev = "cuda"
hkv, g, d, b = 8, 4, 128, 32
w0 = 64 + 736 * b
width = w0 + 512
gen = torch.Generator(device=dev).manual_seed(0)
keys = torch.randn((hkv, width, d), generator=gen, device=dev).to(torch.bfloat16)
values = torch.randn_like(keys)
visible = torch.ones((1, width), dtype=torch.bool, device=dev)
qs = torch.randn((2, hkv, g, d), generator=gen, device=dev)
n_t = width // b
base = None
for tpp in (1, 2, 4, 8):
    out = (torch.empty((hkv, n_t, g), device=dev), torch.empty((hkv, n_t, g), device=dev), torch.empty((hkv, n_t, g, d), device=dev))
    run = lambda: tile_stats_triton(qs, keys, values, visible, w0 // b, b, d ** -0.5, out, with_values=False, per_program=tpp)
    for _ in range(5):
        run()
    times = []
    for _ in range(200):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); run(); e.record(); e.synchronize()
        times.append(s.elapsed_time(e) * 1000)
    got = (out[0].clone(), out[1].clone())
    same = base is None or (torch.equal(got[0], base[0]) and torch.equal(got[1], base[1]))
    base = base or got
    print(f"tiles per program {tpp}: {st.median(times):.1f} us median (min {min(times):.1f}); bits as 1: {same}", flush=True)
