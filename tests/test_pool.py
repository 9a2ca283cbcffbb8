"""The pooling ops against torch: values, indices, grads, memory formats, errors (every grid point
either matches torch's result or torch's error), ties and NaN, autograd to second order, opcheck,
torch.compile and export; the modules, GlobalAvgPool2d and convert(). The parity tests run on
every device (torch on the CPU is the reference); CUDA also against convext's CPU results, on a
side stream, inside a CUDA graph, and for bitwise repeatable backward passes."""
import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.modules.utils import _pair

import convext
import convext.functional as CF
import convext.nn as cnn
from utils import (DEVICES, FLOAT_DTYPES, LAYOUTS, assert_close_to_reference, make_layout,
                   same_layout)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}


def _bits(t):
    """t's bits, as integers of its width: for comparisons bit for bit (-0, NaN payloads)."""
    return t.view(BITS[t.dtype])


def _run(fn, x, kwargs):
    """fn's outputs (a tuple), and the grad of x for a fixed grad of the first output, or the
    exception it raised. kwargs: keyword arguments, or a tuple of positional ones."""
    try:
        outs = fn(x, *kwargs) if isinstance(kwargs, tuple) else fn(x, **kwargs)
    except Exception as e:  # noqa: BLE001 - compared with torch's below
        return e
    outs = outs if isinstance(outs, tuple) else (outs,)
    if not x.requires_grad:
        return outs, None
    gy = torch.randn(outs[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return outs, torch.autograd.grad(outs[0], x, gy.to(outs[0].device, outs[0].dtype))[0]


def _first_line(error: Exception) -> str:
    return re.sub(r"invalid max index: -?\d+", "invalid max index: N", str(error).split("\n")[0])


def _to(kwargs, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _check_against_torch(name, x, kwargs, layout, device="cpu"):
    """convext's `name` on x (laid out as `layout`, on `device`) against torch's on the CPU: the
    same error, or the same values (against float64), indices, grads and memory formats."""
    dtype = x.dtype
    floating = dtype.is_floating_point
    ours_in = make_layout(x.to(device), layout).requires_grad_(floating)
    ours = _run(getattr(CF, name), ours_in, _to(kwargs, device))
    native = _run(getattr(F, name), make_layout(x, layout).requires_grad_(floating), kwargs)
    if isinstance(native, Exception):
        assert isinstance(ours, type(native)), f"torch raised {native!r}, convext gave {ours!r}"
        # Which invalid index torch reports depends on its threads' race; convext reports the
        # last in plane order.
        assert _first_line(ours) == _first_line(native)
        return
    assert not isinstance(ours, Exception), f"convext raised {ours!r}"
    (outs, grad), (native_outs, native_grad) = ours, native
    outs = tuple(o.cpu() for o in outs)
    grad = grad.cpu() if grad is not None else None
    reference = native
    if dtype in (torch.bfloat16, torch.float16):
        reference = _run(getattr(F, name), x.double().requires_grad_(), kwargs)
    ref_outs, ref_grad = reference
    assert len(outs) == len(native_outs)
    for o, n, r in zip(outs, native_outs, ref_outs):
        assert o.dtype == n.dtype and o.shape == n.shape
        if o.dtype == torch.int64 and len(outs) == 2 and o is outs[1]:
            assert torch.equal(o, n)  # indices: exact
        elif floating:
            assert_close_to_reference(o, r.double())
        else:
            assert torch.equal(o, n)
        if o.dim() == 4:
            assert same_layout(o, n), (o.stride(), n.stride())
    if floating:
        assert_close_to_reference(grad, ref_grad.double())
        if grad.dim() == 4:
            assert same_layout(grad, native_grad), (grad.stride(), native_grad.stride())


def _input(dtype, shape=(2, 3, 9, 8)):
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    # Integers: small values, so windows hold ties.
    return torch.randint(-20 if dtype != torch.uint8 else 0, 20, shape, generator=gen).to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode", list(itertools.product(
    [1, 2, 3, (3, 2)], [None, 1, 2, (2, 1)], [0, 1], [1, 2], [False, True])))
def test_max_pool2d_matches_torch(kernel, stride, padding, dilation, ceil_mode, dtype, layout,
                                  device):
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
                  ceil_mode=ceil_mode, return_indices=True)
    _check_against_torch("max_pool2d", _input(dtype), kwargs, layout, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.uint8, torch.int32, torch.int64], ids=str)
def test_max_pool2d_values_only(dtype, layout, device):
    """Where no grad needs indices (no grad wanted, or grad mode off), max_pool2d makes none: its
    values and memory format equal torch's, bit for bit, over the window grid."""
    x = make_layout(_input(dtype, (2, 5, 11, 10)), layout)
    for kernel, stride, padding, dilation, ceil_mode in itertools.product(
            [1, 2, 3, (3, 2)], [None, 1, 2, (2, 1)], [0, 1], [1, 2], [False, True]):
        args = (kernel, stride, padding, dilation, ceil_mode)
        theirs, ours = _run(F.max_pool2d, x, args), _run(CF.max_pool2d, x.to(device), args)
        if isinstance(theirs, Exception):  # padding over half the kernel
            assert type(ours) is type(theirs) and _first_line(ours) == _first_line(theirs)
            continue
        (ours,), (theirs,) = ours[0], theirs[0]
        assert torch.equal(ours.cpu(), theirs) and same_layout(ours, theirs), args
    if dtype.is_floating_point:
        with torch.no_grad():
            ours = CF.max_pool2d(x.to(device).requires_grad_(), 3, 2, 1)
        assert not ours.requires_grad and torch.equal(ours.cpu(), F.max_pool2d(x, 3, 2, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), ((3, 2), 1, (1, 0))])
def test_max_pool2d_integer_dtypes(kernel, stride, padding, dtype, layout, device):
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, return_indices=True)
    _check_against_torch("max_pool2d", _input(dtype), kwargs, layout, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode,count_include_pad,divisor", list(itertools.product(
    [1, 2, 3, (3, 2)], [None, 2, (2, 1)], [0, 1], [False, True], [True, False], [None, 3, -2])))
