// Python bindings: filled in by the bert work (issue 6 / 7).
#include "bindings.h"

namespace qkv::python {

void bind_bert(nb::module_& m) { (void)m; }

}  // namespace qkv::python
