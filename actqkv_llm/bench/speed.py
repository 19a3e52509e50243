"""``actqkv bench speed``: prefill, time to first token and decode, ours against plain HF attention.

For each length and each method the engine prefills random token ids once (``eng.prefill_ids``),
then answers a random question: time to first token on the document held in memory, the same
after ``doc.save`` / ``eng.load`` from disk (when the engine has them), and decode ms/token.
The same model then runs as plain Hugging Face (SDPA attention, a ``DynamicCache``): prefill in
one pass (or ``baseline_chunk`` tokens at a time), the question, greedy decode. Speed does not
depend on trained weights, so ``random_arch`` builds a randomly initialised model of a real shape
(e.g. Llama-3.1-8B in bf16) directly on the device, with no tokenizer: ids are random.

Timing: one warm-up pass per system first; on CUDA every measurement is bracketed by
``torch.cuda.synchronize`` and CUDA events. Memory: on CUDA, ``torch.cuda.max_memory_allocated``
reset before each system (weights included); on CPU the process's peak RSS from
``resource.getrusage``, which never decreases (later rows include earlier peaks).

Lengths that cannot fit (their KV alone exceeds the memory it would live in: host memory for
ours with ``offload``, device memory otherwise and for the baseline) are recorded as
``skipped`` / ``OOM`` without running; an out-of-memory error while running is caught and
recorded as ``OOM``.
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .hf import cache_argument, plain_attention
from ..persist.bench import MB, bytes_read_from_disk, read_every_block, drop_page_cache, measure_disk_speed
from ..config import resolve_offload
from ..devices import free_device_bytes
from ..files.paths import dir_size
from ..memory.quantized import int8_bytes_per_token
from .quality import (format_length, free_memory, invoked_command, library_versions, load_engine,
                      method_engines, parse_dtype)

HF = "hf-sdpa"
DEFAULT_LENGTHS: tuple[int, ...] = (8192, 32768, 131072, 1 << 20)
GIB = 1 << 30

_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
# Real shapes for randomly initialised speed runs (published configs of these models).
ARCHS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_parameters={**_LLAMA3_ROPE, "factor": 8.0},
                         bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False),
    # Llama-3-8B(-Instruct): ActQKV's reference model, an 8K native window.
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=8192, rms_norm_eps=1e-5,
                       rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                       bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_parameters={**_LLAMA3_ROPE, "factor": 32.0},
                         bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=True),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         max_position_embeddings=8192, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=True),
}


# ----------------------------------------------------------------------------- models
def build_random_model(arch: str, device: str | torch.device = "cuda", dtype: Any = torch.bfloat16,
                       seed: int = 0, max_position_embeddings: int | None = None):
    """A randomly initialised Llama of a real shape, allocated and initialised on ``device``.

    Allocating under a ``torch.device`` context puts every weight straight on the device and
    Hugging Face's own initialiser fills it there (seconds for 8B on a GPU, no host copy).
    """
    from transformers import AutoModelForCausalLM, LlamaConfig
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    shape = dict(ARCHS[arch])
    if max_position_embeddings:
        shape["max_position_embeddings"] = max_position_embeddings
    config = LlamaConfig(**shape)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=parse_dtype(dtype) or torch.bfloat16,
                                                 attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


def kv_bytes_per_token(config: Any, dtype: torch.dtype, int8_blocks: int | None = None) -> int:
    """Keys + values of one token across all layers; with ``int8_blocks`` (a block size), as an
    int8 host store holds them (``host_kv_dtype="int8"``)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    if int8_blocks is not None:
        return int(config.num_hidden_layers * int8_bytes_per_token(kv_heads, head_dim, int8_blocks))
    return 2 * config.num_hidden_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def _host_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------- measuring
