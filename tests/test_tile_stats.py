"""Per-tile softmax statistics of the static decode step (attention/tile_stats.py): the PyTorch
version against a direct softmax, and the Triton kernel against the PyTorch version (compiled on a
GPU, interpreted on the CPU with ``TRITON_INTERPRET=1``)."""

import pytest
import torch

from actqkv_llm.attention.tile_stats import (ChosenList, candidate_mass_torch, candidate_mass_triton, choose_torch, choose_triton,
                                             combine_torch, combine_triton, kept_tiles, kept_values_triton, place_token_torch,
                                             lists_the_choice, place_token_triton, tile_stats_torch,
                                             tile_stats_triton)
from actqkv_llm.devices import triton_available


def _case(dtype=torch.float32, device="cpu", hkv=2, g=3, d=16, tile=8, n_tiles=7, first_window=5):
    gen = torch.Generator().manual_seed(0)
    width = n_tiles * tile
    qs = torch.randn((2, hkv, g, d), generator=gen)
    keys = torch.randn((hkv, width, d), generator=gen)
    values = torch.randn((hkv, width, d), generator=gen)
    visible = torch.rand(width, generator=gen) < 0.6
    visible[tile:2 * tile] = False          # a tile with nothing visible (an unused candidate)
    visible[first_window * tile] = True     # the window's first slot (the new token's)
    return [x.to(device) for x in (qs, keys.to(dtype), values.to(dtype), visible)] + [first_window, tile]


def _product(a, b):
    return torch.matmul(a.float(), b.float())


def test_torch_tile_stats_rebuild_a_direct_softmax_with_two_queries():
    qs, keys, values, visible, fw, tile = _case()
    scaling = 0.25
    m, l, o, raw = tile_stats_torch(qs, keys, values, visible, fw, tile, scaling, None, _product)
    assert raw is None and m.shape == l.shape == (2, 7, 3) and o.shape == (2, 7, 3, 16)
    # direct: memory tiles scored by query 0, window tiles by query 1, one softmax over visible keys
    w0 = fw * tile
    s = torch.cat([qs[0] @ keys[:, :w0].transpose(1, 2), qs[1] @ keys[:, w0:].transpose(1, 2)], -1) * scaling
    s = s.masked_fill(~visible, float("-inf"))
    want = torch.softmax(s, -1) @ values                                    # [Hkv, G, d]
    coef = torch.exp(m - m.amax(1, keepdim=True))
    got = torch.einsum("htg,htgd->hgd", coef, o) / (coef * l).sum(1)[..., None]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.isinf(m[:, 1]).all() and (l[:, 1] == 0).all() and (o[:, 1] == 0).all()
    # each tile's log-sum-exp is the log of its share of the normaliser
    lse = m + l.log()
    torch.testing.assert_close(torch.logsumexp(lse, 1), torch.logsumexp(s, -1).transpose(0, 1).T, atol=1e-5, rtol=1e-5)


def test_a_softcap_caps_attention_and_keeps_uncapped_log_sum_exp_for_the_rerank():
    qs, keys, values, visible, fw, tile = _case()
    m, l, o, raw = tile_stats_torch(qs, keys, values, visible, fw, tile, 1.0, 2.0, _product)
    assert raw is not None and raw.shape == m.shape
    assert float(m[~torch.isinf(m)].max()) <= 2.0                          # capped logits
    m1, l1, _, _ = tile_stats_torch(qs, keys, values, visible, fw, tile, 1.0, None, _product)
    torch.testing.assert_close(raw, torch.where(l1 > 0, m1 + l1.log(), torch.full_like(m1, float("-inf"))))


def _selection(rows, sel, n_cand, device, seed=3):
    gen = torch.Generator().manual_seed(seed)
    ok = torch.rand((rows, sel, n_cand), generator=gen) < 0.8
    edge = ok & (torch.rand(ok.shape, generator=gen) < 0.2)
    chosen = ok & (torch.rand(ok.shape, generator=gen) < 0.4)
    return ok.to(device), edge.to(device), chosen.to(device)


