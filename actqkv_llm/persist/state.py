"""A prefilled document's state as named tensors, and back.

``state.safetensors`` (small, loaded eagerly onto the compute device) holds everything but the
full KV blocks; ``blocks.safetensors`` (large, read lazily) holds per layer ``layers.{i}.keys`` and
``layers.{i}.values`` shaped ``[n_blocks, kv_heads, block_size, head_dim]``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from ..errors import CacheError
from ..memory import GrowableBlocks, HostBlocks, LayerMemory, StackedBlocks, SummaryKeys
from ..retrieval.methods import LayerRetrievalState
from ..retrieval.probe import ActivationStats

# Blocks moved to the host per write call while saving (bounds the extra host memory).
CHUNK_BYTES = 64 << 20


def layer_name(i: int, what: str) -> str:
    return f"layers.{i}.{what}"


def block_names(i: int) -> tuple[str, str]:
    return layer_name(i, "keys"), layer_name(i, "values")


def _host(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy with its own storage (safetensors refuses shared or strided tensors)."""
    return t.detach().to("cpu").contiguous().clone()


def _scalar(value: float | int, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([value], dtype=dtype)


def compact_ids(ids: torch.Tensor) -> torch.Tensor:
    """Token ids in the smallest of uint16 / int32 / int64 that holds them (read back as int64)."""
    ids = ids.to(torch.long).flatten()
    top = int(ids.max()) if ids.numel() else 0
    low = int(ids.min()) if ids.numel() else 0
    if low >= 0 and top < (1 << 16):
        return _host(ids.to(torch.int32).to(torch.uint16))
    if low >= -(1 << 31) and top < (1 << 31):
        return _host(ids.to(torch.int32))
    return _host(ids)


ID_DTYPES = (torch.uint16, torch.int32, torch.long)
# positions modes whose key bounds a document may carry (``layers.{i}.bounds.{mode}``)
BOUND_MODES = ("fixed", "exact")


def pack_state(doc: Any, kv_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Everything but the full blocks (block digests are added by the writer); KV tensors
    (sinks, local window, summaries) in ``kv_dtype`` (default: as they are). Summary keys only
    where the method's scorer reads them (the others never compute them)."""
    state = doc.state
    kv = (lambda t: _host(t.to(kv_dtype))) if kv_dtype is not None else _host  # noqa: E731
    out: dict[str, torch.Tensor] = {
        "token_ids": compact_ids(doc.token_ids),
        "last_logits": _host(doc.last_logits.float()),
        "text": torch.frombuffer(bytearray(doc.text.encode("utf-8")), dtype=torch.uint8).clone()
        if doc.text else torch.empty(0, dtype=torch.uint8),
        "session.n_tokens": _scalar(state.n_tokens, torch.long),
    }
    for i, (mem, r) in enumerate(zip(state.memory, state.retrieval)):
        n = lambda what: layer_name(i, what)  # noqa: E731
        out[n("sink_k")], out[n("sink_v")] = kv(mem.sink_k), kv(mem.sink_v)
        out[n("local_k")], out[n("local_v")] = kv(mem.local_k), kv(mem.local_v)
        out[n("local_score")] = _host(mem.local_score.float())
        out[n("local_start")] = _scalar(mem.local_start, torch.long)
        if state.method.uses_summaries:
            out[n("summaries")] = kv(mem.summaries.all())
        mode = bounds_to_keep(doc)
        if mode == "fixed" and mem.n_blocks:
            mem.bounds("fixed")   # unrotated keys: measurable here (a document prefilled inside the window never did)
        known = mem.digests["bounds", mode].known if mode else None
        if known is not None and known[0].shape[0]:  # a reload then never reads every block to score them
            out[n(f"bounds.{mode}")] = _host(torch.stack(known, 1).to(torch.bfloat16))
        if r.stats is not None:
            out[n("stats.count")] = _scalar(r.stats.count, torch.long)
            out[n("stats.mean")], out[n("stats.m2")] = _host(r.stats.mean.float()), _host(r.stats.m2.float())
        out[n("entropy_mean")] = _scalar(r.entropy_mean, torch.float64)
        out[n("entropy_count")] = _scalar(r.entropy_count, torch.long)
        if r.question is not None:
            out[n("question")] = kv(r.question)
        out[n("question_weight")] = _scalar(r.question_weight, torch.float64)
    return out


def bounds_to_keep(doc: Any) -> str | None:
    """Which key bounds a saved document keeps: those its next question scores with (memory at
    ``exact`` positions inside the native window, else at the ``fixed`` angle; the fixed angle's are
    measured at save time if the prefill, inside the window, never needed them), for a document on
    an accelerator, where the first question after a reload would otherwise read its whole KV
    back from disk to measure them (16 GiB at 128K tokens on the Llama-3.1-8B shape). On the CPU
    they are measured again (about 3% of the KV on disk, for SmolLM2: kept out so that the CPU
    default's cache stays within half of format 1's bytes per token)."""
    engine = doc.engine
    if engine.device.type == "cpu" or not engine.config.uses_memory:
        return None
    positions = engine.method.positions
    if positions == "auto":
        positions = "exact" if doc.n_tokens + 1 <= engine.native_window else "fixed"
    return positions


def block_chunks(blocks: Any, which: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[torch.Tensor]:
    """A layer's full-block keys (``which=0``) or values (``1``) as CPU ``[m, Hkv, B, d]`` chunks, in order."""
    n = blocks.n_blocks
    if n == 0:
        return
    if isinstance(blocks, HostBlocks):
        blocks = blocks.store
    if isinstance(blocks, GrowableBlocks):
        src = blocks.keys if which == 0 else blocks.values
        per = max(1, chunk_bytes // max(1, src[0].numel() * src.element_size()))
        for a in range(0, n, per):
            yield src[a:a + per].to("cpu").contiguous()
        return
    if hasattr(blocks, "read_part"):  # a reloaded document: read (and verify) from its file
        per = max(1, 2 * chunk_bytes // max(1, blocks.block_bytes))
        for a in range(0, n, per):
            yield blocks.read_part(a, min(n, a + per), which)
        return
    if isinstance(blocks, StackedBlocks):
        yield from block_chunks(blocks.base, which, chunk_bytes)
        yield from block_chunks(blocks.own, which, chunk_bytes)
        return
    # anything else implementing KVBlocks: gather on the host and unflatten
    for a in range(0, n, 64):
        idx = torch.arange(a, min(n, a + 64))
        t = blocks.gather(idx, torch.device("cpu"))[which]
        h, length, d = t.shape
        m = idx.numel()
        yield t.reshape(h, m, length // m, d).transpose(0, 1).contiguous()


def _get(tensors: dict[str, torch.Tensor], name: str, where: str) -> torch.Tensor:
    try:
        return tensors[name]
    except KeyError:
        raise CacheError(f"{where} is corrupt: tensor {name!r} is missing") from None


def unpack_state(engine: Any, tensors: dict[str, torch.Tensor], n_blocks: list[int],
                 make_blocks: Callable[[int], Any], where: str, stored: torch.dtype | None = None,
                 n_tokens: int | None = None):
    """Rebuild the prefilled :class:`Session` on the engine's device; ``make_blocks(i)`` gives layer
    ``i``'s full-block store (a lazy disk reader). KV tensors are stored as ``stored`` (default: the
    compute dtype) and converted to the compute dtype. Summary keys are read only where the
    engine's method uses them (a version 2 cache holds them for every method). Every tensor's
    dtype and shape is checked first: a mismatch is a :class:`CacheError` naming ``where`` and
    the tensor."""
    from ..session import Session

    adapter, config = engine.adapter, engine.config
    dev, dt = adapter.device, adapter.dtype
    sd = stored or dt
    hkv, hd, bs = adapter.n_kv_heads, adapter.head_dim, config.block_size
    memory, retrieval = [], []
    if len(n_blocks) != adapter.n_layers:
        raise CacheError(f"{where} is corrupt: {len(n_blocks)} layers, the model has {adapter.n_layers}")

    def expect(t: torch.Tensor, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise CacheError(f"{where} is corrupt: {name} is {t.dtype} {tuple(t.shape)}, expected "
                             f"{dtype} {tuple(shape)}")
        return t

    def scalar(name: str, dtype: torch.dtype, low: float = 0, high: float | None = None):
        t = expect(_get(tensors, name, where), name, (1,), dtype)
        value = t[0].item()
        if value != value or value < low or (high is not None and value > high):  # NaN or out of range
            raise CacheError(f"{where} is corrupt: {name} is {value}, outside {low}..{high}")
        return value

    limit = n_tokens if n_tokens is not None else None
    for i in range(adapter.n_layers):
        g = lambda what: _get(tensors, layer_name(i, what), where)  # noqa: E731
        name = lambda what: layer_name(i, what)  # noqa: E731
        sink_k, sink_v = g("sink_k"), g("sink_v")
        ns = sink_k.shape[1] if sink_k.dim() == 3 else -1
        expect(sink_k, name("sink_k"), (hkv, ns, hd), sd)
        expect(sink_v, name("sink_v"), (hkv, ns, hd), sd)
        local_k, local_v, score = g("local_k"), g("local_v"), g("local_score")
        nl = local_k.shape[1] if local_k.dim() == 3 else -1
        expect(local_k, name("local_k"), (hkv, nl, hd), sd)
        expect(local_v, name("local_v"), (hkv, nl, hd), sd)
        expect(score, name("local_score"), (hkv, nl), torch.float32)
        summaries = None
        if engine.method.uses_summaries:
            summaries = expect(g("summaries"), name("summaries"), (n_blocks[i], hkv, hd), sd).to(dev, dt)
        local_start = int(scalar(name("local_start"), torch.long, 0, limit))

        mem = LayerMemory(hkv, hd, dt, dev, bs, blocks=make_blocks(i),
                          summaries=SummaryKeys(hkv, hd, dt, dev, base=summaries, capacity=1))
        mem.sink_k, mem.sink_v = sink_k.to(dev, dt), sink_v.to(dev, dt)
        mem.local_k, mem.local_v, mem.local_score = local_k.to(dev, dt), local_v.to(dev, dt), score.to(dev)
        mem.local_start = local_start
        for mode in BOUND_MODES:
            bounds = tensors.get(name(f"bounds.{mode}"))
            if bounds is not None:
                known = bounds.shape[0] if bounds.dim() == 4 else -1
                if not 0 < known <= n_blocks[i]:
                    raise CacheError(f"{where} is corrupt: {name(f'bounds.{mode}')} covers {known} blocks "
                                     f"of {n_blocks[i]}")
                expect(bounds, name(f"bounds.{mode}"), (known, 2, hkv, hd), torch.bfloat16)
                lo, hi = bounds.to(dev).unbind(1)
                if not bool((lo <= hi).all()):  # also false for NaN
                    raise CacheError(f"{where} is corrupt: {name(f'bounds.{mode}')} has a lower bound above its upper")
                mem.digests["bounds", mode].preload(lo, hi)
        memory.append(mem)

        stats = None
        if name("stats.count") in tensors:
            feats = adapter.n_heads * adapter.head_dim
            stats = ActivationStats.__new__(ActivationStats)
            stats.count = int(scalar(name("stats.count"), torch.long, 0, limit))
            stats.mean = expect(g("stats.mean"), name("stats.mean"), (feats,), torch.float32).to(dev)
            stats.m2 = expect(g("stats.m2"), name("stats.m2"), (feats,), torch.float32).to(dev)
        elif engine.method.tracks_activations:
            raise CacheError(f"{where} is corrupt: activation statistics of layer {i} are missing")
        question = tensors.get(name("question"))
        if question is not None:
            question = expect(question, name("question"), (hkv, hd), sd).to(dev, dt)
        entropy_count = int(scalar(name("entropy_count"), torch.long, 0, limit))
        # a running mean of normalized entropies: within [0, 1] (a little slack for rounding)
        entropy_mean = float(scalar(name("entropy_mean"), torch.float64, 0.0, 1.0 + 1e-6))
        # tokens the question probe averages: none without a question
        weight = float(scalar(name("question_weight"), torch.float64, 0.0, None if question is not None else 0.0))
        retrieval.append(LayerRetrievalState(
            stats=stats, entropy_total=entropy_mean * entropy_count, entropy_count=entropy_count,
            question=question, question_weight=weight))
    n_run = int(scalar("session.n_tokens", torch.long, 0, limit))
    return Session(adapter, config, engine.method, memory, retrieval, n_run)