class Timer:
    """Wall time of a call; on CUDA synchronised and measured with CUDA events."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        if not self.cuda:
            t0 = time.perf_counter()
            out = fn()
            return out, time.perf_counter() - t0
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        return out, start.elapsed_time(end) / 1000.0


class PeakMemory:
    """Peak memory of one system's run: CUDA allocator peak, or the process's peak RSS on CPU.

    On CUDA a run can also be cut into phases (:meth:`phase`): the peak of the prefill apart from the
    peak while answering, which is what a document reloaded to answer questions costs."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._before = 0   # the highest peak of the phases already cut off (bytes)
        self.label = ("torch.cuda.max_memory_allocated (GiB), reset before each system; weights included"
                      if self.cuda else
                      "peak RSS of the whole process (GiB, CPU, resource.getrusage); it never "
                      "decreases, so each row includes every earlier row's peak")

    def reset(self) -> None:
        self._before = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def phase(self) -> float | None:
        """The peak (GiB) since the last reset or phase, then a new phase starts (CUDA; None on CPU,
        where the process's peak RSS cannot be reset)."""
        if not self.cuda:
            return None
        p = torch.cuda.max_memory_allocated()
        self._before = max(self._before, p)
        torch.cuda.reset_peak_memory_stats()
        return p / GIB

    def read_gib(self) -> float:
        if self.cuda:
            return max(self._before, torch.cuda.max_memory_allocated()) / GIB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # KiB on Linux


class _Answering:
    """Cuts a run's peak memory at the end of the prefill, at the end of the first-token runs
    (:meth:`first_tokens_done`: the question read, no decode step) and at the end of the answers
    (:meth:`done`), so the answering peak can be placed in the question or in the decode."""

    def __init__(self, peak: PeakMemory | None):
        self.peak = peak
        self.prefill = peak.phase() if peak is not None else None
        self.question = None

    def first_tokens_done(self) -> None:
        if self.peak is not None:
            self.question = self.peak.phase()

    def done(self) -> dict[str, float]:
        rest = self.peak.phase() if self.peak is not None else None
        if self.prefill is None or rest is None:
            return {}
        out = {"peak_prefill_gib": self.prefill, "peak_answer_gib": max(rest, self.question or 0.0)}
        if self.question is not None:
            out.update(peak_question_gib=self.question, peak_decode_gib=rest)
        return out


