from typing import List, Optional

import torch
from torch import Tensor

from .. import functional as CF


class MaxPool2d(torch.nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` computed by convext."""

    def forward(self, input: Tensor):
        return CF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    """:class:`torch.nn.AvgPool2d` computed by convext."""

    def forward(self, input: Tensor) -> Tensor:
        return CF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """:class:`torch.nn.AdaptiveAvgPool2d` computed by convext (1x1: global average pooling)."""

    def forward(self, input: Tensor) -> Tensor:
        return CF.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool2d(torch.nn.AdaptiveMaxPool2d):
    """:class:`torch.nn.AdaptiveMaxPool2d` computed by convext."""

    def forward(self, input: Tensor):
        return CF.adaptive_max_pool2d(input, self.output_size, self.return_indices)


class MaxUnpool2d(torch.nn.MaxUnpool2d):
    """:class:`torch.nn.MaxUnpool2d` computed by convext."""

    def forward(self, input: Tensor, indices: Tensor,
                output_size: Optional[List[int]] = None) -> Tensor:
        return CF.max_unpool2d(input, indices, self.kernel_size, self.stride, self.padding,
                               output_size)


class GlobalAvgPool2d(torch.nn.Module):
    """The classifier head's global average pooling: (N, C, H, W) -> (N, C, 1, 1), or (N, C)
    with ``flatten=True``; unbatched (C, H, W) -> (C, 1, 1), or (C,)."""

    def __init__(self, flatten: bool = False):
        super().__init__()
        self.flatten = flatten

    def forward(self, input: Tensor) -> Tensor:
        out = CF.adaptive_avg_pool2d(input, 1)
        return out.flatten(-3) if self.flatten else out

    def extra_repr(self) -> str:
        return f"flatten={self.flatten}"
