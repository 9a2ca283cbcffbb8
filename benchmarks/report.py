"""What the benchmark shows and writes: the header, the fixed-width table, the summary (geomean
speedups, slowest rows, failures), the JSON file and the speedup plot."""
from __future__ import annotations

import json
import math
import os
import platform
import shlex
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .measure import PASS_LABEL, Ceilings, Row, Timing
from .suite import OP_SHORT


# ------------------------------------------------------------------------------------------------
# Header
# ------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on every platform
        return None


def make_header(device: str, ceilings: Ceilings, timing: Timing, build_info: Dict[str, object],
                convext_version: str, quick: bool, argv: Sequence[str]) -> Dict[str, object]:
    header: Dict[str, object] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks", *argv]),
        "device": device,
        "machine": f"{cpu_model()} ({platform.machine()}, {platform.system()} {platform.release()}), "
                   f"{os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "convext": convext_version,
        "convext_build": build_info,
        "threads": torch.get_num_threads(),
        # Other processes competing for the cores make every timing noisy: say how busy it was.
        "load_average_1min": _load_average(),
        "cpu_isa": build_info.get("cpu_isa"),
        "compute_ceiling_gflops": ceilings.compute_gflops,
        "compute_ceiling_how": ceilings.compute_how,
        "memory_ceiling_gbps": ceilings.memory_gbps,
        "memory_ceiling_how": ceilings.memory_how,
        "quick": quick,
        "timing": asdict(timing),
    }
    if device == "cuda":
        header["gpu"] = torch.cuda.get_device_name()
        header["cuda"] = torch.version.cuda
        header["cudnn"] = torch.backends.cudnn.version()
    return header