def measure_engine(eng: Any, ids: torch.Tensor, question: torch.Tensor, decode_tokens: int,
                   timer: Timer, reload_dir: Path | None = None, repeats: int = 2,
                   many: Sequence[torch.Tensor] = (), peak: PeakMemory | None = None) -> dict[str, Any]:
    """Prefill ``ids``; time to first token of ``question`` (in memory, and reloaded); decode;
    with ``many`` questions, their answers one by one and as one batch (:func:`measure_many`).
    With ``peak`` (CUDA) the row also has the peak device memory of the prefill and, apart, of
    answering one question at a time about the document in memory (``peak_prefill_gib``,
    ``peak_answer_gib``).

    The question and the decode are timed ``repeats`` times (each on a fresh fork of the
    document) and the fastest kept: the first pass at a new length also pays for the allocator
    growing its pool. Decode time is taken inside each answer, from its first token to its last
    (an earlier version subtracted a separately timed first token, which undercounted decode
    wherever the first answer ran colder than the later ones, e.g. an offloaded cache filling).
    """
    doc, prefill_s = timer(lambda: eng.prefill_ids(ids))
    answering = _Answering(peak)
    ttft_s = min(timer(lambda: eng.generate_ids(doc, question, max_new_tokens=1))[1]
                 for _ in range(repeats))
    answering.first_tokens_done()
    decode_s, out = float("inf"), []
    graph = getattr(eng, "decode_graph", None)  # the static decode step, where the engine uses one
    graph_steps = eager_steps = segment_steps = static_steps = None
    steps: list[tuple[float, bool]] = []
    for _ in range(repeats):
        # each token's time and whether its step scored blocks again (the static step's count)
        ticks: list[tuple[float, int]] = []
        replays = graph.replays if graph is not None else 0
        rescored = graph.rescore_steps if graph is not None else 0
        segmented = graph.segment_steps if graph is not None else 0
        static = graph.static_scored if graph is not None else 0
        out, _ = timer(lambda: eng.generate_ids(
            doc, question, max_new_tokens=1 + decode_tokens,
            on_token=lambda i: ticks.append((time.perf_counter(), graph.rescore_steps if graph is not None else 0))))
        took = time.perf_counter() - ticks[0][0]
        if took < decode_s:
            decode_s = took
            steps = [(1000 * (t1 - t0), c1 > c0) for (t0, c0), (t1, c1) in zip(ticks, ticks[1:])]
        if graph is not None:
            graph_steps = graph.replays - replays
            eager_steps = graph.rescore_steps - rescored
            segment_steps = graph.segment_steps - segmented
            static_steps = graph.static_scored - static
    n_decoded = max(1, len(out) - 1)
    row = {"prefill_s": prefill_s, "prefill_tok_s": len(ids) / prefill_s, "ttft_s": ttft_s,
           "decode_ms_per_token": 1000 * decode_s / n_decoded, "decode_tokens": n_decoded}
    if steps:  # the fastest pass's steps: the median one, and those that scored blocks again apart
        row["decode_step_median_ms"] = statistics.median(ms for ms, _ in steps)
        again = [ms for ms, scored in steps if scored]
        others = [ms for ms, scored in steps if not scored]
        row["decode_rescore_steps_timed"] = len(again)
        row["decode_rescore_step_median_ms"] = statistics.median(again) if again else None
        row["decode_other_step_median_ms"] = statistics.median(others) if others else None
    if graph_steps is not None:  # how many decode steps ran the static step (the rest: the reference)
        row["decode_graph_steps"] = graph_steps
        row["decode_eager_steps"] = eager_steps  # of those, how many scored blocks again
        row["decode_segment_steps"] = segment_steps  # of those, how many replayed the rest from graph segments
        row["decode_static_scored_steps"] = static_steps  # of those, how many scored with static shapes
    row.update(answering.done())
    if len(many) > 1:
        row.update(measure_many(eng, doc, many, decode_tokens, timer))
    if reload_dir is not None and hasattr(doc, "save") and hasattr(eng, "load"):
        path = None
        try:  # persistence is optional here: a failure is recorded, the timings above stand
            path, row["save_s"] = timer(lambda: doc.save(reload_dir / f"speed-{len(ids)}"))
            row["saved_bytes"] = dir_size(Path(path))
            row["save_MBps"] = row["saved_bytes"] / MB / row["save_s"]
            del doc
            free_memory()
            # Cold start: the files leave the page cache, so the load and the blocks the
            # question recalls come from the disk, as in a fresh process days later.
            row["reload_cold"] = all(drop_page_cache(f) for f in Path(path).iterdir())
            loaded, row["load_s"] = timer(lambda: eng.load(path))
            _, ttft_after = timer(lambda: eng.generate_ids(loaded, question, max_new_tokens=1))
            row["ttft_disk_s"] = row["load_s"] + ttft_after
            row["ttft_disk_read_bytes"] = bytes_read_from_disk(loaded)
            for f in Path(path).iterdir():
                drop_page_cache(f)
            read, read_s = timer(lambda: read_every_block(loaded))
            row["read_blocks_MBps"] = read / MB / read_s if read else None
        except Exception as exc:  # noqa: BLE001 - recorded in the results, not hidden
            row["reload_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if path is not None:
                p = Path(path)
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return row


def _step_times(r: dict[str, Any]) -> str:
    """The fastest decode pass's step times for the report: the median of the steps that did not score
    blocks again, and of those that did."""
    parts = []
    if r.get("decode_other_step_median_ms") is not None:
        parts.append(f"other steps {r['decode_other_step_median_ms']:.1f} ms")
    if r.get("decode_rescore_step_median_ms") is not None:
        parts.append(f"steps that scored again {r['decode_rescore_step_median_ms']:.1f} ms")
    return f"; median {', '.join(parts)}" if parts else ""


def measure_many(eng: Any, doc: Any, questions: Sequence[torch.Tensor], decode_tokens: int,
                 timer: Timer) -> dict[str, Any]:
    """Answer ``questions`` about ``doc`` one by one (``generate_ids``), then as one batch
    (``generate_ids_many``): each answer ``1 + decode_tokens`` greedy tokens. Throughput counts every
    token of every answer over the whole time (questions read, answers decoded). The batch is timed
    twice and the faster kept: the first batch of a run also pays for capturing (and compiling,
    ``decode_compile``) the static step for its number of rows, which one by one did at one row in
    the runs before it. Also times the questions' reads alone, each question read and its first token
    chosen: together, as a batch reads them (``many_reads_s``, what part of a batch the reads are),
    and one by one (``many_reads_one_by_one_s``)."""
    one, one_s = timer(lambda: [eng.generate_ids(doc, q, max_new_tokens=1 + decode_tokens) for q in questions])
    _, reads_alone_s = timer(lambda: [eng.generate_ids(doc, q, max_new_tokens=1) for q in questions])
    _, reads_s = timer(lambda: eng.generate_ids_many(doc, list(questions), max_new_tokens=1))
    batch, batch_s = None, float("inf")
    for _ in range(2):
        out, t = timer(lambda: eng.generate_ids_many(doc, list(questions), max_new_tokens=1 + decode_tokens))
        if t < batch_s:
            batch, batch_s = out, t
    n = sum(len(o) for o in one)
    same = sum(a == b for x, y in zip(one, batch) for a, b in zip(x, y))
    return {"many_n": len(questions), "many_one_by_one_s": one_s, "many_batched_s": batch_s,
            "many_one_by_one_tok_s": n / one_s, "many_batched_tok_s": n / batch_s,
            "many_speedup": one_s / batch_s, "many_identical": one == batch, "many_reads_s": reads_s,
            "many_reads_one_by_one_s": reads_alone_s,
            "many_same_token_share": same / n}


@torch.inference_mode()
def measure_hf(model: Any, ids: torch.Tensor, question: torch.Tensor, decode_tokens: int,
               timer: Timer, chunk: int | None = None, repeats: int = 2,
               peak: PeakMemory | None = None) -> dict[str, Any]:
    """The same model as plain Hugging Face: SDPA, DynamicCache, greedy decode.

    Like :func:`measure_engine`, the question and decode are timed ``repeats`` times (the cache
    cropped back to the document in between) and the fastest kept.
    """
    from transformers import DynamicCache
    device = next(model.parameters()).device
    ids, question = ids.to(device)[None], question.to(device)[None]
    cache = DynamicCache(config=model.config)
    kv_name = cache_argument(model)
    step = chunk or ids.shape[1]

    def forward(x: torch.Tensor) -> torch.Tensor:
        # logits_to_keep=1: a 128K x 128K-vocabulary logits tensor would dwarf the KV itself.
        return model(input_ids=x, use_cache=True, logits_to_keep=1, **{kv_name: cache}).logits

    def prefill() -> None:
        for s in range(0, ids.shape[1], step):
            forward(ids[:, s:s + step])

    def decode() -> None:
        token = first
        for _ in range(decode_tokens):
            token = forward(token).argmax(-1)

    ttfts, decodes = [], []
    with plain_attention(model):
        _, prefill_s = timer(prefill)
        answering = _Answering(peak)
        for _ in range(repeats):
            if cache.get_seq_length() > ids.shape[1]:  # back to the document alone
                cache.crop(ids.shape[1] - cache.get_seq_length())
            first, t = timer(lambda: forward(question).argmax(-1))
            ttfts.append(t)
            decodes.append(timer(decode)[1])
        peaks = answering.done()
    ttft_s, decode_s = min(ttfts), min(decodes)
    del cache
    return {"prefill_s": prefill_s, "prefill_tok_s": ids.shape[1] / prefill_s, "ttft_s": ttft_s,
            "decode_ms_per_token": 1000 * decode_s / max(1, decode_tokens),
            "decode_tokens": decode_tokens, **peaks}


def _fits(length: int, per_token: int, budget: int | None) -> tuple[bool, str]:
    need = length * per_token
    if budget is None or need <= budget:
        return True, ""
    return False, f"KV needs {need / GIB:.1f} GiB, {budget / GIB:.1f} GiB available"


# ----------------------------------------------------------------------------- the run
def run_speed(out_dir: str | Path = "bench-results/speed", *,
              model: str | None = None, random_arch: str | None = None,
              gguf_file: str | None = None, device: str | None = None, dtype: Any = None,
              methods: Sequence[str] = ("actqkv",), lengths: Sequence[int] = DEFAULT_LENGTHS,
              question_tokens: int = 32, decode_tokens: int = 64, warmup_tokens: int = 2048,
              baseline: bool = True, baseline_chunk: int | None = None, reload: bool = True,
              max_position_embeddings: int | None = None, options: dict[str, Any] | None = None,
              repeats: int = 2, seed: int = 0, progress: bool = True,
              command: str | None = None, engine: Any = None, many: int = 0) -> dict[str, Any]:
    """Time every method and the plain-HF baseline at each length; write JSON, markdown and PNG.

    Args:
        out_dir: where ``speed.json``, ``speed.md`` and ``speed.png`` go (reload files are
            written under it and deleted).
        model / random_arch: a model path or id (or None: the default model), or one of
            ``ARCHS`` built with random weights on ``device`` (default cuda when available).
        dtype: weights dtype (random models default to bf16).
        methods: our methods to time (each on the same ids).
        lengths: document lengths in tokens; those whose KV cannot fit are recorded as skipped.
        question_tokens, decode_tokens: size of the question and of the timed decode.
        warmup_tokens: length of the untimed warm-up pass.
        baseline, baseline_chunk: run plain HF (one pass, or chunks of this many tokens).
        reload: also time ``doc.save`` + ``eng.load`` + first token, when the engine has them.
        max_position_embeddings: override the random architecture's native window.
        options: retrieval options for every method (e.g. ``budget``, ``offload``).
        repeats: times the question and the decode are timed (the fastest is kept).
        many: also answer this many questions (``question_tokens`` each) on every document one by
            one and as one batch (``generate_ids_many``): throughput and whether the tokens match.
        engine: an already-built engine (tests, notebooks).
    """
    if many and (isinstance(many, bool) or not isinstance(many, int) or many < 2):
        raise ValueError(f"many must be at least 2 questions (or 0: off), got {many!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = dict(options or {})
    command = command if command is not None else invoked_command()
    if engine is None:
        if random_arch:
            from actqkv_llm import Engine
            dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
            net = build_random_model(random_arch, dev, dtype or torch.bfloat16, seed=seed,
                                     max_position_embeddings=max_position_embeddings)
            engine = Engine(net, None, method=methods[0], progress=progress, cache=False,
                            allow_past_window=True, **options)
        else:
            engine = load_engine(model, gguf_file=gguf_file, device=device, dtype=dtype,
                                 method=methods[0], **options)
    engines = method_engines(engine, methods, options)
    net = engine.model
    dev = next(net.parameters()).device
    weights_dtype = next(net.parameters()).dtype
    timer, peak = Timer(dev), PeakMemory(dev)
    per_token = kv_bytes_per_token(net.config, weights_dtype)
    gen = torch.Generator().manual_seed(seed)
    vocab = net.config.vocab_size

    def random_ids(n: int) -> torch.Tensor:
        # Stay clear of the special tokens most vocabularies keep at the top.
        return torch.randint(0, int(vocab * 0.9), (n,), generator=gen)

    question = random_ids(question_tokens)
    # the other questions come from their own stream: the documents stay those of a run without them
    other = torch.Generator().manual_seed(seed + 1)
    many_questions = [question] + [torch.randint(0, int(vocab * 0.9), (question_tokens,), generator=other)
                                   for _ in range(many - 1)] if many else []
    lengths = [int(n) for n in lengths]
    warm = random_ids(min(warmup_tokens, min(lengths)))
    # The warm-up is untimed in the rows, but its wall time is what a process's first use costs
    # (kernel compilation and loading, graph capture, allocator growth): reported beside them.
    # Ours decode past one block leaving the window: that step's eager eviction and new scoring
    # (and any kernel variant only they use) run once here, not first inside a timed answer.
    warm_decode = {m: getattr(eng.config, "block_size", 0) + 2 for m, eng in engines.items()}
    warmup_s = {m: timer(lambda: measure_engine(eng, warm, question, warm_decode[m], timer, repeats=1))[1]
                for m, eng in engines.items()}
    if baseline:
        warm_decode[HF] = 2
        warmup_s[HF] = timer(lambda: measure_hf(net, warm, question, 2, timer, baseline_chunk, repeats=1))[1]
    free_memory()

    systems = [*methods, *([HF] if baseline else [])]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(lengths) * len(systems), desc="bench speed", unit="run",
                   dynamic_ncols=True)
    rows: list[dict[str, Any]] = []
    tmp = out_dir / "reload-tmp"
    disk = None
    if reload:  # the disk's own speed, same run, same directory: the yardstick for save/load
        largest = max(lengths) * per_token
        disk = measure_disk_speed(tmp, int(min(1 << 30, max(64 * MB, largest))))
    try:
        for n in lengths:
            ids = random_ids(n)
            for system in systems:
                row: dict[str, Any] = {"system": system, "length": n, "status": "ok"}
                if bar is not None:
                    bar.set_postfix_str(f"{system} @ {format_length(n)}")
                row.update(_run_one(system, engines, net, ids, question, decode_tokens, timer,
                                    peak, per_token, dev, baseline_chunk,
                                    tmp if reload else None, repeats, many_questions))
                rows.append(row)
                free_memory()
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)

    add_ratios(rows)
    result = {
        "model": getattr(engine, "model_id", None) or model or random_arch,
        "random_arch": random_arch, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine()),
        "dtype": str(weights_dtype), "kv_bytes_per_token": per_token,
        "weights_gib": sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers())) / GIB,
        "model_config": {k: getattr(net.config, k, None) for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "vocab_size", "max_position_embeddings")},
        "methods": {m: e.config.to_dict() for m, e in engines.items()},
        "question_tokens": question_tokens, "decode_tokens": decode_tokens,
        "baseline_chunk": baseline_chunk, "repeats": repeats, "many": many, "memory_metric": peak.label,
        "warmup": {"tokens": len(warm), "seconds": warmup_s, "decode_tokens": warm_decode},
        "disk": disk,
        "command": command,
        "versions": library_versions(),
        "rows": rows,
    }
    (out_dir / "speed.json").write_text(json.dumps(result, indent=2, default=str))
    (out_dir / "speed.md").write_text(speed_markdown(result))
    from .plots import PlotsUnavailableError, plot_speed
    try:
        plot_speed(rows, out_dir / "speed.png")
    except PlotsUnavailableError as exc:  # the results are written; only the figure is missing
        warnings.warn(f"no speed.png: {exc}", RuntimeWarning, stacklevel=2)
    return result


