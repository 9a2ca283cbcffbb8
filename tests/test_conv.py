"""conv2d and conv_transpose2d against torch: values, grads, memory formats, errors, autograd
to second order, the dispatcher checks (opcheck), torch.compile and export; on the CPU and, where
there is one, on CUDA (also: CUDA against the CPU kernels, the current stream, determinism)."""
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import convext
import convext.functional as CF
from utils import (DEVICES, FLOAT_DTYPES, LAYOUTS, assert_close_to_reference, make_layout,
                   same_layout, tf32_convolutions, tolerances)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# --- forward and grads over an argument grid -------------------------------------------------

KERNELS = [(1, 1), (3, 3), (2, 3)]
STRIDES = [1, 2, (2, 1)]
PADDINGS = [0, 1, (1, 2)]
DILATIONS = [1, 2]
GROUPS = ["1", "2", "depthwise", "depthwise_x2"]  # depthwise_x2: a channel multiplier of 2


def _check_against_torch(torch_fn, convext_fn, x, w, b, dtype, layout, device="cpu"):
    """Runs both on the same inputs (x laid out as `layout`): convext on `device`, torch on the
    CPU. Outputs and grads against torch in float64, and (float32 and float64, where torch runs
    natively) memory formats against torch's in dtype: convext follows torch's CPU rule on every
    device (torch's CUDA formats depend on which backend it picks, float64 never channels_last)."""
    def leaves(dev):
        ts = [make_layout(x.to(dev, dtype), layout), w.to(dev, dtype),
              None if b is None else b.to(dev, dtype)]
        return [t.requires_grad_() if t is not None else None for t in ts]

    tensors = leaves(device)
    out = convext_fn(*tensors)
    gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    wrt = [t for t in tensors if t is not None]
    grads = torch.autograd.grad(out, wrt, gy.to(device))

    ref_in = [t.detach().cpu().double().requires_grad_() if t is not None else None for t in tensors]
    ref_out = torch_fn(*ref_in)
    ref_grads = torch.autograd.grad(ref_out, [t for t in ref_in if t is not None], gy.double())
    assert out.dtype == dtype and out.shape == ref_out.shape and out.device.type == device
    assert_close_to_reference(out.cpu(), ref_out)
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert_close_to_reference(g.cpu(), rg)

    if dtype in (torch.float32, torch.float64):
        native_in = leaves("cpu")
        native_out = torch_fn(*native_in)
        native_grads = torch.autograd.grad(native_out, [t for t in native_in if t is not None], gy)
        assert same_layout(out, native_out), (out.stride(), native_out.stride())
        for g, ng in zip(grads, native_grads):
            assert same_layout(g, ng), (g.stride(), ng.stride())


def _groups(spec, channels):
    return channels if spec.startswith("depthwise") else int(spec)


def _multiplier(spec):
    return 2 if spec == "depthwise_x2" else 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kernel,stride,padding,dilation,groups",
                         list(itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS, GROUPS)))