def test_avg_pool2d_matches_torch(kernel, stride, padding, ceil_mode, count_include_pad, divisor,
                                  dtype, layout, device):
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad, divisor_override=divisor)
    _check_against_torch("avg_pool2d", _input(dtype), kwargs, layout, device)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
def test_avg_pool2d_int64(device, layout):
    # torch averages int64 with integer division; so does convext.
    _check_against_torch("avg_pool2d", _input(torch.int64), dict(kernel_size=3, stride=1, padding=1),
                         layout, device)


def test_avg_pool2d_ceil_mode_divisor():
    # The parity page's example: the divisor counts padding but not the ceil overhang.
    out = CF.avg_pool2d(torch.ones(1, 1, 1, 6), (1, 3), (1, 2), (0, 1), ceil_mode=True)
    torch.testing.assert_close(out.flatten(), torch.tensor([2 / 3, 1, 1, 0.5]))


ADAPTIVE_SIZES = [1, 2, 5, (3, None), (None, 2), (4, 7), (12, 11)]  # (12, 11): larger than input


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("output_size", ADAPTIVE_SIZES, ids=str)
@pytest.mark.parametrize("name", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
def test_adaptive_pools_match_torch(name, output_size, dtype, layout, device):
    kwargs = dict(output_size=output_size)
    if name == "adaptive_max_pool2d":
        kwargs["return_indices"] = True
    _check_against_torch(name, _input(dtype), kwargs, layout, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kernel,stride,padding,output_size", [
    (2, None, 0, None), (3, 2, 1, None), ((3, 2), (2, 1), (1, 0), None), (2, 2, 0, [9, 9]),
    (3, 2, 1, [2, 3, 9, 8]),
])
def test_max_unpool2d_matches_torch(kernel, stride, padding, output_size, dtype, layout, device):
    x = _input(dtype)
    pooled, indices = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    # torch's own backward fails on non-dense indices ("view size is not compatible"), so only
    # the values take the strided layout.
    indices = indices if layout == "strided" else make_layout(indices, layout)
    kwargs = dict(indices=indices, kernel_size=kernel, stride=stride,
                  padding=padding, output_size=output_size)
    _check_against_torch("max_unpool2d", pooled, kwargs, layout, device)


# --- ties, NaN, infinities ---------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name,kwargs", [
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1, return_indices=True)),
    ("max_pool2d", dict(kernel_size=2, dilation=2, ceil_mode=True, return_indices=True)),
    ("adaptive_max_pool2d", dict(output_size=(3, 5), return_indices=True)),
])
@pytest.mark.parametrize("fill", ["ties", "nan", "-inf"])
def test_ties_and_nan(name, kwargs, fill, layout, device):
    x = torch.zeros(2, 3, 9, 8)
    if fill == "nan":
        x = torch.randn(2, 3, 9, 8)
        x[0, 0, 2, 3] = x[1, 2, 5, 5] = x[1, 2, 5, 6] = x[0, 1, 0, 0] = float("nan")
    elif fill == "-inf":
        x[:] = float("-inf")
    _check_against_torch(name, x, kwargs, layout, device)


# --- planes with rows of several vectors ---------------------------------------------------------

