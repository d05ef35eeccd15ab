// A C entry point for timing one AdamW step of a qkv build's optimizer code
// from Python (bench/optim.py): compiled together with an older revision's
// src/train/optim.cc into a small shared library that uses the current
// libqkv.so for everything else, so the "before" and "after" updates run in
// the same process, on the same thread team, over the same data.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qkv/optim.h"
#include "qkv/tensor.h"

namespace {

struct Model {
  std::unique_ptr<qkv::AdamW> opt;
};

// Wraps n floats of the caller's memory (a NumPy array that outlives the handle).
qkv::Tensor Borrow(float* data, int64_t n) {
  auto storage = qkv::Storage::wrap(data, static_cast<size_t>(n) * sizeof(float), [] {});
  return qkv::Tensor::from_storage(storage, 0, {n}, {1}, qkv::DType::f32);
}

}  // namespace

extern "C" {

// AdamW (torch defaults, weight_decay 0.01) over `count` parameters of
// sizes[k] floats at params[k], whose gradients are at grads[k].
void* qkv_bench_adamw_new(int count, const int64_t* sizes, float** params, float** grads,
                          double lr) {
  std::vector<qkv::NamedParameter> named;
  for (int k = 0; k < count; ++k)
    named.push_back(
        {"p" + std::to_string(k), Borrow(params[k], sizes[k]), Borrow(grads[k], sizes[k])});
  auto* model = new Model;
  qkv::AdamOptions options{.lr = lr, .weight_decay = 1e-2};
  model->opt = std::make_unique<qkv::AdamW>(std::move(named), options);
  return model;
}

void qkv_bench_step(void* model) {
  static_cast<Model*>(model)->opt->step();
}

void qkv_bench_free(void* model) {
  delete static_cast<Model*>(model);
}

}  // extern "C"
