// The library's one thread pool.
//
// qkv's kernels and oneDNN share one OpenMP thread team (Debian's oneDNN is
// built with the OpenMP runtime), so n threads means n busy cores, never
// qkv's threads on top of oneDNN's. The size comes from set_num_threads(),
// else from the environment variable QKV_NUM_THREADS, else one per core.
#pragma once

namespace qkv {

void set_num_threads(int n);  // n >= 1, else qkv::Error
int num_threads();

}  // namespace qkv
