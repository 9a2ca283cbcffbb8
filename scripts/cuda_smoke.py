"""Every convext CUDA kernel once or more on small inputs, forward and backward, for
compute-sanitizer (scripts/gpu_check.sh): each layout and dtype path of the pooling kernels, the
indexed ops' error path, and the depthwise, grouped and dense (implicit-GEMM) convolutions when
convext has CUDA kernels for them."""
import torch

import convext.functional as CF

ops = torch.ops.convext


def layouts(x):
    yield x
    yield x.contiguous(memory_format=torch.channels_last)
    yield x.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous planes


def pooling(x):
    y, indices = CF.max_pool2d(x, 3, 2, 1, return_indices=True)
    d, _ = CF.max_pool2d(x, (2, 3), (2, 1), 0, 2, ceil_mode=True, return_indices=True)
    z, z_indices = CF.adaptive_max_pool2d(x, (5, 3), return_indices=True)
    outs = [y, d, z, CF.adaptive_avg_pool2d(x, (3, 5)), CF.adaptive_avg_pool2d(x, 1),
            CF.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
            CF.avg_pool2d(x, 2, divisor_override=3),
            CF.max_unpool2d(y, indices, 3, 2, 1, output_size=x.shape[-2:])]
    loss = sum(o.float().square().sum() for o in outs)
    grad, = torch.autograd.grad(loss, x, create_graph=True)
    torch.autograd.grad(grad.float().square().sum(), x)  # double backward: gathers and scatters
    ops.pool_gather(x.detach(), z_indices)


for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    for shape in ((2, 16, 8, 8), (2, 3, 9, 7)):  # vectorised and scalar paths
        for x in layouts(torch.randn(shape, device="cuda", dtype=dtype)):
            pooling(x.requires_grad_())
for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64):
    ints = torch.randint(0, 10, (2, 16, 9, 8), device="cuda").to(dtype)
    for x in layouts(ints):
        CF.max_pool2d(x, 3, 2, 1)
for x in layouts(torch.randint(-5, 5, (2, 16, 9, 8), device="cuda")):  # int64 averages
    CF.avg_pool2d(x, 3, 2, 1)
    CF.avg_pool2d(x, (9, 8))

# Invalid indices: reported by the kernels through a flag, never written or read.
pooled, indices = CF.max_pool2d(torch.randn(2, 3, 8, 8, device="cuda"), 2, return_indices=True)
indices[0, 1, 1, 2] = 1000
for call in (lambda: CF.max_unpool2d(pooled, indices, 2),
             lambda: ops.pool_scatter_add(pooled, indices, [8, 8], False),
             lambda: ops.pool_gather(torch.randn(2, 3, 8, 8, device="cuda"), indices)):
    try:
        call()
    except RuntimeError as e:
        assert "invalid max index: 1000" in str(e), e
    else:
        raise AssertionError("an invalid index went unreported")


def has_cuda_kernel(op):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"convext::{op}", "CUDA")


if has_cuda_kernel("conv2d"):
    backward = all(map(has_cuda_kernel,
                       ("conv_transpose2d", "conv2d_weight_grad", "conv_bias_grad")))
    for dtype in (torch.float32, torch.float16):
        for groups, out in ((16, 16), (16, 32), (4, 8)):  # depthwise, channel multiplier, grouped
            for x in layouts(torch.randn(2, 16, 9, 8, device="cuda", dtype=dtype)):
                w = torch.randn(out, 16 // groups, 3, 3, device="cuda", dtype=dtype)
                b = torch.randn(out, device="cuda", dtype=dtype)
                params = [t.requires_grad_(backward) for t in (x, w, b)]
                y = CF.conv2d(*params, stride=2, padding=1, groups=groups)
                if backward:
                    torch.autograd.grad(y.float().square().sum(), params)
    # Dense convs on the implicit-GEMM kernels: tensor cores (half types, float32 under TF32),
    # FMA (strict float32, float64); 16-byte chunks (channels_last) and gathers; stride 1 (all
    # three passes) and 2 (forward, weight grad); 24 x 24 planes split the weight grad in chunks.
    cases = [(dtype, False) for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)]
    for dtype, tf32 in cases + [(torch.float32, True)]:
        torch.backends.cudnn.allow_tf32 = tf32
        for stride in (1, 2):
            for x in layouts(torch.randn(2, 16, 24, 24, device="cuda", dtype=dtype)):
                w = torch.randn(32, 16, 3, 3, device="cuda", dtype=dtype)
                if x.is_contiguous(memory_format=torch.channels_last):
                    w = w.contiguous(memory_format=torch.channels_last)
                b = torch.randn(32, device="cuda", dtype=dtype)
                params = [t.requires_grad_(backward) for t in (x, w, b)]
                y = CF.conv2d(*params, stride=stride, padding=1)
                if backward:
                    torch.autograd.grad(y.float().square().sum(), params)

torch.cuda.synchronize()
print("cuda smoke: done")
