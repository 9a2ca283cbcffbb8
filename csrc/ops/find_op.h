#pragma once
#include <ATen/core/dispatch/Dispatcher.h>

namespace convext::ops {

// The typed handle of a convext op, to call it through the dispatcher from C++.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace convext::ops
