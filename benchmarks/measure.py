"""Timing, the machine's ceilings, the correctness guard and the measurement of one row.

CPU: torch.utils.benchmark.Timer with the process's thread count (Timer's own default is one
thread, which would make a 1-thread torch the baseline); convext and torch timed in turns, in
blocks of calls; medians of the blocks.
CUDA: triton.testing.do_bench when triton imports, else CUDA events; medians after warm-up.
"""
from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

from .suite import CONV_OPS, Layer

# Benchmark dtype names -> torch dtype. 'tf32' is float32 with TF32 math allowed (CUDA only).
DTYPES: Dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
LAYOUTS = ("nchw", "nhwc")
PASSES = ("fwd", "fwdbwd")
PASS_LABEL = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}

# Correctness guard: rtol, and atol per unit of the reference's largest magnitude. Loose on
# purpose: it is there to catch wrong answers, not rounding (and TF32 rows let torch round its
# inputs to 10 mantissa bits while convext may not).
TOLERANCE = {"fp32": 1e-3, "tf32": 1e-2, "fp16": 1e-2, "bf16": 3e-2}


@dataclass
class Timing:
    """How long and on what to measure. Injectable so the tests (and --quick) can run small."""

    min_run_time: float = 0.5  # CPU: seconds of timed calls per side of a row (time_cpu)
    cuda_warmup_ms: float = 25.0  # CUDA: warm-up time before the timed calls
    cuda_rep_ms: float = 100.0  # CUDA: time spent in timed calls
    batch: Optional[int] = None  # overrides every layer's batch size when set
    ceiling_min_run_time: float = 1.0  # CPU: per ceiling measurement


@dataclass
class Ceilings:
    """What the machine can do, measured in the same run as the rows."""

    compute_gflops: Dict[str, float] = field(default_factory=dict)  # per benchmark dtype
    memory_gbps: float = 0.0
    compute_how: str = ""
    memory_how: str = ""


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def keep_freed_memory_for_reuse() -> str:
    """Makes glibc's malloc serve every block from its heap and never hand freed memory back.

    By default blocks over glibc's (moving) mmap threshold, up to 32 MiB, come fresh from the OS on
    every call, and each first touch of a page then faults: about 1 us a page on a VM, 10 ms for a
    40 MB output. Whether a row pays it depended on the threshold's state, so torch's time for the
    same row moved up to 4x between runs. With reuse both sides time their kernels. Returns what it
    did, for the header (the allocator it found, when it changed nothing)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return f"system allocator as it is (no glibc mallopt in {name})"
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        return "system allocator as it is (mallopt refused)"
    return "glibc malloc reusing freed memory (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)"


def time_cpu(fns: Sequence[Callable[[], object]], min_run_time: float) -> List[float]:
    """Median seconds per call of each fn, timed in turns: blocks of calls of one fn, then of the
    next, the order flipped every round, until each fn has min_run_time of timed calls.

    On a shared machine the speed moves by 10-20% over seconds. Timing one side after the other
    put such a drift into the ratio; in turns, both sides see the same machine. A block lasts
    about a tenth of min_run_time (at least one call), so each fn gets about ten blocks; the first
    calls, which find the size, also warm up."""
    threads = torch.get_num_threads()
    timers = [tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads) for fn in fns]
    block_s = min_run_time / 10
    numbers = []
    for timer in timers:
        number = 1
        while True:
            took = timer.timeit(number).raw_times[0]
            if took >= block_s:
                break
            number = max(number + 1, min(10 * number, int(number * 1.2 * block_s / max(took, 1e-9))))
        numbers.append(number)
    per_call: List[List[float]] = [[] for _ in fns]
    spent = [0.0] * len(fns)
    order = list(range(len(fns)))
    while min(spent) < min_run_time:
        for i in order:
            took = timers[i].timeit(numbers[i]).raw_times[0]
            per_call[i].append(took / numbers[i])
            spent[i] += took
        order.reverse()
    return [statistics.median(times) for times in per_call]


def time_cuda(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> float:
    """Median seconds per call of fn on the current CUDA device."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        try:
            return float(do_bench(fn, warmup=int(warmup_ms), rep=int(rep_ms), return_mode="median")) * 1e-3
        except TypeError:  # a triton too old for return_mode: time it ourselves
            pass
    return _time_cuda_events(fn, warmup_ms, rep_ms)


