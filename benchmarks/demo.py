"""A first look at convext: convert a small CNN, compare it with torch, and time a few ResNet-50
layers. (The full benchmark suite comes with the benchmark issue.)

    python benchmarks/demo.py
"""
import copy
import platform

import torch
import torch.utils.benchmark as tb

import convext


class SmallCNN(torch.nn.Module):
    """A stem, a residual block, a depthwise-separable block and a transposed-conv upsampler."""

    def __init__(self):
        super().__init__()
        conv, bn, relu = torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU
        self.stem = torch.nn.Sequential(conv(3, 32, 7, stride=2, padding=3, bias=False), bn(32), relu())
        self.res = torch.nn.Sequential(conv(32, 32, 3, padding=1), relu(), conv(32, 32, 3, padding=1))
        self.separable = torch.nn.Sequential(conv(32, 32, 3, padding=1, groups=32), conv(32, 64, 1), relu())
        self.up = torch.nn.ConvTranspose2d(64, 16, 2, stride=2)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        return self.up(self.separable(x))


def median_ms(fn) -> float:
    timer = tb.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.5).median * 1e3


def main():
    torch.manual_seed(0)
    info = convext.build_info()
    print(f"convext demo | {platform.processor() or platform.machine()} | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | CPU ISA {info['cpu_isa']}\n")

    model = SmallCNN().eval()
    ours = convext.nn.convert(copy.deepcopy(model))
    x = torch.randn(8, 3, 128, 128)
    with torch.no_grad():
        diff = (ours(x) - model(x)).abs().max().item()
        t_torch, t_ours = median_ms(lambda: model(x)), median_ms(lambda: ours(x))
    print("SmallCNN, batch 8 @128x128, forward (convext.nn.convert on a copy of the model)")
    print(f"  torch {t_torch:7.2f} ms   convext {t_ours:7.2f} ms   speedup {t_torch / t_ours:4.2f}x   "
          f"largest |difference| {diff:.2e}\n")

    layers = [  # (name, input shape, weight shape, stride, padding, groups)
        ("resnet50 3x3 64 @56", (8, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1),
        ("resnet50 1x1 64->256 @56", (8, 64, 56, 56), (256, 64, 1, 1), 1, 0, 1),
        ("resnet50 3x3 s2 128 @56", (8, 128, 56, 56), (128, 128, 3, 3), 2, 1, 1),
        ("resnet50 3x3 256 @14", (8, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1),
    ]
    print(f"{'layer (float32, NCHW)':26s} {'pass':8s} {'torch ms':>9s} {'convext ms':>11s} {'speedup':>8s}")
    for name, xs, ws, stride, padding, groups in layers:
        xi, w = torch.randn(xs), torch.randn(ws)
        for pass_name in ("fwd", "fwd+bwd"):
            times = []
            for conv in (torch.nn.functional.conv2d, convext.functional.conv2d):
                if pass_name == "fwd":
                    fn = lambda conv=conv: conv(xi, w, None, stride, padding, 1, groups)  # noqa: E731
                else:
                    xg, wg = xi.clone().requires_grad_(), w.clone().requires_grad_()

                    def fn(conv=conv, xg=xg, wg=wg):
                        conv(xg, wg, None, stride, padding, 1, groups).sum().backward()
                times.append(median_ms(fn))
            print(f"{name:26s} {pass_name:8s} {times[0]:9.2f} {times[1]:11.2f} {times[0] / times[1]:7.2f}x")


if __name__ == "__main__":
    main()