def format_header(h: Dict[str, object]) -> str:
    build = h["convext_build"]
    compiled = ", ".join(build.get("cpu_isas_compiled", []))
    compute = ", ".join(f"{d} {g:.1f}" for d, g in h["compute_ceiling_gflops"].items())
    if h["device"] == "cuda":
        timing = (f"CUDA medians after warm-up (triton do_bench or CUDA events), "
                  f"{h['timing']['cuda_rep_ms']:g} ms of timed calls per measurement")
    else:
        timing = (f"torch.utils.benchmark.Timer(num_threads={h['threads']}), convext and torch in turns, "
                  f"{h['timing']['min_run_time']:g} s of calls each in blocks of about a tenth, median block")
    lines = [
        "convext benchmark: convext.functional.<op> vs torch.nn.functional.<op>"
        + ("  [--quick]" if h["quick"] else ""),
        f"machine   {h['machine']}" + (f"; GPU {h['gpu']} (CUDA {h['cuda']}, cuDNN {h['cudnn']})"
                                         if h["device"] == "cuda" else ""),
        f"software  torch {h['torch']}, convext {h['convext']} (built against torch {build.get('torch')}, "
        f"OpenMP {'on' if build.get('openmp') else 'off'}, CUDA kernels {'yes' if build.get('cuda') else 'no'}), "
        f"Python {h['python']}",
        f"device    {h['device']}, {h['threads']} threads, CPU ISA {h['cpu_isa']} (compiled: {compiled}), "
        f"load average {h['load_average_1min']} at the start",
        f"ceilings  compute GFLOP/s: {compute} ({h['compute_ceiling_how']}); "
        f"memory {h['memory_ceiling_gbps']:.1f} GB/s ({h['memory_ceiling_how']})",
        f"timing    {timing}" + (f"; {h['allocator']}" if h.get("allocator") else ""),
        "speedup = torch ms / convext ms (> 1: convext faster); %ceil = GFLOP/s of the compute "
        "ceiling (bound C) or GB/s of the memory ceiling (bound M)",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------------
def _num(v: Optional[float], digits: int = 1) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _ms(v: Optional[float]) -> str:
    if v is None:
        return ""
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 10 else f"{v:.3f}"


# (title, alignment, cell) for each column; '<' left, '>' right.
_COLUMNS: List[Tuple[str, str, object]] = [
    ("layer", "<", lambda r: r.layer),
    ("op", "<", lambda r: OP_SHORT.get(r.op, r.op)),
    ("pass", "<", lambda r: PASS_LABEL[r.pass_name]),
    ("dtype", "<", lambda r: r.dtype),
    ("layout", "<", lambda r: r.layout),
    ("shape/params", "<", lambda r: r.shape),
    ("convext ms", ">", lambda r: _ms(r.convext_ms)),
    ("torch ms", ">", lambda r: _ms(r.torch_ms)),
    ("speedup", ">", lambda r: "" if r.speedup is None else f"{r.speedup:.2f}x"),
    ("cx GFLOP/s", ">", lambda r: _num(r.convext_gflops)),
    ("th GFLOP/s", ">", lambda r: _num(r.torch_gflops)),
    ("cx GB/s", ">", lambda r: _num(r.convext_gbps)),
    ("th GB/s", ">", lambda r: _num(r.torch_gbps)),
    ("bound", "<", lambda r: "C" if r.bound == "compute" else "M"),
    ("cx %ceil", ">", lambda r: _num(r.convext_pct_ceiling)),
    ("th %ceil", ">", lambda r: _num(r.torch_pct_ceiling)),
    ("status", "<", lambda r: r.status),
]


def format_table(rows: Sequence[Row]) -> str:
    cells = [[str(cell(r)) for _, _, cell in _COLUMNS] for r in rows]
    widths = [max([len(title)] + [len(c[i]) for c in cells]) for i, (title, _, _) in enumerate(_COLUMNS)]

    def line(values: Sequence[str]) -> str:
        out = []
        for (_, align, _), width, value in zip(_COLUMNS, widths, values):
            out.append(value.ljust(width) if align == "<" else value.rjust(width))
        return "  ".join(out).rstrip()

    text = [line([title for title, _, _ in _COLUMNS]), line(["-" * w for w in widths])]
    previous_layer = None
    for r, c in zip(rows, cells):
        if previous_layer is not None and r.layer != previous_layer:
            text.append("")  # a blank line between layers keeps each layer's rows together
        text.append(line(c))
        previous_layer = r.layer
    return "\n".join(text)


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------
def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(rows: Sequence[Row], slowest: int = 5) -> Dict[str, object]:
    timed = [r for r in rows if r.speedup is not None]
    per_pass = {}
    for p in ("fwd", "fwdbwd"):
        s = [r.speedup for r in timed if r.pass_name == p]
        if s:
            per_pass[PASS_LABEL[p]] = {"geomean_speedup": geomean(s), "rows": len(s)}
    # The same per (dtype, layout), when the run has more than one of them.
    groups: Dict[str, List[float]] = {}
    for r in timed:
        groups.setdefault(f"{PASS_LABEL[r.pass_name]} {r.dtype} {r.layout}", []).append(r.speedup)
    per_group = {k: {"geomean_speedup": geomean(v), "rows": len(v)} for k, v in groups.items()}
    worst = sorted(timed, key=lambda r: r.speedup)[:slowest]
    return {
        "geomean_per_pass": per_pass,
        "geomean_per_pass_dtype_layout": per_group,
        "slowest_rows": [_row_id(r) | {"speedup": r.speedup} for r in worst],
        "not_timed": [_row_id(r) | {"status": r.status, "note": r.note}
                      for r in rows if r.status != "ok"],
    }


def _row_id(r: Row) -> Dict[str, object]:
    return {"layer": r.layer, "pass": PASS_LABEL[r.pass_name], "dtype": r.dtype, "layout": r.layout}


def format_summary(summary: Dict[str, object]) -> str:
    lines = ["geomean speedup (torch ms / convext ms) per pass:"]
    per_pass = summary["geomean_per_pass"]
    if not per_pass:
        lines.append("  (no row timed on both sides)")
    for name, s in per_pass.items():
        lines.append(f"  {name:8s} {s['geomean_speedup']:6.2f}x  over {s['rows']} rows")
    groups = summary["geomean_per_pass_dtype_layout"]
    if len(groups) > len(per_pass):
        lines.append("per pass, dtype and layout:")
        for name, s in sorted(groups.items()):
            lines.append(f"  {name:20s} {s['geomean_speedup']:6.2f}x  over {s['rows']} rows")
    if summary["slowest_rows"]:
        lines.append("slowest rows (lowest speedup):")
        for r in summary["slowest_rows"]:
            lines.append(f"  {r['speedup']:6.2f}x  {r['layer']}, {r['pass']}, {r['dtype']}, {r['layout']}")
    torch_only = [r for r in summary["not_timed"] if r["status"] == "torch only"]
    others = [r for r in summary["not_timed"] if r["status"] != "torch only"]
    if torch_only:  # one line: on a device without convext kernels that is every row
        lines.append(f"{len(torch_only)} rows timed for torch only: {torch_only[0]['note']}")
    if others:
        lines.append("rows not timed for convext:")
        for r in others:
            lines.append(f"  {r['status']}: {r['layer']}, {r['pass']}, {r['dtype']}, {r['layout']}: {r['note']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def row_dict(r: Row) -> Dict[str, object]:
    # 'pass' (a Python keyword, hence Row.pass_name) keeps its place among the keys.
    return {("pass" if k == "pass_name" else k): (PASS_LABEL[v] if k == "pass_name" else v)
            for k, v in asdict(r).items()}


def write_json(path: str, header: Dict[str, object], rows: Sequence[Row], summary: Dict[str, object]) -> None:
    with open(path, "w") as f:
        json.dump({"header": header, "rows": [row_dict(r) for r in rows], "summary": summary},
                  f, indent=1, default=str)  # default: torch versions and the like
        f.write("\n")


def write_plot(path: str, rows: Sequence[Row], title: str) -> Optional[str]:
    """Horizontal bars of speedup per layer and pass, one panel per (dtype, layout), a line at
    1.0. Returns None when written, else why not (matplotlib missing): never fails the run."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib is not importable ({e}); skipped the plot"

    panels = list(dict.fromkeys((r.dtype, r.layout) for r in rows))
    layers = list(dict.fromkeys(r.layer for r in rows))
    passes = [p for p in ("fwd", "fwdbwd") if any(r.pass_name == p for r in rows)]
    colors = {"fwd": "tab:blue", "fwdbwd": "tab:orange"}
    height = 0.8 / len(passes)
    from matplotlib.ticker import FixedLocator, NullFormatter

    size = (5.5 * len(panels) + 2.5, 0.45 * len(layers) * len(passes) + 1.8)
    # Shared axes: the same speedup sits at the same place in every panel.
    fig, axes = plt.subplots(1, len(panels), figsize=size, sharey=True, sharex=True, squeeze=False)
    speedups = [r.speedup for r in rows if r.speedup is not None] or [1.0]
    lo, hi = min(min(speedups), 0.9) / 1.3, max(max(speedups), 1.1) * 1.3
    candidates = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    if hi / lo < 30:  # a narrow range: more ticks, they do not collide
        candidates += [0.3, 0.7, 1.5, 3]
    ticks = sorted(t for t in candidates if lo <= t <= hi)
    by_key = {(r.layer, r.pass_name, r.dtype, r.layout): r for r in rows}
    for ax, (dtype, layout) in zip(axes[0], panels):
        labelled = set()  # passes already in this panel's legend
        for j, p in enumerate(passes):
            for i, layer in enumerate(layers):
                r = by_key.get((layer, p, dtype, layout))
                y = i + (j - (len(passes) - 1) / 2) * height
                if r is None:
                    continue
                if r.speedup is None:  # failed or torch-only: say so where the bar would be
                    ax.text(1.0, y, f" {r.status}", va="center", fontsize=7, color="red")
                    continue
                # Bars start at 1.0: left of the line convext is slower, right of it faster.
                label = None if p in labelled else PASS_LABEL[p]
                labelled.add(p)
                ax.barh(y, r.speedup - 1.0, left=1.0, height=height, color=colors[p], label=label)
                ax.text(r.speedup, y, f" {r.speedup:.2f}", va="center", fontsize=6)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}x")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{dtype}, {layout}")
        ax.set_xlabel("speedup (torch time / convext time)")
        ax.legend(loc="lower right", fontsize=8)
    axes[0][0].set_yticks(range(len(layers)))
    axes[0][0].set_yticklabels(layers, fontsize=8)
    axes[0][0].set_ylim(len(layers) - 0.5, -0.5)  # suite order from the top, room for the notes
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / size[1]))  # leave the top half-inch to the title
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


__all__ = ["format_header", "format_summary", "format_table", "geomean", "make_header",
           "summarize", "write_json", "write_plot"]
