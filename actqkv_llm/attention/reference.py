"""The reference attention: plain PyTorch, float32 math, runs anywhere; fast paths are checked against it.

Memory (sinks + retrieved blocks) and the local window share ONE softmax. Memory keys are
unrotated and the query is rotated by one fixed angle for them, so every memory token sits at the
same distance from every query; local keys and queries use true relative positions.
"""

from __future__ import annotations

import torch

# Largest score matrix materialised at once (elements); bigger calls are split over queries.
MAX_SCORE_ELEMENTS = 1 << 26


def _scores(q: torch.Tensor, k: torch.Tensor, scaling: float, softcap: float | None) -> torch.Tensor:
    s = torch.matmul(q, k.float().transpose(1, 2)) * scaling
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    return s


def attend(q_local: torch.Tensor, k_local: torch.Tensor, v_local: torch.Tensor,
           q_mem: torch.Tensor | None, k_mem: torch.Tensor | None, v_mem: torch.Tensor | None,
           scaling: float, window: int | None = None, softcap: float | None = None,
           want_mass: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Attention of T queries over M memory keys and Lk local keys.

    q_local: ``[H, T, d]`` rotated at local positions ``Lk-T .. Lk-1``; k_local/v_local: ``[Hkv, Lk, d]``
    (keys rotated at ``0 .. Lk-1``). q_mem: ``[H, T, d]`` rotated at the fixed memory angle, or None;
    k_mem/v_mem: ``[Hkv, M, d]``. Query j sees local key i iff ``i <= pos_j`` and, with a window,
    ``pos_j - i < window``; it sees every memory key.

    Returns ``out [H, T, d]`` (float32) and, if ``want_mass``, the attention mass each key received,
    summed over queries and the heads of its group: ``[Hkv, Lk]`` and ``[Hkv, M]``.
    """
    h, t, d = q_local.shape
    hkv, lk, _ = k_local.shape
    m = 0 if k_mem is None else k_mem.shape[1]
    g = h // hkv
    rows = max(1, MAX_SCORE_ELEMENTS // max(1, h * (lk + m)))
    if t > rows:  # split over queries; each part only needs the keys it can see
        outs, mass_l, mass_m = [], torch.zeros((hkv, lk), device=q_local.device), None
        for a in range(0, t, rows):
            b = min(t, a + rows)
            end = lk - t + b
            o, ml, mm = attend(q_local[:, a:b], k_local[:, :end], v_local[:, :end],
                               None if q_mem is None else q_mem[:, a:b], k_mem, v_mem,
                               scaling, window, softcap, want_mass)
            outs.append(o)
            if want_mass:
                mass_l[:, :end] += ml
                mass_m = mm if mass_m is None else mass_m + mm
        return torch.cat(outs, 1), (mass_l if want_mass else None), mass_m

    ql = q_local.float().reshape(hkv, g * t, d)
    s_loc = _scores(ql, k_local, scaling, softcap)  # [Hkv, G*T, Lk]
    qpos = torch.arange(lk - t, lk, device=q_local.device).repeat(g)
    kpos = torch.arange(lk, device=q_local.device)
    visible = kpos[None, :] <= qpos[:, None]
    if window is not None:
        visible &= (qpos[:, None] - kpos[None, :]) < window
    s_loc = s_loc.masked_fill(~visible, float("-inf"))
    if m:
        s_mem = _scores(q_mem.float().reshape(hkv, g * t, d), k_mem, scaling, softcap)
        p = torch.softmax(torch.cat([s_mem, s_loc], -1), -1)
        p_mem, p_loc = p[..., :m], p[..., m:]
        out = torch.matmul(p_mem, v_mem.float()) + torch.matmul(p_loc, v_local.float())
    else:
        p_loc = torch.softmax(s_loc, -1)
        p_mem = None
        out = torch.matmul(p_loc, v_local.float())
    out = out.reshape(h, t, d)
    if not want_mass:
        return out, None, None
    return out, p_loc.sum(1), (None if p_mem is None else p_mem.sum(1))
