// Python bindings: filled in by the viz work (issue 6 / 7).
#include "bindings.h"

namespace qkv::python {

void bind_viz(nb::module_& m) { (void)m; }

}  // namespace qkv::python