def _time_cuda_events(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> float:
    # Estimate one call's time, then warm up and time calls one by one with events.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(5):
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate_ms = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        fn()
    n = max(10, int(rep_ms / estimate_ms))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e-3


def time_fns(fns: Sequence[Callable[[], object]], device: str, timing: Timing,
             min_run_time: Optional[float] = None) -> List[float]:
    """Median seconds per call of each fn: on CPU in turns (time_cpu), on CUDA one after another
    (the GPU's clock does not drift as a shared CPU's does)."""
    if device == "cuda":
        return [time_cuda(fn, timing.cuda_warmup_ms, timing.cuda_rep_ms) for fn in fns]
    return time_cpu(fns, timing.min_run_time if min_run_time is None else min_run_time)


def time_fn(fn: Callable[[], object], device: str, timing: Timing, min_run_time: Optional[float] = None) -> float:
    return time_fns([fn], device, timing, min_run_time)[0]


@contextlib.contextmanager
def tf32_mode(device: str, dtype_name: str) -> Iterator[None]:
    """On CUDA, allow TF32 for 'tf32' rows only and forbid it everywhere else (fp32 rows must
    compare true float32 math on both sides). No effect on CPU."""
    if device != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    allow = dtype_name == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ------------------------------------------------------------------------------------------------
# Ceilings
# ------------------------------------------------------------------------------------------------
MM_SIZE = 2048


def measure_ceilings(device: str, dtype_names: Sequence[str], timing: Timing) -> Ceilings:
    """compute: torch.mm on two MM_SIZE x MM_SIZE matrices, per dtype in the run (float32 always,
    so the header always shows it; bf16/fp16/tf32 rows are held against mm in their own type),
    2*n^3 FLOPs per call. memory: dst.copy_(src) of a large float32 tensor into a preallocated
    one (64 MiB on CPU, 1 GiB on CUDA to be far beyond its L2), bytes read + written per call."""
    ceilings = Ceilings()
    names = ["fp32"] + [d for d in dict.fromkeys(dtype_names) if d != "fp32"]
    for name in names:
        dtype = DTYPES[name]
        a = torch.randn(MM_SIZE, MM_SIZE, device=device).to(dtype)
        b = torch.randn(MM_SIZE, MM_SIZE, device=device).to(dtype)
        with tf32_mode(device, name):
            t = time_fn(lambda: torch.mm(a, b), device, timing, timing.ceiling_min_run_time)
        ceilings.compute_gflops[name] = 2 * MM_SIZE**3 / t / 1e9
    ceilings.compute_how = f"torch.mm {MM_SIZE}x{MM_SIZE} per dtype, 2*n^3 FLOPs"

    nbytes = (1 << 30) if device == "cuda" else (64 << 20)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, timing, timing.ceiling_min_run_time)
    ceilings.memory_gbps = 2 * nbytes / t / 1e9
    ceilings.memory_how = f"copy_ of {nbytes >> 20} MiB float32, bytes read + written"
    return ceilings


# ------------------------------------------------------------------------------------------------
# One row
# ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    layer: Layer
    pass_name: str  # 'fwd' or 'fwdbwd'
    dtype: str  # a DTYPES key
    layout: str  # 'nchw' or 'nhwc'
    device: str
    batch: int


@dataclass
class Row:
    """One line of the table and one entry of the JSON file (times in ms, rates per second)."""

    layer: str
    op: str
    pass_name: str
    dtype: str
    layout: str
    device: str
    batch: int
    shape: str
    input_shape: List[int]
    output_shape: List[int]
    params: Dict[str, object]
    bias: bool
    flops: Optional[int]
    bytes: int
    bound: str  # 'compute' or 'memory': which ceiling the % columns use
    status: str  # 'ok', 'FAILED' (convext's answer differs), 'ERROR' (convext raised),
    # 'torch only' (no convext kernels for the device), 'SKIPPED' (torch itself raised)
    note: str = ""
    max_abs_diff: Optional[float] = None
    convext_ms: Optional[float] = None
    torch_ms: Optional[float] = None
    speedup: Optional[float] = None  # torch_ms / convext_ms: > 1 means convext is faster
    convext_gflops: Optional[float] = None
    torch_gflops: Optional[float] = None
    convext_gbps: Optional[float] = None
    torch_gbps: Optional[float] = None
    convext_pct_ceiling: Optional[float] = None
    torch_pct_ceiling: Optional[float] = None


