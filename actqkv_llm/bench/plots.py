"""PNG figures for the benchmarks, drawn with matplotlib's Agg canvas (no display, no pyplot state).

matplotlib is optional (the ``plots`` extra: ``pip install "actqkv-llm[plots]"``); it is imported
when a figure is drawn, and its absence is a clear :class:`PlotsUnavailableError`.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ActQKVError
from .labels import DEFAULT_METHODS, format_length, ordered

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class PlotsUnavailableError(ActQKVError, ImportError):
    """matplotlib is not installed."""


def _matplotlib(module: str) -> Any:
    """``matplotlib.<module>``, or a clear error naming the extra that installs it."""
    try:
        return importlib.import_module(f"matplotlib.{module}")
    except ImportError as exc:
        raise PlotsUnavailableError(
            "drawing benchmark figures needs matplotlib, which is not installed: "
            "pip install \"actqkv-llm[plots]\"") from exc


def _figure(**kwargs: Any) -> "Figure":
    return _matplotlib("figure").Figure(**kwargs)


def _save(fig: "Figure", path: Path) -> Path:
    _matplotlib("backends.backend_agg").FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def accuracy_grid(cells: dict[str, Any], lengths: Sequence[int], depths: Sequence[float],
                  ) -> list[list[float]]:
    """Rows = depths, columns = lengths; NaN where there is no result.

    ``cells``: one method's and task's ``summary["by_depth"]`` entry ({length: {depth: stats}}).
    """
    return [[cells.get(str(n), {}).get(f"{d:g}", {}).get("accuracy", float("nan")) for n in lengths]
            for d in depths]


def plot_heatmaps(summary: dict[str, Any], out_dir: str | Path,
                  methods_order: Sequence[str] = DEFAULT_METHODS,
                  ) -> list[Path]:
    """One figure per task: accuracy by length (x) and depth (y), one panel per method.

    Reads ``summary["by_depth"][method][task][length][depth]["accuracy"]`` (see
    :func:`actqkv_llm.bench.quality.summarize`). Cells without results are left blank.
    """
    by_depth = summary["by_depth"]
    methods = ordered(by_depth, methods_order)
    task_names = sorted({t for m in by_depth.values() for t in m})
    paths = []
    for task in task_names:
        lengths = sorted({int(n) for m in methods for n in by_depth[m].get(task, {})})
        depths = sorted({float(d) for m in methods for cells in by_depth[m].get(task, {}).values()
                         for d in cells})
        fig = _figure(figsize=(1.2 + 0.9 * max(3, len(lengths)) * len(methods), 1.2 + 0.5 * len(depths)),
                     layout="constrained")
        axes = fig.subplots(1, len(methods), squeeze=False)[0]
        image = None
        for ax, m in zip(axes, methods):
            grid = accuracy_grid(by_depth[m].get(task, {}), lengths, depths)
            for i, row in enumerate(grid):
                for j, acc in enumerate(row):
                    if acc == acc:  # not NaN: this cell has results
                        ax.text(j, i, f"{100 * acc:.0f}", ha="center", va="center", fontsize=8,
                                color="black" if acc > 0.35 else "white")
            image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            ax.set_title(m)
            ax.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
            ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
            ax.set_xlabel("length (tokens)")
        axes[0].set_ylabel("needle depth")
        if image is not None:
            fig.colorbar(image, ax=list(axes), label="accuracy", shrink=0.9)
        fig.suptitle(f"{task}: exact-match accuracy (%)")
        paths.append(_save(fig, Path(out_dir) / f"heatmap_{_slug(task)}.png"))
    return paths


def plot_speed(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Prefill time, time to first token, decode ms/token and peak memory against length, one
    line per system; the time to first token on a document reloaded from disk is drawn dotted.

    ``rows``: dicts with ``system``, ``length`` and numeric ``prefill_s``, ``ttft_s``,
    ``ttft_disk_s``, ``decode_ms_per_token``, ``peak_mem_gib`` (missing or non-numeric values,
    e.g. "OOM", are not drawn).
    """
    panels = ((("prefill_s", ""),), (("ttft_s", ""), ("ttft_disk_s", " (reloaded)")),
              (("decode_ms_per_token", ""),), (("peak_mem_gib", ""),))
    titles = ("prefill time (s)", "time to first token (s)", "decode (ms / token)",
              "peak device memory (GiB)")
    fig = _figure(figsize=(16, 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels))
    systems = sorted({r["system"] for r in rows}, key=lambda s: (s.startswith("hf"), s))
    colors = {s: f"C{i}" for i, s in enumerate(systems)}
    for ax, fields, title in zip(axes, panels, titles):
        for field, suffix in fields:
            for system in systems:
                pts = sorted((r["length"], r[field]) for r in rows if r["system"] == system
                             and isinstance(r.get(field), (int, float)))
                if pts:
                    style = ":" if suffix else ("--" if system.startswith("hf") else "-")
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                            label=system + suffix, linestyle=style, color=colors[system])
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(
            _matplotlib("ticker").FuncFormatter(lambda x, _pos: format_length(int(round(x)))))
        ax.set_yscale("log")
        ax.set_xlabel("document length (tokens)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    axes[1].legend(fontsize="small")
    return _save(fig, Path(path))


def plot_recall(summary: dict[str, Any], path: str | Path, phases: tuple[str, ...] = ("question", "decode"),
                target: float = 0.9) -> Path:
    """Per layer and phase (one column each): the memory mass each variant's selected blocks recall
    (solid) next to the oracle at the same number of blocks (dotted, same colour), and below it their
    ratio, with the ``target`` share of the oracle drawn. ``summary``: :func:`bench.recall.summarize`."""
    fig = _figure(figsize=(5.5 * len(phases), 7), layout="constrained")
    axes = fig.subplots(2, len(phases), squeeze=False, sharex="col")
    for col, phase in enumerate(phases):
        mass_ax, ratio_ax = axes[0][col], axes[1][col]
        drawn = False
        for i, (variant, s) in enumerate(summary.items()):
            rows = [x for x in s["per_layer"] if x["phase"] == phase]
            if not rows:
                continue
            drawn = True
            layers = [x["layer"] for x in rows]
            mass_ax.plot(layers, [x["recall"] for x in rows], marker="o", ms=3, color=f"C{i}", label=variant)
            mass_ax.plot(layers, [x["oracle"] for x in rows], linestyle=":", color=f"C{i}")
            ratio_ax.plot(layers, [x["recall"] / x["oracle"] if x["oracle"] else 0.0 for x in rows],
                          marker="o", ms=3, color=f"C{i}", label=variant)
        mass_ax.set_ylabel(f"memory mass recalled ({phase})")
        mass_ax.set_ylim(0, 1.02)
        mass_ax.set_title(f"{phase}: selected blocks (solid) vs oracle (dotted)")
        ratio_ax.set_xlabel("layer")
        ratio_ax.set_ylabel("recall / oracle")
        ratio_ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ratio_ax.set_ylim(min(0.5, ratio_ax.get_ylim()[0]), 1.02)
        for ax in (mass_ax, ratio_ax):
            ax.grid(True, alpha=0.3)
        if drawn:
            mass_ax.legend(fontsize="small")
        else:  # answers only (bench recall --no-meter): say so instead of an empty legend
            mass_ax.text(0.5, 0.5, f"no recall measured in the {phase} phase\n(run without --no-meter)",
                         ha="center", va="center", transform=mass_ax.transAxes)
    return _save(fig, Path(path))