def test_conv2d_matches_torch(kernel, stride, padding, dilation, groups, dtype, layout, device):
    g = _groups(groups, 4)
    out_channels = 4 * _multiplier(groups) if groups.startswith("depthwise") else 6
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 8, generator=gen)
    w = torch.randn(out_channels, 4 // g, *kernel, generator=gen)
    b = torch.randn(out_channels, generator=gen)
    args = (stride, padding, dilation, g)
    _check_against_torch(lambda *t: F.conv2d(*t, *args), lambda *t: CF.conv2d(*t, *args),
                         x, w, b, dtype, layout, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kernel,stride,padding,output_padding,dilation,groups", [
    (k, s, p, op, d, g)
    for k, s, p, op, d, g in itertools.product(KERNELS, STRIDES, [0, 1], [0, 1], DILATIONS,
                                                GROUPS)
    # torch's rule: output_padding below stride or dilation, in each dim
    if all(op < max(si, d) for si in ((s, s) if isinstance(s, int) else s))
])
def test_conv_transpose2d_matches_torch(kernel, stride, padding, output_padding, dilation, groups,
                                        dtype, layout, device):
    g = _groups(groups, 4)
    out_per_group = _multiplier(groups) if groups.startswith("depthwise") else 6 // g
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 6, generator=gen)
    w = torch.randn(4, out_per_group, *kernel, generator=gen)
    b = torch.randn(out_per_group * g, generator=gen)
    args = (stride, padding, output_padding, g, dilation)
    _check_against_torch(lambda *t: F.conv_transpose2d(*t, *args),
                         lambda *t: CF.conv_transpose2d(*t, *args), x, w, b, dtype, layout, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn", ["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("x_cl,w_cl", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("gy_cl", [False, True])
def test_memory_format_follows_input_and_weight(fn, x_cl, w_cl, gy_cl, device):
    # torch (on the CPU, the rule convext follows everywhere): channels_last output and grads when
    # input or weight is channels_last; the grad_output's format does not matter.
    x = torch.randn(2, 4, 6, 6)
    w = torch.randn(4, 4, 3, 3)
    if x_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if w_cl:
        w = w.contiguous(memory_format=torch.channels_last)
    results = []
    for f, dev in ((getattr(F, fn), "cpu"), (getattr(CF, fn), device)):
        xs, ws = x.to(dev, copy=True).requires_grad_(), w.to(dev, copy=True).requires_grad_()
        y = f(xs, ws, None, 1, 1)
        gy = torch.ones_like(y, memory_format=torch.channels_last if gy_cl else torch.contiguous_format)
        results.append((y, *torch.autograd.grad(y, (xs, ws), gy)))
    for ours, theirs in zip(results[1], results[0]):
        assert same_layout(ours, theirs)
        torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn", [CF.conv2d, CF.conv_transpose2d])
def test_grad_of_only_what_is_needed(fn, device):
    x = torch.randn(2, 4, 6, 6, device=device)
    w = torch.randn(4, 4, 3, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    gw, gb = torch.autograd.grad(fn(x, w, b).sum(), (w, b))
    assert gw.shape == w.shape and gb.shape == b.shape
    gx_only = torch.autograd.grad(fn(x.requires_grad_(), w.detach(), None).sum(), x)[0]
    assert gx_only.shape == x.shape


# --- batch shapes -----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn,w_shape", [(CF.conv2d, (6, 4, 3, 3)), (CF.conv_transpose2d, (4, 6, 3, 3))])
def test_unbatched_input(fn, w_shape, device):
    x, w = torch.randn(4, 7, 7, requires_grad=True), torch.randn(w_shape, requires_grad=True)
    xd, wd = x.detach().to(device).requires_grad_(), w.detach().to(device).requires_grad_()
    ref = getattr(F, fn.__name__)
    out = fn(xd, wd, None, 2, 1)
    assert out.dim() == 3
    torch.testing.assert_close(out.cpu(), ref(x, w, None, 2, 1), rtol=1e-4, atol=1e-4)
    g_ours = torch.autograd.grad(out.sum(), (xd, wd))
    g_ref = torch.autograd.grad(ref(x, w, None, 2, 1).sum(), (x, w))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn,w_shape", [(CF.conv2d, (6, 4, 3, 3)), (CF.conv_transpose2d, (4, 6, 3, 3))])
def test_batch_size_zero(fn, w_shape, device):
    x = torch.randn(0, 4, 7, 7, device=device, requires_grad=True)
    w = torch.randn(w_shape, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    out = fn(x, w, b, 1, 1)
    ref = getattr(F, fn.__name__)(x, w, b, 1, 1)
    assert out.shape == ref.shape
    gx, gw, gb = torch.autograd.grad(out.sum(), (x, w, b))
    assert gx.shape == x.shape
    assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_patch_tiles(layout, device):
    # A reduction long enough to span several tiles and all microkernel row blocks; with
    # channels_last, long enough to leave the channels_last forward kernel for the tiled one.
    x = make_layout(torch.randn(1, 150, 20, 19, dtype=torch.float64), layout).requires_grad_()
    w = torch.randn(37, 150, 3, 3, dtype=torch.float64, requires_grad=True)
    xd, wd = x.detach().to(device).requires_grad_(), w.detach().to(device).requires_grad_()
    out, ref = CF.conv2d(xd, wd, None, 1, 1), F.conv2d(x, w, None, 1, 1)
    torch.testing.assert_close(out.cpu(), ref)
    for a, b in zip(torch.autograd.grad(out.sum(), (xd, wd)), torch.autograd.grad(ref.sum(), (x, w))):
        torch.testing.assert_close(a.cpu(), b)


# --- padding='same' / 'valid' -----------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel,dilation", [((3, 3), 1), ((4, 2), 1), ((4, 5), (1, 2)), ((2, 2), 3)])
def test_string_padding(kernel, dilation, device):
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, *kernel, dtype=torch.float64, requires_grad=True)
    xd, wd = x.detach().to(device).requires_grad_(), w.detach().to(device).requires_grad_()
    for padding in ("same", "valid"):
        out = CF.conv2d(xd, wd, None, 1, padding, dilation)
        ref = F.conv2d(x, w, None, 1, padding, dilation)
        torch.testing.assert_close(out.cpu(), ref)
        for a, b in zip(torch.autograd.grad(out.sum(), (xd, wd)), torch.autograd.grad(ref.sum(), (x, w))):
            torch.testing.assert_close(a.cpu(), b)


# --- errors: type and message as torch's --------------------------------------------------------

def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


ERROR_CASES = {
    "channels": lambda f: f.conv2d(_x(2, 5, 8, 8), _x(4, 3, 3, 3)),
    "kernel_too_big": lambda f: f.conv2d(_x(2, 3, 2, 2), _x(4, 3, 3, 3)),
    "negative_padding": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), padding=-1),
    "zero_stride": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), stride=0),
    "zero_dilation": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), dilation=0),
    "negative_dilation": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), dilation=-1),
    "zero_groups": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), groups=0),
    "groups_divide_weight": lambda f: f.conv2d(_x(2, 6, 8, 8), _x(4, 2, 3, 3), groups=3),
    "groups_exceed_weight": lambda f: f.conv2d(_x(2, 6, 8, 8), _x(2, 1, 3, 3), groups=6),
    "input_2d": lambda f: f.conv2d(_x(8, 8), _x(4, 3, 3, 3)),
    "input_5d": lambda f: f.conv2d(_x(1, 2, 3, 8, 8), _x(4, 3, 3, 3)),
    "weight_3d": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3)),
    "bias_size": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), _x(5)),
    "bias_dtype": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), _x(4, dtype=torch.float64)),
    "weight_dtype": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3, dtype=torch.float64)),
    "stride_3": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), stride=[1, 1, 1]),
    "padding_3": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), padding=[1, 1, 1]),
    "same_strided": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), padding="same", stride=2),
    "padding_string": lambda f: f.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), padding="full"),
    "T_output_padding": lambda f: f.conv_transpose2d(_x(2, 3, 8, 8), _x(3, 4, 3, 3), stride=2, output_padding=2),
    "T_output_too_small": lambda f: f.conv_transpose2d(_x(1, 3, 1, 1), _x(3, 4, 3, 3), padding=3),
    "T_channels": lambda f: f.conv_transpose2d(_x(1, 5, 4, 4), _x(3, 4, 3, 3)),
    "T_bias": lambda f: f.conv_transpose2d(_x(1, 3, 4, 4), _x(3, 4, 3, 3), _x(3)),
    "T_string_padding": lambda f: f.conv_transpose2d(_x(1, 3, 4, 4), _x(3, 4, 3, 3), padding="same"),
    "T_input_2d": lambda f: f.conv_transpose2d(_x(4, 4), _x(3, 4, 3, 3)),
    "T_groups": lambda f: f.conv_transpose2d(_x(1, 4, 4, 4), _x(4, 4, 3, 3), groups=3),
    "T_negative_output_padding": lambda f: f.conv_transpose2d(_x(1, 3, 4, 4), _x(3, 4, 3, 3), output_padding=-1),
    "T_weight_dtype": lambda f: f.conv_transpose2d(_x(1, 3, 4, 4), _x(3, 4, 3, 3, dtype=torch.float64)),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_match_torch(case):
    with pytest.raises(Exception) as expected:
        ERROR_CASES[case](F)
    with pytest.raises(expected.type) as got:
        ERROR_CASES[case](CF)
    assert str(got.value).split("\n")[0] == str(expected.value).split("\n")[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn", [CF.conv2d, CF.conv_transpose2d])
@pytest.mark.parametrize("dtype,name", [(torch.long, "Long"), (torch.bool, "Bool")])
def test_non_floating_dtypes_are_not_implemented(fn, dtype, name, device):
    # torch also computes int64 convs on CPU (and names an internal kernel for bool); convext's
    # kernels are floating-point only and say so with the same exception type.
    with pytest.raises(NotImplementedError, match=f"\"{fn.__name__}\" not implemented for '{name}'"):
        fn(torch.ones(1, 3, 4, 4, dtype=dtype, device=device),
           torch.ones(3, 3, 3, 3, dtype=dtype, device=device))


# --- autograd to second order -----------------------------------------------------------------

GRADCHECK_CASES = [
    # (op, input shape, weight shape, bias, stride, padding, dilation, groups, output_padding)
    ("conv2d", (2, 4, 7, 6), (6, 2, 3, 2), True, (2, 1), 1, (1, 2), 2, None),
    ("conv2d", (1, 3, 6, 6), (5, 3, 1, 1), False, 1, 0, 1, 1, None),
    ("conv2d", (2, 4, 6, 7), (8, 1, 3, 3), True, 2, (1, 0), 1, 4, None),  # depthwise x2
    ("conv_transpose2d", (2, 4, 4, 5), (4, 3, 3, 2), True, (2, 3), 1, (1, 3), 2, (1, 2)),
    ("conv_transpose2d", (1, 4, 5, 4), (4, 1, 3, 3), False, 2, 1, 1, 4, 1),  # depthwise
    ("conv_transpose2d", (1, 2, 4, 4), (2, 3, 3, 3), True, 1, 1, 2, 1, 1),  # output_padding >= stride
]


def _gradcheck_fn(case, device):
    op, xs, ws, has_bias, stride, padding, dilation, groups, output_padding = case
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(shape, dtype=torch.float64, generator=gen).to(device).requires_grad_()

    x, w = leaf(*xs), leaf(*ws)
    out_channels = ws[0] if op == "conv2d" else ws[1] * groups
    b = leaf(out_channels) if has_bias else None
    if op == "conv2d":
        fn = lambda x, w, b: CF.conv2d(x, w, b, stride, padding, dilation, groups)  # noqa: E731
    else:
        fn = lambda x, w, b: CF.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)  # noqa: E731
    return fn, (x, w, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_gradcheck(case, device):
    fn, inputs = _gradcheck_fn(case, device)
    assert gradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_gradgradcheck(case, device):
    fn, inputs = _gradcheck_fn(case, device)
    assert gradgradcheck(fn, inputs)


# --- the dispatcher ops: opcheck, torch.compile, torch.export ------------------------------------

def _opcheck_samples(device):
    def leaf(*shape, channels_last=False):
        t = torch.randn(shape, device=device)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_()

    x, xcl = leaf(2, 4, 9, 8), leaf(2, 4, 9, 8, channels_last=True)
    w, wg, wd, b = leaf(6, 4, 3, 3), leaf(6, 2, 3, 3), leaf(8, 1, 3, 3), leaf(6)
    wt = leaf(4, 3, 3, 3)
    gy, gycl = leaf(2, 6, 5, 8), leaf(2, 8, 5, 4, channels_last=True)
    ops = torch.ops.convext
    return [
        (ops.conv2d.default, (x, w, b, [2, 1], [1, 1], [1, 1], 1)),
        (ops.conv2d.default, (xcl, wg, None, [1, 1], [0, 1], [2, 1], 2)),
        (ops.conv2d.default, (xcl, wd, None, [2, 2], [1, 1], [1, 1], 4)),  # depthwise x2
        (ops.conv_transpose2d.default, (x, wt, None, [2, 2], [1, 1], [1, 0], 1, [1, 1])),
        (ops.conv_transpose2d.default, (xcl, wt, leaf(3), [1, 1], [0, 0], [0, 0], 1, [1, 1])),
        (ops.conv2d_weight_grad.default, (x, gy, [3, 3], [2, 1], [1, 1], [1, 1], 1, False)),
        (ops.conv2d_weight_grad.default, (xcl, gycl, [3, 3], [2, 2], [1, 1], [1, 1], 4, True)),
        (ops.conv_bias_grad.default, (gy,)),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", range(8), ids=[
    "conv2d", "conv2d-grouped", "conv2d-depthwise", "conv_transpose2d", "conv_transpose2d-bias",
    "conv2d_weight_grad", "conv2d_weight_grad-depthwise", "conv_bias_grad"])
