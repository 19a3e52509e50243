"""``actqkv bench recall``: what block selection keeps, measured against full attention.

On documents inside the model's window (where full attention is the truth) every variant prefills
the same samples and answers them; a :class:`~actqkv_llm.bench.meter.RecallMeter` records, per
layer and phase, the share of full attention's memory mass held by the selected blocks next to the
oracle's share at the same number of blocks. The answers are scored too, and ``full`` answers the
same samples as the accuracy reference. Variants whose options differ only in what acts after the
document (``rerank``, ``rescore_every``, ...: ``RetrievalConfig.prefill_options``) share one prefill
per sample, measured once (its time and document-phase recall are reported for each of them).

A variant is a method with optional overrides: ``actqkv``, ``infllm``, ``actqkv+per_head=false``,
``quest+block_size=16``, ``actqkv+positions=exact`` (``+`` separates ``KEY=VALUE`` pairs), or ``hf``:
the same model under plain Hugging Face attention (SDPA), the bar past the window (with ``yarn``,
the model's positions extended by YaRN for every variant). Past the window full attention is no
truth: run those lengths with ``meter=False`` (accuracy and time only).

Outputs in ``out_dir``: ``recall.jsonl`` (one line per sample and variant, with the per-layer rows),
``recall.json`` (the summary), ``recall.md`` (the tables) and ``recall.png`` (recall per layer).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import METHODS
from ..errors import ConfigError
from . import tasks as T
from .options import parse_option
from .meter import PHASES, RecallMeter

DEFAULT_VARIANTS = ("full", "actqkv", "actqkv-paper", "infllm", "quest", "acre")
HF = "hf"


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """'quest+block_size=16+per_head=false' -> ('quest', {'block_size': 16, 'per_head': False})."""
    method, *pairs = spec.split("+")
    if method == HF and not pairs:
        return HF, {}
    if method not in METHODS:
        raise ConfigError(f"variant {spec!r}: unknown method {method!r}; known: {', '.join(METHODS)}")
    options = {}
    for pair in pairs:
        try:
            key, value = parse_option(pair)
        except Exception as exc:  # argparse's type error: say which variant
            raise ConfigError(f"variant {spec!r}: {exc}") from None
        options[key] = value
    return method, options


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: accuracy, mean recall / oracle per phase, the per-layer rows averaged, time."""
    out: dict[str, Any] = {}
    for variant in dict.fromkeys(r["variant"] for r in records):
        rs = [r for r in records if r["variant"] == variant]
        layers: dict[tuple[str, int], list[dict]] = {}
        for r in rs:
            for row in r.get("layers", []):
                layers.setdefault((row["phase"], row["layer"]), []).append(row)
        per_layer = []
        for (phase, layer), rows in sorted(layers.items(), key=lambda kv: (PHASES.index(kv[0][0]), kv[0][1])):
            mean = {k: sum(x[k] for x in rows) / len(rows)
                    for k in ("recall", "oracle", "oracle_shared", "memory_share", "memory_tokens")}
            per_layer.append({"phase": phase, "layer": layer, **mean})
        phases = {}
        for phase in PHASES:
            rows = [x for x in per_layer if x["phase"] == phase]
            if rows:
                rec = sum(x["recall"] for x in rows) / len(rows)
                orc = sum(x["oracle"] for x in rows) / len(rows)
                phases[phase] = {
                    "recall": rec, "oracle": orc, "ratio": rec / orc if orc else 0.0,
                    "min_layer_ratio": min((x["recall"] / x["oracle"]) if x["oracle"] else 0.0 for x in rows),
                    "memory_tokens": sum(x["memory_tokens"] for x in rows) / len(rows),
                    "memory_share": sum(x["memory_share"] for x in rows) / len(rows)}
        out[variant] = {
            "accuracy": sum(r["correct"] for r in rs) / len(rs), "n": len(rs),
            "prefill_s": sum(r["prefill_s"] for r in rs) / len(rs),
            "answer_s": sum(r["answer_s"] for r in rs) / len(rs),
            "prefill_shared": sum(bool(r.get("prefill_shared")) for r in rs),
            "phases": phases, "per_layer": per_layer}
    return out