def pick_bound(layer: Layer, batch: int, dtype: str, ceilings: Ceilings) -> str:
    """Layer.bound, with grouped convs of few channels per group settled by the roofline: compute
    when their FLOPs per byte reach the machine's balance (compute / memory ceiling)."""
    bound = layer.bound()
    if bound != "roofline":
        return bound
    itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    intensity = layer.forward_flops(batch) / layer.bytes(batch, "fwd", itemsize)
    balance = ceilings.compute_gflops[dtype] / ceilings.memory_gbps
    return "compute" if intensity >= balance else "memory"


def _make_inputs(case: Case) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Input, weight and bias, the same values for both libraries. Weights are scaled by
    1/sqrt(fan_in) (as torch's initialisation) so outputs are O(1), as in a trained network,
    and the tolerances mean the same thing for every layer."""
    layer = case.layer
    dtype = DTYPES[case.dtype]
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if case.layout == "nhwc" else torch.contiguous_format

    def make(shape, scale: float = 1.0) -> torch.Tensor:
        t = torch.randn(shape, generator=gen) * scale
        return t.to(device=case.device, dtype=dtype)

    x = make(layer.input_shape(case.batch)).contiguous(memory_format=fmt)
    w = b = None
    w_shape = layer.weight_shape()
    if w_shape is not None:
        # torch's fan-in rule (weight.size(1) * kH * kW), for both conv kinds.
        fan_in = w_shape[1] * w_shape[2] * w_shape[3]
        # As model.to(memory_format=torch.channels_last) does, the weight follows the layout.
        w = make(w_shape, fan_in**-0.5).contiguous(memory_format=fmt)
        if layer.bias:
            b = make((layer.out_channels,), fan_in**-0.5)
    return x, w, b


def _caller(fns, layer: Layer) -> Callable[..., torch.Tensor]:
    op = getattr(fns, layer.op)
    kwargs = layer.kwargs()
    if layer.op in CONV_OPS:
        return lambda x, w, b: op(x, w, b, **kwargs)
    return lambda x, w, b: op(x, **kwargs)


def _compare(actual: torch.Tensor, expected: torch.Tensor, tol: float,
             what: str) -> Tuple[Optional[str], Optional[float]]:
    """None when actual matches expected within tol (atol scaled by expected's largest
    magnitude), else a message; and the largest absolute difference."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return (f"{what}: got {actual.dtype} {tuple(actual.shape)}, torch gives "
                f"{expected.dtype} {tuple(expected.shape)}"), None
    a, e = actual.double(), expected.double()
    diff = (a - e).abs()
    max_diff = diff.max().item() if diff.numel() else 0.0
    finite = e[e.isfinite()]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    try:
        torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale, equal_nan=True)
    except AssertionError:
        return f"{what} differs from torch's: max |diff| {max_diff:.3g} (scale {scale:.3g})", max_diff
    return None, max_diff


