// The CPU block allocator behind Storage::allocate. Internal.
#pragma once

#include <cstddef>

namespace qkv::detail {

// A 64-byte aligned block of at least `nbytes`; `capacity` receives its real
// size, to be passed back to free_block.
void* allocate_block(size_t nbytes, size_t& capacity);
void free_block(void* data, size_t capacity);

}  // namespace qkv::detail
