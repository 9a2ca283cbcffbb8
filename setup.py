"""Builds convext's C++ (and, when available, CUDA) extension against the installed torch.

Switches (environment variables):
  CONVEXT_CUDA=0|1        force the CUDA kernels off or on (default: on when torch has CUDA and
                          nvcc is found)
  TORCH_CUDA_ARCH_LIST    GPU architectures to compile for (default below when unset)
  MAX_JOBS                parallel compile jobs (read by torch's ninja build)
"""
import glob
import os
import shutil
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0"


def want_cuda() -> bool:
    forced = os.environ.get("CONVEXT_CUDA")
    if forced is not None:
        if forced not in ("0", "1"):
            raise SystemExit(f"CONVEXT_CUDA must be 0 or 1, got {forced!r}")
        if forced == "1" and torch.version.cuda is None:
            raise SystemExit("CONVEXT_CUDA=1 but the installed torch has no CUDA support")
        return forced == "1"
    nvcc_found = shutil.which("nvcc") is not None or bool(os.environ.get("CUDA_HOME"))
    return torch.version.cuda is not None and nvcc_found


def sources(pattern: str) -> list:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def loaded_libstdcxx() -> list:
    """The shared libstdc++ that torch runs with, as a linker input (Linux), so that the extension
    uses it too. A toolchain without a shared libstdc++ (one GPU image's /opt/gcc) otherwise links
    a static copy into the extension: two copies of the iostream locale tables in one process, and
    the first number formatted into an error message (c10::str) calls the wrong facet and
    segfaults."""
    if not sys.platform.startswith("linux"):
        return []
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    return sorted(paths)[:1]


def is_cuda_source(path: str) -> bool:
    """CUDA builds only: .cu files, and the .cpp files of any cuda/ folder (CUDA entry points)."""
    return path.endswith(".cu") or "cuda" in os.path.dirname(path).split(os.sep)


def extension():
    with_cuda = want_cuda()
    cxx_flags = [
        "-O3",
        "-fopenmp",
        # -std=c++17 turns contraction off; the kernels rely on fused multiply-add.
        "-ffp-contract=fast",
        f'-DCONVEXT_TORCH_VERSION="{torch.__version__}"',
    ]
    srcs = sources("csrc/**/*.cpp") + sources("csrc/**/*.cu")
    kwargs = dict(extra_link_args=["-fopenmp"] + loaded_libstdcxx(), include_dirs=[os.path.join(ROOT, "csrc")])
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        cxx_flags.append("-DCONVEXT_WITH_CUDA")
        kwargs["extra_compile_args"] = {
            "cxx": cxx_flags,
            # No --use_fast_math: results must match torch's, and fast math makes division and
            # square root approximate and flushes denormals to zero.
            "nvcc": ["-O3", "-DCONVEXT_WITH_CUDA", "-lineinfo"],
        }
        return CUDAExtension("convext._C", srcs, **kwargs)
    kwargs["extra_compile_args"] = {"cxx": cxx_flags}
    return CppExtension("convext._C", [s for s in srcs if not is_cuda_source(s)], **kwargs)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
