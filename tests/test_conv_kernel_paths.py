"""conv2d and conv_transpose2d on shapes chosen to reach each CPU kernel path (the choices in
csrc/cpu/conv_kernels_impl.h), against torch in float64: the grids in test_conv.py use too few
channels to leave the generic GEMMs."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import convext.functional as CF
from utils import assert_close_to_reference, make_layout, same_layout

# Paths: the GEMM forward on NCHW tensors, the indirect forward on NCHW tensors, stride-1 input grads as forward convs (with
# output_padding), channels_last weight grads in NHWC order, the direct grouped kernels (8 and
# 16 channels per group) and the depthwise kernels.
PATH_CASES = {
    "3x3_c32": dict(cin=32, cout=24, k=3, stride=1, padding=1, dilation=1, groups=1),
    "1x1_c32": dict(cin=32, cout=48, k=1, stride=1, padding=0, dilation=1, groups=1),
    # NCHW GEMM summing in y over several reduction blocks, with rows past the last MR block.
    "1x1_c300": dict(cin=300, cout=20, k=1, stride=1, padding=0, dilation=1, groups=1),
    # On NCHW planes 1x1 stride-1 GEMMs read whole panels of positions in place, each group's
    # from its own channels (a last, partial panel is packed).
    "1x1_c64_g2": dict(cin=64, cout=48, k=1, stride=1, padding=0, dilation=1, groups=2),
    # Two whole panels of output channels and a partial one: on NCHW y, blocks of positions in
    # one row go out transposed, the others (rows' ends, the partial panel) element by element.
    "3x3_c40_cout72": dict(cin=40, cout=72, k=3, stride=1, padding=1, dilation=1, groups=1),
    # Most windows reach padding (ASPP-like): on channels_last y the forward regroups a tile's
    # positions by the taps they read, storing blocks through per-position row pointers; 40
    # output channels leave a partial panel, and 2 x 11 x 13 positions a partial block.
    "3x3_c32_d4": dict(cin=32, cout=40, k=3, stride=1, padding=4, dilation=4, groups=1),
    # x rows too long for a tile of them to stay in L2: the forward loops positions outermost.
    "3x3_c1024": dict(cin=1024, cout=40, k=3, stride=1, padding=1, dilation=1, groups=1),
    "3x3_c20_s2": dict(cin=20, cout=16, k=3, stride=2, padding=1, dilation=1, groups=1),
    # 4608 values a window: the forward sums a panel's taps in two steps (up to 4096 each).
    "3x3_c512_s2": dict(cin=512, cout=40, k=3, stride=2, padding=1, dilation=1, groups=1),
    # The ResNet stem: 3 input channels, so the weight grad's taps are kernel rows (7 x 3
    # consecutive values of a channels_last row, clipped at the borders). bf16 with vdpbf16ps
    # gathers each position's whole patch (147 values and a zero) into one row for the forward.
    "7x7_c3_s2": dict(cin=3, cout=32, k=7, stride=2, padding=3, dilation=1, groups=1),
    # Taps of an odd number of channels: bf16 with vdpbf16ps copies x with a zero channel (here
    # taps of 5 channels, dilated, so not merged into kernel rows).
    "3x3_c5_d2": dict(cin=5, cout=36, k=3, stride=1, padding=2, dilation=2, groups=1),
    "grouped_8": dict(cin=32, cout=32, k=3, stride=1, padding=2, dilation=2, groups=4),
    # channels_last float: the forward keeps a group's 8 channels in a register, over blocks of
    # 14 (AVX-512) or 12 columns; the weight grad has two groups share a 16-lane vector
    # (AVX-512). Padding 2: 15 output columns make a whole block and a partial one. Padding 0:
    # the weight grad's first and last input columns meet fewer than 3 gy columns. Stride 2: the
    # forward's blocks read every other column.
    "grouped_8_pairs_p2": dict(cin=48, cout=48, k=3, stride=1, padding=2, dilation=1, groups=6),
    "grouped_8_pairs_p0": dict(cin=48, cout=48, k=3, stride=1, padding=0, dilation=1, groups=6),
    "grouped_8_s2": dict(cin=48, cout=48, k=3, stride=2, padding=1, dilation=1, groups=6),
    "grouped_16": dict(cin=32, cout=32, k=3, stride=1, padding=1, dilation=1, groups=2),
    "grouped_16_s2": dict(cin=24, cout=32, k=3, stride=2, padding=1, dilation=1, groups=2),
    "grouped_in16": dict(cin=48, cout=24, k=3, stride=1, padding=1, dilation=1, groups=3),
    # Depthwise with enough channels for the register blocks of whole vectors (4, then 1-3 of
    # them) plus leftover channels; 13 columns end in a partial block of columns.
    "depthwise_c117": dict(cin=117, cout=117, k=3, stride=1, padding=1, dilation=1, groups=117),
    # Stride 1 on channels_last: blocks of 8 columns slide along rows, reading all their source
    # columns (k3 p0 forward, k3 p2 input grad) or clipped at either edge; 40 channels leave half
    # a vector to the others.
    "depthwise_c40_k3_p0": dict(cin=40, cout=40, k=3, stride=1, padding=0, dilation=1, groups=40),
    "depthwise_c32_k3_p2": dict(cin=32, cout=32, k=3, stride=1, padding=2, dilation=1, groups=32),
    "depthwise_c48_k5": dict(cin=48, cout=48, k=5, stride=1, padding=2, dilation=1, groups=48),
    "depthwise_c48_k7": dict(cin=48, cout=48, k=7, stride=1, padding=3, dilation=1, groups=48),
    # Small output planes (7 x 9): NCHW tensors go through the channels_last kernels on copies.
    "depthwise_c20_k5_p0": dict(cin=20, cout=20, k=5, stride=1, padding=0, dilation=1, groups=20),
    "depthwise_c117_s2": dict(cin=117, cout=117, k=5, stride=2, padding=3, dilation=1, groups=117),
    # The channels_last weight grad sums a kernel row's taps at once (the whole kernel at 3 x 3,
    # here rows 2 apart; at 9 x 9 the taps of a row in two runs, 8 and 1) over blocks of 2 and 1
    # vectors of channels (56: 3 vectors and 8 leftovers).
    "depthwise_c56_k3_d2": dict(cin=56, cout=56, k=3, stride=1, padding=2, dilation=2, groups=56),
    "depthwise_c56_k9": dict(cin=56, cout=56, k=9, stride=1, padding=4, dilation=1, groups=56),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(PATH_CASES))
def test_kernel_paths_match_torch(case, dtype, layout):
    c = PATH_CASES[case]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, c["cin"], 11, 13, generator=gen)
    w = torch.randn(c["cout"], c["cin"] // c["groups"], c["k"], c["k"], generator=gen)
    b = torch.randn(c["cout"], generator=gen)
    args = (c["stride"], c["padding"], c["dilation"], c["groups"])
    xs = make_layout(x.to(dtype), layout).requires_grad_()
    w_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    ws = w.to(dtype).contiguous(memory_format=w_format).requires_grad_()
    bs = b.to(dtype).requires_grad_()
    out = CF.conv2d(xs, ws, bs, *args)
    # gy in out's layout, as the next layer would pass it (channels_last passes read it so).
    gy = torch.randn(out.shape, generator=gen).to(dtype).contiguous(memory_format=w_format)
    grads = torch.autograd.grad(out, (xs, ws, bs), gy)
    ref_in = [t.detach().double().requires_grad_() for t in (xs, ws, bs)]
    ref = F.conv2d(*ref_in, *args)
    ref_grads = torch.autograd.grad(ref, ref_in, gy.double())
    assert_close_to_reference(out, ref)
    for g, r in zip(grads, ref_grads):
        assert_close_to_reference(g, r)
    if dtype != torch.bfloat16:
        native = F.conv2d(xs.detach(), ws.detach(), bs.detach(), *args)
        assert same_layout(out, native)


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    ((3, 3), 1, 1, 1), ((5, 3), (2, 1), (4, 0), (2, 1)), ((1, 3), (3, 2), (0, 3), 1), ((3, 3), (1, 2), (1, 0), (3, 1))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("groups", [4, 5])
def test_channels_last_grouped_8_forward(kernel, stride, padding, dilation, dtype, groups):
    # Input rows are packed group-major once per thread's run of output rows and kept while
    # later rows read them: kernel rows dilated and strided, rows in padding, 3 images (runs
    # cross them), and 40 or 20 output columns (whole and partial blocks of columns). bf16 packs
    # pairs of input channels where the CPU has vdpbf16ps; otherwise 16-lane vectors hold two
    # groups, and an odd number of groups goes to other kernels.
    gen = torch.Generator().manual_seed(0)
    C = 8 * groups
    x, w, b = (torch.randn(*shape, generator=gen).to(dtype) for shape in ((3, C, 9, 40), (C, 8, *kernel), (C,)))
    args = (stride, padding, dilation, groups)
    out = CF.conv2d(make_layout(x, "channels_last"), w, b, *args)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, F.conv2d(x.double(), w.double(), b.double(), *args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cin,k,padding,dilation", [(16, 1, 0, 1), (4, 5, 16, 8)])
def test_channels_last_forward_streamed_outputs(cin, k, padding, dilation, dtype):
    # The indirect forward stores channels_last outputs of 4 MiB or more, summed in one step,
    # around the caches: block by block, or (5 x 5 dilation 8: most windows reach padding, so a
    # tile's positions are regrouped) through per-position row pointers; bf16 (with vdpbf16ps)
    # a block's rows as whole lines (128 channels: 8.9 MB).
    gen = torch.Generator().manual_seed(0)
    cout = 128 if dtype == torch.bfloat16 else 64
    x = torch.randn(2, cin, 128, 136, generator=gen, dtype=torch.float64).to(dtype).double()
    w = torch.randn(cout, cin, k, k, generator=gen, dtype=torch.float64).to(dtype).double()
    b = torch.randn(cout, generator=gen, dtype=torch.float64).to(dtype).double()
    out = CF.conv2d(*(t.to(dtype) for t in (make_layout(x, "channels_last"), w, b)), 1, padding, dilation)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, F.conv2d(x, w, b, 1, padding, dilation))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cin", [16, 300])
def test_nchw_gemm_forward_streamed_outputs(cin, dtype):
    # The NCHW GEMM forward sums whole blocks in y; where y is 4 MiB or more (64 channels of
    # 128 x 136, 2 images), their last step (the only one at 16 input channels, the third of
    # three at 300) stores around the caches, the bias added in registers first.
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((2, cin, 128, 136), (64, cin, 1, 1), (64,)))
    out = CF.conv2d(*(t.to(dtype) for t in (x, w, b)))
    assert out.is_contiguous()
    assert_close_to_reference(out, F.conv2d(x, w, b))


@pytest.mark.parametrize("cout,size", [(80, (5, 7)), (64, (128, 256))])
def test_bf16_channels_last_forward_rounds_special_sums_as_c10(cout, size):
    # The indirect bf16 forward converts a block's float sums to bf16 in one instruction a row,
    # except where one of them is a NaN (whose sign that instruction keeps) or a denormal (which
    # it flushes): such blocks round as c10::BFloat16 converts float, NaN to 0x7FC0 (torch's
    # vectorised conversions make NaN 0xFFFF; convext's kernels all take c10's). x holds small
    # integers (exact sums, so the bits must match), a negative NaN, and positions of zeros
    # (and sums of 0) whose outputs are the bias alone, a denormal. 80 output channels: two whole panels of 32 in one
    # call, then a partial one; 4 MiB of outputs (64 channels, 128 x 256) are streamed.
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (1, 16, *size), generator=gen).float()
    x[..., 0, :3] = 0
    x[0, 3, 1, 2] = -float("nan")
    w = torch.randint(-2, 3, (cout, 16, 1, 1), generator=gen).float()
    b = torch.full((cout,), 2e-39).bfloat16().float()
    b[1::2] = 5
    assert b[0].item() != 0 and abs(b[0].item()) < torch.finfo(torch.float32).tiny
    out = CF.conv2d(make_layout(x.bfloat16(), "channels_last"), w.bfloat16(), b.bfloat16())
    expected = (F.conv2d(x.double(), w.double()) + b.double().view(-1, 1, 1)).bfloat16()  # the bias last, as convext adds it
    expected_bits = torch.where(expected.isnan(), 0x7FC0, expected.view(torch.int16)).to(torch.int16)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.isnan().sum() == cout and torch.equal(out.view(torch.int16), expected_bits)


@pytest.mark.parametrize("dtype,cout", [(torch.float32, 80), (torch.bfloat16, 160)], ids=str)
def test_grouped_forward_streamed_outputs_unaligned_groups(dtype, cout):
    # Outputs of 4 MiB or more go around the caches only where every block starts on a whole
    # vector: 2 groups of 40 float (80 bf16) output channels start 160 bytes apart, and the
    # non-temporal stores there faulted.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 128, 136, generator=gen).to(dtype)
    w = torch.randn(cout, 32, 3, 3, generator=gen).to(dtype)
    out = CF.conv2d(make_layout(x, "channels_last"), w, None, 1, 1, 1, 2)
    assert_close_to_reference(out, F.conv2d(x.double(), w.double(), None, 1, 1, 1, 2))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_stride1_transposed_with_output_padding(layout):
    # conv_transpose2d with stride 1 and dilation 2 admits output_padding 1: an input grad
    # computed as a forward conv whose last row and column read only padding.
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(2, 24, 9, 10, generator=gen, dtype=torch.float64), layout)
    x.requires_grad_()
    w = torch.randn(24, 20, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    args = (1, 1, 1, 1, 2)  # stride, padding, output_padding, groups, dilation
    out, ref = CF.conv_transpose2d(x, w, None, *args), F.conv_transpose2d(x, w, None, *args)
    torch.testing.assert_close(out, ref)
    gy = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(out, (x, w), gy), torch.autograd.grad(ref, (x, w), gy)):
        torch.testing.assert_close(a, r)


# bf16 weight grads summed by pairs of positions (vdpbf16ps): x in panels of 32 channels and gy as
# rows of positions (x_panels), or the other way round, whichever packs less; at 2 threads, the
# sums split in parts between items where there are fewer than 8 chunks of 1024 positions.
# (n, cin, cout, k, stride, padding, dilation, H, W).
BF16_WEIGHT_GRAD_CASES = {
    # 4 chunks: x_panels, 2 parts.
    "x_panels": (4, 32, 32, 3, 1, 1, 1, 28, 28),
    # An odd number of positions: odd last blocks, gy's rows end in a zero.
    "x_panels_odd": (3, 32, 32, 3, 1, 1, 1, 33, 33),
    # A third of the positions or more read padding at the taps off the centre: gy's rows for
    # the others gathered, a run at a time.
    "x_panels_dilated": (4, 32, 32, 3, 1, 10, 10, 28, 28),
    "x_panels_s2": (4, 32, 64, 3, 2, 1, 1, 56, 56),
    # One chunk: x_panels in 8 parts of gy's channels.
    "x_panels_parts": (2, 64, 128, 1, 1, 0, 1, 13, 11),
    # 8 chunks, gy has more values a position: gy in panels.
    "gy_panels_1x1": (8, 32, 256, 1, 1, 0, 1, 32, 32),
    # Taps of 8 channels (not whole panels of 32): gy in panels.
    "gy_panels_3x3": (2, 8, 96, 3, 1, 2, 2, 13, 11),
    # One chunk: gy in panels, 8 parts of x's channels.
    "gy_panels_parts": (1, 64, 64, 3, 1, 1, 1, 7, 7),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", list(BF16_WEIGHT_GRAD_CASES))
def test_bf16_weight_grad_pairs(case, layout):
    n, cin, cout, k, stride, padding, dilation, h, w = BF16_WEIGHT_GRAD_CASES[case]
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(n, cin, h, w, generator=gen).bfloat16(), layout)
    oh, ow = ((s + 2 * padding - dilation * (k - 1) - 1) // stride + 1 for s in (h, w))
    gy = make_layout(torch.randn(n, cout, oh, ow, generator=gen).bfloat16(), layout)
    args = ([stride] * 2, [padding] * 2, [dilation] * 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        gw = torch.ops.convext.conv2d_weight_grad(x, gy, [k, k], *args, 1, layout == "channels_last")
    finally:
        torch.set_num_threads(threads)
    _, ref, _ = torch.ops.aten.convolution_backward(
        gy.double(), x.double(), torch.zeros(cout, cin, k, k, dtype=torch.float64), None, *args, False, [0, 0], 1,
        [False, True, False])
    # Products of bf16 values are exact and summed in float: within a rounding of the exact sums,
    # or (sums near zero) float's cancellations, well below a missing product (about 1).
    atol = 1e-4 * ref.abs().max().item()
    torch.testing.assert_close(gw.double(), ref.bfloat16().double(), rtol=2 ** -7, atol=atol)


# Float weight grads over at most 1024 positions into channels_last gw: the sums go straight into
# gw, gy's channels as the rows, each thread's share of them packing all of x (and where many
# positions read padding, gy's rows of the others gathered). (n, cin, cout, k, stride, padding,
# dilation, h, w, groups.)
DIRECT_WEIGHT_GRAD_CASES = {
    "3x3": (2, 64, 64, 3, 1, 1, 1, 7, 7, 1),
    "3x3_dilated": (2, 32, 64, 3, 1, 4, 4, 9, 9, 1),
    "3x3_s2": (2, 64, 96, 3, 2, 1, 1, 9, 9, 1),
    "grouped": (2, 64, 128, 3, 1, 1, 1, 7, 7, 2),
    "1x1": (3, 32, 32, 1, 1, 0, 1, 5, 5, 1),
}


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", list(DIRECT_WEIGHT_GRAD_CASES))
def test_float_weight_grad_into_channels_last(case, dtype, threads):
    n, cin, cout, k, stride, padding, dilation, h, w, groups = DIRECT_WEIGHT_GRAD_CASES[case]
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(n, cin, h, w, generator=gen).to(dtype), "channels_last")
    oh, ow = ((s + 2 * padding - dilation * (k - 1) - 1) // stride + 1 for s in (h, w))
    gy = make_layout(torch.randn(n, cout, oh, ow, generator=gen).to(dtype), "channels_last")
    args = ([stride] * 2, [padding] * 2, [dilation] * 2)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        gw = torch.ops.convext.conv2d_weight_grad(x, gy, [k, k], *args, groups, True)
    finally:
        torch.set_num_threads(saved)
    assert gw.is_contiguous(memory_format=torch.channels_last)
    _, ref, _ = torch.ops.aten.convolution_backward(
        gy.double(), x.double(), torch.zeros(cout, cin // groups, k, k, dtype=torch.float64), None, *args, False,
        [0, 0], groups, [False, True, False])
    assert_close_to_reference(gw, ref)


@pytest.mark.parametrize("cin, groups, cout, dtype", [
    (24, 1, 20, torch.float64), (24, 3, 24, torch.float64), (24, 24, 24, torch.float64),
    (32, 4, 32, torch.float32)], ids=["dense", "grouped_8", "depthwise", "grouped_8_pairs"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_weight_and_bias_grads_are_the_same_for_any_thread_count(layout, cin, groups, cout, dtype):
    # Enough positions for several chunks of partial sums: the chunks, and so the order of the
    # sums, depend on the sizes only.
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(3, cin, 40, 30, generator=gen, dtype=torch.float64), layout)
    w = torch.randn(cout, cin // groups, 3, 3, generator=gen, dtype=torch.float64)
    gy = make_layout(torch.randn(3, cout, 40, 30, generator=gen, dtype=torch.float64), layout)
    grads, bias_grads = [], []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            grads.append(torch.ops.convext.conv2d_weight_grad(
                x.to(dtype), gy.to(dtype), [3, 3], [1, 1], [1, 1], [1, 1], groups,
                layout == "channels_last"))
            bias_grads.append(torch.ops.convext.conv_bias_grad(gy.to(dtype)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])
    assert torch.equal(bias_grads[0], bias_grads[1]) and torch.equal(bias_grads[0], bias_grads[2])
    _, ref_w, ref_b = torch.ops.aten.convolution_backward(
        gy, x, w, [cout], [1, 1], [1, 1], [1, 1], False, [0, 0], groups, [False, True, True])
    assert_close_to_reference(grads[0], ref_w)
    assert_close_to_reference(bias_grads[0], ref_b)


# Forward convs whose packed weights leave L2, so the indirect forward reduces in blocks (of
# taps, or of channels within a tap), runs tiles of positions across images and splits output
# channels between threads (and, past 16 panels of 32, into items of 16 panels: 600 channels
# make one of 16 and one of 3, the last partial); and a dilated conv whose taps often read only
# padding (skipped).
BLOCKED_CASES = {
    "tap_blocks": dict(cin=64, cout=512, k=3, padding=1, dilation=1),
    "output_items": dict(cin=64, cout=600, k=3, padding=1, dilation=1),
    "channel_chunks": dict(cin=600, cout=512, k=1, padding=0, dilation=1),
    "padding_taps": dict(cin=32, cout=40, k=3, padding=6, dilation=6),
    # bf16 with vdpbf16ps packs twice the channels a step: here two steps of 4102 and 4100
    # (whole pairs of channels).
    "pair_chunks": dict(cin=8202, cout=8, k=1, padding=0, dilation=1),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(BLOCKED_CASES))
def test_blocked_forward_matches_torch_for_any_thread_count(case, dtype, layout):
    c = BLOCKED_CASES[case]
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(3, c["cin"], 7, 7, generator=gen, dtype=dtype), layout)
    w = torch.randn(c["cout"], c["cin"], c["k"], c["k"], generator=gen, dtype=dtype)
    b = torch.randn(c["cout"], generator=gen, dtype=dtype)
    args = (1, c["padding"], c["dilation"])
    outs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(CF.conv2d(x, w, b, *args))
    finally:
        torch.set_num_threads(threads)
    # Blocks only store and reload partial sums: the order of the sums is the same for any split.
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert_close_to_reference(outs[0], F.conv2d(x.double(), w.double(), b.double(), *args))
    assert same_layout(outs[0], F.conv2d(x, w, b, *args))


# conv_transpose2d (and so strided input grads) split into the stride's phases, each a stride-1
# forward conv: phases no tap reaches (kernel 1, stride 2), dilation sharing a factor with the
# stride (phases with dilated taps), padding past the kernel's reach (taps starting inside),
# output_padding, groups; taps starting inside with 16 output channels a group, which the flat
# grouped forward takes (its padded planes once took negative padding: writes before the buffer).
PHASE_CASES = {
    "k1_s2": dict(k=1, stride=2, padding=0, output_padding=1, dilation=1, groups=1),
    "k4_s2_dcgan": dict(k=4, stride=2, padding=1, output_padding=0, dilation=1, groups=1),
    "k3_s3_d2": dict(k=3, stride=3, padding=2, output_padding=2, dilation=2, groups=1),
    "k3_s2_p3_g2": dict(k=3, stride=2, padding=3, output_padding=1, dilation=1, groups=2),
    "k2_s2_p1_g4": dict(k=2, stride=2, padding=1, output_padding=0, dilation=1, groups=4, out=64),
    "k3_s1_p3_g4": dict(k=3, stride=1, padding=3, output_padding=0, dilation=1, groups=4, out=64),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", list(PHASE_CASES))
def test_strided_transposed_by_phases(case, layout):
    c = PHASE_CASES[case]
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(2, 32, 7, 6, generator=gen, dtype=torch.float64), layout)
    x.requires_grad_()
    out_channels = c.get("out", 40)
    w = torch.randn(32, out_channels // c["groups"], c["k"], c["k"], generator=gen, dtype=torch.float64,
                    requires_grad=True)
    b = torch.randn(out_channels, generator=gen, dtype=torch.float64, requires_grad=True)
    args = (c["stride"], c["padding"], c["output_padding"], c["groups"], c["dilation"])
    out, ref = CF.conv_transpose2d(x, w, b, *args), F.conv_transpose2d(x, w, b, *args)
    torch.testing.assert_close(out, ref)
    assert same_layout(out, ref)
    gy = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(out, (x, w, b), gy), torch.autograd.grad(ref, (x, w, b), gy)):
        torch.testing.assert_close(a, r)


# The weight grad as indirect GEMMs over positions (whole tiles: input channels per group a
# multiple of 8, output channels of 32; NCHW tensors copied to channels_last): several chunks of
# positions, blocks within them. bf16 (with vdpbf16ps) sums pairs of positions: blocks of odd
# lengths pair their last position with zeros, and x is copied 64 channels at a time (72, and
# 27 x 3 = 81 values a kernel row: two strips, kernel rows clipped at the borders).
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
# 40 input channels: the chunks' sums go into gw in tiles of 16 channels, the last one partial.
# 3 and 5 input channels: kernel rows as taps (21 values in 3 blocks of 8, 15 in 2). Padding 8
# or 9: whole blocks of positions whose taps read only padding skip them (the first block of a
# chunk zeroing the tap's sums), and blocks where many do sum only the others.
@pytest.mark.parametrize("cin,groups,k,stride,padding,dilation", [
    (32, 1, 3, 1, 1, 1), (32, 2, 3, 2, 2, 2), (40, 1, 3, 1, 0, 1), (3, 1, 7, 2, 3, 1), (5, 1, 3, 1, 0, 1),
    (16, 1, 3, 1, 8, 8), (5, 1, 3, 1, 9, 1), (72, 1, 3, 2, 1, 1), (27, 1, 3, 1, 1, 1)])
def test_indirect_weight_grad(dtype, cin, groups, k, stride, padding, dilation, layout):
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(3, cin, 47, 45, generator=gen, dtype=dtype), layout)
    w = torch.randn(64, cin // groups, k, k, generator=gen, dtype=dtype)
    args = ([stride] * 2, [padding] * 2, [dilation] * 2, groups)
    y = F.conv2d(x, w, None, *args)
    gy = make_layout(torch.randn(y.shape, generator=gen, dtype=dtype), layout)
    grads = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            grads.append(torch.ops.convext.conv2d_weight_grad(x, gy, [k, k], *args, True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1])
    ref = torch.ops.aten.convolution_backward(gy.double(), x.double(), w.double(), None, *args[:3],
                                              False, [0, 0], groups, [False, True, False])[1]
    assert_close_to_reference(grads[0], ref)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


# bf16 1x1 weight grads on dense NCHW tensors (with vdpbf16ps): per image, gy's rows against x
# packed in panels of 32 channels, pairs of positions at a time. 40 input channels: a second,
# partial panel; 20 output channels: a partial last block of 8; 3 images added in order.
@pytest.mark.parametrize("w_channels_last", [False, True])
@pytest.mark.parametrize("cin,cout,size", [(40, 20, (6, 10)), (8, 64, (14, 14))])
def test_weight_grad_1x1_planes(cin, cout, size, w_channels_last):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, cin, *size, generator=gen).to(torch.bfloat16)
    gy = torch.randn(3, cout, *size, generator=gen).to(torch.bfloat16)
    args = ([1, 1], [0, 0], [1, 1], 1, w_channels_last)
    grads = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            grads.append(torch.ops.convext.conv2d_weight_grad(x, gy, [1, 1], *args))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1])
    ref = torch.einsum("nop,nip->oi", gy.double().flatten(2), x.double().flatten(2)).view(cout, cin, 1, 1)
    assert_close_to_reference(grads[0], ref)


# bf16 1x1 convs on dense NCHW tensors (with vdpbf16ps) with planes of 512 positions or more,
# forward and input grad (the forward of gy with transposed weights): blocks of 8 output channels
# x 32 positions of a plane, each item packing its 32 positions of x in pairs of channels. 20
# output channels: a partial last block; 540 positions: a partial last run; 33 input channels: a
# pair with a zero channel.
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("cin,cout,size", [(33, 20, (18, 30)), (64, 48, (32, 16))])
def test_1x1_planes_forward_and_input_grad(cin, cout, size, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, cin, *size, generator=gen, dtype=torch.float64)
    w = torch.randn(cout, cin, 1, 1, generator=gen, dtype=torch.float64)
    b = torch.randn(cout, generator=gen, dtype=torch.float64) if bias else None
    ours = [t.to(torch.bfloat16).requires_grad_() for t in (x, w)]
    y = CF.conv2d(*ours, b.to(torch.bfloat16) if bias else None)
    ref = [t.clone().requires_grad_() for t in (x, w)]
    expected = F.conv2d(*ref, b)
    assert_close_to_reference(y, expected)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    assert_close_to_reference(torch.autograd.grad(y, ours[0], gy.to(torch.bfloat16))[0],
                              torch.autograd.grad(expected, ref[0], gy)[0])


# Input grads into at most 4 channels (an RGB stem's): chunks of gy's rows are staged as planes
# and each phase of the stride summed with gx's channels in registers. Strides 1-3 (3 with a
# 2-wide kernel: phases that no tap reaches), dilation, padding past the kernel's reach (taps that
# start inside gy), odd sizes; 256 output channels make chunks of 8-9 rows, so 40 rows take several.
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cin", [1, 2, 3, 4])
@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 1, 1), (7, 2, 3, 1), (2, 3, 0, 1), (3, 2, 4, 2)])
def test_input_grad_few_channels(k, stride, padding, dilation, cin, dtype, layout):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, cin, 40, 37, generator=gen, dtype=torch.float64)
    w = torch.randn(256, cin, k, k, generator=gen, dtype=torch.float64)
    args = (None, stride, padding, dilation)
    xs = make_layout(x.to(dtype), layout).requires_grad_()
    y = CF.conv2d(xs, w.to(dtype), *args)
    gy = make_layout(torch.randn(y.shape, generator=gen, dtype=torch.float64), layout)
    ref = x.clone().requires_grad_()
    expected = torch.autograd.grad(F.conv2d(ref, w, *args), ref, gy)[0]
    assert_close_to_reference(torch.autograd.grad(y, xs, gy.to(dtype))[0], expected)


# conv_transpose2d into 1-4 channels (a generator's last layer) is that input grad, plus a bias
# (alone where no tap reaches: a 2-wide kernel at stride 3).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cout", [1, 2, 3, 4])
@pytest.mark.parametrize("k,stride,padding,output_padding", [(4, 2, 1, 0), (2, 3, 0, 2)])
def test_transposed_into_few_channels(k, stride, padding, output_padding, cout, dtype):
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((2, 64, 9, 11), (64, cout, k, k), (cout,)))
    args = (stride, padding, output_padding)
    y = CF.conv_transpose2d(x.to(dtype), w.to(dtype), b.to(dtype), *args)
    assert_close_to_reference(y, F.conv_transpose2d(x, w, b, *args))


def _check_depthwise(x_shape, k, multiplier, dtype, layout, stride, padding, dilation):
    """Forward and grads of a depthwise conv (x in `layout`, in dtype) against float64."""
    gen = torch.Generator().manual_seed(0)
    channels = x_shape[1]
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64)
    w = torch.randn(channels * multiplier, 1, k, k, generator=gen, dtype=torch.float64)
    b = torch.randn(channels * multiplier, generator=gen, dtype=torch.float64)
    ours = [make_layout(x.to(dtype), layout).requires_grad_(), w.to(dtype).requires_grad_(),
            b.to(dtype).requires_grad_()]
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    out = CF.conv2d(*ours, stride, padding, dilation, channels)
    expected = F.conv2d(*ref, stride, padding, dilation, channels)
    gy = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    assert_close_to_reference(out, expected)
    for g, r in zip(torch.autograd.grad(out, ours, gy.to(dtype)), torch.autograd.grad(expected, ref, gy)):
        assert_close_to_reference(g, r)


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("padding", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_stride2_wide_rows(dtype, padding, dilation, multiplier):
    # NCHW depthwise at stride 2 splits padded rows into even and odd columns, 16 at a time
    # through registers (37 columns: two such blocks and a tail; bf16 widened on the way), in the
    # weight grad and (with 2 output channels a group) the input grad; the forward sums vectors of
    # adjacent outputs (a whole one and a tail) from even lanes. With one output channel a group,
    # the input grad gathers each phase's vectors of columns and interleaves them (19 and 18 a
    # row). The weight grad sums whole vectors of a row's outputs (19: a whole one and a tail).
    _check_depthwise((2, 5, 9, 37), 3, multiplier, dtype, "contiguous", 2, padding, dilation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_depthwise_strided_weight_grad_skips_unread_columns(dtype):
    # The NCHW strided weight grad's vectors of a row's outputs reach past its last one (19 here),
    # to columns of x that the tap never reads: an infinity there (column 39; a 3x3 kernel at
    # stride 2 reads up to column 38) stays out of every sum, where 0 * inf would give NaN.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 40, generator=gen, dtype=torch.float64)
    x[..., 39] = float("inf")
    w = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64)
    ours = w.to(dtype).requires_grad_()
    out = CF.conv2d(x.to(dtype), ours, None, 2, 0, 1, 4)
    gy = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    ref = w.clone().requires_grad_()
    expected = torch.autograd.grad(F.conv2d(x, ref, None, 2, 0, 1, 4), ref, gy)[0]
    assert expected.isfinite().all()
    assert_close_to_reference(torch.autograd.grad(out, ours, gy.to(dtype))[0], expected)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("out_channels", [32, 64])
def test_grouped_weight_grad_taps_past_the_input(out_channels, dtype, layout):
    # Grouped weight grads at stride 2 with 8 or 16 output channels a group (direct): a 7x7
    # kernel of dilation 2 on 9 columns has taps whose every output column lies past x's last
    # column (sum zero); the first output once read x's next row there.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 9, 9, generator=gen, dtype=torch.float64)
    w = torch.randn(out_channels, 8, 7, 7, generator=gen, dtype=torch.float64)
    args = (None, 2, 3, 2, 4)
    ours = w.to(dtype).requires_grad_()
    out = CF.conv2d(make_layout(x.to(dtype), layout), ours, *args)
    gy = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    ref = w.clone().requires_grad_()
    expected = torch.autograd.grad(F.conv2d(x, ref, *args), ref, gy)[0]
    assert_close_to_reference(torch.autograd.grad(out, ours, gy.to(dtype))[0], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels,out_channels,groups", [(8, 8, 8), (32, 64, 4)])
def test_flat_weight_grad_skips_unread_columns(channels, out_channels, groups, dtype):
    # The flat weight grads (stride-1 NCHW depthwise and grouped convs with 8 or 16 output
    # channels a group) sum the zeros past each output row with x's columns at the row's end:
    # infinities there (the last column, read only by the last tap of a kernel row) made NaN in
    # that row's other taps. Sums that come out non-finite are summed again without them.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 20, 20, generator=gen, dtype=torch.float64)
    x[0, 0, 19, 19] = float("inf")
    x[1, channels - 1, 10, 19] = -float("inf")
    w = torch.randn(out_channels, channels // groups, 3, 3, generator=gen, dtype=torch.float64)
    ours = w.to(dtype).requires_grad_()
    out = CF.conv2d(x.to(dtype), ours, None, 1, 0, 1, groups)
    gy = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    ref = w.clone().requires_grad_()
    expected = torch.autograd.grad(F.conv2d(x, ref, None, 1, 0, 1, groups), ref, gy)[0]
    got = torch.autograd.grad(out, ours, gy.to(dtype))[0]
    assert torch.equal(got.isfinite(), expected.isfinite())
    finite = expected.isfinite()
    assert_close_to_reference(got[finite], expected[finite])


@pytest.mark.parametrize("dtype,stride,channels,size", [
    (torch.float32, 1, 32, (160, 208)), (torch.float64, 1, 32, (160, 208)), (torch.float32, 2, 32, (320, 416)),
    (torch.bfloat16, 1, 48, (160, 204))], ids=str)
def test_depthwise_channels_last_streamed_outputs(dtype, stride, channels, size):
    # channels_last outputs of 4 MiB or more are stored around the caches: the sliding blocks
    # (stride 1, forward and input grad) and the blocks of columns (stride 2: the forward, and the
    # input grad a phase of columns at a time). bf16 sliding blocks go through a buffer, as whole
    # lines (48 channels: 96 bytes a column; 204 columns end in 4 outside the sliding blocks).
    _check_depthwise((2, channels) + size, 3, 1, dtype, "channels_last", stride, 1, 1)


@pytest.mark.parametrize("channels", [16, 48, 80])
@pytest.mark.parametrize("k", [3, 5])
def test_depthwise_channels_last_bf16_sliding_channels(k, channels):
    # bf16 channels_last depthwise sliding blocks (stride 1: the forward and input grad) take
    # blocks of 32 channels by vdpbf16ps, then the last 16 (if there are) as 32-byte halves
    # interleaved by one permute; 5 x 5 kernels: rows in 3 pairs, the last with a zero row; 21
    # columns: blocks clipped at both borders and 5 columns outside them.
    _check_depthwise((2, channels, 6, 21), k, 1, torch.bfloat16, "channels_last", 1, k // 2, 1)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k,padding,dilation,multiplier", [
    (3, 1, 1, 1), (5, 2, (1, 2), 2), (7, 3, 1, 1), (7, 0, 1, 1)])
def test_depthwise_rows(k, padding, dilation, multiplier, dtype, layout):
    # NCHW depthwise K x K at stride 1, rows undilated: blocks of 4 output rows x up to 4
    # vectors sum in registers. 10 x 70 planes end in partial blocks of rows and of vectors
    # (a tail of 6 or 14 columns); forward, and the input grad that runs the same kernel (its
    # flipped weights through negative strides). On channels_last tensors only the channel
    # multiplier of 2 takes it (with y channels_last).
    _check_depthwise((2, 3, 10, 70), k, multiplier, dtype, layout, 1, padding, dilation)


def _weight_in_layout(w, layout):
    k = w.shape[-1]
    return {"contiguous": w, "channels_last": w.contiguous(memory_format=torch.channels_last),
            "transposed": w.transpose(0, 1).contiguous().transpose(0, 1),
            "strided": torch.zeros(*w.shape[:3], 2 * k).index_copy_(3, torch.arange(0, 2 * k, 2), w)[..., ::2]}[layout]


# Winograd F(4x4, 3x3), F(3x3, 3x3) and F(4x4, 2x2): 3x3 and 2x2 stride-1 float32 convs with 16
# or more channels each way, forward and (as a forward conv of gy) input grad (F(3x3, 3x3) where
# its tiles take fewer multiply-adds: 9 x 10 outputs, and dilation 6 on 15 x 16, grids of 3 x 3
# outputs, as ASPP's); even kernels at stride 2
# (4x4: DCGAN's input grad; 6x6) on their 4 phases' inputs and taps at once (4 C channels; per
# phase every other tap of w). Tiles past the outputs' edges, tails of input and output channels
# (20 and 40), dilation 2 (tiles on interleaved grids; along rows only, NCHW outputs still go out
# as runs of 4 per tile row), weights in each order their transform gathers them (runs of
# (channel, tap) or of channels per output channel, the taps of each output channel as a short
# run, forward or reversed, and output channels one value at a time), and both schedules: U
# transformed once and shared by blocks of tiles (where it fits L2, or 2 x 100 x 100 outputs make
# many tiles), or, with 136 channels each way on few tiles, transformed by each thread for its
# output channels in two chunks of input channels, as the GEMMs need them.
@pytest.mark.parametrize("w_layout", ["contiguous", "channels_last", "transposed", "strided"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("k,stride,cin,cout,size,padding,dilation", [
    (3, 1, 20, 40, 11, 0, 1), (3, 1, 32, 48, 13, (2, 1), (2, 1)), (3, 1, 24, 16, 15, 2, 2), (3, 1, 16, 16, 100, 1, 1),
    (3, 1, 136, 136, 11, 1, (2, 1)), (3, 1, 16, 24, 15, 6, 6), (2, 1, 20, 40, 11, 0, 1), (2, 1, 32, 24, 13, (1, 0), (2, 1)),
    (2, 1, 136, 136, 11, 1, 1), (4, 2, 20, 40, 16, 1, 1), (4, 2, 32, 24, 15, (2, 0), 1), (6, 2, 24, 16, 20, 2, 1),
    (4, 2, 136, 136, 16, 1, 1)])
def test_winograd(k, stride, cin, cout, size, padding, dilation, layout, w_layout):
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(2, cin, size, size + 1, generator=gen), layout).requires_grad_()
    w = _weight_in_layout(torch.randn(cout, cin, k, k, generator=gen), w_layout).requires_grad_()
    b = torch.randn(cout, generator=gen, requires_grad=True)
    out = CF.conv2d(x, w, b, stride, padding, dilation)
    gy = torch.randn(out.shape, generator=gen)
    ref_in = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = F.conv2d(*ref_in, stride, padding, dilation)
    assert_close_to_reference(out, ref)
    for g, r in zip(torch.autograd.grad(out, (x, w, b), gy), torch.autograd.grad(ref, ref_in, gy.double())):
        assert_close_to_reference(g, r)


# Transformed weights larger than L3 holds (25 x 2048 x 96 floats, 19.7 MB, as ASPP's 2048 -> 256)
# are written once, around the caches, and each thread's share of the tiles is one block, its
# transformed inputs in memory: in the forward a point's, past L2 (162 tiles x 2048 channels),
# pass once, channels outer; the input grad's (96 channels) stay in L2 for every panel of its
# 2048 output channels.
def test_winograd_weights_past_l3():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2048, 27, 27, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(96, 2048, 3, 3, generator=gen)
    out = CF.conv2d(x, w, None, 1, 3, 3)
    gy = torch.randn(out.shape, generator=gen)
    ref = F.conv2d(x.detach().double(), w.double(), None, 1, 3, 3)
    assert_close_to_reference(out, ref)
    ref_gx = torch.ops.aten.convolution_backward(gy.double(), x.detach().double(), w.double(), None, [1, 1], [3, 3],
                                                 [3, 3], False, [0, 0], 1, [True, False, False])[0]
    assert_close_to_reference(torch.autograd.grad(out, x, gy)[0], ref_gx)


# 4x4 stride-2 transposed convs (DCGAN's) run F(4x4, 2x2) on each of their 4 phases; NCHW
# outputs go through a channels_last copy. Weights whose phase taps lie in runs of 11
# (contiguous: two 8 x 8 transposes), in runs of output channels (channels_last), or in runs of
# 21, too long to gather whole (strided: one value at a time).
@pytest.mark.parametrize("w_layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_winograd_strided_transposed(layout, w_layout):
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(2, 24, 8, 7, generator=gen), layout).requires_grad_()
    w = _weight_in_layout(torch.randn(24, 40, 4, 4, generator=gen), w_layout).requires_grad_()
    b = torch.randn(40, generator=gen, requires_grad=True)
    out = CF.conv_transpose2d(x, w, b, 2, 1)
    ref_in = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = F.conv_transpose2d(*ref_in, 2, 1)
    assert_close_to_reference(out, ref)
    assert same_layout(out, F.conv_transpose2d(x, w, b, 2, 1))
    gy = torch.randn(out.shape, generator=gen)
    for g, r in zip(torch.autograd.grad(out, (x, w, b), gy), torch.autograd.grad(ref, ref_in, gy.double())):
        assert_close_to_reference(g, r)


# Its weight grad sums tiles in chunks, each with its own partial sums, added in order: short
# blocks into sums that fit L2 (16 channels: 5 chunks of 2 blocks), or one long block a chunk
# (96 channels). The same result for any thread count.
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("channels,size", [(16, 100), (96, 32)])
def test_winograd_weight_grad_any_thread_count(channels, size, layout):
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(2, channels, size, size + 1, generator=gen), layout)
    gy = make_layout(torch.randn(2, channels, size, size + 1, generator=gen), layout)
    args = ([1, 1], [1, 1], [1, 1], 1)
    grads = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            grads.append(torch.ops.convext.conv2d_weight_grad(x, gy, [3, 3], *args, layout == "channels_last"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])
    w = torch.empty(channels, channels, 3, 3, dtype=torch.float64)
    ref = torch.ops.aten.convolution_backward(gy.double(), x.double(), w, None, *args[:3], False, [0, 0], 1,
                                              [False, True, False])[1]
    assert_close_to_reference(grads[0], ref)


def test_winograd_can_be_turned_off():
    # CONVEXT_WINOGRAD=0 (read once per process) keeps the direct sums: errors of float32
    # rounding over 64 channels, a few times smaller than Winograd's transforms leave.
    script = textwrap.dedent("""
        import torch, torch.nn.functional as F, convext.functional as CF
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(2, 64, 20, 20, generator=g), torch.randn(64, 64, 3, 3, generator=g)
        ref = F.conv2d(x.double(), w.double(), None, 1, 1)
        print(((CF.conv2d(x, w, None, 1, 1).double() - ref).abs().max() / ref.abs().max()).item())
        """)
    errors = {}
    for value in ("0", "1"):
        result = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, CONVEXT_WINOGRAD=value),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        errors[value] = float(result.stdout)
    assert errors["0"] < 2e-6 and errors["1"] < 1e-4


@pytest.mark.parametrize("padding,output_padding,dilation", [(3, 0, 1), (4, 1, 2)])
def test_winograd_transposed_stride1(padding, output_padding, dilation):
    # conv_transpose2d at stride 1 is a forward conv of its input: with padding past the kernel's
    # reach its taps start inside the input (negative padding), and output_padding leaves rows
    # and columns that read only padding; float32 with 16 or more channels takes Winograd.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 12, 13, generator=gen, requires_grad=True)
    w = torch.randn(24, 20, 3, 3, generator=gen, requires_grad=True)
    args = (1, padding, output_padding, 1, dilation)
    out = CF.conv_transpose2d(x, w, None, *args)
    ref_in = [t.detach().double().requires_grad_() for t in (x, w)]
    ref = F.conv_transpose2d(*ref_in, None, *args)
    gy = torch.randn(out.shape, generator=gen)
    assert_close_to_reference(out, ref)
    for g, r in zip(torch.autograd.grad(out, (x, w), gy), torch.autograd.grad(ref, ref_in, gy.double())):
        assert_close_to_reference(g, r)


# bf16 results leave the vector kernels rounded to nearest even, as torch rounds: single exact
# products (a 1x1 depthwise conv; a 1x1 conv whose second input channel has zero weights, summed
# in pairs of channels where the CPU has bf16 dot products) match torch's bit for bit, NaN too.
@pytest.mark.parametrize("depthwise", [True, False])
def test_bf16_outputs_round_as_torch(depthwise):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 32 if depthwise else 2, 9, 10, generator=gen) * 3).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    if depthwise:
        x[0, 3, 2, 2] = float("nan")
        w, groups = torch.randn(32, 1, 1, 1, generator=gen).to(torch.bfloat16), 32
    else:
        w, groups = torch.randn(32, 2, 1, 1, generator=gen).to(torch.bfloat16), 1
        w[:, 1] = 0
    torch.testing.assert_close(CF.conv2d(x, w, None, 1, 0, 1, groups), F.conv2d(x, w, None, 1, 0, 1, groups),
                               rtol=0, atol=0, equal_nan=True)


def test_bf16_rounding_keeps_denormals_and_one_nan():
    # Where the CPU rounds with vcvtneps2bf16, vectors holding a denormal or a NaN take the
    # formula (the instruction flushes the one and keeps the other's sign and payload), as on
    # every other ISA: each output of a 1x1 depthwise conv (one exact product) is its product
    # rounded to nearest even, denormals included, and every NaN is 0x7FC0. On NCHW planes: the
    # channels_last bf16 depthwise sums with vdpbf16ps where the CPU has it, which flushes
    # denormal inputs, as torch's bf16 convolutions do.
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 64, 9, 10, generator=gen) * 3).to(torch.bfloat16)
    x[0, :, 1] *= 2.0 ** -128
    x.view(torch.int16)[1, 5, 3, 3] = -63  # 0xFFC1: a negative NaN with a payload
    w = torch.randn(64, 1, 1, 1, generator=gen).to(torch.bfloat16)
    out = CF.conv2d(x, w, None, 1, 0, 1, 64).view(torch.int16).int() & 0xFFFF
    # Each output sums its product onto a zero (so -0 comes out +0).
    bits = (x.float() * w.float().view(1, 64, 1, 1) + 0.0).view(torch.int32).long() & 0xFFFFFFFF
    expected = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).where(x.isfinite(), 0x7FC0)
    assert (x[0, :, 1].float().abs() < 2.0 ** -126).any()
    assert torch.equal(out.long(), expected)


# Channels_last depthwise convs: sliding blocks at stride 1 and 2 and the transposed pass (input
# grad) at stride 1, other blocks at other geometries, odd and even kernel heights, padding rows
# at both borders, weight grads over odd runs of columns. In bf16, whole blocks of 32 channels
# sum pairs of kernel rows (pairs of columns in 3 x 3 weight grads) with vdpbf16ps where the CPU
# has it, and a tail of 16 channels (144) or of single channels (40) the floats.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("channels,kernel,stride,padding,dilation", [
    (32, 3, 1, 1, 1), (144, 3, 1, 1, 1), (96, 7, 1, 3, 1), (64, 5, 2, 2, 1), (96, 3, 2, 1, 1),
    (40, 3, 2, 0, 1), (64, 1, 1, 0, 1), (64, (4, 3), 1, (2, 1), 1), (32, 3, 1, 2, 2), (64, 3, 3, 1, 1)])
def test_channels_last_depthwise_paths(channels, kernel, stride, padding, dilation, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 13, 35, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, 1, *_pair_of(kernel), generator=gen).to(dtype)
    b = torch.randn(channels, generator=gen).to(dtype)
    args = (stride, padding, dilation, channels)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = CF.conv2d(xg, wg, b, *args)
    ref = F.conv2d(x.double(), w.double(), b.double(), *args)
    assert_close_to_reference(y, ref)
    gy = torch.randn(ref.shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    refs = torch.autograd.grad(F.conv2d(xr, wr, None, *args), (xr, wr), gy.double())
    for grad, ref_grad in zip(torch.autograd.grad(y, (xg, wg), gy), refs):
        assert_close_to_reference(grad, ref_grad)


def _pair_of(k):
    return k if isinstance(k, tuple) else (k, k)


@pytest.mark.parametrize("stride", [1, 2])
def test_bf16_depthwise_skips_padding_rows(stride):
    # A kernel row that reads a padding row is skipped, not multiplied by zeros: an infinite weight
    # there leaves the border row finite (as torch's bf16 convs do), and makes the others infinite.
    x = (torch.rand(1, 64, 9, 20, generator=torch.Generator().manual_seed(0)) + 0.5).to(torch.bfloat16)
    w = torch.ones(64, 1, 3, 3, dtype=torch.bfloat16)
    w[:, 0, 0, 1] = float("inf")
    y = CF.conv2d(x.contiguous(memory_format=torch.channels_last), w, None, stride, 1, 1, 64)
    assert y[:, :, 0].isfinite().all() and y[:, :, 1:].isposinf().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("channels", [8, 48])
@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("size,k,stride", [(16, 3, 1), (16, 5, 1), (56, 7, 1), (28, 3, 2), (7, 3, 1), (14, 3, 2)])
def test_depthwise_infinite_weights_skip_padding(size, k, stride, op, channels, layout, dtype):
    # Padding is skipped, as torch's float and bf16 depthwise convs skip it, not multiplied by
    # zeros: an infinite weight makes infinite the outputs whose tap reads x and leaves finite the
    # border ones whose tap reads padding, in both layouts. (NCHW tensors with such weights go
    # through the channels_last kernels, and those go per position: the NCHW kernels and the
    # channels_last blocks of vectors made NaN there, the blocks at 32 channels and more.)
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(2, channels, size, size, generator=gen).to(dtype), layout)
    w = torch.randn(channels, 1, k, k, generator=gen).to(dtype)
    w[4, 0, 0, 0] = float("inf")
    w[5, 0, k - 1, k // 2] = -float("inf")
    extra = (stride - 1, channels) if op == "conv_transpose2d" else (1, channels)  # output_padding or dilation
    y = getattr(CF, op)(x, w, None, stride, k // 2, *extra)
    expected = getattr(F, op)(x, w, None, stride, k // 2, *extra)
    assert not expected.isnan().any() and expected.isinf().any()
    assert torch.equal(y.isnan(), expected.isnan()) and torch.equal(y.isinf(), expected.isinf())
    finite = expected.isfinite()
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(y[finite].float(), expected[finite].float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels,size,padding", [(48, (9, 13), 1), (16, (6, 8), 0), (144, (7, 14), 2), (80, (5, 6), 1)])
def test_bf16_depthwise_3x3_by_row_pairs(channels, size, padding, bias, layout):
    # bf16 3x3 stride-1 depthwise forwards with an odd number of 16 channels (with vdpbf16ps) go
    # two output rows at a time (an odd last one alone), 6 columns a block (a partial last one;
    # the border ones read zeros past the row), padding rows as zeros (padding 2: whole rows).
    # An infinity reaches only the outputs whose windows hold it (rows read alone meet zeros).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, *size, generator=gen, dtype=torch.float64)
    x[0, 3, 4, 5] = float("inf")
    x[1, channels - 1, 0, size[1] - 1] = -float("inf")
    w = torch.randn(channels, 1, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(channels, generator=gen, dtype=torch.float64) if bias else None
    y = CF.conv2d(make_layout(x.bfloat16(), layout), w.bfloat16(), b.bfloat16() if bias else None, 1, padding, 1,
                  channels)
    expected = F.conv2d(x, w, b, 1, padding, 1, channels)
    assert same_layout(y, make_layout(expected, layout))
    assert 0 < (~expected.isfinite()).sum() <= 18  # two windows of 3 x 3 outputs at most
    assert_close_to_reference(y, expected)