def test_opcheck(sample, device):
    op, args = _opcheck_samples(device)[sample]
    torch.library.opcheck(op, args)


class _SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = convext.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = convext.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.up = convext.nn.ConvTranspose2d(8, 4, 2, stride=2)

    def forward(self, x):
        return self.up(torch.relu(self.dw(self.conv(x))))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    net = _SmallNet()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    compiled = torch.compile(net, fullgraph=True, dynamic=dynamic)
    out, ref = compiled(x), net(x)
    torch.testing.assert_close(out, ref)
    g_c = torch.autograd.grad(out.square().sum(), [x, *net.parameters()])
    g_e = torch.autograd.grad(ref.square().sum(), [x, *net.parameters()])
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_torch_export():
    net = _SmallNet()
    x = torch.randn(2, 3, 16, 16)
    program = torch.export.export(net, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "convext.conv2d.default" in targets and "convext.conv_transpose2d.default" in targets
    torch.testing.assert_close(program.module()(x), net(x))


# --- CUDA: agreement with the CPU kernels, the current stream, determinism -----------------------

# (input, weight, stride, padding, dilation, groups): one case per CUDA kernel path. Depthwise
# 3x3, 5x5 and 7x7 at stride 1 and 2 (many small planes per NCHW block, planes wider and taller
# than one tile), a channel multiplier, runtime kernel sizes, channels that are not a multiple of
# the vector width, long weight-gradient reductions (several partial sums per weight); grouped and
# dense convs (the general kernels).
CUDA_CASES = [
    ((2, 16, 56, 56), (16, 1, 3, 3), 1, 1, 1, 16),
    ((2, 8, 30, 70), (8, 1, 3, 3), 2, 1, 1, 8),
    ((4, 24, 7, 7), (24, 1, 3, 3), 1, 1, 1, 24),
    ((2, 8, 21, 19), (8, 1, 5, 5), 2, 2, 1, 8),
    ((2, 8, 40, 33), (8, 1, 7, 7), 1, 3, 1, 8),
    ((2, 8, 17, 17), (16, 1, 7, 7), 2, 3, 1, 8),
    ((2, 8, 15, 16), (8, 1, 4, 3), (1, 2), (2, 1), 2, 8),
    ((2, 6, 15, 16), (6, 1, 3, 3), 3, 1, (2, 1), 6),
    ((16, 4, 30, 30), (4, 1, 3, 3), 1, 1, 1, 4),
    ((2, 12, 13, 11), (18, 4, 3, 3), (2, 1), 1, 1, 3),
    ((3, 5, 9, 10), (7, 5, 1, 1), 1, 0, 1, 1),
]


@requires_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_cuda_matches_cpu(case, dtype, layout):
    # conv2d's backward runs the three other ops, so this covers every op on both devices.
    xs, ws, stride, padding, dilation, groups = case
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(shape, generator=gen).to(dtype) for shape in (xs, ws, ws[:1]))
    results = []
    for device in ("cpu", "cuda"):
        leaves = [make_layout(x.to(device), layout), w.to(device), b.to(device)]
        leaves = [t.requires_grad_() for t in leaves]
        y = CF.conv2d(*leaves, stride, padding, dilation, groups)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        results.append([y, *torch.autograd.grad(y, leaves, gy.to(device))])
    rtol, atol = tolerances(dtype)
    for on_cpu, on_cuda in zip(*results):
        assert on_cuda.dtype == dtype and same_layout(on_cpu, on_cuda)
        # Each is within the tolerance of the exact result, so within twice it of the other.
        scale = max(1.0, on_cpu.double().abs().max().item())
        torch.testing.assert_close(on_cuda.cpu().double(), on_cpu.double(), rtol=2 * rtol,
                                   atol=2 * atol * scale)


