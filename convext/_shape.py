"""Shape math and argument normalisation shared by the functional API, the fakes and the modules
(the Python twin of csrc/common/conv_shape.cpp)."""
from typing import Sequence, Tuple, Union

import torch

IntPair = Union[int, Sequence[int]]


def conv_pair(name: str, value: IntPair) -> Tuple[int, int]:
    """An int-pair argument of conv2d as torch parses it: an int, or a list of 1 or 2 ints."""
    if isinstance(value, (int, torch.SymInt)):
        return (value, value)
    values = list(value)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of 2 values to match the "
            f"convolution dimensions, but got {name}={list(value)}"
        )
    return tuple(values)


def conv_output_size(size, kernel: int, stride: int, padding: int, dilation: int):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose_output_size(size, kernel: int, stride: int, padding: int, output_padding,
                               dilation: int):
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def same_padding(kernel: Sequence[int], dilation: Sequence[int]):
    """padding='same' as torch does it: per dim, (left, right) with the odd pixel on the right."""
    pads = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    return pads


def prefers_channels_last(*tensors: torch.Tensor) -> bool:
    """torch's rule for conv outputs: channels_last when any of input and weight suggests it."""
    from torch._prims_common import suggest_memory_format

    return any(suggest_memory_format(t) == torch.channels_last for t in tensors)


def pool_pair(value) -> list:
    """A pooling window argument as torch parses it: an int, or 1 or 2 ints (other lengths are
    passed on for the op to reject with torch's message)."""
    if isinstance(value, (int, torch.SymInt)):
        return [value, value]
    values = list(value)
    return values * 2 if len(values) == 1 else values


def pooled_size(size, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool):
    """torch's pooling_output_shape: in ceil mode, no window may start in the right padding."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out = out - 1
    return out


def pool_prefers_channels_last(input: torch.Tensor) -> bool:
    """torch's rule for pooling outputs and grads: the 4-D input's suggested format."""
    return input.dim() == 4 and prefers_channels_last(input)


def adaptive_output_size(output_size, input: torch.Tensor) -> list:
    """An int, or a sequence whose None entries keep the input's size (torch's rule and error)."""
    if isinstance(output_size, (int, torch.SymInt)):
        return [output_size, output_size]
    sizes = list(output_size)
    if input.dim() <= len(sizes):
        raise ValueError(f"Input dimension should be at least {len(sizes) + 1}")
    spatial = input.shape[input.dim() - len(sizes):]
    return [s if s is not None else d for s, d in zip(sizes, spatial)]


def unpool_output_size(input: torch.Tensor, kernel, stride, padding, output_size) -> list:
    """max_unpool2d's output size: the pooled input's inverse by default, or `output_size` (2 or
    4 entries), which must be within a stride of that default (torch's rule and errors)."""
    default = [(input.shape[-2 + d] - 1) * stride[d] + kernel[d] - 2 * padding[d] for d in range(2)]
    if output_size is None:
        return default
    sizes = list(output_size)
    if len(sizes) == 4:
        sizes = sizes[2:]
    if len(sizes) != 2:
        raise ValueError("output_size should be a sequence containing 2 or 4 elements, but it has "
                         f"a length of '{len(sizes)}'")
    for d in range(2):
        low, high = default[d] - stride[d], default[d] + stride[d]
        if not low < sizes[d] < high:
            raise ValueError(f'invalid output_size "{sizes}" (dim {d} must be between {low} and {high})')
    return sizes
