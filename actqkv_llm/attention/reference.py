"""The reference attention: plain PyTorch, float32 math, runs anywhere; fast paths are checked against it.

Memory (sinks + retrieved blocks) and the local window share ONE softmax. Memory keys are
unrotated and the query is rotated by one fixed angle for them, so every memory token sits at the
same distance from every query; local keys and queries use true relative positions.
"""

from __future__ import annotations

import torch

# Largest score matrix materialised at once (elements); bigger calls are split over queries.
MAX_SCORE_ELEMENTS = 1 << 26


def _scores(q: torch.Tensor, k: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """q is pre-scaled float32 ``[Hkv, R, d]``; returns ``[Hkv, R, n]`` logits."""
    s = torch.matmul(q, k.float().transpose(1, 2))
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    return s


def _hidden(lk: int, t: int, g: int, window: int | None, device: torch.device,
            masks: dict | None) -> torch.Tensor:
    """``[G*T, n]`` True where query row j may not see key ``first + i`` (future, or beyond the window)."""
    key = (lk, t, g, window, device)
    if masks is not None and key in masks:
        return masks[key]
    first = 0 if window is not None else lk - t
    qpos = torch.arange(lk - t, lk, device=device).repeat(g)
    kpos = torch.arange(first, lk, device=device)
    hidden = kpos[None, :] > qpos[:, None]
    if window is not None:
        hidden |= (qpos[:, None] - kpos[None, :]) >= window
    if masks is not None:
        masks[key] = hidden
    return hidden


def context_logsumexp(q_local: torch.Tensor, k_local: torch.Tensor, q_mem: torch.Tensor | None,
                      k_sink: torch.Tensor | None, scaling: float, window: int | None = None,
                      softcap: float | None = None, masks: dict | None = None) -> torch.Tensor:
    """``[Hkv, G*T, 1]`` log of the softmax normaliser that the always-visible keys (local window
    and sinks) contribute for each query row, as :func:`attend` scores them. Adding the retrieved
    blocks' exponentials to it gives the normaliser of the attention that will run, so a block's
    mass can be judged as attention will weigh it before any block is picked."""
    h, t, d = q_local.shape
    hkv, lk, _ = k_local.shape
    g = h // hkv
    s = _scores(q_local.float().reshape(hkv, g * t, d) * scaling, k_local, softcap)
    first = 0 if window is not None else lk - t
    if t > 1 or (window is not None and lk > window):
        s[..., first:].masked_fill_(_hidden(lk, t, g, window, q_local.device, masks), float("-inf"))
    if k_sink is not None and k_sink.shape[1]:
        s = torch.cat([s, _scores(q_mem.float().reshape(hkv, g * t, d) * scaling, k_sink, softcap)], -1)
    return torch.logsumexp(s, -1, keepdim=True)


def attend(q_local: torch.Tensor, k_local: torch.Tensor, v_local: torch.Tensor,
           q_mem: torch.Tensor | None, k_mem: torch.Tensor | None, v_mem: torch.Tensor | None,
           scaling: float, window: int | None = None, softcap: float | None = None,
           want_mass: bool = True, masks: dict | None = None, counted: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Attention of T queries over M memory keys and Lk local keys.

    q_local: ``[H, T, d]`` rotated at local positions ``Lk-T .. Lk-1``; k_local/v_local: ``[Hkv, Lk, d]``
    (keys rotated at ``0 .. Lk-1``). q_mem: ``[H, T, d]`` rotated at the fixed memory angle, or None;
    k_mem/v_mem: ``[Hkv, M, d]``. Query j sees local key i iff ``i <= pos_j`` and, with a window,
    ``pos_j - i < window``; it sees every memory key. ``masks``, if given, caches the causal masks
    between calls of the same shape (every layer of a pass has the same shapes).

    Returns ``out [H, T, d]`` (float32) and, if ``want_mass``, the attention mass each key received,
    summed over queries and the heads of its group: ``[Hkv, Lk]`` and ``[Hkv, M]``; ``counted``
    ``[Hkv or 1, T]`` (0 or 1), if given, says which queries that sum counts (questions read as rows
    of one batch, padded to the longest: attention/question_rows.py).
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
                               scaling, window, softcap, want_mass, masks,
                               None if counted is None else counted[:, a:b])
            outs.append(o)
            if want_mass:
                mass_l[:, :end] += ml
                mass_m = mm if mass_m is None else mass_m + mm
        return torch.cat(outs, 1), (mass_l if want_mass else None), mass_m

    ql = q_local.float().reshape(hkv, g * t, d) * scaling
    s_loc = _scores(ql, k_local, softcap)  # [Hkv, G*T, Lk]
    # only the last T keys can be in a query's future; with a window, old keys can be too far
    first = 0 if window is not None else lk - t
    if t > 1 or (window is not None and lk > window):
        hidden = _hidden(lk, t, g, window, q_local.device, masks)
        s_loc[..., first:].masked_fill_(hidden, float("-inf"))
    # one softmax over [memory | local] without concatenating the score matrices
    row_max = s_loc.amax(-1, keepdim=True)
    s_mem = None
    if m:
        s_mem = _scores(q_mem.float().reshape(hkv, g * t, d) * scaling, k_mem, softcap)
        row_max = torch.maximum(row_max, s_mem.amax(-1, keepdim=True))
        e_mem = s_mem.sub_(row_max).exp_()
    e_loc = s_loc.sub_(row_max).exp_()
    z = e_loc.sum(-1, keepdim=True)
    out = torch.matmul(e_loc, v_local.float())
    if m:
        z += e_mem.sum(-1, keepdim=True)
        out += torch.matmul(e_mem, v_mem.float())
    inv_z = z.reciprocal_()
    out = (out * inv_z).reshape(h, t, d)
    if not want_mass:
        return out, None, None
    # mass each key received = sum over rows of e / z: a matrix-vector product, no probability matrix
    w = inv_z.transpose(1, 2)  # [Hkv, 1, R]
    if counted is not None:
        w = w * counted.to(w.dtype)[:, None, None, :].expand(-1, 1, g, -1).reshape(-1, 1, g * t)
    mass_loc = torch.matmul(w, e_loc)[:, 0]
    mass_mem = torch.matmul(w, e_mem)[:, 0] if m else None
    return out, mass_loc, mass_mem