def markdown(summary: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [f"# bench recall: {info.get('model')} on {info.get('device')}", "",
             f"Command: `{info.get('command')}`", "",
             f"Task {info.get('task')} ({info.get('layout')}), lengths {info.get('lengths')}, "
             f"{info.get('samples')} samples per length"
             + (f" (from sample {info['first_sample']})" if info.get("first_sample") else "")
             + f", seed {info.get('seed')}.", "",
             "| variant | accuracy | question recall / oracle | decode recall / oracle "
             "| worst layer (question; decode) | memory tokens per step (question) | prefill s | answer s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    def cell(p: dict | None) -> str:
        return f"{p['recall']:.3f} / {p['oracle']:.3f} ({p['ratio']:.2f})" if p else "-"

    for v, s in summary.items():
        q, d = s["phases"].get("question"), s["phases"].get("decode")
        worst = "; ".join(f"{p['min_layer_ratio']:.2f}" if p else "-" for p in (q, d))
        tokens = f"{q['memory_tokens']:.0f}" if q else "-"
        lines.append(f"| {v} | {s['accuracy']:.0%} ({s['n']}) | {cell(q)} | {cell(d)} | {worst} | {tokens} "
                     f"| {s['prefill_s']:.2f} | {s['answer_s']:.2f} |")
    lines += ["", "recall: share of full attention's memory-block mass held by the selected blocks; oracle: "
              "the same share for the top blocks by true mass, as many per KV head; (ratio)."]
    if any(s.get("prefill_shared") for s in summary.values()):
        lines += ["", "Variants that differ only after the document shared one prefill per sample: its time is "
                  "reported for each, and the first of them to answer also paid what a document measures once "
                  "for all its questions (block digests), in its answer time."]
    return "\n".join(lines) + "\n"


def _prefill_once(prefilled: dict, key: str, last_use: dict, variant: str, eng: Any, text: str,
                  layout: str, recall: RecallMeter | None) -> tuple[Any, float, bool]:
    """The sample's document for ``variant``: prefilled by the first variant of its ``key`` (time
    and meter kept in ``prefilled``), shared by the others (their meter takes the first one's
    document phase); the key's last variant lets it go. Returns (document, prefill seconds, shared)."""
    shared = key in prefilled
    if not shared:
        t0 = time.perf_counter()
        doc = eng.prefill(text, chat=layout == "ask", progress=False, cache=False)
        prefilled[key] = (doc, time.perf_counter() - t0, recall)
    doc, prefill_s, first = prefilled[key]
    if shared and recall is not None and first is not None:
        recall.take_phase(first, "document")
    if last_use[key] == variant:
        del prefilled[key]
    return doc, prefill_s, shared


def run_recall(out_dir: str | Path = "bench-results/recall", *, engine: Any = None,
               model: str | None = None, gguf_file: str | None = None, device: str | None = None,
               dtype: Any = None, variants: Sequence[str] = DEFAULT_VARIANTS, task: str = "niah_single",
               lengths: Sequence[int] = (4096,), depths: Sequence[float] = T.DEFAULT_DEPTHS,
               samples: int = 4, seed: int = 0, layout: str = "completion",
               document_every: int = 8, max_new_tokens: int | None = None,
               options: dict[str, Any] | None = None, progress: bool = True, plots: bool = True,
               command: str | None = None, count_tokens: Callable[[str], int] | None = None,
               meter: bool = True, yarn: float | None = None, first_sample: int = 0) -> dict[str, Any]:
    """Run every variant on the same samples with a recall meter on; write and return the summary.

    ``layout``: ``completion`` (raw document, then the question as a plain continuation) or ``ask``
    (the chat template, the product's main path). Samples are spread over ``depths`` in turn.
    ``meter=False``: accuracy and time only (past the window, where full attention is no truth).
    ``yarn``: extend the model's positions by this YaRN factor first (every variant runs on it).
    ``first_sample``: run samples ``first_sample .. first_sample + samples - 1`` of the seed's
    sequence (the same documents, needles and depths as in a run from 0): the rest of a run cut
    short, or one run split over several processes or machines.
    """
    from . import hf
    from .quality import invoked_command, library_versions, load_engine

    if layout not in ("completion", "ask"):
        raise ConfigError(f"layout must be 'completion' or 'ask', got {layout!r}")
    if first_sample < 0 or samples < 1:
        raise ConfigError(f"samples must be >= 1 and first_sample >= 0, got {samples} and {first_sample}")
    parsed = [(v, *parse_variant(v)) for v in variants]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = engine if engine is not None else load_engine(model, gguf_file=gguf_file, device=device,
                                                         dtype=dtype, method="actqkv")
    count = count_tokens or T.hf_token_counter(base.tokenizer)
    if yarn is not None:
        from ..models.rope_scaling import apply_yarn
        apply_yarn(base.model, yarn)
    engines = {v: base.with_method(m, **{**(options or {}), **o}) for v, m, o in parsed if m != HF}
    task_name, haystack = T.parse_task(task)
    records: list[dict[str, Any]] = []
    jobs = [(n, i) for n in lengths for i in range(first_sample, first_sample + samples)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs) * len(parsed), desc="bench recall", unit="answer", dynamic_ncols=True)
    # variants whose options differ only after the document share one prefill per sample (exact:
    # the same KV and retrieval state); the last variant to use a prefill lets it go
    prefill_key = {v: json.dumps(engines[v].config.prefill_options(), sort_keys=True, default=str)
                   for v, m, _ in parsed if m != HF}
    last_use = {key: v for v, key in prefill_key.items()}
    with open(out_dir / "recall.jsonl", "w", encoding="utf-8") as log:
        for length, i in jobs:
            depth = list(depths)[i % len(depths)]
            sample = T.make_sample(task_name, length, depth, count, haystack=haystack, seed=seed, index=i)
            prefilled: dict[str, tuple[Any, float, RecallMeter | None]] = {}
            for v, method, _ in parsed:
                eng = engines.get(v, base)
                recall = RecallMeter(document_every=document_every) if meter and method != HF \
                    and eng.config.uses_memory else None
                eng.meter = recall
                n_tokens, shared = None, False
                try:
                    if method == HF:
                        t0 = time.perf_counter()
                        suffix = sample.continuation if layout == "completion" else sample.question
                        output, n_tokens = hf.answer(base, sample.prompt_document, suffix, layout,
                                                     max_new_tokens or sample.max_new_tokens)
                        prefill_s, t1 = 0.0, t0
                    else:
                        doc, prefill_s, shared = _prefill_once(prefilled, prefill_key[v], last_use, v, eng,
                                                               sample.prompt_document, layout, recall)
                        t1 = time.perf_counter()
                        if layout == "completion":
                            output = eng.generate(doc, sample.continuation, temperature=0.0,
                                                  max_new_tokens=max_new_tokens or sample.max_new_tokens)
                        else:
                            output = eng.ask(doc, sample.question, temperature=0.0,
                                             max_new_tokens=max_new_tokens or sample.max_new_tokens)
                    t2 = time.perf_counter()
                finally:
                    eng.meter = None
                rec = {"variant": v, "method": method, "length": length, "depth": depth, "sample": i,
                       "n_tokens": n_tokens or doc.n_tokens, "expected": sample.expected, "output": output,
                       **T.score(output, sample.expected), "prefill_s": prefill_s, "prefill_shared": shared,
                       "answer_s": t2 - t1, "layers": recall.table() if recall is not None else []}
                records.append(rec)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    summary = summarize(records)
    info = {"model": getattr(base, "model_id", model), "device": str(base.device), "dtype": str(base.dtype),
            # what decides the tokens a run reads (weights, config, tokenizer): compare it before
            # setting two runs' results side by side (a split run's parts, another machine's run)
            "fingerprint": getattr(base, "fingerprint", None),
            "yarn": yarn, "meter": meter, "task": task, "layout": layout, "lengths": list(lengths), "samples": samples, "first_sample": first_sample, "seed": seed,
            "variants": {v: engines[v].config.to_dict() if v in engines else "plain attention (SDPA)"
                         for v, _, _ in parsed},
            "command": command if command is not None else invoked_command(),
            "versions": library_versions()}
    (out_dir / "recall.json").write_text(json.dumps({"info": info, "summary": summary}, indent=1))
    (out_dir / "recall.md").write_text(markdown(summary, info))
    if plots:
        from .plots import PlotsUnavailableError, plot_recall
        try:
            plot_recall(summary, out_dir / "recall.png")
        except PlotsUnavailableError as exc:  # the results are written; only the figure is missing
            warnings.warn(f"no recall.png: {exc}", RuntimeWarning, stacklevel=2)
    return summary
