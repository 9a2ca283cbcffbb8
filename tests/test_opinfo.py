"""convext against PyTorch's own OpInfo samples and error inputs for its conv and pooling ops:
same values, indices, grads, memory formats and errors as torch.nn.functional."""
import contextlib
import warnings

import pytest
import torch
from torch.testing._internal.common_methods_invocations import op_db

import convext.functional as CF

FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# OpInfo name -> (convext function, the variants run, dtypes convext supports, names of the
# differentiable positional tensors after the input). Each op runs the intersection of these
# dtypes with op.supported_dtypes("cpu"). int64 and complex convs are deliberately unsupported
# by convext (NotImplementedError).
TABLE = {
    "nn.functional.conv2d": (CF.conv2d, ("",), FLOATS, ("weight", "bias")),
    "nn.functional.conv_transpose2d": (CF.conv_transpose2d, ("",), FLOATS, ("weight", "bias")),
    "nn.functional.max_pool2d": (CF.max_pool2d, ("",), FLOATS + INTS, ()),
    "nn.functional.avg_pool2d": (CF.avg_pool2d, ("",), FLOATS + (torch.int64,), ()),
    "nn.functional.adaptive_avg_pool2d": (CF.adaptive_avg_pool2d, ("",), FLOATS, ()),
    "nn.functional.adaptive_max_pool2d": (CF.adaptive_max_pool2d, ("",), FLOATS, ()),
    # args[0] is the indices (int64): passed through as they are, never differentiated.
    "nn.functional.max_unpool2d": (CF.max_unpool2d, ("", "grad"), FLOATS, ()),
}
OPS = [op for op in op_db
       if op.name in TABLE and op.variant_test_name in TABLE[op.name][1]]
assert sorted((op.name, op.variant_test_name) for op in OPS) == sorted(
    (name, variant) for name, entry in TABLE.items() for variant in entry[1])
# max_pool2d has 1440 samples per dtype: 10 (shape, memory format) blocks of the same 144 kwargs
# patterns (kernel 2 x stride 3 x ceil_mode 2 x padding 3 x dilation 2 x return_indices 2, the
# last one varying fastest). Every 7th sample: 7 is coprime to 144, so the 206 kept samples take
# every kwargs pattern at least once and every (shape, format) block about 20 times.
THIN = {"nn.functional.max_pool2d": 7}
# (rtol, atol) for the high precision dtypes, compared with torch at the same dtype.
EXACT_TOL = {torch.float64: (1e-7, 1e-7), torch.float32: (1e-4, 1e-4)}
# bf16/fp16 are compared with float64 on the same (exactly upcast) inputs: the error is one or two
# roundings to dtype (torch itself rounds before adding the bias), i.e. a few ulps of the largest
# value, so atol scales with the reference's magnitude; torch's own kernels stay below 0.75e-2
# (bf16) and 0.85e-3 (fp16) of it on these samples (avg_pool2d is the worst, then the convs).
# Max pooling indices stay exact: upcasting keeps every order and tie, so the float64 reference
# picks the very same elements.
LOWP_TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}
LAYOUTS = ("sampled", "cl_input", "cl_weight")
OUTPUT_NAMES = ("output", "indices")  # ops returning a tuple return (values, indices)


