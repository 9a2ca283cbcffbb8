"""convext's benchmark: convext.functional against torch.nn.functional on convolution and pooling
layers of real networks, forward and forward+backward, float32/bfloat16, NCHW/channels_last.

    python -m benchmarks --quick          # every layer, float32, in under 2 minutes on 2 cores
    python -m benchmarks --help

Modules: suite (the layer table, FLOPs and bytes), measure (timing, ceilings, correctness
guard, one row), report (table, summary, JSON, plot), cli (the command line).
"""
