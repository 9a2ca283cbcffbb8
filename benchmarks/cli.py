"""The command line: pick rows, measure the ceilings, check and time every row, report.

    python -m benchmarks [--quick] [--op OP] [--layer TEXT] [--dtype fp32|bf16|...|all]
                         [--layout nchw|nhwc|all] [--pass fwd|fwdbwd|all] [--device cpu|cuda]
                         [--out DIR] [--batch N] [--min-run-time S] [--no-plot]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import List, Optional, Sequence

import torch

from . import report
from .measure import (LAYOUTS, PASS_LABEL, PASSES, Case, Row, Timing, keep_freed_memory_for_reuse,
                      measure_ceilings, run_case)
from .suite import OPS, Layer, select

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# --quick: every layer, float32, both passes and layouts in under 2 minutes on a 2-core machine.
# Batches shrink to a quarter of the layer's (at least 1) and each measurement gets a short run;
# the medians are noisier but the comparison is the same.
QUICK_TIMING = Timing(min_run_time=0.05, ceiling_min_run_time=0.3, cuda_warmup_ms=10.0, cuda_rep_ms=30.0)


def quick_batch(layer: Layer) -> int:
    return max(1, layer.cpu_batch // 4)


@dataclasses.dataclass
class Result:
    header: dict
    rows: List[Row]
    summary: dict
    text: str  # everything printed to stdout
    json_path: str
    plot_path: Optional[str]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time convext.functional against torch.nn.functional on layers of real "
                    "networks (forward and forward+backward), after checking convext's answers.")
    p.add_argument("--quick", action="store_true",
                   help="small batches and short measurements: every layer in under 2 minutes on 2 CPU cores")
    p.add_argument("--op", action="append", choices=OPS, help="only this op (repeatable)")
    p.add_argument("--layer", action="append", metavar="TEXT",
                   help="only layers whose name contains TEXT, case-insensitive (repeatable)")
    p.add_argument("--dtype", choices=("fp32", "tf32", "fp16", "bf16", "all"),
                   help="fp32, bf16, fp16, tf32 (CUDA only: float32 with TF32 allowed), or all "
                        "(CPU: fp32 and bf16; CUDA: fp32, tf32, fp16 and bf16). Default: fp32 on CPU; "
                        "on CUDA fp32 (TF32 off) and tf32 rows")
    p.add_argument("--layout", default="all", choices=("nchw", "nhwc", "all"),
                   help="memory format of input and weight: nchw (contiguous), nhwc (channels_last), all (default)")
    p.add_argument("--pass", dest="passes", default="all", choices=("fwd", "fwdbwd", "all"),
                   help="fwd, fwdbwd (forward then input/weight/bias grads), all (default)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help="where benchmark.json, benchmark.txt and benchmark.png go (default: benchmarks/results)")
    p.add_argument("--batch", type=int, metavar="N", help="use batch N for every layer (overrides the table's)")
    p.add_argument("--min-run-time", type=float, metavar="S",
                   help="CPU: seconds of timed calls per measurement (default 0.5, --quick 0.05)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    return p.parse_args(argv)


def _dtypes(choice: Optional[str], device: str) -> List[str]:
    if choice is None:  # on CUDA, true float32 next to what TF32 tensor cores make of it
        return ["fp32", "tf32"] if device == "cuda" else ["fp32"]
    if choice == "all":
        return ["fp32", "tf32", "fp16", "bf16"] if device == "cuda" else ["fp32", "bf16"]
    return [choice]


class UsageError(Exception):
    """Options that cannot run here (reported like argparse's errors, exit status 2)."""


def main(argv: Optional[Sequence[str]] = None, timing: Optional[Timing] = None) -> int:
    """Runs the benchmark; returns the exit status: 0, or 1 when convext gave a wrong answer or
    raised on some row, 2 for unusable options. ``timing`` replaces the default and --quick
    timing parameters (the tests inject tiny ones); --batch/--min-run-time still apply."""
    args = parse_args(argv)
    try:
        result = run(args, timing, list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        print(f"python -m benchmarks: error: {e}", file=sys.stderr)
        return 2
    return 1 if any(r.status in ("FAILED", "ERROR") for r in result.rows) else 0


def run(args: argparse.Namespace, timing: Optional[Timing] = None, argv: Sequence[str] = ()) -> Result:
    started = time.perf_counter()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device")
    if device == "cpu" and args.dtype == "tf32":
        raise UsageError("--dtype tf32 is a CUDA setting (float32 math through TF32 tensor cores)")

    import convext  # imported here so `--help` works even while the extension is being rebuilt

    build_info = convext.build_info()
    # convext has CPU kernels; on CUDA it runs only when its CUDA kernels are compiled in.
    convext_for_device = convext if device == "cpu" or build_info.get("cuda") else None

    if timing is None:
        timing = QUICK_TIMING if args.quick else Timing()
    timing = dataclasses.replace(timing)  # a copy: the options below must not leak into the caller's
    if args.min_run_time is not None:
        timing.min_run_time = args.min_run_time
    if args.batch is not None:
        if args.batch < 1:
            raise UsageError("--batch must be at least 1")
        timing.batch = args.batch

    layers = select(args.op, args.layer)
    if not layers:
        raise UsageError("no layer matches --op/--layer")
    dtypes = _dtypes(args.dtype, device)
    layouts = list(LAYOUTS) if args.layout == "all" else [args.layout]
    passes = list(PASSES) if args.passes == "all" else [args.passes]

    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # let cuDNN pick its fastest algorithm, as in training

    allocator = keep_freed_memory_for_reuse() if device == "cpu" else None
    ceilings = measure_ceilings(device, dtypes, timing)
    header = report.make_header(device, ceilings, timing, build_info, convext.__version__, args.quick, argv)
    header["allocator"] = allocator
    header_text = report.format_header(header)
    print(header_text, flush=True)

    cases = []
    for layer in layers:
        if timing.batch is not None:
            batch = timing.batch
        elif device == "cuda":
            batch = layer.gpu_batch
        else:
            batch = quick_batch(layer) if args.quick else layer.cpu_batch
        for dtype in dtypes:
            for layout in layouts:
                for p in passes:
                    cases.append(Case(layer, p, dtype, layout, device, batch))

    rows: List[Row] = []
    for i, case in enumerate(cases, 1):
        # Progress goes to stderr so stdout holds only the report.
        print(f"[{i}/{len(cases)}] {case.layer.name}, {PASS_LABEL[case.pass_name]}, {case.dtype}, "
              f"{case.layout}, batch {case.batch} ...", end="", file=sys.stderr, flush=True)
        row = run_case(case, ceilings, timing, convext_for_device)
        rows.append(row)
        print(f" {row.status}" + (f" {row.speedup:.2f}x" if row.speedup else ""), file=sys.stderr, flush=True)

    summary = report.summarize(rows)
    body = report.format_table(rows) + "\n\n" + report.format_summary(summary)
    print("\n" + body, flush=True)

    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "benchmark.json")
    header["wall_time_s"] = round(time.perf_counter() - started, 1)
    report.write_json(json_path, header, rows, summary)
    with open(os.path.join(args.out, "benchmark.txt"), "w") as f:
        f.write(header_text + "\n\n" + body + "\n")
    notes = [f"wrote {json_path} and {os.path.join(args.out, 'benchmark.txt')}"]
    plot_path: Optional[str] = None
    if not args.no_plot:
        plot_path = os.path.join(args.out, "benchmark.png")
        why_not = report.write_plot(plot_path, rows, f"convext vs torch: {header['machine']}, "
                                                     f"{header['threads']} threads, torch {header['torch']}")
        if why_not is None:
            notes.append(f"wrote {plot_path}")
        else:
            notes.append(why_not)
            plot_path = None
    notes.append(f"total {time.perf_counter() - started:.1f} s")
    text = header_text + "\n\n" + body + "\n" + "\n".join(notes)
    print("\n".join(notes), flush=True)
    return Result(header, rows, summary, text, json_path, plot_path)


__all__ = ["main", "parse_args", "run", "Result", "UsageError"]
