"""Fake (meta) kernels for the convext ops: the sizes, strides, dtype and device the real kernels
produce, so torch.compile and torch.export trace convext without running it."""
import torch

from . import _shape


def _empty(like: torch.Tensor, sizes, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(sizes, dtype=like.dtype, device=like.device, memory_format=fmt)


def _format(channels_last, input, weight) -> bool:
    return _shape.prefers_channels_last(input, weight) if channels_last is None else channels_last


@torch.library.register_fake("convext::conv2d")
def _conv2d(input, weight, bias, stride, padding, dilation, groups, channels_last=None):
    sizes = [input.shape[0], weight.shape[0]]
    for i in range(2):
        sizes.append(_shape.conv_output_size(input.shape[2 + i], weight.shape[2 + i], stride[i],
                                             padding[i], dilation[i]))
    return _empty(input, sizes, _format(channels_last, input, weight))


@torch.library.register_fake("convext::conv_transpose2d")
def _conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation,
                      channels_last=None):
    sizes = [input.shape[0], weight.shape[1] * groups]
    for i in range(2):
        sizes.append(_shape.conv_transpose_output_size(
            input.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], output_padding[i],
            dilation[i]))
    return _empty(input, sizes, _format(channels_last, input, weight))


@torch.library.register_fake("convext::conv2d_weight_grad")
def _conv2d_weight_grad(input, grad_output, kernel_size, stride, padding, dilation, groups,
                        channels_last):
    sizes = [grad_output.shape[1], input.shape[1] // groups, kernel_size[0], kernel_size[1]]
    return _empty(input, sizes, channels_last)


@torch.library.register_fake("convext::conv_bias_grad")
def _conv_bias_grad(grad_output):
    return grad_output.new_empty(grad_output.shape[1])
