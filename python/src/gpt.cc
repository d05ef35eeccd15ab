// Python bindings: filled in by the gpt work (issue 6 / 7).
#include "bindings.h"

namespace qkv::python {

void bind_gpt(nb::module_& m) { (void)m; }

}  // namespace qkv::python