def _depthwise_then_dense(x, weights, bias):
    """A depthwise conv (fast kernels) then a strided dense one (general kernels), and the grads
    of a loss on it w.r.t. x, the weights and the bias."""
    y = CF.conv2d(x, weights[0], bias, 1, 1, 1, x.shape[1])
    y = CF.conv2d(y, weights[1], None, 2, 1)
    return [y, *torch.autograd.grad(y.square().sum(), [x, *weights, bias])]


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@requires_cuda
def test_cuda_kernels_run_on_the_current_stream():
    # The input is written on a side stream behind a long sleep: kernels launched on any other
    # stream would read it before it is written.
    gen = torch.Generator().manual_seed(0)
    x0, w0, w1, b = (torch.randn(shape, generator=gen).cuda()
                     for shape in ((4, 16, 28, 28), (16, 1, 3, 3), (8, 16, 3, 3), (16,)))
    expected = _depthwise_then_dense(*_leaves(x0 * 2), _leaves(w0, w1), *_leaves(b))
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(100_000_000)
        x = (x0 * 2).requires_grad_()
        got = _depthwise_then_dense(x, _leaves(w0, w1), *_leaves(b))
    stream.synchronize()
    for a, e in zip(got, expected):
        assert torch.equal(a, e)


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_deterministic(layout):
    # Every kernel sums in a fixed order, so torch's deterministic mode has nothing to reject and
    # two runs give the same bits (reductions long enough to be split into partial sums).
    gen = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(8, 32, 40, 40, generator=gen), layout).cuda()
    w0, w1, b = (torch.randn(shape, generator=gen).cuda()
                 for shape in ((32, 1, 3, 3), (16, 32, 3, 3), (32,)))
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_depthwise_then_dense(*_leaves(x), _leaves(w0, w1), *_leaves(b)) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(deterministic)
    for first, second in zip(*runs):
        assert torch.equal(first, second)