def _run_one(system: str, engines: dict[str, Any], net: Any, ids: torch.Tensor,
             question: torch.Tensor, decode_tokens: int, timer: Timer, peak: PeakMemory,
             per_token: int, dev: torch.device, baseline_chunk: int | None,
             reload_dir: Path | None, repeats: int, many: Sequence[torch.Tensor] = ()) -> dict[str, Any]:
    """One system at one length: a timing row, or why it did not run."""
    n = len(ids) + len(question) + decode_tokens
    # the allocator's cached, unused blocks count as free too (an earlier length's tensors freed)
    device_free = free_device_bytes(dev) if dev.type == "cuda" else None
    host = _host_available()
    if system == HF:
        ok, why = _fits(n, per_token, device_free if device_free is not None else host)
        if not ok:
            return {"status": "OOM", "note": f"not run: {why}"}
    else:
        cfg = engines[system].config
        offloaded = resolve_offload(getattr(cfg, "offload", False), device_free is not None)
        if offloaded and getattr(cfg, "host_kv_dtype", "model") == "int8":
            per_token = kv_bytes_per_token(net.config, torch.int8, int8_blocks=cfg.block_size)
        ok, why = _fits(n, per_token, host if device_free is None or offloaded else device_free)
        if not ok:
            return {"status": "skipped", "note": why}
    peak.reset()
    try:
        if system == HF:
            row = measure_hf(net, ids, question, decode_tokens, timer, baseline_chunk, repeats, peak)
        else:
            if reload_dir is not None:
                reload_dir.mkdir(parents=True, exist_ok=True)
            row = measure_engine(engines[system], ids, question, decode_tokens, timer, reload_dir,
                                 repeats, many, peak)
    except torch.OutOfMemoryError as exc:
        return {"status": "OOM", "note": str(exc).splitlines()[0][:200]}
    row["peak_mem_gib"] = peak.read_gib()
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each method row gets ``x_hf_*``: HF's time over ours (above 1: we are faster)."""
    hf = {r["length"]: r for r in rows if r["system"] == HF and r.get("status") == "ok"}
    for r in rows:
        base = hf.get(r["length"])
        if r["system"] == HF or base is None or r.get("status") != "ok":
            continue
        for field in ("prefill_s", "ttft_s", "decode_ms_per_token"):
            if r.get(field):
                r[f"x_hf_{field}"] = base[field] / r[field]
        if r.get("peak_mem_gib") and base.get("peak_mem_gib"):
            r["mem_vs_hf"] = r["peak_mem_gib"] / base["peak_mem_gib"]