def test_candidate_mass_and_combine_rebuild_a_direct_softmax():
    """Two rows of two KV heads: the candidates' masses are their share of full attention (summed
    over the row's heads), the combine is the softmax over the kept keys only."""
    qs, keys, values, visible, fw, tile = _case(hkv=4)
    rows, hkv, n_t, g, d = 2, 2, 7, 3, 16
    visible = torch.stack([visible, visible.roll(3)])
    t0, t1 = 1, fw                                     # tile 0: sinks; 1..4 candidates; 5, 6: window
    m, l, o, _ = tile_stats_torch(qs, keys, values, visible, fw, tile, 0.3, None, _product)
    ok, edge, chosen = _selection(rows, 1, t1 - t0, "cpu")
    w0 = fw * tile
    s = torch.cat([qs[0] @ keys[:, :w0].transpose(1, 2), qs[1] @ keys[:, w0:].transpose(1, 2)], -1) * 0.3
    s = s.masked_fill(~visible.repeat_interleave(hkv, 0)[:, None], float("-inf"))          # [N, G, W]
    p = torch.softmax(s, -1)
    share = p[..., t0 * tile:t1 * tile].reshape(rows, hkv, g, t1 - t0, tile).sum((1, 2, 4))
    want = share[:, None].masked_fill(edge, float("inf")).masked_fill(~ok, float("-inf"))
    torch.testing.assert_close(candidate_mass_torch(m, l, ok, edge, t0, t1), want, atol=1e-6, rtol=1e-5)
    kept = torch.ones((rows, n_t * tile), dtype=torch.bool)
    kept[:, t0 * tile:t1 * tile] = chosen[:, 0].repeat_interleave(tile, -1)
    direct = torch.softmax(s.masked_fill(~kept.repeat_interleave(hkv, 0)[:, None], float("-inf")), -1)
    out, tiles = combine_torch(m, l, o, chosen, t0, t1, True)
    torch.testing.assert_close(out, direct @ values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiles, direct.view(rows * hkv, g, n_t, tile).sum(-1).transpose(1, 2), atol=1e-6, rtol=1e-5)


def test_the_choice_takes_the_largest_masses_ties_to_the_earlier_candidate():
    mass = torch.tensor([[[0.5, 0.9, float("inf"), 0.9, float("-inf"), 0.5, 0.1]]])
    take = lambda n, hi=9: choose_torch(mass, torch.tensor([n]), hi)[0, 0].nonzero().flatten().tolist()  # noqa: E731
    assert take(1) == [2]                      # the edge (+inf) first
    assert take(2) == [1, 2] and take(3) == [1, 2, 3]
    assert take(4) == [0, 1, 2, 3]             # of the tied 0.5s, the earlier one
    assert take(7) == list(range(7))           # past the filled ones: the unfilled (-inf) last
    assert take(5, hi=3) == [1, 2, 3]          # never more than hi
    assert take(0) == []


