"""The benchmark harness (python -m benchmarks) on a tiny filter: one conv row and one pool row,
forward only, batch 1 and tiny timing runs, so it takes a few seconds. Checks the JSON rows and
the printed table; independent of matplotlib (--no-plot)."""
import contextlib
import io
import json
import os
import platform
import sys

import pytest

# The benchmark package lives next to tests/ at the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cli import main  # noqa: E402
from benchmarks.measure import Timing  # noqa: E402

ROW_KEYS = {
    "layer", "op", "pass", "dtype", "layout", "device", "batch", "shape", "input_shape",
    "output_shape", "params", "bias", "flops", "bytes", "bound", "status", "note", "max_abs_diff",
    "convext_ms", "torch_ms", "speedup", "convext_gflops", "torch_gflops", "convext_gbps",
    "torch_gbps", "convext_pct_ceiling", "torch_pct_ceiling",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    timing = Timing(min_run_time=0.01, ceiling_min_run_time=0.01, batch=1)
    argv = ["--layer", "ResNet-50 3x3 256", "--layer", "max pool", "--pass", "fwd",
            "--layout", "nchw", "--out", str(out), "--no-plot"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        status = main(argv, timing=timing)
    with open(out / "benchmark.json") as f:
        data = json.load(f)
    return status, stdout.getvalue(), data, out


def test_exit_status_and_files(tiny_run):
    status, _, _, out = tiny_run
    assert status == 0
    assert (out / "benchmark.txt").is_file()
    assert not (out / "benchmark.png").exists()  # --no-plot


def test_json_rows(tiny_run):
    _, _, data, _ = tiny_run
    rows = data["rows"]
    assert [(r["layer"], r["op"]) for r in rows] == [("ResNet-50 3x3 256", "conv2d"),
                                                     ("max pool 3x3 s2 64", "max_pool2d")]
    for r in rows:
        assert set(r) == ROW_KEYS
        assert (r["pass"], r["dtype"], r["layout"], r["device"], r["batch"]) == ("fwd", "fp32", "nchw", "cpu", 1)
        assert r["status"] == "ok", r["note"]
        assert r["convext_ms"] > 0 and r["torch_ms"] > 0
        assert r["speedup"] == pytest.approx(r["torch_ms"] / r["convext_ms"])
        assert r["convext_gbps"] > 0 and r["convext_pct_ceiling"] > 0
    conv, pool = rows
    # 2 * N * Cout * OH * OW * Cin * k * k
    assert conv["flops"] == 2 * 1 * 256 * 14 * 14 * 256 * 9
    assert conv["bound"] == "compute" and conv["convext_gflops"] > 0
    # input + output, float32, read and written once
    assert pool["flops"] is None and pool["bound"] == "memory"
    assert pool["bytes"] == 4 * (64 * 112 * 112 + 64 * 56 * 56)


def test_header(tiny_run):
    _, _, data, _ = tiny_run
    h = data["header"]
    assert h["threads"] >= 1 and h["device"] == "cpu"
    assert h["compute_ceiling_gflops"]["fp32"] > 0 and h["memory_ceiling_gbps"] > 0
    assert {"torch", "convext", "cpu_isa", "machine"} <= set(h)
    assert set(data["summary"]["geomean_per_pass"]) == {"fwd"}
    if platform.libc_ver()[0] == "glibc":  # fresh pages from the OS on every call would be timed
        assert h["allocator"].startswith("glibc malloc reusing freed memory")


def test_table_text(tiny_run):
    _, text, _, _ = tiny_run
    assert "ceilings" in text
    lines = text.splitlines()
    title = next(line for line in lines if line.startswith("layer "))
    for column in ("op", "pass", "dtype", "layout", "convext ms", "torch ms", "speedup",
                   "GFLOP/s", "GB/s", "%ceil"):
        assert column in title
    assert any(line.startswith("ResNet-50 3x3 256 ") for line in lines)
    assert any(line.startswith("max pool 3x3 s2 64 ") for line in lines)
    assert "geomean speedup" in text


def test_bad_filter_is_a_usage_error(capsys):
    assert main(["--layer", "no such layer", "--no-plot"]) == 2
    assert "no layer matches" in capsys.readouterr().err


def test_cpu_timing_takes_turns():
    """Both sides of a row are timed in alternating blocks (so a drift of the machine's speed
    reaches both), and the medians come back in order. Timed one side after the other, each side's
    calls would form two runs (finding the block size, then timing); in turns, many."""
    import itertools
    import time

    from benchmarks.measure import time_cpu

    calls = []

    def side(name, seconds):
        def fn():
            calls.append(name)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass
        return fn

    slow, fast = time_cpu([side("slow", 2e-4), side("fast", 5e-5)], min_run_time=0.03)
    assert slow > fast > 0
    runs = [name for name, _ in itertools.groupby(calls)]
    assert runs.count("slow") >= 3 and runs.count("fast") >= 3, runs