# --- CUDA: the implicit-GEMM kernels ----------------------------------------------------------

# (input, weight, stride, padding, dilation, groups). Dense and grouped convs with at least 16
# output channels a group run as implicit GEMMs (tensor cores for the half types, and float32
# under TF32; register-tiled FMA for strict float32 and float64); channels a multiple of 16 bytes
# are copied in 16-byte chunks on channels_last, other layouts and counts gathered one by one.
IGEMM_CASES = [
    ((2, 32, 17, 19), (80, 32, 3, 3), 1, 1, 1, 1),  # tails in every GEMM dimension
    ((2, 64, 12, 12), (64, 32, 3, 3), 1, 1, 1, 2),  # two groups
    ((3, 24, 15, 13), (48, 24, 1, 1), 1, 1, 1, 1),  # padding past a 1x1's reach (input grad)
    ((2, 40, 16, 16), (32, 40, 3, 3), 2, 1, 1, 1),  # strided: input grad on the general kernel
    ((2, 16, 14, 14), (32, 16, 3, 2), 1, (2, 1), (2, 3), 1),  # dilation, non-square kernel
    ((1, 3, 33, 33), (64, 3, 7, 7), 2, 3, 1, 1),    # a stem: 3 channels, gathered
    ((2, 20, 9, 10), (24, 20, 3, 3), 1, 1, 1, 1),   # 20 channels: no 16-byte chunks in half
    ((4, 16, 24, 24), (16, 16, 3, 3), 1, 1, 1, 1),  # weight grad split into several chunks
    ((2, 16, 10, 10), (8, 16, 3, 3), 1, 1, 1, 1),   # 8 output channels: the general kernels
]
IGEMM_LAYOUTS = ["nchw", "nhwc", "strided", "misaligned"]