def speed_markdown(result: dict[str, Any]) -> str:
    """A table: one row per (length, system); ratios are HF time / our time (above 1 = faster)."""
    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    def reads_cell(r: dict) -> str:   # results written before the reads were timed have none
        if r.get("many_reads_s") is None:
            return "-"
        return f"{r['many_reads_s']:.2f} ({100 * r['many_reads_s'] / r['many_batched_s']:.0f}%)"

    lines = ["# Speed benchmark", "",
             f"- model: {result['model']} ({result['dtype']}) on {result['device']} "
             f"({result['device_name']})",
             f"- question {result['question_tokens']} tokens, decode {result['decode_tokens']} tokens",
             f"- memory: {result['memory_metric']}",
             *_warmup_line(result.get("warmup")),
             *_disk_line(result.get("disk")),
             f"- command: `{result['command']}`", "",
             "| length | system | prefill s | prefill tok/s | TTFT s | TTFT from disk s | "
             "decode ms/tok | peak mem GiB | prefill xHF | TTFT xHF | decode xHF |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {format_length(r['length'])} | {r['system']} | {r['status']}: "
                         f"{r.get('note', '')} |" + " |" * 8)
            continue
        lines.append("| " + " | ".join([
            format_length(r["length"]), r["system"], num(r.get("prefill_s"), ".3g"),
            num(r.get("prefill_tok_s"), ",.0f"), num(r.get("ttft_s"), ".3f"),
            num(r.get("ttft_disk_s"), ".3f"), num(r.get("decode_ms_per_token"), ".1f"),
            num(r.get("peak_mem_gib"), ".2f"), num(r.get("x_hf_prefill_s"), ".2f"),
            num(r.get("x_hf_ttft_s"), ".2f"), num(r.get("x_hf_decode_ms_per_token"), ".2f"),
        ]) + " |")
    if any(r.get("x_hf_prefill_s") for r in result["rows"]):
        lines += ["", "xHF: HF SDPA's time over ours at the same length, same run (above 1: faster than HF; "
                  "0.5 means twice HF's time)."]
    graphed = [r for r in result["rows"] if r.get("decode_graph_steps") is not None]
    if graphed:
        lines += ["", "Decode steps through the static step (a CUDA graph on a GPU; where a block left the "
                  "window or blocks were scored again, the scoring runs between segments of the graph on a "
                  "GPU, itself captured where decode_static_scoring applies; the others ran the reference "
                  "step): " + ", ".join(
                      f"{format_length(r['length'])} {r['decode_graph_steps']} of {r['decode_tokens']}"
                      + (f" ({r['decode_eager_steps']} scored again" if r.get("decode_eager_steps") is not None else "")
                      + (f", {r['decode_segment_steps']} of them between segments" if r.get("decode_segment_steps") is not None else "")
                      + (f", {r['decode_static_scored_steps']} with static shapes" if r.get("decode_static_scored_steps") is not None else "")
                      + (")" if r.get("decode_eager_steps") is not None else "")
                      + _step_times(r)
                      for r in graphed)]
    saved = [r for r in result["rows"] if r.get("save_MBps")]
    if saved:
        lines += ["", "Document cache on disk (save: atomic, fsynced, checksummed; reload cold: "
                  "page cache dropped first):", "",
                  "| length | system | cache GiB | save s | save MB/s | load s | "
                  "read every block MB/s | TTFT from disk s | its block reads GiB | TTFT in memory s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in saved:
            lines.append("| " + " | ".join([
                format_length(r["length"]), r["system"], num(r["saved_bytes"] / GIB, ".2f"),
                num(r["save_s"], ".2f"), num(r["save_MBps"], ",.0f"), num(r.get("load_s"), ".3f"),
                num(r.get("read_blocks_MBps"), ",.0f"), num(r.get("ttft_disk_s"), ".3f"),
                num(r["ttft_disk_read_bytes"] / GIB if r.get("ttft_disk_read_bytes") is not None else None, ".2f"),
                num(r.get("ttft_s"), ".3f")]) + " |")
    batched = [r for r in result["rows"] if r.get("many_n")]
    if batched:
        lines += ["", "Several questions on one document (each answer 1 + decode tokens, greedy; "
                  "throughput over reading the questions and decoding the answers):", "",
                  "| length | system | questions | one by one tok/s | one batch tok/s | speed-up | "
                  "same tokens | batch s | its question reads s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in batched:
            lines.append("| " + " | ".join([
                format_length(r["length"]), r["system"], str(r["many_n"]),
                num(r["many_one_by_one_tok_s"], ",.1f"), num(r["many_batched_tok_s"], ",.1f"),
                num(r["many_speedup"], ".2f"),
                "all" if r["many_identical"] else f"{100 * r['many_same_token_share']:.1f}%",
                num(r["many_batched_s"], ".2f"), reads_cell(r)]) + " |")
    phased = [r for r in result["rows"] if r.get("peak_answer_gib") is not None]
    if phased:
        w = result.get("weights_gib")
        lines += ["", "Peak device memory by phase (the prefill; answering one question at a time about "
                  "the document in memory, question and decode; the answering peak's two parts: the "
                  "first-token runs, which read the question, and the answers' decode):", "",
                  "| length | system | weights GiB | prefill peak GiB | answering peak GiB | answering peak - weights GiB "
                  "| first tokens / answers - weights GiB |",
                  "|---|---|---:|---:|---:|---:|---|"]

        def less_weights(x):
            return num(x - w if w is not None and x is not None else None, ".2f")

        for r in phased:
            parts = "-" if r.get("peak_question_gib") is None else \
                f"{less_weights(r['peak_question_gib'])} / {less_weights(r['peak_decode_gib'])}"
            lines.append("| " + " | ".join([
                format_length(r["length"]), r["system"], num(w, ".2f"), num(r["peak_prefill_gib"], ".2f"),
                num(r["peak_answer_gib"], ".2f"), less_weights(r["peak_answer_gib"]), parts]) + " |")
    errors = [r for r in result["rows"] if r.get("reload_error")]
    if errors:
        lines += ["", "Reload from disk failed:"]
        lines += [f"- {r['system']} @ {format_length(r['length'])}: {r['reload_error']}" for r in errors]
    return "\n".join(lines) + "\n"


def _warmup_line(warmup: dict[str, Any] | None) -> list[str]:
    """The untimed warm-up's wall time per system: the first use's costs, kept out of the rows."""
    if not warmup:
        return []
    decoded = warmup.get("decode_tokens") or {}
    each = ", ".join(f"{system} {s:.2f} s" + (f" ({decoded[system]} tokens decoded)" if system in decoded else "")
                     for system, s in warmup["seconds"].items())
    return [f"- warm-up, not in the rows ({warmup['tokens']} tokens and a question; a process's first "
            f"use: kernel compilation and loading, graph capture): {each}"]


def _disk_line(disk: dict[str, Any] | None) -> list[str]:
    if not disk:
        return []
    return [f"- disk (same run, same directory, {disk['bytes'] / MB:,.0f} MB): write+fsync "
            f"{disk['write_MBps']:,.0f} MB/s, read {disk['read_MBps']:,.0f} MB/s"
            + ("" if disk.get("read_cold") else " (page cache could not be dropped)")]