def run_case(case: Case, ceilings: Ceilings, timing: Timing, convext_module) -> Row:
    """Checks convext's answer against torch's, then times both. convext_module is None when
    convext cannot run on this device (no CUDA kernels): then only torch is timed."""
    layer = case.layer
    itemsize = torch.empty((), dtype=DTYPES[case.dtype]).element_size()
    flops = layer.flops(case.batch, case.pass_name)
    nbytes = layer.bytes(case.batch, case.pass_name, itemsize)
    row = Row(
        layer=layer.name, op=layer.op, pass_name=case.pass_name, dtype=case.dtype,
        layout=case.layout, device=case.device, batch=case.batch, shape=layer.describe(case.batch),
        input_shape=list(layer.input_shape(case.batch)), output_shape=list(layer.output_shape(case.batch)),
        params=layer.kwargs(), bias=layer.bias, flops=flops, bytes=nbytes,
        bound=pick_bound(layer, case.batch, case.dtype, ceilings), status="ok",
    )

    with tf32_mode(case.device, case.dtype):
        torch_fn = _caller(F, layer)
        x, w, b = _make_inputs(case)
        grads_wanted = case.pass_name == "fwdbwd"
        params = [t for t in (x, w, b) if t is not None]  # grads w.r.t. all that exist
        if grads_wanted:
            for t in params:
                t.requires_grad_()

        try:
            y_torch = torch_fn(x, w, b)
            # The fixed random grad: backward of sum(output * grad_out), output-shaped and laid
            # out as the output is.
            grad_out = torch.randn(y_torch.shape, generator=torch.Generator().manual_seed(1))
            grad_out = grad_out.to(device=case.device, dtype=y_torch.dtype)
            grad_out = grad_out.contiguous(memory_format=_memory_format_of(y_torch))
            torch_grads = torch.autograd.grad(y_torch, params, grad_out) if grads_wanted else ()
        except Exception as e:  # torch itself cannot run the row (e.g. a dtype on a device)
            row.status, row.note = "SKIPPED", f"torch raised {type(e).__name__}: {e}".splitlines()[0]
            return row

        def make_fn(call: Callable[..., torch.Tensor]) -> Callable[[], object]:
            if not grads_wanted:
                return lambda: call(x, w, b)
            # autograd.grad rather than .backward(): grads are returned, never accumulated into
            # .grad, so every call does the same work.
            return lambda: torch.autograd.grad(call(x, w, b), params, grad_out)

        convext_fn = None
        if convext_module is None:
            row.status, row.note = "torch only", "convext has no kernels for this device"
        else:
            convext_call = _caller(convext_module.functional, layer)
            status, note, row.max_abs_diff = _check(convext_call, x, w, b, params, grad_out,
                                                    y_torch.detach(), torch_grads, TOLERANCE[case.dtype])
            if status is None:
                convext_fn = make_fn(convext_call)
            else:
                row.status, row.note = status, note
        del y_torch, torch_grads  # free the references before timing

        # A row whose convext answer is wrong is never timed for convext: a fast wrong answer
        # must not look good. torch is still timed, for reference.
        fns = [make_fn(torch_fn)] + ([convext_fn] if convext_fn is not None else [])
        times_ms = [t * 1e3 for t in time_fns(fns, case.device, timing)]
        row.torch_ms = times_ms[0]
        if convext_fn is not None:
            row.convext_ms = times_ms[1]

    _fill_rates(row, ceilings)
    return row


def _memory_format_of(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _check(convext_call, x, w, b, params: List[torch.Tensor], grad_out: torch.Tensor,
           y_torch: torch.Tensor, torch_grads: Sequence[torch.Tensor],
           tol: float) -> Tuple[Optional[str], str, Optional[float]]:
    """Compares convext's forward output, and its grads when torch_grads is not empty, with
    torch's. Returns (None, or 'FAILED' for a wrong answer, 'ERROR' when convext raised;
    what went wrong; the largest absolute difference)."""
    try:
        y = convext_call(x, w, b)
    except Exception as e:
        return "ERROR", f"convext raised {type(e).__name__}: {e}".splitlines()[0], None
    problem, max_diff = _compare(y.detach(), y_torch, tol, "output")
    if problem is not None:
        return "FAILED", problem, max_diff
    if not torch_grads:
        return None, "", max_diff
    try:
        ours = torch.autograd.grad(y, params, grad_out)
    except Exception as e:
        return "ERROR", f"convext raised {type(e).__name__} in backward: {e}".splitlines()[0], max_diff
    for name, g_ours, g_theirs in zip(("grad_input", "grad_weight", "grad_bias"), ours, torch_grads):
        problem, diff = _compare(g_ours, g_theirs, tol, name)
        max_diff = max(max_diff, diff) if diff is not None else max_diff
        if problem is not None:
            return "FAILED", problem, max_diff
    return None, "", max_diff


def _fill_rates(row: Row, ceilings: Ceilings) -> None:
    def rates(ms: Optional[float]):
        if ms is None:
            return None, None, None
        s = ms * 1e-3
        gflops = row.flops / s / 1e9 if row.flops is not None else None
        gbps = row.bytes / s / 1e9
        if row.bound == "compute":
            pct = 100 * gflops / ceilings.compute_gflops[row.dtype]
        else:
            pct = 100 * gbps / ceilings.memory_gbps
        return gflops, gbps, pct

    row.convext_gflops, row.convext_gbps, row.convext_pct_ceiling = rates(row.convext_ms)
    row.torch_gflops, row.torch_gbps, row.torch_pct_ceiling = rates(row.torch_ms)
    if row.convext_ms and row.torch_ms:
        row.speedup = row.torch_ms / row.convext_ms


__all__ = ["Case", "Ceilings", "DTYPES", "LAYOUTS", "PASSES", "PASS_LABEL", "Row", "Timing",
           "measure_ceilings", "pick_bound", "run_case", "time_fn", "time_fns"]
