// The Python module convext._C: loading it registers every convext op with the dispatcher (the
// TORCH_LIBRARY blocks in ops/); it also reports how the library was built.
#include <pybind11/pybind11.h>

#include "cpu/isa.h"

#ifndef CONVEXT_TORCH_VERSION
#define CONVEXT_TORCH_VERSION "unknown"
#endif

namespace py = pybind11;

namespace {

py::dict build_info() {
  using convext::cpu::Isa;
  py::dict info;
#if defined(CONVEXT_WITH_CUDA)
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#if defined(_OPENMP)
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["torch"] = CONVEXT_TORCH_VERSION;
  info["cpu_isa"] = convext::cpu::isa_name(convext::cpu::active_isa());
  py::list compiled;
  compiled.append(convext::cpu::isa_name(Isa::generic));
#if defined(CONVEXT_X86_DISPATCH)
  compiled.append(convext::cpu::isa_name(Isa::avx2));
  compiled.append(convext::cpu::isa_name(Isa::avx512));
  compiled.append(convext::cpu::isa_name(Isa::avx512_bf16));
#endif
  info["cpu_isas_compiled"] = compiled;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.def("build_info", &build_info,
        "How convext was built: cuda, openmp, torch (version built against), cpu_isa (the SIMD "
        "level the CPU kernels use on this machine), cpu_isas_compiled.");
}