def _igemm_layout(t, layout, weight=False):
    """x (or, weight=True, w) laid out as asked: NCHW, channels_last (weights too), a strided
    view, or channels_last one element past an aligned address (cp.async's run-time fallback)."""
    if layout == "nhwc" or (layout == "misaligned" and weight):
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "misaligned":
        n, c, h, w = t.shape
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        view = buf[1:].view(n, h, w, c).permute(0, 3, 1, 2)
        view.copy_(t)
        return view
    return t.contiguous() if layout == "nchw" or weight else make_layout(t, "strided")


def _igemm_run(case, dtype, layout, seed=0, transposed=False):
    """convext on CUDA: output and grads (x, w, b) of conv2d (or, transposed, conv_transpose2d
    with the case's weight read as a transposed conv's) for fixed random inputs; and the inputs."""
    xs, ws, stride, padding, dilation, groups = case
    gen = torch.Generator().manual_seed(seed)
    if transposed:  # x has the forward's output channels; w is (Cin, Cout/g, kH, kW) of the transposed conv
        xs = (xs[0], ws[0], xs[2], xs[3])
    x, w = (torch.randn(shape, generator=gen).to(dtype) for shape in (xs, ws))
    b = torch.randn(ws[1] * groups if transposed else ws[0], generator=gen).to(dtype)
    leaves = [_igemm_layout(x.cuda(), layout), _igemm_layout(w.cuda(), layout, weight=True),
              b.cuda()]
    leaves = [t.requires_grad_() for t in leaves]
    if transposed:
        out_pad = tuple(d - 1 for d in _pair(dilation))
        fn = lambda x, w, b: CF.conv_transpose2d(x, w, b, 1, padding, out_pad, groups, dilation)  # noqa: E731
        ref_fn = lambda x, w, b: F.conv_transpose2d(x, w, b, 1, padding, out_pad, groups, dilation)  # noqa: E731
    else:
        fn = lambda x, w, b: CF.conv2d(x, w, b, stride, padding, dilation, groups)  # noqa: E731
        ref_fn = lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups)  # noqa: E731
    y = fn(*leaves)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    grads = torch.autograd.grad(y, leaves, gy.cuda())
    return [y, *grads], (x, w, b, gy), ref_fn


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _igemm_reference(inputs, ref_fn):
    """torch on the CPU in float64 from the same (rounded) inputs: output and grads."""
    x, w, b, gy = (t.double() for t in inputs)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    y = ref_fn(*leaves)
    return [y.detach(), *torch.autograd.grad(y, leaves, gy)]


@requires_cuda
@pytest.mark.parametrize("layout", IGEMM_LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", IGEMM_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}")
def test_cuda_igemm_matches_torch(case, dtype, layout):
    # float32 with TF32 off (conftest): exact float32 sums, held to float32's tolerance.
    results, inputs, ref_fn = _igemm_run(case, dtype, layout)
    for got, ref in zip(results, _igemm_reference(inputs, ref_fn)):
        assert got.dtype == dtype and got.shape == ref.shape
        assert_close_to_reference(got.cpu(), ref)


@requires_cuda
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", [IGEMM_CASES[0], IGEMM_CASES[2], IGEMM_CASES[4]],
                         ids=["tails", "1x1-padded", "dilated"])
def test_cuda_igemm_stride1_transposed(case, dtype, layout):
    # conv_transpose2d at stride 1 runs the forward implicit GEMM on its input, with the weight
    # flipped and transposed per group (output_padding: dilation - 1).
    results, inputs, ref_fn = _igemm_run(case, dtype, layout, transposed=True)
    for got, ref in zip(results, _igemm_reference(inputs, ref_fn)):
        assert got.dtype == dtype and got.shape == ref.shape
        assert_close_to_reference(got.cpu(), ref)


@requires_cuda
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", IGEMM_CASES[:3], ids=["tails", "grouped", "1x1-padded"])
def test_cuda_tf32_follows_torch_flag(case, layout):
    # allow_tf32 on: float32 through TF32 tensor cores, within TF32's error (10-bit mantissas);
    # off: exact float32, within float32's tolerance, and so different bits from the TF32 run
    # (output, input grad and weight grad; the bias grad is a plain sum either way).
    with tf32_convolutions(True):
        tf32, inputs, ref_fn = _igemm_run(case, torch.float32, layout)
    strict, _, _ = _igemm_run(case, torch.float32, layout)  # conftest: TF32 off
    for i, (a, s, ref) in enumerate(zip(tf32, strict, _igemm_reference(inputs, ref_fn))):
        scale = max(1.0, ref.abs().max().item())
        torch.testing.assert_close(a.cpu().double(), ref, rtol=1e-2, atol=1e-2 * scale)
        assert_close_to_reference(s.cpu(), ref)
        if i < 3:
            assert not torch.equal(a, s)


