// Whether this test binary runs under AddressSanitizer (the debug sanitizer
// pass of scripts/test.sh). There the slowest sweeps keep their small and odd
// sizes and leave the large ones to the release run, which covers the same
// code, so the default test command stays within its time budget.
#pragma once

namespace qkv::test_support {

constexpr bool kSanitized =
#if defined(__SANITIZE_ADDRESS__)
    true;
#else
    false;
#endif

}  // namespace qkv::test_support
