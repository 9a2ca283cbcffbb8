"""How the CPU ops make their outputs: on 64-byte lines, from memory that a loop of forward calls
reuses (glibc; the benchmark's allocator settings), and seen by torch's memory profiler."""
import os
import subprocess
import sys
import textwrap

import torch

import convext.functional as CF

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _outputs(x):
    w = torch.randn(4, 3, 3, 3)
    y = CF.conv2d(x, w, None, 1, 1)
    yield y
    yield CF.conv_transpose2d(y, w, None, 2)
    yield from CF.max_pool2d(x, 3, 2, 1, return_indices=True)
    yield CF.avg_pool2d(x, 2)
    yield CF.adaptive_avg_pool2d(x, 3)


def test_cpu_outputs_start_on_64_byte_lines():
    # The kernels' aligned and non-temporal stores count on it.
    for shape in ((1, 3, 5, 7), (2, 3, 9, 4), (3, 3, 13, 11)):
        for layout in (torch.contiguous_format, torch.channels_last):
            for y in _outputs(torch.randn(shape).contiguous(memory_format=layout)):
                assert y.data_ptr() % 64 == 0, (shape, layout, tuple(y.shape))


_REUSE_SCRIPT = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    import convext
    from benchmarks import measure
    from benchmarks.suite import LAYERS
    measure.keep_freed_memory_for_reuse()
    for name in ("MobileNetV2 dw3x3 144", "max pool 3x3 s2 64", "avg pool 2x2 256"):
        layer = next(layer for layer in LAYERS if layer.name == name)
        case = measure.Case(layer, "fwd", "bf16", "nhwc", "cpu", 2)
        x, w, b = measure._make_inputs(case)
        ours, theirs = measure._caller(convext.functional, layer), measure._caller(F, layer)
        for block in range(5):  # blocks of calls in turns with torch's, as the benchmark times them
            addresses = [ours(x, w, b).data_ptr() for _ in range(4)]
            # The first block warms up; the first call of a block may take the block torch's
            # last output freed.
            assert block == 0 or len(set(addresses[1:])) == 1, (name, block, addresses)
            for _ in range(4):
                theirs(x, w, b)
    print("ok")
""")



def test_forward_loop_reuses_output_memory():
    # Each call's output takes the block the previous call's output freed, so a loop writes
    # memory that is still cached (as torch's own ops do), not two blocks in turn.
    result = subprocess.run([sys.executable, "-c", _REUSE_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_memory_profiler_sees_cpu_outputs():
    x, w = torch.randn(2, 8, 32, 32), torch.randn(16, 8, 3, 3)
    with torch.profiler.profile(profile_memory=True) as prof:
        y = CF.conv2d(x, w, None, 1, 1)
    allocated = sum(e.self_cpu_memory_usage for e in prof.key_averages() if e.key.startswith("convext::"))
    assert allocated >= y.numel() * y.element_size()