def _wide_planes(dtype, rows_apart):
    """2 x 3 planes of 11 x 45 (45 columns: whole vectors and a tail at any width) with NaN, -inf
    and ties, rows `rows_apart` elements apart in memory."""
    x = torch.randn(2, 3, 11, 45, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[0, 0, 3, 7] = x[1, 2, 0, 0] = x[1, 2, 0, 2] = float("nan")
    x[0, 1, 4:7, :] = float("-inf")
    x[1, 0, 5:8, 10:30] = 0.5
    big = torch.zeros(2, 3, 11, rows_apart, dtype=dtype)
    big[..., 1:46] = x.to(dtype)
    return big[..., 1:46]


WIDE_WINDOWS = list(itertools.product([2, 3, (2, 5)], [1, 2, (1, 2), (2, 3)], [0, 1], [False, True]))


@pytest.mark.parametrize("rows_apart", [45 + 1, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", WIDE_WINDOWS, ids=str)
def test_wide_planes_bitwise(kernel, stride, padding, ceil_mode, dtype, rows_apart):
    """NCHW planes whose rows span several SIMD vectors (stride 1 and 2 run vectors of outputs; the
    window sums keep torch's order): values, indices and grads equal torch's, bit for bit (bf16:
    summed or compared in float, as torch does; a NaN maximum comes out 0x7FC0 whatever its
    payload, as torch's conversion leaves it). One exception: torch adds a bf16 input's grads from
    overlapping windows in bf16, convext in float, rounding once, so those are checked against
    exact sums. Disjoint windows (2x2 s2) write each input's grad once, with the zero torch adds
    it to: grads of -0 come out +0, inputs no window reads +0."""
    x = _wide_planes(dtype, rows_apart)
    bits = BITS[dtype]
    if dtype == torch.bfloat16:
        x.view(bits)[1, 2, 0, 2] = -63  # 0xFFC1: a negative NaN with a payload

    def gy_of(y):  # -0 in one channel: added to zero, torch's grads there are +0
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        gy[:, 1] = -0.0
        return gy

    for dilation in (1, 2):
        args = (kernel, stride, padding, dilation, ceil_mode, True)
        ours, theirs = CF.max_pool2d(x, *args), F.max_pool2d(x, *args)
        assert torch.equal(ours[1], theirs[1])
        assert torch.equal(ours[0].view(bits), theirs[0].view(bits))
        assert torch.equal(CF.max_pool2d(x, *args[:-1]).view(bits), theirs[0].view(bits))
    finite = x.nan_to_num(0.0, 0.0, 0.0).requires_grad_()
    disjoint = all(s >= k for s, k in zip(_pair(stride), _pair(kernel)))
    for count_include_pad, divisor in ((True, None), (False, None), (True, 3)):
        args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor)
        ours, theirs = CF.avg_pool2d(finite, *args), F.avg_pool2d(finite, *args)
        assert torch.equal(ours.view(bits), theirs.view(bits))
        gy = gy_of(ours)
        ours, theirs = torch.autograd.grad(ours, finite, gy)[0], torch.autograd.grad(theirs, finite, gy)[0]
        if dtype == torch.bfloat16 and not disjoint:  # within an ulp of the exact sums
            exact = finite.detach().double().requires_grad_()
            exact = torch.autograd.grad(F.avg_pool2d(exact, *args), exact, gy.double())[0]
            torch.testing.assert_close(ours.double(), exact, rtol=2 ** -8, atol=1e-6)
        else:
            assert torch.equal(ours.view(bits), theirs.view(bits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [2, 3])
def test_long_rows_nan_payloads_and_signed_zeros(kernel, stride, dtype):
    """NCHW rows of 150 columns, whose outputs go in groups of several vectors and a rest, with
    windows that hold NaNs of different payloads (torch keeps the last), a NaN before larger
    values (it stays), and runs of +0 and -0 (torch keeps the first of equals): max pooling's
    values, with and without indices (and on channels_last copies), and average pooling's equal
    torch's bit for bit."""
    bits = BITS[dtype]
    x = torch.randn(2, 3, 5, 150, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x[..., 40:60] = 0.0
    x[..., 41:60:2] = -0.0
    x[1, :, 1:4, 90:97] = -0.0
    nan = torch.tensor(float("nan"), dtype=dtype).view(bits)
    for col, payload in ((70, 1), (71, 2), (100, 3), (101, 4), (102, 5), (149, 6)):
        x.view(bits)[0, 1, 2, col] = nan | payload
    x[1, 2, :, 120] = float("nan")
    args = (kernel, stride, kernel // 2)
    theirs = F.max_pool2d(x, *args, return_indices=True)
    assert torch.equal(CF.max_pool2d(x, *args).view(bits), theirs[0].view(bits))
    x_cl = x.contiguous(memory_format=torch.channels_last)  # channels in the lanes
    assert torch.equal(CF.max_pool2d(x_cl, *args).view(bits), theirs[0].view(bits))
    ours = CF.max_pool2d(x, *args, return_indices=True)
    assert torch.equal(ours[0].view(bits), theirs[0].view(bits))
    assert torch.equal(ours[1], theirs[1])
    finite = x.nan_to_num(0.0)
    assert torch.equal(CF.avg_pool2d(finite, *args).view(bits), F.avg_pool2d(finite, *args).view(bits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", WIDE_WINDOWS, ids=str)
def test_channels_last_max_pool_bitwise(kernel, stride, padding, ceil_mode, dtype):
    """channels_last max pooling keeps each vector of channels' maxima and indices in registers
    across the window: 37 channels (whole vectors and a tail at any width) with NaN, -inf and
    ties; values and indices equal torch's, and each value is its input's bits, but a bf16 NaN
    (compared in float, stored unrounded) comes out 0x7FC0, as c10's float-to-bf16 conversion
    leaves it, whatever its sign and payload. (torch's own NaN bits here depend on the lane: its
    vector conversion gives 0xFFFF, its scalar tail 0x7FC0.)"""
    x = torch.randn(2, 37, 9, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[0, 3, 2, 5] = x[1, 20, 0, 0] = x[1, 20, 0, 1] = x[1, 36, 4, 4] = float("nan")
    x[0, 17:30, 3:6, :] = float("-inf")
    x[1, :, 5:8, 2:6] = 0.5
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    bits = BITS[dtype]
    x.view(bits)[1, 20, 0, 1] = -63 if dtype == torch.bfloat16 else x.view(bits)[1, 20, 0, 1] | 5  # NaN payloads
    for dilation in (1, 2):
        args = (kernel, stride, padding, dilation, ceil_mode, True)
        ours, theirs = CF.max_pool2d(x, *args), F.max_pool2d(x, *args)
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(ours[1], theirs[1])
        assert torch.equal(ours[0].nan_to_num(), theirs[0].nan_to_num())
        picked = x.view(bits).flatten(2).gather(2, ours[1].flatten(2)).view_as(ours[1])
        if dtype == torch.bfloat16:
            picked = picked.where(~x.isnan().flatten(2).gather(2, ours[1].flatten(2)).view_as(ours[1]), 0x7FC0)
        assert torch.equal(ours[0].view(bits), picked)
        values = CF.max_pool2d(x, *args[:-1])
        assert values.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(values.nan_to_num(), theirs[0].nan_to_num())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", WIDE_WINDOWS, ids=str)
def test_channels_last_max_pool_backward_bitwise(kernel, stride, padding, ceil_mode, dtype):
    """channels_last max pooling's input grad gathers, at each input, the grads of the windows
    around it that chose it: 37 channels (whole vectors and a tail), dilated windows, and ties
    that make overlapping windows choose one input (sums of several grads, in torch's order)."""
    x = torch.randn(2, 37, 9, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[1, :, 2:7, 3:9] = 0.5
    x = x.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    for dilation in (1, 2):
        args = (kernel, stride, padding, dilation, ceil_mode)
        ours, theirs = CF.max_pool2d(x, *args), F.max_pool2d(x, *args)
        gy = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        gx = torch.autograd.grad(ours, x, gy)[0]
        assert gx.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(gx, torch.autograd.grad(theirs, x, gy)[0])


@pytest.mark.parametrize("channels", [37, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", WIDE_WINDOWS, ids=str)
def test_channels_last_avg_pool_bitwise(kernel, stride, padding, ceil_mode, dtype, channels):
    """channels_last average pooling, bit for bit: each window summed from zero in torch's order,
    in registers for blocks of channels (300: blocks, whole vectors and a partial one; 37: no
    block)."""
    x = torch.randn(2, channels, 9, 11, dtype=dtype).contiguous(memory_format=torch.channels_last)
    bits = BITS[dtype]
    for count_include_pad, divisor in ((True, None), (False, None), (True, 3)):
        args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor)
        ours, theirs = CF.avg_pool2d(x, *args), F.avg_pool2d(x, *args)
        assert ours.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(ours.view(bits), theirs.view(bits)), args


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", WIDE_WINDOWS, ids=str)
def test_channels_last_avg_pool_backward_bitwise(kernel, stride, padding, ceil_mode, dtype):
    """channels_last average pooling's input grad, bit for bit: windows that share no input
    (2 at stride 2, or 3 apart) write each input once, others add into zeros. Grads of -0 come
    out +0, as torch adds them to zero; inputs no window reads get +0 too."""
    x = torch.randn(2, 37, 9, 11, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    bits = BITS[dtype]
    for count_include_pad, divisor in ((True, None), (False, None), (True, 3)):
        args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor)
        ours, theirs = CF.avg_pool2d(x, *args), F.avg_pool2d(x, *args)
        gy = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        gy[:, :5] = -0.0
        gy = gy.contiguous(memory_format=torch.channels_last)
        ours, theirs = torch.autograd.grad(ours, x, gy)[0], torch.autograd.grad(theirs, x, gy)[0]
        assert ours.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(ours.view(bits), theirs.view(bits)), args


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nchw_scattered_planes_streamed(dtype):
    """NCHW max pooling grads and max_unpool2d outputs of 4 MiB or more: each plane, summed (or
    assigned) in a buffer, is stored a line at a time around the caches, and planes of 255 x 255
    start off the lines, so most have a head and a tail stored through them. Float grads equal
    torch's bit for bit; bf16 ones are torch's float sums rounded once, and unpooling keeps the
    last of the values sent to one place."""
    channels = {torch.float32: 9, torch.bfloat16: 17}[dtype]
    x = torch.randn(2, channels, 255, 255, generator=torch.Generator().manual_seed(0)).to(dtype)
    y, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    ours = x.clone().requires_grad_()
    ours = torch.autograd.grad(CF.max_pool2d(ours, 3, 2, 1), ours, gy)[0]
    theirs = x.float().requires_grad_()
    theirs = torch.autograd.grad(F.max_pool2d(theirs, 3, 2, 1), theirs, gy.float())[0].to(dtype)
    assert torch.equal(ours, theirs)
    ours, theirs = (f(y, indices, 3, 2, 1, output_size=x.shape[-2:]) for f in (CF.max_unpool2d, F.max_unpool2d))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_channels_last_pooling_streamed_outputs(dtype):
    """channels_last passes writing 4 MiB or more store around the caches: max pooling's values,
    indices and input grad, and the input grad of averages over windows that share no input (stride 3 leaves
    inputs no window reads, zeros). Bit for bit against torch."""
    x = torch.randn(2, 32, 256, 260, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    ours, theirs = CF.max_pool2d(x, 3, 2, 1, return_indices=True), F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    bits = BITS[dtype]
    gy = torch.randn(ours[0].shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ours, theirs = torch.autograd.grad(ours[0], x, gy)[0], torch.autograd.grad(theirs[0], x, gy)[0]
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ours.view(bits), theirs.view(bits))
    for stride in (2, 3):
        ours, theirs = CF.avg_pool2d(x, 2, stride), F.avg_pool2d(x, 2, stride)
        gy = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        gy = gy.contiguous(memory_format=torch.channels_last)
        ours, theirs = torch.autograd.grad(ours, x, gy)[0], torch.autograd.grad(theirs, x, gy)[0]
        assert ours.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(ours.view(bits), theirs.view(bits))


@pytest.mark.parametrize("where", ["random", "first row", "last row", "descending"])
def test_channels_last_scatter_add_any_index_order(where):
    """max pooling's channels_last backward zeroes an image's rows only as indices first reach
    them: indices in any order (from a user), rows no index reaches, and a sum per element equal
    to scatter_add's (integer values: exact in any order)."""
    gen = torch.Generator().manual_seed(0)
    N, C, H, W, OH, OW = 2, 19, 7, 6, 4, 5
    values = torch.randint(-8, 8, (N, C, OH, OW), generator=gen).double()
    indices = {"random": torch.randint(0, H * W, (N, C, OH, OW), generator=gen),
               "first row": torch.randint(0, W, (N, C, OH, OW), generator=gen),
               "last row": torch.randint((H - 1) * W, H * W, (N, C, OH, OW), generator=gen),
               "descending": torch.arange(H * W - 1, H * W - 1 - OH * OW, -1).view(OH, OW).expand(N, C, OH, OW)}[where]
    cl = torch.channels_last
    ours = torch.ops.convext.pool_scatter_add(values.contiguous(memory_format=cl),
                                              indices.contiguous(memory_format=cl), [H, W], True)
    ref = torch.zeros(N, C, H * W, dtype=torch.float64).scatter_add_(2, indices.flatten(2), values.flatten(2))
    assert ours.is_contiguous(memory_format=cl)
    assert torch.equal(ours, ref.view(N, C, H, W))


# --- batch shapes -------------------------------------------------------------------------------

POOL_CALLS = [
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1, return_indices=True)),
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("adaptive_avg_pool2d", dict(output_size=(3, 2))),
    ("adaptive_avg_pool2d", dict(output_size=1)),
    ("adaptive_max_pool2d", dict(output_size=(3, 2), return_indices=True)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,kwargs", POOL_CALLS)
@pytest.mark.parametrize("shape", [(3, 9, 8), (0, 3, 9, 8)], ids=["unbatched", "batch0"])
def test_batch_shapes(name, kwargs, shape, device):
    _check_against_torch(name, _input(torch.float32, shape), kwargs, "contiguous", device)


# --- errors -------------------------------------------------------------------------------------

def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


_IDX = torch.zeros(1, 1, 4, 4, dtype=torch.long)

ERROR_CASES = {
    "max_kernel0": lambda f: f.max_pool2d(_x(1, 2, 5, 5), 0),
    "max_stride0": lambda f: f.max_pool2d(_x(1, 2, 5, 5), 2, 0),
    "max_dilation0": lambda f: f.max_pool2d(_x(1, 2, 5, 5), 2, 1, 0, 0),
    "max_pad_half": lambda f: f.max_pool2d(_x(1, 2, 5, 5), 3, 1, 2),
    "max_pad_negative": lambda f: f.max_pool2d(_x(1, 2, 5, 5), 3, 1, -1),
    "max_pad_dilated": lambda f: f.max_pool2d(_x(1, 2, 9, 9), 2, 1, 2, 3),
    "max_2d": lambda f: f.max_pool2d(_x(5, 5), 2),
    "max_5d": lambda f: f.max_pool2d(_x(1, 1, 1, 5, 5), 2),
    "max_channels0": lambda f: f.max_pool2d(_x(2, 0, 8, 8), 2),
    "max_height0_cl": lambda f: f.max_pool2d(_x(1, 2, 0, 4).contiguous(memory_format=torch.channels_last), 2),
    "max_too_small": lambda f: f.max_pool2d(_x(1, 2, 2), 3),
    "max_bool": lambda f: f.max_pool2d(_x(1, 2, 4, 4, dtype=torch.bool), 2),
    "max_kernel3": lambda f: f.max_pool2d(_x(1, 2, 4, 4), (2, 2, 2)),
    "max_stride3": lambda f: f.max_pool2d(_x(1, 2, 4, 4), 2, (2, 2, 2)),
    "avg_divisor0": lambda f: f.avg_pool2d(_x(1, 2, 4, 4), 2, divisor_override=0),
    "avg_kernel0": lambda f: f.avg_pool2d(_x(1, 2, 4, 4), 0),
    "avg_pad_half": lambda f: f.avg_pool2d(_x(1, 2, 4, 4), 2, 1, 2),
    "avg_too_small": lambda f: f.avg_pool2d(_x(1, 2, 2), 3),
    "avg_2d": lambda f: f.avg_pool2d(_x(4, 4), 2),
    "avg_bool": lambda f: f.avg_pool2d(_x(1, 2, 4, 4, dtype=torch.bool), 2),
    "avg_int32": lambda f: f.avg_pool2d(_x(1, 2, 4, 4, dtype=torch.int32), 2),
    "aavg_2d": lambda f: f.adaptive_avg_pool2d(_x(8, 8), 2),
    "aavg_2d_tuple": lambda f: f.adaptive_avg_pool2d(_x(8, 8), (2, 2)),
    "aavg_1d": lambda f: f.adaptive_avg_pool2d(_x(8), 2),
    "aavg_len3": lambda f: f.adaptive_avg_pool2d(_x(1, 2, 8, 8), (2, 2, 2)),
    "aavg_negative": lambda f: f.adaptive_avg_pool2d(_x(1, 2, 8, 8), (-1, 2)),
    "aavg_height0": lambda f: f.adaptive_avg_pool2d(_x(1, 2, 0, 8), 2),
    "aavg_int": lambda f: f.adaptive_avg_pool2d(_x(1, 2, 4, 4, dtype=torch.long), 2),
    "amax_2d": lambda f: f.adaptive_max_pool2d(_x(8, 8), 2),
    "amax_len0": lambda f: f.adaptive_max_pool2d(_x(1, 2, 8, 8), ()),
    "amax_negative": lambda f: f.adaptive_max_pool2d(_x(1, 1, 1, 1), (-1, 0)),
    "amax_height0": lambda f: f.adaptive_max_pool2d(_x(1, 2, 0, 8), 2),
    "amax_int": lambda f: f.adaptive_max_pool2d(_x(1, 2, 4, 4, dtype=torch.long), 2),
    "unpool_indices_shape": lambda f: f.max_unpool2d(_x(1, 1, 4, 4), _IDX[..., :1], 3, 2),
    "unpool_output_size": lambda f: f.max_unpool2d(_x(1, 1, 4, 4), _IDX, 2, output_size=[20, 20]),
    "unpool_indices_dtype": lambda f: f.max_unpool2d(_x(1, 1, 4, 4), _IDX.int(), 2),
    "unpool_index_too_big": lambda f: f.max_unpool2d(_x(1, 1, 4, 4), _IDX + 100, 2),
    "unpool_index_negative": lambda f: f.max_unpool2d(_x(1, 1, 4, 4), _IDX - 1, 2),
    "unpool_2d": lambda f: f.max_unpool2d(_x(4, 4), _IDX[0, 0], 2),
    "unpool_channels0": lambda f: f.max_unpool2d(_x(1, 0, 4, 4), _IDX[:, :0], 2),
    "unpool_int": lambda f: f.max_unpool2d(_x(1, 1, 4, 4, dtype=torch.long), _IDX, 2),
}


# Cases whose message torch changed before 2.13 (the spec): there, torch's message is not convext's.
_MESSAGES_SINCE_2_13 = {"avg_kernel0"}  # torch 2.11: "integer out of range"


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_match_torch(case):
    if case in _MESSAGES_SINCE_2_13 and torch.__version__ < (2, 13):
        pytest.skip("torch before 2.13 words this error differently; convext follows 2.13")
    with pytest.raises(Exception) as expected:
        ERROR_CASES[case](F)
    with pytest.raises(expected.type) as got:
        ERROR_CASES[case](CF)
    assert str(got.value).split("\n")[0] == str(expected.value).split("\n")[0]


# --- autograd to second order -----------------------------------------------------------------

def _distinct(*shape):
    """Float64 values with no ties (max pooling is not differentiable at ties)."""
    n = torch.Size(shape).numel()
    return (torch.randperm(n, generator=torch.Generator().manual_seed(0)).double() / n).reshape(shape)


GRAD_CASES = [
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("max_pool2d", dict(kernel_size=(2, 3), stride=1, dilation=2, ceil_mode=True)),
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("avg_pool2d", dict(kernel_size=2, divisor_override=-2)),
    ("adaptive_avg_pool2d", dict(output_size=(3, 4))),
    ("adaptive_avg_pool2d", dict(output_size=1)),
    ("adaptive_max_pool2d", dict(output_size=(4, 3))),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,kwargs", GRAD_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("check", [gradcheck, gradgradcheck], ids=["gradcheck", "gradgradcheck"])
def test_autograd(name, kwargs, check, device):
    x = _distinct(2, 2, 7, 6).to(device).requires_grad_()
    assert check(lambda x: getattr(CF, name)(x, **kwargs), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check", [gradcheck, gradgradcheck], ids=["gradcheck", "gradgradcheck"])
def test_autograd_max_unpool2d(check, device):
    pooled, indices = F.max_pool2d(_distinct(2, 2, 8, 6), 2, return_indices=True)
    pooled, indices = pooled.to(device), indices.to(device)
    assert check(lambda v: CF.max_unpool2d(v, indices, 2), (pooled.requires_grad_(),))


# --- dispatcher: opcheck, compile, export -------------------------------------------------------

def _opcheck_samples(device):
    def on(t):
        return t.detach().to(device).requires_grad_(t.dtype.is_floating_point)

    x = on(_distinct(2, 3, 9, 8).float())
    xcl = on(x.contiguous(memory_format=torch.channels_last))
    pooled, indices = F.max_pool2d(x.detach().cpu(), 2, return_indices=True)
    pooled, indices = on(pooled), indices.to(device)
    # The 9x8 input pooled by 3, stride 2, pad 1, and max pooling's indices for it.
    gy = on(torch.randn(2, 3, 5, 4))
    _, max_indices = F.max_pool2d(x.detach().cpu(), 3, 2, 1, return_indices=True)
    max_indices = max_indices.to(device)
    cl = torch.channels_last
    ops = torch.ops.convext
    return [
        (ops.max_pool2d_with_indices.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], False)),
        (ops.max_pool2d_with_indices.default, (xcl, [2, 3], [1, 2], [0, 1], [2, 1], True)),
        (ops.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], False)),
        (ops.max_pool2d.default, (xcl.detach(), [2, 3], [1, 2], [0, 1], [2, 1], True)),
        (ops.adaptive_max_pool2d.default, (xcl, [4, 3])),
        (ops.avg_pool2d.default, (x, [3, 3], [2, 2], [1, 1], True, False, None)),
        (ops.avg_pool2d.default, (xcl, [2, 2], [2, 2], [0, 0], False, True, 3)),
        (ops.avg_pool2d_backward.default, (gy, [9, 8], [3, 3], [2, 2], [1, 1], False, True, None, False)),
        (ops.adaptive_avg_pool2d.default, (x, [4, 5])),
        (ops.adaptive_avg_pool2d.default, (xcl, [1, 1])),
        (ops.adaptive_avg_pool2d_backward.default, (gy, [9, 8], True)),
        (ops.max_unpool2d.default, (pooled, indices, [9, 8])),
        (ops.max_pool2d_backward.default,
         (gy, max_indices, [9, 8], [3, 3], [2, 2], [1, 1], [1, 1], False, False)),
        (ops.max_pool2d_backward.default,
         (on(gy.contiguous(memory_format=cl)), max_indices.contiguous(memory_format=cl), [9, 8],
          [3, 3], [2, 2], [1, 1], [1, 1], False, True)),
        (ops.pool_scatter_add.default, (on(pooled), indices, [9, 8], False)),
        (ops.pool_gather.default, (x, indices)),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", range(len(_opcheck_samples("cpu"))),
                         ids=[str(op) for op, _ in _opcheck_samples("cpu")])
def test_opcheck(sample, device):
    torch.library.opcheck(*_opcheck_samples(device)[sample])


class _PoolNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = cnn.Conv2d(3, 8, 3, padding=1)
        self.pool = cnn.MaxPool2d(3, 2, 1, return_indices=True)
        self.unpool = cnn.MaxUnpool2d(3, 2, 1)
        self.avg = cnn.AvgPool2d(2, ceil_mode=True)
        self.adaptive = cnn.AdaptiveMaxPool2d((3, 3))
        self.head = cnn.GlobalAvgPool2d(flatten=True)

    def forward(self, x):
        y, indices = self.pool(self.conv(x))
        y = self.unpool(y, indices, output_size=x.shape[-2:])
        return self.head(self.adaptive(self.avg(y))) + cnn.AdaptiveAvgPool2d(1)(y).flatten(1)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    net = _PoolNet()
    x = torch.randn(2, 3, 16, 15, requires_grad=True)
    out, ref = torch.compile(net, fullgraph=True, dynamic=dynamic)(x), net(x)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out.square().sum(), x), torch.autograd.grad(ref.square().sum(), x)):
        torch.testing.assert_close(a, b)


def test_torch_export():
    net = _PoolNet()
    x = torch.randn(2, 3, 16, 15)
    program = torch.export.export(net, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"convext.max_pool2d_with_indices.default", "convext.max_unpool2d.default",
            "convext.adaptive_avg_pool2d.default"} <= targets
    torch.testing.assert_close(program.module()(x), net(x))


# --- modules and convert -----------------------------------------------------------------------

MODULES = [
    (torch.nn.MaxPool2d, cnn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True)),
    (torch.nn.MaxPool2d, cnn.MaxPool2d, dict(kernel_size=(2, 3), return_indices=True)),
    (torch.nn.AvgPool2d, cnn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    (torch.nn.AvgPool2d, cnn.AvgPool2d, dict(kernel_size=2, divisor_override=3)),
    (torch.nn.AdaptiveAvgPool2d, cnn.AdaptiveAvgPool2d, dict(output_size=(None, 3))),
    (torch.nn.AdaptiveMaxPool2d, cnn.AdaptiveMaxPool2d, dict(output_size=4, return_indices=True)),
]


@pytest.mark.parametrize("torch_cls,ours_cls,kwargs", MODULES, ids=lambda v: getattr(v, "__name__", ""))
def test_module_matches_torch(torch_cls, ours_cls, kwargs):
    theirs, ours = torch_cls(**kwargs), ours_cls(**kwargs)
    assert isinstance(ours, torch_cls) and repr(ours) == repr(theirs)
    x = torch.randn(2, 3, 9, 8)
    for xs in (x, x[0]):
        out, ref = ours(xs), theirs(xs)
        for o, r in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
            torch.testing.assert_close(o, r)


def test_max_unpool_module():
    x = torch.randn(2, 3, 9, 8)
    pooled, indices = torch.nn.MaxPool2d(2, return_indices=True)(x)
    theirs, ours = torch.nn.MaxUnpool2d(2), cnn.MaxUnpool2d(2)
    assert repr(ours) == repr(theirs)
    torch.testing.assert_close(ours(pooled, indices, output_size=x.shape), theirs(pooled, indices, output_size=x.shape))


@pytest.mark.parametrize("flatten", [False, True])
def test_global_avg_pool(flatten):
    layer = cnn.GlobalAvgPool2d(flatten=flatten)
    assert repr(layer) == f"GlobalAvgPool2d(flatten={flatten})"
    for x in (torch.randn(4, 16, 7, 7), torch.randn(4, 16, 7, 7).contiguous(memory_format=torch.channels_last),
              torch.randn(16, 7, 7)):
        expected = x.mean((-2, -1), keepdim=not flatten)
        torch.testing.assert_close(layer(x), expected)


# Global average pooling is torch's mean, bit for bit: its sum's order (cascades carried every 16
# terms, four interleaved, in 256-bit vectors, then the tail and the lanes) over plane sizes under a
# vector, over 16 x 4 vectors, over 256 and 4096 positions, channels_last channel counts under 8,
# of blocks of 32 and past them, planes that are rows of a wider tensor, columns, H and W swapped.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "rows", "strided"])
@pytest.mark.parametrize("shape", [(2, 5, 1, 3), (2, 3, 7, 7), (1, 13, 9, 8), (2, 40, 17, 19),
                                   (1, 70, 33, 40), (1, 40, 70, 70), (2, 6, 1, 1), (1, 9, 70, 1)], ids=str)
def test_global_avg_pool_bitwise(shape, layout, dtype):
    x = torch.randn(*shape[:3], shape[3] + 3, dtype=torch.float64).to(dtype)
    x = x[..., :shape[3]] if layout == "rows" else make_layout(x[..., :shape[3]], layout)
    assert torch.equal(_bits(CF.adaptive_avg_pool2d(x, 1)), _bits(F.adaptive_avg_pool2d(x, 1)))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_global_avg_pool_single_large_plane_bitwise(threads):
    # One plane of 32768 values or more: torch sums a chunk per thread, then the chunks' sums.
    x = torch.randn(1, 1, 150, 301)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for plane in (x[..., :300], x[..., :300].contiguous()):
            assert torch.equal(CF.adaptive_avg_pool2d(plane, 1), F.adaptive_avg_pool2d(plane, 1))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("x_layout,gy_layout", [("contiguous", "contiguous"), ("channels_last", "channels_last"),
                                                ("channels_last", "contiguous"), ("contiguous", "channels_last")])
@pytest.mark.parametrize("channels", [3, 8, 13, 37])
def test_adaptive_avg_pool_bitwise(channels, x_layout, gy_layout, dtype):
    """Values and grads bit for bit: torch divides each window's sum (and grad) by its height and
    then by its width, except where its channels_last kernel holds channels in whole 256-bit
    vectors, which it divides by their product at once; gy's layout picks the grads' kernel (bf16
    grads: summed in float and rounded once, so within an ulp of the exact ones)."""
    x = make_layout(torch.randn(2, channels, 19, 17, dtype=torch.float64).to(dtype), x_layout).requires_grad_()
    ours, theirs = CF.adaptive_avg_pool2d(x, (5, 7)), F.adaptive_avg_pool2d(x, (5, 7))
    assert torch.equal(_bits(ours), _bits(theirs))
    gy = make_layout(torch.randn(ours.shape, dtype=torch.float64).to(dtype), gy_layout)
    ours, theirs = torch.autograd.grad(ours, x, gy)[0], torch.autograd.grad(theirs, x, gy)[0]
    if dtype == torch.bfloat16:  # (torch rounds each step to bf16)
        exact = x.detach().double().requires_grad_()
        exact = torch.autograd.grad(F.adaptive_avg_pool2d(exact, (5, 7)), exact, gy.double())[0]
        torch.testing.assert_close(ours.double(), exact, rtol=2 ** -8, atol=1e-6)
    else:
        assert torch.equal(_bits(ours), _bits(theirs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name,kwargs", [
    ("adaptive_avg_pool2d", dict(output_size=1)),
    ("avg_pool2d", dict(kernel_size=(4, 5))),
    ("avg_pool2d", dict(kernel_size=(5, 5), stride=(3, 2), padding=(1, 0), count_include_pad=False)),
], ids=str)
def test_whole_plane_average_grads_signed_zeros(name, kwargs, layout, dtype):
    """Averages over whole planes, bit for bit with -0 grads: torch's avg_pool2d adds its grads
    into zeros (-0 comes out +0), its adaptive_avg_pool2d writes them (-0 stays). avg_pool2d's
    values too: torch sums its window in order (a mean's sum, in another order, differed in the
    last bit)."""
    bits = BITS[dtype]
    x = make_layout(torch.randn(2, 3, 4, 5, dtype=dtype), layout).requires_grad_()
    ours, theirs = getattr(CF, name)(x, **kwargs), getattr(F, name)(x, **kwargs)
    assert ours.shape[-2:] == (1, 1)
    if name == "avg_pool2d":
        assert torch.equal(ours.view(bits), theirs.view(bits))
    gy = torch.randn(ours.shape, dtype=dtype)
    gy[:, 1] = -0.0
    ours, theirs = torch.autograd.grad(ours, x, gy)[0], torch.autograd.grad(theirs, x, gy)[0]
    assert torch.equal(ours.view(bits), theirs.view(bits))


def test_convert_swaps_pools():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.MaxPool2d(2),
        torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.AdaptiveMaxPool2d(2)),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    reference = torch.nn.Sequential(*[m for m in model])  # the same layers, before the swap
    x = torch.randn(2, 3, 20, 20)
    expected = reference(x)
    convext.nn.convert(model)
    assert [type(m) for m in model.modules()][1:] == [
        cnn.Conv2d, cnn.MaxPool2d, torch.nn.Sequential, cnn.AvgPool2d, cnn.AdaptiveMaxPool2d,
        cnn.AdaptiveAvgPool2d, torch.nn.Flatten]
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


# --- CUDA: against convext's CPU kernels, streams, graphs, determinism, errors ------------------

CUDA_CASES = [
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1, return_indices=True)),
    ("max_pool2d", dict(kernel_size=(2, 3), stride=(2, 1), dilation=2, ceil_mode=True, return_indices=True)),
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("avg_pool2d", dict(kernel_size=2)),
    ("adaptive_avg_pool2d", dict(output_size=1)),
    ("adaptive_avg_pool2d", dict(output_size=(5, 3))),
    ("adaptive_max_pool2d", dict(output_size=(5, 3), return_indices=True)),
]
# 16 channels and 8x8 planes take the vectorised channels_last and global-average paths, 3 channels
# and 7x7 planes the scalar ones; 19x18 planes make windows overlap unevenly.
CUDA_SHAPES = [(4, 16, 8, 8), (2, 3, 7, 7), (3, 16, 19, 18)]


@requires_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=str)
@pytest.mark.parametrize("name,kwargs", CUDA_CASES, ids=str)
def test_cuda_matches_cpu(name, kwargs, shape, dtype, layout):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    results = []
    for device in ("cpu", "cuda"):
        xd = make_layout(x.to(device), layout).requires_grad_()
        outs = getattr(CF, name)(xd, **kwargs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        gy = torch.randn(outs[0].shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        grad, = torch.autograd.grad(outs[0], xd, gy)
        results.append([t.cpu() for t in (*outs, grad)])
    for ours, cpu in zip(*reversed(results)):
        assert ours.dtype == cpu.dtype and same_layout(ours, cpu)
        if ours.dtype == torch.int64:
            assert torch.equal(ours, cpu)
        else:
            torch.testing.assert_close(ours, cpu)


@requires_cuda
def test_cuda_wide_offsets():
    # A view spanning more than 2^31 elements takes the 64-bit index kernels.
    big = torch.empty(2**31 + 128, dtype=torch.int8, device="cuda")
    x = big.as_strided((2, 3, 5, 4), (2**31, 32, 4, 1))
    x.copy_(torch.randint(-100, 100, (2, 3, 5, 4), dtype=torch.int8))
    out, indices = CF.max_pool2d(x, 2, 1, return_indices=True)
    expected, expected_indices = F.max_pool2d(x.cpu(), 2, 1, return_indices=True)
    assert torch.equal(out.cpu(), expected) and torch.equal(indices.cpu(), expected_indices)


def _pool_everything(x):
    """Every pooling op and backward on x (4-D, requires grad): outputs and grads."""
    y, indices = CF.max_pool2d(x, 3, 2, 1, return_indices=True)
    z = CF.adaptive_max_pool2d(x, (5, 4)) + CF.adaptive_avg_pool2d(x, (5, 4))
    u = CF.max_unpool2d(y, indices, 3, 2, 1, output_size=x.shape[-2:])
    loss = (y.square().sum() + z.square().sum() + CF.avg_pool2d(u, 2).square().sum()
            + CF.adaptive_avg_pool2d(x, 1).square().sum())
    grad, = torch.autograd.grad(loss, x, create_graph=True)
    gradgrad, = torch.autograd.grad(grad.square().sum(), x)
    return y, indices, z, u, grad, gradgrad


@requires_cuda
def test_cuda_non_default_stream():
    # The ops must run on the current stream: behind a long sleep on a side stream, the input is
    # only written late, so a kernel on any other stream would read it too early.
    x = torch.randn(4, 16, 20, 19)
    expected = _pool_everything(x.cuda().requires_grad_())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        xs = torch.zeros(x.shape, device="cuda")
        torch.cuda._sleep(50_000_000)
        xs.copy_(x, non_blocking=True)
        got = _pool_everything(xs.requires_grad_())
    side.synchronize()
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


@requires_cuda
def test_cuda_graph_capture():
    # The index checks of the indexed ops must not wait for the stream inside a graph capture.
    x = torch.randn(2, 8, 12, 11, device="cuda")
    pooled, indices = CF.max_pool2d(x, 2, return_indices=True)

    def run():
        return (CF.max_unpool2d(pooled, indices, 2, output_size=x.shape[-2:]),
                torch.ops.convext.pool_scatter_add(pooled, indices, [12, 11], False),
                torch.ops.convext.pool_gather(x, indices), CF.avg_pool2d(x, 3, 2, 1))

    expected = run()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = run()
    graph.replay()
    torch.cuda.synchronize()
    for o, e in zip(outs, expected):
        assert torch.equal(o, e)


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_backward_is_deterministic(layout):
    # Integer-valued inputs: windows tie, so grads pile up on shared elements, where a racing sum
    # would differ between runs.
    x = torch.randint(0, 3, (8, 32, 23, 22)).float().cuda()
    x = make_layout(x, layout)
    torch.use_deterministic_algorithms(True)
    try:
        first = _pool_everything(x.clone().requires_grad_())
        second = _pool_everything(x.clone().requires_grad_())
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@requires_cuda
@pytest.mark.parametrize("op", ["max_unpool2d", "pool_scatter_add", "pool_gather"])
def test_cuda_invalid_index_error(op):
    # The CPU's error (the last invalid index in plane order), without a device-side assert: the
    # context stays usable.
    values = torch.randn(2, 3, 4, 4)
    indices = torch.randint(0, 64, (2, 3, 4, 4))
    indices[0, 1, 2, 3], indices[1, 0, 0, 1], indices[1, 0, 3, 0] = -5, 100, 64
    calls = {
        "max_unpool2d": lambda v, i: CF.max_unpool2d(v, i, 2),
        "pool_scatter_add": lambda v, i: torch.ops.convext.pool_scatter_add(v, i, [8, 8], False),
        "pool_gather": lambda v, i: torch.ops.convext.pool_gather(torch.randn(2, 3, 8, 8, device=v.device), i),
    }
    with pytest.raises(RuntimeError) as on_cpu:
        calls[op](values, indices)
    with pytest.raises(RuntimeError) as on_cuda:
        calls[op](values.cuda(), indices.cuda())
    assert str(on_cuda.value).split("\n")[0] == str(on_cpu.value).split("\n")[0]
    assert "Found an invalid max index: 64 (output volumes are of size 8x8)" in str(on_cuda.value)
    assert torch.equal(CF.max_pool2d(values.cuda(), 2).cpu(), CF.max_pool2d(values, 2))


@requires_cuda
def test_cuda_device_mismatch():
    pooled, indices = F.max_pool2d(torch.randn(1, 2, 8, 8), 2, return_indices=True)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        CF.max_unpool2d(pooled.cuda(), indices, 2)