def _cuda_kernel_names(fn):
    """Names of the CUDA kernels fn launches (empty where the profiler cannot trace CUDA)."""
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    except RuntimeError:
        return set()
    return {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}


@requires_cuda
@pytest.mark.parametrize("dtype,tf32,kind", [
    (torch.float16, False, "mma"), (torch.bfloat16, False, "mma"), (torch.float32, True, "mma"),
    (torch.float32, False, "simt"), (torch.float64, False, "simt")], ids=str)
def test_cuda_igemm_paths_are_taken(dtype, tf32, kind):
    # Which kernels run (their names, from the profiler): the implicit GEMM of this dtype in the
    # forward and weight grad, none of the other kind's. Only the implicit-GEMM kernels are named:
    # the profiler cuts long kernel names short in the middle (the general kernels' names were
    # lost on the H100's torch 2.11).
    expect = {
        0: {f"igemm_forward_{kind}", f"igemm_weight_grad_{kind}"},
        3: {f"igemm_forward_{kind}", f"igemm_weight_grad_{kind}"},
    }
    for index, names in expect.items():
        with tf32_convolutions(tf32):
            kernels = _cuda_kernel_names(lambda: _igemm_run(IGEMM_CASES[index], dtype, "nhwc"))
        if not kernels:
            pytest.skip("the profiler saw no CUDA kernels (no CUPTI here)")
        for name in names:
            assert any(name in k for k in kernels), (name, sorted(kernels))
        other = f"_{'simt' if kind == 'mma' else 'mma'}<"
        assert not any(other in k for k in kernels), (other, sorted(kernels))


