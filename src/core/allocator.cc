// Large blocks (>= 1 MiB) are kept for reuse when freed, up to a cap. A fresh
// large block from the C library is new mmap'd memory: the kernel faults in
// and zeroes every page on first touch, ~4 ms per 64 MiB even in 2 MiB pages,
// which is as long as a 4096 x 64 x 4096 matmul takes to fill it. Reusing the
// block of the previous step's tensor of the same size skips all of that
// (PyTorch's CUDA caching allocator does the same for the same reason).
#include "core/allocator.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "qkv/error.h"
#include "qkv/tensor.h"

namespace qkv {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kCachedFrom = size_t{1} << 20;   // blocks this large are cached
constexpr size_t kCacheLimit = size_t{1} << 30;   // at most this much kept idle

struct BlockCache {
  std::mutex mutex;
  std::multimap<size_t, void*> free;  // capacity -> block
  size_t bytes = 0;
};

BlockCache& cache() {
  static BlockCache* c = new BlockCache;  // never destroyed: blocks may be freed at exit
  return *c;
}

// Large blocks are fresh mmap'd pages (glibc), faulted in on first write. With
// THP defrag in its default "madvise" mode only madvised ranges get 2 MiB
// pages on a fault: ~5 ms per 64 MiB here against ~30 ms in 4 KiB pages.
// Advisory, so the result is not checked.
void advise_huge_pages(void* data, size_t bytes) {
  if (bytes < 2 * kHugePage) return;
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + bytes) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
}

}  // namespace

namespace detail {

void* allocate_block(size_t nbytes, size_t& capacity) {
  // aligned_alloc wants a multiple of the alignment; never ask for 0 bytes.
  // Cached sizes are rounded to whole huge pages so that similar sizes share.
  const size_t unit = nbytes >= kCachedFrom ? kHugePage : kStorageAlignment;
  capacity = std::max(unit, (nbytes + unit - 1) / unit * unit);
  QKV_CHECK(capacity >= nbytes, "Storage::allocate: ", nbytes, " bytes is too large");
  if (capacity >= kCachedFrom) {
    BlockCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.free.find(capacity);
    if (it != c.free.end()) {
      void* data = it->second;
      c.free.erase(it);
      c.bytes -= capacity;
      return data;
    }
  }
  void* data = std::aligned_alloc(kStorageAlignment, capacity);
  QKV_CHECK(data != nullptr, "Storage::allocate: out of memory allocating ", nbytes, " bytes");
  advise_huge_pages(data, capacity);
  return data;
}

void free_block(void* data, size_t capacity) {
  if (capacity >= kCachedFrom) {
    BlockCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.bytes + capacity <= kCacheLimit) {
      c.free.emplace(capacity, data);
      c.bytes += capacity;
      return;
    }
  }
  std::free(data);
}

}  // namespace detail

size_t cached_storage_bytes() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.bytes;
}

void release_cached_storage() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto& [capacity, data] : c.free) std::free(data);
  c.free.clear();
  c.bytes = 0;
}

}  // namespace qkv