@contextlib.contextmanager
def _one_thread():
    """The samples are tiny (at most a few thousand elements): one intra-op thread runs them as
    fast as two, while an OpenMP team of two on this 2-core machine stalls every op by
    milliseconds whenever anything else is running (150+ s instead of about 15 s for this file)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with _one_thread():
        yield


def _name(op):
    short = op.name.rsplit(".", 1)[1]
    return f"{short}_{op.variant_test_name}" if op.variant_test_name else short


def _convext_fn(op):
    return TABLE[op.name][0]


def _dtypes(op):
    supported = op.supported_dtypes("cpu")
    return [dtype for dtype in TABLE[op.name][2] if dtype in supported]


def _cl(t):
    return t.is_contiguous(memory_format=torch.channels_last)


def _samples():
    params = []
    for op in OPS:
        for dtype in _dtypes(op):
            floating = dtype.is_floating_point
            # Samples are random: a fixed seed keeps each id's sample the same between runs.
            # (set_seed=False: torch's own reseeding before every sample crawls the stack and
            # costs seconds of collection under pytest.)
            torch.manual_seed(0)
            samples = list(op.sample_inputs("cpu", dtype, requires_grad=floating, set_seed=False))
            for i, sample in enumerate(samples):
                if i % THIN.get(op.name, 1):
                    continue
                # Most samples are contiguous: channels_last variants give the memory format
                # check something to decide (torch follows a channels_last input or weight).
                # Pools have no weight; integer dtypes (no grads) only run as sampled.
                layouts = LAYOUTS if TABLE[op.name][3] else LAYOUTS[:2]
                if sample.input.dim() != 4 or not floating:
                    layouts = LAYOUTS[:1]
                # A tensor that is already channels_last would make an exact duplicate of the
                # sampled layout (max_pool2d's, and so max_unpool2d's, samples come in both).
                layouts = [layout for layout in layouts
                           if not (layout == "cl_input" and _cl(sample.input)
                                   or layout == "cl_weight" and _cl(sample.args[0]))]
                params += [pytest.param(op, dtype, sample, layout,
                                        id=f"{_name(op)}-{str(dtype)[6:]}-sample{i}-{layout}")
                           for layout in layouts]
    return params


def _leaves(sample, layout, dtype=None):
    """Fresh leaves per side so that grads from torch and convext never accumulate together.
    Integer tensors (max_unpool2d's indices, integer inputs) pass through as they are."""
    def leaf(t, channels_last=False):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        copy = t.detach().to(dtype or t.dtype).clone()
        if channels_last:
            copy = copy.contiguous(memory_format=torch.channels_last)
        return copy.requires_grad_(t.requires_grad)
    args = [leaf(t, layout == "cl_weight" and i == 0) for i, t in enumerate(sample.args)]
    return leaf(sample.input, layout == "cl_input"), args, sample.kwargs


def _run(fn, x, args, kwargs, dtype):
    """(whether fn returned a tuple, [values, *indices], grads of values wrt the float leaves)."""
    with warnings.catch_warnings():
        # padding='same' with even kernels warns in torch (and in convext): expected here.
        warnings.simplefilter("ignore", UserWarning)
        out = fn(x, *args, **kwargs)
    is_tuple = isinstance(out, tuple)
    outputs = list(out) if is_tuple else [out]
    wrt = [t for t in [x, *args] if isinstance(t, torch.Tensor) and t.requires_grad]
    if not wrt:  # integer dtypes: no grads
        return is_tuple, outputs, []
    # The same grad_output on every side: drawn in float64 and rounded to the sample's dtype, so
    # the float64 reference sees exactly what the low precision runs see. Grads flow from the
    # first output (the values) only.
    grad_output = torch.randn(outputs[0].shape, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(outputs[0], wrt, grad_output.to(outputs[0].dtype))
    return is_tuple, outputs, list(grads)


def _formats(t):
    return t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)


def _names(op, x, args, n_outputs):
    tensor_names = ("input",) + TABLE[op.name][3]
    grads = [f"grad_{tensor_names[i]}" for i, t in enumerate([x, *args])
             if isinstance(t, torch.Tensor) and t.requires_grad]
    return list(OUTPUT_NAMES[:n_outputs]) + grads


def _check_format(name, g, e):
    # Unbatched (3-D) tensors have no 4-D memory format to speak of; for 4-D ones the predicates
    # coincide wherever size-1 dims make the formats ambiguous.
    if e.dim() == 4:
        assert _formats(g) == _formats(e), (
            f"{name} memory format: expected {e.stride()}, got {g.stride()}")


with _one_thread():  # max_unpool2d's samples run torch's max_pool2d
    SAMPLES = _samples()


@pytest.mark.parametrize("op,dtype,sample,layout", SAMPLES)
def test_sample_matches_torch(op, dtype, sample, layout):
    torch_fn, ours = op.op, _convext_fn(op)
    leaves = _leaves(sample, layout)
    got_tuple, got, got_grads = _run(ours, *leaves, dtype)
    expected_tuple, expected, expected_grads = _run(torch_fn, *_leaves(sample, layout), dtype)
    names = _names(op, leaves[0], leaves[1], len(expected))
    assert got_tuple == expected_tuple and len(got) == len(expected), (
        f"expected {'a tuple of ' if expected_tuple else ''}{len(expected)} tensor(s), got "
        f"{'a tuple of ' if got_tuple else ''}{len(got)}")
    assert len(got_grads) == len(expected_grads)
    pairs = list(zip(got + got_grads, expected + expected_grads))
    for name, (g, e) in zip(names, pairs):
        assert g.dtype == e.dtype, f"{name} dtype: expected {e.dtype}, got {g.dtype}"
        assert g.shape == e.shape, f"{name} shape: expected {e.shape}, got {g.shape}"
        # Formats always come from torch at the sample's own dtype.
        _check_format(name, g, e)
    # Indices (and integer outputs) are exact at every dtype.
    exact = [i for i, e in enumerate(expected) if not e.is_floating_point()]
    for i in exact:
        assert torch.equal(got[i], expected[i]), (
            f"{names[i]} differ at {(got[i] != expected[i]).nonzero().tolist()[:8]}:\n"
            f"expected {expected[i]}\ngot {got[i]}")

    if dtype in EXACT_TOL or not dtype.is_floating_point:
        rtol, atol = EXACT_TOL.get(dtype, (0, 0))
        for name, (g, e) in zip(names, pairs):
            if e.is_floating_point():
                torch.testing.assert_close(g, e, rtol=rtol, atol=atol,
                                           msg=lambda m: f"{name}: {m}")
    else:
        _, reference, reference_grads = _run(
            torch_fn, *_leaves(sample, layout, torch.float64), dtype)
        for i in exact:  # the float64 reference must pick the very same elements
            assert torch.equal(reference[i], expected[i])
        tol = LOWP_TOL[dtype]
        for name, (g, e) in zip(names, zip(got + got_grads, reference + reference_grads)):
            if not e.is_floating_point():
                continue
            scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
            torch.testing.assert_close(g.double(), e, rtol=tol, atol=tol * scale,
                                       msg=lambda m: f"{name}: {m}")


def _error_inputs():
    params = []
    for op in OPS:
        # conv_transpose2d and max_unpool2d's 'grad' variant have none in torch's OpInfo.
        if op.error_inputs_func is None:
            continue
        for i, error_input in enumerate(op.error_inputs(torch.device("cpu"))):
            params.append(pytest.param(op, error_input, id=f"{_name(op)}-error{i}"))
    return params


@pytest.mark.parametrize("op,error_input", _error_inputs())
def test_error_input_matches_torch(op, error_input):
    sample = error_input.sample_input
    with pytest.raises(error_input.error_type, match=error_input.error_regex):
        _convext_fn(op)(sample.input, *sample.args, **sample.kwargs)
