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


# --- pooling -------------------------------------------------------------------------------

def _pool_empty(input, C, H, W, channels_last, dtype=None):
    sizes = [C, H, W] if input.dim() == 3 else [input.shape[0], C, H, W]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(sizes, dtype=dtype or input.dtype, device=input.device, memory_format=fmt)


def _pooled(input, kernel_size, stride, padding, dilation, ceil_mode):
    return [_shape.pooled_size(input.shape[-2 + i], kernel_size[i], stride[i], padding[i],
                               dilation[i], ceil_mode) for i in range(2)]


def _max_pool_pair(input, out_h, out_w):
    cl = _shape.pool_prefers_channels_last(input)
    C = input.shape[-3]
    return (_pool_empty(input, C, out_h, out_w, cl),
            _pool_empty(input, C, out_h, out_w, cl, torch.int64))


@torch.library.register_fake("convext::max_pool2d_with_indices")
def _max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode):
    return _max_pool_pair(input, *_pooled(input, kernel_size, stride, padding, dilation, ceil_mode))


@torch.library.register_fake("convext::max_pool2d")
def _max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode):
    return _max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode)[0]


@torch.library.register_fake("convext::adaptive_max_pool2d")
def _adaptive_max_pool2d(input, output_size):
    return _max_pool_pair(input, *output_size)


@torch.library.register_fake("convext::avg_pool2d")
def _avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                divisor_override):
    out_h, out_w = _pooled(input, kernel_size, stride, padding, [1, 1], ceil_mode)
    return _pool_empty(input, input.shape[-3], out_h, out_w, _shape.pool_prefers_channels_last(input))


@torch.library.register_fake("convext::adaptive_avg_pool2d")
def _adaptive_avg_pool2d(input, output_size):
    return _pool_empty(input, input.shape[-3], *output_size, _shape.pool_prefers_channels_last(input))


@torch.library.register_fake("convext::avg_pool2d_backward")
def _avg_pool2d_backward(grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                         count_include_pad, divisor_override, channels_last):
    return _pool_empty(grad_output, grad_output.shape[-3], *input_size, channels_last)


@torch.library.register_fake("convext::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward(grad_output, input_size, channels_last):
    return _pool_empty(grad_output, grad_output.shape[-3], *input_size, channels_last)


@torch.library.register_fake("convext::max_unpool2d")
def _max_unpool2d(input, indices, output_size):
    return _pool_empty(input, input.shape[-3], *output_size, _shape.pool_prefers_channels_last(input))


@torch.library.register_fake("convext::max_pool2d_backward")
def _max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride, padding, dilation,
                         ceil_mode, channels_last):
    return _pool_empty(grad_output, grad_output.shape[-3], *input_size, channels_last)


@torch.library.register_fake("convext::pool_scatter_add")
def _pool_scatter_add(values, indices, size, channels_last):
    return _pool_empty(values, values.shape[-3], *size, channels_last)


@torch.library.register_fake("convext::pool_gather")
def _pool_gather(input, indices):
    return _pool_empty(indices, indices.shape[-3], *indices.shape[-2:], False, input.dtype)
