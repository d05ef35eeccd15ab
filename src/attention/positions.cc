// Sinusoidal tables, ALiBi and rotary embeddings.
#include "qkv/positions.h"

#include <cmath>
#include <cstdlib>

#include "core/parallel.h"

namespace qkv {
namespace {

class AlibiScore : public ScoreMod {
 public:
  AlibiScore(std::vector<float> slopes, int64_t offset) : slopes_(std::move(slopes)), offset_(offset) {}
  double score(double s, int64_t, int64_t h, int64_t q, int64_t kv) const override {
    return s - slope(h) * static_cast<double>(std::llabs(q + offset_ - kv));
  }
  bool needs_raw_scores() const override { return false; }
  void apply(const AttentionBlock& b, float* scores, int64_t ld) const override {
    const float m = slope(b.head);
    const int32_t cols = static_cast<int32_t>(b.kv_end - b.kv_begin);
    for (int64_t q = b.q_begin; q < b.q_end; ++q) {
      float* row = scores + (q - b.q_begin) * ld;
      // Distances in f32 (exact below 2^24), so the loop vectorises.
      const float first = static_cast<float>(q + offset_ - b.kv_begin);
      for (int32_t j = 0; j < cols; ++j) row[j] -= m * std::fabs(first - static_cast<float>(j));
    }
  }
  void backward(const AttentionBlock&, const float*, float*, int64_t) const override {}  // d/ds = 1

 private:
  float slope(int64_t h) const {
    QKV_CHECK(h < static_cast<int64_t>(slopes_.size()), "alibi_score: head ", h, " has no slope (",
              slopes_.size(), " slopes)");
    return slopes_[h];
  }
  std::vector<float> slopes_;
  int64_t offset_;
};

}  // namespace

Tensor sinusoidal_positions(int64_t length, int64_t dim, double base) {
  QKV_CHECK(length >= 0 && dim > 0, "sinusoidal_positions: length ", length, " and dim ", dim,
            " must be >= 0 and > 0");
  QKV_CHECK(base > 0, "sinusoidal_positions: base must be positive, got ", base);
  Tensor pe = Tensor::empty({length, dim});
  float* out = pe.data<float>();
  for (int64_t pos = 0; pos < length; ++pos)
    for (int64_t c = 0; c < dim; ++c) {
      const double angle = pos / std::pow(base, static_cast<double>(c / 2 * 2) / dim);
      out[pos * dim + c] = static_cast<float>(c % 2 == 0 ? std::sin(angle) : std::cos(angle));
    }
  return pe;
}

std::vector<float> alibi_slopes(int64_t heads) {
  QKV_CHECK(heads > 0, "alibi_slopes: heads must be positive, got ", heads);
  auto power_of_two = [](int64_t n) {
    std::vector<float> s;
    const double start = std::pow(2.0, -8.0 / n);
    for (int64_t i = 1; i <= n; ++i) s.push_back(static_cast<float>(std::pow(start, i)));
    return s;
  };
  int64_t closest = 1;
  while (closest * 2 <= heads) closest *= 2;
  std::vector<float> slopes = power_of_two(closest);
  if (closest < heads) {
    const std::vector<float> extra = power_of_two(2 * closest);
    for (int64_t i = 0; static_cast<int64_t>(slopes.size()) < heads; i += 2) slopes.push_back(extra[i]);
  }
  return slopes;
}

ScoreModPtr alibi_score(std::vector<float> slopes, int64_t query_offset) {
  QKV_CHECK(!slopes.empty(), "alibi_score: no slopes");
  return std::make_shared<AlibiScore>(std::move(slopes), query_offset);
}

namespace {

// Rotates every (i, partner) pair of every row of x by +-angle(pos, i), in
// f32, or in f64 (T = double) for an f64 x.
template <class T>
Tensor rotate_as(const Tensor& x, const RotaryOptions& o, double sign, const char* op) {
  QKV_CHECK(x.defined() && x.dim() == 4, op, ": argument x must be 4-D, got ",
            x.defined() ? shape_string(x.shape()) : "undefined");
  QKV_CHECK(is_floating(x.dtype()), op, ": argument x has dtype ", dtype_name(x.dtype()),
            "; expected a float dtype");
  const Tensor bhld = (o.layout == AttentionLayout::bhld ? x : x.permute({0, 2, 1, 3}));
  const int64_t d = bhld.size(3), len = bhld.size(2);
  const int64_t rd = o.rotary_dim == 0 ? d : o.rotary_dim;
  QKV_CHECK(rd > 0 && rd <= d && rd % 2 == 0, op, ": rotary_dim ", rd, " must be even and <= ", d);
  QKV_CHECK(o.base > 0 && o.scaling > 0, op, ": base ", o.base, " and scaling ", o.scaling,
            " must be positive");
  const Tensor in = bhld.to(dtype_of<T>::value).contiguous();
  Tensor out = in.clone();
  const int64_t half = rd / 2, rows = bhld.size(0) * bhld.size(1);
  // cos / sin per (position, pair), computed once in double.
  std::vector<T> cs(static_cast<size_t>(len * half)), sn(cs.size());
  for (int64_t p = 0; p < len; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double pos = (p + o.offset) / o.scaling;
      const double angle = pos * std::pow(o.base, -2.0 * i / rd);
      cs[p * half + i] = static_cast<T>(std::cos(angle));
      sn[p * half + i] = static_cast<T>(sign * std::sin(angle));
    }
  const T* src = in.data<T>();
  T* dst = out.data<T>();
  detail::parallel_for(0, rows * len, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r % len;
      const T* a = src + r * d;
      T* y = dst + r * d;
      for (int64_t i = 0; i < half; ++i) {
        // rotate_half pairs (i, i + half); interleaved pairs (2i, 2i + 1).
        const int64_t j0 = o.style == RotaryStyle::rotate_half ? i : 2 * i;
        const int64_t j1 = o.style == RotaryStyle::rotate_half ? i + half : 2 * i + 1;
        const T c = cs[p * half + i], s = sn[p * half + i];
        y[j0] = a[j0] * c - a[j1] * s;
        y[j1] = a[j1] * c + a[j0] * s;
      }
    }
  });
  return o.layout == AttentionLayout::bhld ? out : out.permute({0, 2, 1, 3}).contiguous();
}

Tensor rotate(const Tensor& x, const RotaryOptions& o, double sign, const char* op) {
  if (x.defined() && x.dtype() == DType::f64) return rotate_as<double>(x, o, sign, op);
  return rotate_as<float>(x, o, sign, op);
}

}  // namespace

Tensor rotary_embedding(const Tensor& x, const RotaryOptions& options) {
  return rotate(x, options, 1.0, "rotary_embedding");
}

Tensor rotary_embedding_backward(const Tensor& grad, const RotaryOptions& options) {
  return rotate(grad, options, -1.0, "rotary_embedding_backward");
}

}  // namespace qkv
