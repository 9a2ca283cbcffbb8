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