@requires_cuda
@pytest.mark.parametrize("dtype,tf32", [(torch.float16, False), (torch.bfloat16, False),
                                        (torch.float32, True), (torch.float32, False),
                                        (torch.float64, False)], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_cuda_igemm_deterministic(dtype, tf32, layout):
    # Fixed-order sums everywhere (the weight grad's split into chunks included): the same bits
    # on every run.
    case = ((4, 32, 24, 24), (48, 32, 3, 3), 1, 1, 1, 1)
    with tf32_convolutions(tf32):
        first, _, _ = _igemm_run(case, dtype, layout)
        second, _, _ = _igemm_run(case, dtype, layout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)

# --- every SIMD build of the kernels ----------------------------------------------------------

_ISA_SCRIPT = textwrap.dedent("""
    import torch, torch.nn.functional as F, convext, convext.functional as CF
    print(convext.build_info()["cpu_isa"])
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        # The last two at stride 1: depthwise in blocks of rows x vectors, and, with 16 or more
        # channels each way, Winograd in float32.
        for groups, cin, cout, stride in ((1, 12, 20, (2, 1)), (3, 12, 9, (2, 1)), (12, 12, 12, (2, 1)),
                                          (12, 12, 12, 1), (1, 20, 24, 1)):
            x = torch.randn(2, cin, 11, 13, generator=g).to(dtype).requires_grad_()
            w = torch.randn(cout, cin // groups, 3, 3, generator=g).to(dtype).requires_grad_()
            outs = []
            for f in (F.conv2d, CF.conv2d):
                xs, ws = x.double().detach().requires_grad_(), w.double().detach().requires_grad_()
                if f is CF.conv2d:
                    xs, ws = x.detach().requires_grad_(), w.detach().requires_grad_()
                y = f(xs, ws, None, stride, 1, 1, groups)
                outs.append((y, *torch.autograd.grad(y.sum(), (xs, ws))))
            for ref, ours in zip(*outs):
                tol = 1e-4 if dtype != torch.bfloat16 else 3e-2
                torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol * max(1, ref.abs().max().item()))
    # Unpadded 1x1 convs on NCHW pack 8 channels' rows of x at a time for the weight grad, where 8
    # fit one panel (generic double's panels are 4: 8 there once overran, half of gw wrong);
    # channels_last depthwise slides along rows at strides 1 and 2 (4 or 8 columns a block).
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for make, stride, groups, layout in ((lambda: torch.randn(48, 32, 1, 1, generator=g), 1, 1, torch.contiguous_format),
                                             (lambda: torch.randn(32, 1, 3, 3, generator=g), 2, 32, torch.channels_last),
                                             (lambda: torch.randn(32, 1, 3, 3, generator=g), 1, 32, torch.channels_last)):
            w = make().to(dtype).requires_grad_()
            x = torch.randn(2, 32, 11, 37, generator=g).to(dtype).contiguous(memory_format=layout).requires_grad_()
            pad = w.shape[-1] // 2
            y = CF.conv2d(x, w, None, stride, pad, 1, groups)
            gy = torch.randn(y.shape, generator=g).to(dtype)
            xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
            yd = F.conv2d(xd, wd, None, stride, pad, 1, groups)
            tol = 1e-4 if dtype != torch.bfloat16 else 3e-2
            for ours, ref in zip((y, *torch.autograd.grad(y, (x, w), gy)), (yd, *torch.autograd.grad(yd, (xd, wd), gy.double()))):
                torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol * max(1, ref.abs().max().item()))
    # channels_last float groups of 8 channels: 14 (AVX-512) or 12 columns a block, at column
    # strides 1 and 2.
    for stride in (1, (1, 2)):
        x = torch.randn(2, 16, 5, 30, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = torch.randn(16, 8, 3, 3, generator=g).requires_grad_()
        ours, ref = CF.conv2d(x, w, None, stride, 1, 1, 2), F.conv2d(x, w, None, stride, 1, 1, 2)
        for a, b in zip((ours, *torch.autograd.grad(ours.sum(), (x, w))), (ref, *torch.autograd.grad(ref.sum(), (x, w)))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # The pooling kernels are built per ISA too: both loop orders (planes' rows of several
    # vectors at strides 1 and 2), with indices, and the planar average's backward; bf16
    # (widened to float) where channels_last and global average pooling run in vectors.
    # The planar average's backward at stride 2 adds each vector into memory half of which the
    # tap before wrote: GCC 12 once lost stores there in the generic build's double (a window's
    # share missing in every fourth column of 3 x 9 planes), so its grads must match bit for bit.
    # (The grad of a sum is an expanded tensor, which takes the scalar loops: gy is dense here.)
    for W in (9, 45):
        x = torch.randn(2, 3, 3, W, generator=g, dtype=torch.float64, requires_grad=True)
        gy = torch.randn(2, 3, 1, (W - 1) // 2, generator=g, dtype=torch.float64)
        grads = [torch.autograd.grad(m.avg_pool2d(x, 3, 2), x, gy)[0] for m in (CF, F)]
        assert torch.equal(*grads), W
    for fmt in (torch.contiguous_format, torch.channels_last):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            x = torch.randn(2, 19, 13, 37, generator=g, dtype=dtype).contiguous(memory_format=fmt)
            x.requires_grad_()
            for name, args in (("max_pool2d", (3, 2, 1, 1, True, True)), ("max_pool2d", (2, 1, 1, 2, False, True)),
                               ("avg_pool2d", (3, 2, 1, True, False)), ("avg_pool2d", (3, 1, 1, False, True)),
                               ("adaptive_avg_pool2d", (1,)), ("adaptive_max_pool2d", (4, True))):
                ours, ref = getattr(CF, name)(x, *args), getattr(F, name)(x, *args)
                ours, ref = (ours if isinstance(ours, tuple) else (ours,)), (ref if isinstance(ref, tuple) else (ref,))
                ours += torch.autograd.grad(ours[0].sum(), x)
                ref += torch.autograd.grad(ref[0].sum(), x)
                for a, b in zip(ours, ref):
                    torch.testing.assert_close(a, b, **({} if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)))
    # Passes writing 4 MiB or more store around the caches, with each ISA's instructions:
    # channels_last depthwise (forward and input grad), 1x1 (and on NCHW, with a bias), max
    # pooling with indices and the average's input grad.
    x = torch.randn(2, 32, 256, 260, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    wd, w1, b1 = torch.randn(32, 1, 3, 3, generator=g), torch.randn(64, 32, 1, 1, generator=g), torch.randn(64, generator=g)
    for call in (lambda m: m.conv2d(x, wd, None, 1, 1, 1, 32), lambda m: m.conv2d(x, w1),
                 lambda m: m.conv2d(x.contiguous(), w1, b1),
                 lambda m: m.max_pool2d(x, 3, 2, 1, return_indices=True), lambda m: m.avg_pool2d(x, 2)):
        ours, ref = call(CF), call(F)
        ours, ref = (ours if isinstance(ours, tuple) else (ours,)), (ref if isinstance(ref, tuple) else (ref,))
        ours += torch.autograd.grad(ours[0].sum(), x)
        ref += torch.autograd.grad(ref[0].sum(), x)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    print("ok")
""")


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512", "avx512_bf16"])
def test_each_isa_build(isa):
    if isa not in convext.build_info()["cpu_isas_compiled"]:
        pytest.skip(f"{isa} kernels not compiled on this platform")
    env = dict(os.environ, CONVEXT_CPU_ISA=isa)
    result = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    used, status = result.stdout.split()
    # The cap never raises the ISA above what the CPU has.
    order = ["generic", "avx2", "avx512", "avx512_bf16"]
    assert order.index(used) <= order.index(isa) and status == "ok"
    if order.index(isa) <= order.index(convext.build_info()["cpu_isa"]):
        assert used == isa


def test_build_info():
    info = convext.build_info()
    assert info["torch"] == torch.__version__
    assert info["openmp"] is True
    assert isinstance(info["cuda"], bool)
    assert info["cpu_isa"] in info["cpu_isas_compiled"]