def _compare_kernel(dtype: torch.dtype, device: torch.device) -> None:
    qs, keys, values, visible, fw, tile = _case(dtype, device, hkv=4, g=4, d=32, tile=16, n_tiles=6, first_window=4)
    visible = torch.stack([visible, visible.roll(5)])          # two rows of two KV heads
    want = tile_stats_torch(qs, keys, values, visible, fw, tile, 0.2, None, _product)
    out = tuple(torch.empty_like(x) for x in want[:3])
    got = tile_stats_triton(qs, keys, values, visible, fw, tile, 0.2, out)
    assert got[0] is out[0] and got[3] is None
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, **tol)
    # the candidates' masses and the combine, per selection of a row (1) and per KV head (2)
    m, l, o = want[:3]
    t0, t1 = 1, fw
    for sel in (1, 2):
        ok, edge, chosen = _selection(2, sel, t1 - t0, device)
        mass = candidate_mass_triton(m, l, ok, edge, t0, t1, torch.empty(m[:, 0].shape, device=device), torch.empty(ok.shape, device=device))
        torch.testing.assert_close(mass, candidate_mass_torch(m, l, ok, edge, t0, t1), atol=1e-5, rtol=1e-5)
        res = combine_triton(m, l, o, chosen, ChosenList.of(chosen), t0, t1, True, torch.empty(o[:, 0].shape, device=device), torch.empty(m.shape, device=device))
        for a, b in zip(res, combine_torch(m, l, o, chosen, t0, t1, True)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        # no candidate kept, every one, and the chosen ones listed in reverse: the same softmax
        for pick, reverse in ((torch.zeros_like(chosen), False), (torch.ones_like(chosen), False), (chosen, True)):
            listed = ChosenList.of(pick)
            if reverse:
                for r in range(pick.shape[0]):
                    for s_ in range(sel):
                        k = int(listed.count[r, s_])
                        listed.order[r, s_, :k] = listed.order[r, s_, :k].flip(0)
            got_pick = combine_triton(m, l, o, pick, listed, t0, t1, True, torch.empty(o[:, 0].shape, device=device),
                                      torch.empty(m.shape, device=device))
            for a, b in zip(got_pick, combine_torch(m, l, o, pick, t0, t1, True)):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        # a row's results do not depend on the rows beside it (bit for bit): answers decoded
        # together are the answers decoded alone
        one = candidate_mass_triton(m[:2], l[:2], ok[:1], edge[:1], t0, t1, torch.empty(m[:2, 0].shape, device=device),
                                    torch.empty(ok[:1].shape, device=device))
        assert torch.equal(one, mass[:1])
        alone = combine_triton(m[:2], l[:2], o[:2], chosen[:1], ChosenList.of(chosen[:1]), t0, t1, True, torch.empty(o[:2, 0].shape, device=device), torch.empty(m[:2].shape, device=device))
        assert torch.equal(alone[0], res[0][:2]) and torch.equal(alone[1], res[1][:2])
        _compare_two_passes(qs, keys, values, visible, fw, tile, got, chosen, t0, t1)
    _compare_choice(device)
    _compare_place(device, dtype)


def _compare_place(device, dtype):
    """The new token's writes as one kernel are the five indexed writes, bit for bit, in every
    buffer (with and without the kept queries); the model's k and v are strided views."""
    gen = torch.Generator().manual_seed(3)
    rows, hkv, d, cap, width, feats = 3, 2, 24, 10, 40, 2 * 3 * 24
    raw = torch.randn((rows, 1, 2 * hkv, d), generator=gen)
    k, v = raw[..., :hkv, :].transpose(1, 2), raw[..., hkv:, :].transpose(1, 2)   # [B, Hkv, 1, d], strided
    k, v = k.to(device).to(dtype), v.to(device).to(dtype)
    k_rot = torch.randn((rows * hkv, d), generator=gen).to(device).to(dtype)
    q_flat = torch.randn((rows, feats), generator=gen).to(device)
    slot = torch.tensor([0, 7, 3])
    at_cap = ((torch.arange(rows * hkv) * cap).view(rows, hkv) + slot[:, None]).flatten().to(device)
    at_w = ((torch.arange(rows * hkv) * width).view(rows, hkv) + (slot + 30)[:, None]).flatten().to(device)
    at_vis = (torch.arange(rows) * width + slot + 30).to(device)
    at_q = (torch.arange(rows) * cap + slot).to(device)
    for with_q in (True, False):
        bufs = [torch.randn(shape, generator=gen).to(device).to(dt) for shape, dt in
                (((rows, hkv, cap, d), dtype), ((rows, hkv, width, d), dtype), ((rows, hkv, width, d), dtype))]
        bufs += [torch.rand((rows, width), generator=gen).to(device) < 0.5,
                 torch.randn((rows, cap, feats), generator=gen).to(device) if with_q else None]
        want = [b.clone() if b is not None else None for b in bufs]
        place_token_torch(k, k_rot, v, q_flat, *want, at_cap, at_w, at_vis, at_q)
        place_token_triton(k, k_rot, v, q_flat, *bufs, at_cap, at_w, at_vis, at_q)
        for a, b in zip(bufs, want):
            assert (a is None and b is None) or torch.equal(a, b)
        assert bufs[3].view(-1)[at_vis].all() and not torch.equal(want[1], bufs[1] * 0)


def _tied_masses(rows, sel, n_cand, device, seed=0):
    """Masses with many exact ties, +inf edges and -inf unfilled candidates (what the rerank sees)."""
    gen = torch.Generator().manual_seed(seed)
    mass = (torch.rand((rows, sel, n_cand), generator=gen) * 6).floor() / 6
    mass[..., 0] = mass[..., n_cand // 2] = float("inf")
    mass[mass < 0.15] = float("-inf")
    return mass.to(device)


def _compare_choice(device):
    """The rerank's choice by counted ranks (no sort) is the stable sort's, bit for bit: ties
    to the earlier candidate, edges first, unfilled last, ``n_take`` per row clipped at ``hi``,
    n_take read through a strided view (a layer's column of the step's [rows, layers] table)."""
    for rows, sel, n_cand, hi in ((2, 1, 736, 92), (3, 4, 100, 40), (1, 1, 5, 9), (2, 2, 70, 3)):
        mass = _tied_masses(rows, sel, n_cand, device, seed=n_cand)
        table = torch.randint(0, hi + 4, (rows, 5), generator=torch.Generator().manual_seed(1)).to(device)
        n_take = table[:, 2]
        want = choose_torch(mass, n_take, hi)
        kept = ChosenList(rows, sel, n_cand, device)
        kept.order.fill_(-7)
        got = choose_triton(mass, n_take, hi, torch.ones(mass.shape, dtype=torch.bool, device=device), kept)
        assert torch.equal(got, want), (rows, sel, n_cand, hi)
        # the same choice as a list, each chosen candidate once, in the order of its rank
        assert lists_the_choice(kept, want), (rows, sel, n_cand, hi)
        for r in range(rows):
            for s in range(sel):
                listed = kept.order[r, s, :int(kept.count[r, s])].long()
                by_rank = mass[r, s].cpu().sort(descending=True, stable=True).indices[:len(listed)]
                assert listed.tolist() == by_rank.tolist()
        assert (want.sum(-1) == n_take.clamp(max=min(hi, n_cand))[:, None]).all()


def _compare_two_passes(qs, keys, values, visible, fw, tile, one_pass, chosen, t0, t1):
    """The static step's two passes (keys only for the rerank, then values of the kept tiles only)
    give the one pass's m and l, and its o for every kept tile, bit for bit; the other tiles' o
    is not written (so their values are not read), and the combine gives the same output."""
    m, l, o = (torch.empty_like(x) for x in one_pass[:3])
    o.fill_(float("nan"))
    tile_stats_triton(qs, keys, values, visible, fw, tile, 0.2, (m, l, o), with_values=False)
    assert torch.equal(m, one_pass[0]) and torch.equal(l, one_pass[1]) and o.isnan().all()
    kept_values_triton(qs, keys, values, visible, ChosenList.of(chosen), t1 - t0, fw, tile, 0.2, t0, t1, o)
    kept = kept_tiles(chosen, m.shape[0], m.shape[1], t0, t1)
    assert torch.equal(o[kept], one_pass[2][kept]) and o[~kept].isnan().all() and (~kept).any()
    dev = m.device
    a = combine_triton(m, l, o, chosen, ChosenList.of(chosen), t0, t1, True, torch.empty(o[:, 0].shape, device=dev), torch.empty(m.shape, device=dev))
    b = combine_triton(*one_pass[:3], chosen, ChosenList.of(chosen), t0, t1, True, torch.empty(o[:, 0].shape, device=dev), torch.empty(m.shape, device=dev))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU runs the interpreter test)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_triton_kernel_gives_the_torch_statistics(dtype):
    device = torch.device("cuda")
    assert triton_available(device)
    _compare_kernel(dtype, device)


def test_the_interpreted_triton_kernel_gives_the_torch_statistics():
    """The kernel's own logic on the CPU: Triton's interpreter (set before Triton is imported, so
    in a fresh process), float32."""
    pytest.importorskip("triton")
    from interpreted import run_interpreted

    run_interpreted("import torch, test_tile_stats as t; from actqkv_llm.devices import triton_available; "
                    "assert triton_available(torch.device('cpu')); "
                    "t._compare_kernel(torch.float32, torch.device('cpu')); print('ok')")
