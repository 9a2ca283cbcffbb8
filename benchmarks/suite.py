"""The benchmark's layer table: convolution and pooling layers taken from real networks, and the
shape, FLOP and byte arithmetic of each.

Every layer is square (H == W) and is described by its op and torch.nn.functional's arguments, so
one row can be run through convext.functional.<op> and torch.nn.functional.<op> alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

OPS = ("conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")
CONV_OPS = ("conv2d", "conv_transpose2d")

# Short names for the fixed-width table (the JSON keeps the full op name).
OP_SHORT = {
    "conv2d": "conv2d",
    "conv_transpose2d": "convT2d",
    "max_pool2d": "maxpool2d",
    "avg_pool2d": "avgpool2d",
    "adaptive_avg_pool2d": "adaptavg2d",
}


@dataclass(frozen=True)
class Layer:
    """One layer. ``channels``/``size`` are the input's C and H (= W); for convs ``out_channels``
    is Cout and ``kernel`` the (square) kernel size; pools keep their channel count."""

    name: str
    op: str
    channels: int
    size: int
    cpu_batch: int  # 4..8: keeps one timed forward+backward call under about a second on a CPU
    gpu_batch: int
    out_channels: int = 0
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    bias: bool = False  # as in the source network: convs followed by BatchNorm carry no bias
    output_size: int = 1  # adaptive pooling only

    # --- shapes --------------------------------------------------------------------------------
    @property
    def out_size(self) -> int:
        k, s, p, d, h = self.kernel, self.stride, self.padding, self.dilation, self.size
        if self.op == "conv_transpose2d":
            return (h - 1) * s - 2 * p + d * (k - 1) + 1
        if self.op == "adaptive_avg_pool2d":
            return self.output_size
        return (h + 2 * p - d * (k - 1) - 1) // s + 1

    @property
    def out_c(self) -> int:
        return self.out_channels if self.op in CONV_OPS else self.channels

    def input_shape(self, batch: int) -> Tuple[int, int, int, int]:
        return (batch, self.channels, self.size, self.size)

    def output_shape(self, batch: int) -> Tuple[int, int, int, int]:
        return (batch, self.out_c, self.out_size, self.out_size)

    def weight_shape(self) -> Optional[Tuple[int, int, int, int]]:
        if self.op == "conv2d":
            return (self.out_channels, self.channels // self.groups, self.kernel, self.kernel)
        if self.op == "conv_transpose2d":  # torch's transposed-conv weight is (Cin, Cout/g, k, k)
            return (self.channels, self.out_channels // self.groups, self.kernel, self.kernel)
        return None

    # --- what the row computes -----------------------------------------------------------------
    def kwargs(self) -> Dict[str, object]:
        """torch.nn.functional's keyword arguments for this layer (after input and weight)."""
        if self.op == "conv2d":
            return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)
        if self.op == "conv_transpose2d":
            return dict(stride=self.stride, padding=self.padding, groups=self.groups, dilation=self.dilation)
        if self.op == "max_pool2d":
            return dict(kernel_size=self.kernel, stride=self.stride, padding=self.padding, dilation=self.dilation)
        if self.op == "avg_pool2d":
            return dict(kernel_size=self.kernel, stride=self.stride, padding=self.padding)
        return dict(output_size=self.output_size)

    @property
    def is_depthwise(self) -> bool:
        return self.op in CONV_OPS and self.groups == self.channels and self.groups > 1

    @property
    def channels_per_group(self) -> int:
        return self.channels // self.groups

    def bound(self) -> str:
        """Which ceiling a row is held against: 'compute' for dense convs (groups == 1, or at
        least 16 channels per group: a real GEMM per group), 'memory' for depthwise convs and
        pooling. Grouped convs with fewer channels per group are neither; the roofline decides
        (see measure.pick_bound), so this returns 'roofline' for them."""
        if self.op not in CONV_OPS:
            return "memory"
        if self.is_depthwise:
            return "memory"
        if self.groups == 1 or self.channels_per_group >= 16:
            return "compute"
        return "roofline"

    def forward_flops(self, batch: int) -> Optional[int]:
        """Multiply-adds x 2 of one forward pass; None for pooling (compares and adds, not
        counted). conv_transpose2d is conv2d's input gradient, so its count is conv2d's with the
        roles of input and output swapped: every input pixel meets Cout/g x k x k weights."""
        k2 = self.kernel * self.kernel
        if self.op == "conv2d":
            oh = self.out_size
            return 2 * batch * self.out_channels * oh * oh * self.channels_per_group * k2
        if self.op == "conv_transpose2d":
            h = self.size
            return 2 * batch * self.channels * h * h * (self.out_channels // self.groups) * k2
        return None

    def flops(self, batch: int, pass_name: str) -> Optional[int]:
        """Forward: forward_flops. Forward+backward: x3 (forward, input grad and weight grad each
        cost one forward's multiply-adds; the bias grad's reduction is not counted)."""
        f = self.forward_flops(batch)
        if f is None:
            return None
        return f if pass_name == "fwd" else 3 * f

    def bytes(self, batch: int, pass_name: str, itemsize: int) -> int:
        """The least memory traffic of the pass, each tensor read or written once:
        forward = input + weight + bias read, output written;
        backward = grad_output + input + weight read, grad_input + grad_weight + grad_bias
        written (pools: grad_output read, grad_input written);
        forward+backward = forward + backward (about 2x forward).
        Scratch buffers, im2col panels and max pooling's indices are not counted, so GB/s is a
        lower bound of what an implementation really moves."""
        x = math.prod(self.input_shape(batch))
        y = math.prod(self.output_shape(batch))
        w_shape = self.weight_shape()
        w = math.prod(w_shape) if w_shape else 0
        b = self.out_channels if (self.bias and self.op in CONV_OPS) else 0
        fwd = x + w + b + y
        if pass_name == "fwd":
            return fwd * itemsize
        bwd = (y + x + w) + (x + w + b)
        return (fwd + bwd) * itemsize

    def describe(self, batch: int) -> str:
        """The table's shape/params column, e.g. '8x64x56x56 k3 p1 ->64x56x56'."""
        n, c, h, w = self.input_shape(batch)
        parts = [f"{n}x{c}x{h}x{w}"]
        if self.op == "adaptive_avg_pool2d":
            parts.append(f"out{self.output_size}")
        else:
            parts.append(f"k{self.kernel}")
            if self.stride != 1:
                parts.append(f"s{self.stride}")
            if self.padding:
                parts.append(f"p{self.padding}")
            if self.dilation != 1:
                parts.append(f"d{self.dilation}")
            if self.groups != 1:
                parts.append(f"g{self.groups}")
            if self.bias:
                parts.append("bias")
        _, oc, oh, ow = self.output_shape(batch)
        return " ".join(parts) + f" ->{oc}x{oh}x{ow}"


def _conv(name: str, cin: int, cout: int, size: int, k: int, cpu_batch: int, gpu_batch: int = 32,
          **kw) -> Layer:
    return Layer(name, "conv2d", cin, size, cpu_batch, gpu_batch, out_channels=cout, kernel=k, **kw)


def _dw(name: str, c: int, size: int, k: int, cpu_batch: int, **kw) -> Layer:
    return _conv(name, c, c, size, k, cpu_batch, groups=c, **kw)


# CPU batches (4..8): 8, where one forward+backward call of either library takes at most about
# 0.2 s on a 2-core AVX-512 machine; 4 for the two DeepLab convs (5 and 10 GFLOP per image
# forward), where it is 0.2-0.4 s (DeepLab) and about a second (ASPP). GPU batches: 32 (the
# batch of torch's reference numbers), 16 for the two DeepLab convs (DeepLabv3's training batch
# at output stride 8).
LAYERS: List[Layer] = [
    _conv("ResNet-50 stem 7x7 s2", 3, 64, 224, 7, 8, stride=2, padding=3),
    _conv("ResNet-50 1x1 64->256", 64, 256, 56, 1, 8),
    _conv("ResNet-50 3x3 64", 64, 64, 56, 3, 8, padding=1),
    _conv("ResNet-50 3x3 s2 128", 128, 128, 56, 3, 8, stride=2, padding=1),
    _conv("ResNet-50 3x3 256", 256, 256, 14, 3, 8, padding=1),
    _conv("ResNet-50 3x3 512", 512, 512, 7, 3, 8, padding=1),
    _conv("ResNet-50 1x1 1024->256", 1024, 256, 14, 1, 8),
    _dw("MobileNetV2 dw3x3 144", 144, 56, 3, 8, padding=1),
    _dw("MobileNetV2 dw3x3 s2 96", 96, 112, 3, 8, stride=2, padding=1),
    _dw("MobileNetV2 dw3x3 960", 960, 7, 3, 8, padding=1),
    _dw("ConvNeXt dw7x7 96", 96, 56, 7, 8, padding=3, bias=True),  # ConvNeXt's dwconv has a bias
    _conv("DeepLab 3x3 d2 256", 256, 256, 65, 3, 4, gpu_batch=16, padding=2, dilation=2),
    _conv("ASPP 3x3 d12 2048->256", 2048, 256, 33, 3, 4, gpu_batch=16, padding=12, dilation=12),
    _conv("ResNeXt 3x3 g32 256", 256, 256, 28, 3, 8, padding=1, groups=32),
    Layer("DCGAN convT 4x4 s2 512->256", "conv_transpose2d", 512, 8, 8, 32, out_channels=256,
          kernel=4, stride=2, padding=1),
    # U-Net's up-convolution is a plain nn.ConvTranspose2d, bias included.
    Layer("U-Net convT 2x2 s2 512->256", "conv_transpose2d", 512, 28, 8, 32, out_channels=256,
          kernel=2, stride=2, bias=True),
    Layer("max pool 3x3 s2 64", "max_pool2d", 64, 112, 8, 32, kernel=3, stride=2, padding=1),
    Layer("avg pool 2x2 256", "avg_pool2d", 256, 56, 8, 32, kernel=2, stride=2),
    Layer("global avg pool 2048", "adaptive_avg_pool2d", 2048, 7, 8, 32, output_size=1),
]


def select(ops: Optional[List[str]] = None, names: Optional[List[str]] = None) -> List[Layer]:
    """The layers whose op is one of ``ops`` and whose name contains one of ``names``
    (case-insensitive); None or empty means no filter."""
    chosen = []
    for layer in LAYERS:
        if ops and layer.op not in ops:
            continue
        if names and not any(n.lower() in layer.name.lower() for n in names):
            continue
        chosen.append(layer)
    return chosen


__all__ = ["CONV_OPS", "LAYERS", "Layer", "OPS", "OP_SHORT", "select"]
