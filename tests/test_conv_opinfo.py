"""convext against PyTorch's own OpInfo samples and error inputs for conv2d and conv_transpose2d:
same values, grads, memory formats and errors as torch.nn.functional."""
import warnings

import pytest
import torch
from torch.testing._internal.common_methods_invocations import op_db

import convext.functional as CF

OP_NAMES = ("nn.functional.conv2d", "nn.functional.conv_transpose2d")
OPS = [op for op in op_db if op.name in OP_NAMES and op.variant_test_name == ""]
# int64 and complex are deliberately unsupported by convext (NotImplementedError).
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# (rtol, atol) for the high precision dtypes, compared with torch at the same dtype.
EXACT_TOL = {torch.float64: (1e-7, 1e-7), torch.float32: (1e-4, 1e-4)}
# bf16/fp16 are compared with float64 on the same (exactly upcast) inputs: the error is one or two
# roundings to dtype (torch itself rounds before adding the bias), i.e. a few ulps of the largest
# value, so atol scales with the reference's magnitude; torch's own kernels stay below 0.6e-2
# (bf16) and 0.8e-3 (fp16) on these samples.
LOWP_TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}
LAYOUTS = ("sampled", "cl_input", "cl_weight")
NAMES = ("output", "grad_input", "grad_weight", "grad_bias")  # bias, when given, comes last


def _convext_fn(op):
    return getattr(CF, op.name.rsplit(".", 1)[1])


def _samples():
    params = []
    for op in OPS:
        for dtype in DTYPES:
            if dtype not in op.supported_dtypes("cpu"):
                continue
            # Samples are random: a fixed seed keeps each id's sample the same between runs.
            torch.manual_seed(0)
            for i, sample in enumerate(op.sample_inputs("cpu", dtype, requires_grad=True)):
                name = op.name.rsplit(".", 1)[1]
                # The samples are all contiguous: channels_last variants give the memory format
                # check something to decide (torch follows a channels_last input or weight).
                layouts = LAYOUTS if sample.input.dim() == 4 else LAYOUTS[:1]
                params += [pytest.param(op, dtype, sample, layout,
                                        id=f"{name}-{str(dtype)[6:]}-sample{i}-{layout}")
                           for layout in layouts]
    return params


def _leaves(sample, layout, dtype=None):
    """Fresh leaves per side so that grads from torch and convext never accumulate together."""
    def leaf(t, channels_last=False):
        if not isinstance(t, torch.Tensor):
            return t
        copy = t.detach().to(dtype or t.dtype).clone()
        if channels_last:
            copy = copy.contiguous(memory_format=torch.channels_last)
        return copy.requires_grad_(t.requires_grad)
    weight, *rest = sample.args
    return (leaf(sample.input, layout == "cl_input"),
            [leaf(weight, layout == "cl_weight"), *map(leaf, rest)], sample.kwargs)


def _run(fn, x, args, kwargs, dtype):
    with warnings.catch_warnings():
        # padding='same' with even kernels warns in torch (and in convext): expected here.
        warnings.simplefilter("ignore", UserWarning)
        out = fn(x, *args, **kwargs)
    # The same grad_output on every side: drawn in float64 and rounded to the sample's dtype, so
    # the float64 reference sees exactly what the low precision runs see.
    grad_output = torch.randn(out.shape, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(1)).to(dtype)
    wrt = [t for t in [x, *args] if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, wrt, grad_output.to(out.dtype))
    return out, list(grads)


def _formats(t):
    return t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("op,dtype,sample,layout", _samples())
def test_sample_matches_torch(op, dtype, sample, layout):
    torch_fn, ours = op.op, _convext_fn(op)
    got, got_grads = _run(ours, *_leaves(sample, layout), dtype)
    assert got.dtype == dtype and all(g.dtype == dtype for g in got_grads)

    if dtype in EXACT_TOL:
        rtol, atol = EXACT_TOL[dtype]
        expected, expected_grads = _run(torch_fn, *_leaves(sample, layout), dtype)
        pairs = list(zip([got, *got_grads], [expected, *expected_grads]))
        for i, (g, e) in enumerate(pairs):
            torch.testing.assert_close(g, e, rtol=rtol, atol=atol,
                                       msg=lambda m: f"{NAMES[i]}: {m}")
            # Unbatched (3-D) tensors have no 4-D memory format to speak of; for 4-D ones the
            # predicates coincide wherever size-1 dims make the formats ambiguous.
            if e.dim() == 4:
                assert _formats(g) == _formats(e), (
                    f"{NAMES[i]} memory format: expected {e.stride()}, got {g.stride()}")
    else:
        reference = _leaves(sample, layout, torch.float64)
        expected, expected_grads = _run(torch_fn, *reference, dtype)
        tol = LOWP_TOL[dtype]
        for i, (g, e) in enumerate(zip([got, *got_grads], [expected, *expected_grads])):
            scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
            torch.testing.assert_close(g.double(), e, rtol=tol, atol=tol * scale,
                                       msg=lambda m: f"{NAMES[i]}: {m}")


def _error_inputs():
    params = []
    for op in OPS:
        if op.error_inputs_func is None:  # conv_transpose2d has none in torch's OpInfo
            continue
        for i, error_input in enumerate(op.error_inputs(torch.device("cpu"))):
            name = op.name.rsplit(".", 1)[1]
            params.append(pytest.param(op, error_input, id=f"{name}-error{i}"))
    return params


@pytest.mark.parametrize("op,error_input", _error_inputs())
def test_error_input_matches_torch(op, error_input):
    sample = error_input.sample_input
    with pytest.raises(error_input.error_type, match=error_input.error_regex):
        _convext_fn(op)(sample.input, *sample.args, **sample.kwargs)
