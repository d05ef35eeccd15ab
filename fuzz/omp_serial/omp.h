// A sequential stand-in for the OpenMP runtime API, for the fuzz build only.
//
// The fuzz targets are built with clang, and this toolchain has no libomp
// (gcc's omp.h does not parse under clang). Compiled without -fopenmp, the
// `#pragma omp` regions in src/core run on one thread, and these functions
// answer as the OpenMP specification's stub routines do for sequential
// execution (OpenMP 5.2, Appendix: "Stubs for runtime library routines").
#pragma once

inline int omp_get_num_procs() {
  return 1;
}
inline void omp_set_num_threads(int) {}
inline int omp_get_max_threads() {
  return 1;
}
inline int omp_get_num_threads() {
  return 1;
}
inline int omp_get_thread_num() {
  return 0;
}
inline int omp_in_parallel() {
  return 0;
}
