// Learned relative positions: T5's bucketed bias and Shaw et al.'s clipped
// relative keys and values. Both run inside the fused kernels: T5 and Shaw's
// key term as score modifiers with learned gradients (ScoreModGradients), the
// value term as per-distance probability mass and an additive dP term.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "attention/dense.h"
#include "attention/plan.h"
#include "core/parallel.h"
#include "kernels/cpu/attention.h"
#include "qkv/matmul.h"
#include "qkv/ops.h"
#include "qkv/positions.h"

namespace qkv {
namespace {

// ---- T5 --------------------------------------------------------------------

void check_t5(const T5BiasOptions& o, const char* op) {
  const int64_t exact = (o.bidirectional ? o.num_buckets / 2 : o.num_buckets) / 2;
  QKV_CHECK(exact >= 1, op, ": num_buckets ", o.num_buckets, " is too small (at least ",
            o.bidirectional ? 4 : 2, o.bidirectional ? " when bidirectional)" : ")");
  QKV_CHECK(o.max_distance > exact, op, ": max_distance ", o.max_distance,
            " must exceed the exact range ", exact);
}

// transformers' formula, step by step in f32 as torch computes it, so the
// buckets agree at their boundaries too.
int64_t bucket_of(int64_t relative, const T5BiasOptions& o) {
  int64_t buckets = o.num_buckets, bucket = 0;
  if (o.bidirectional) {
    buckets /= 2;
    if (relative > 0) bucket += buckets;
    relative = relative < 0 ? -relative : relative;
  } else {
    relative = relative < 0 ? -relative : 0;
  }
  const int64_t exact = buckets / 2;
  if (relative < exact) return bucket + relative;
  const float ratio = static_cast<float>(relative) / static_cast<float>(exact);
  const float log_range = static_cast<float>(std::log(static_cast<double>(o.max_distance) / exact));
  const float large = std::log(ratio) / log_range * static_cast<float>(buckets - exact);
  return bucket + std::min<int64_t>(exact + static_cast<int64_t>(large), buckets - 1);
}

class T5BiasScore;

// d loss / d table: per (batch, head) bucket sums in double (one (batch,
// head) is only ever fed from one thread), summed over the batch at the end.
class T5Gradients : public ScoreModGradients {
 public:
  T5Gradients(const T5BiasScore& mod, int64_t batch, int64_t heads);
  void accumulate(const AttentionBlock& blk, const float*, const float* grad,
                  int64_t ld) override {
    accumulate_as(blk, grad, ld);
  }
  void accumulate_f64(const AttentionBlock& blk, const double*, const double* grad,
                      int64_t ld) override {
    accumulate_as(blk, grad, ld);
  }
  std::vector<Tensor> finish() override;

 private:
  template <class T>
  void accumulate_as(const AttentionBlock& blk, const T* grad, int64_t ld);
  const T5BiasScore& mod_;
  int64_t batch_, heads_;
  std::vector<double> sums_;  // [batch, heads, buckets]
};

class T5BiasScore : public ScoreMod {
 public:
  T5BiasScore(const Tensor& table, const T5BiasOptions& o) : options_(o) {
    const char* op = "t5_bias_score";
    check_t5(o, op);
    QKV_CHECK(table.defined() && table.dim() == 2 && table.size(0) == o.num_buckets &&
                  is_floating(table.dtype()),
              op, ": argument table must be a float [num_buckets = ", o.num_buckets,
              ", heads] tensor, got ",
              table.defined() ? shape_string(table.shape()) + " " + dtype_name(table.dtype())
                              : std::string("undefined"));
    table_ = table;
    f32_ = table.to(DType::f32).contiguous();
    f64_ = table.to(DType::f64).contiguous();
    // Buckets are constant beyond max_distance: tabulate [-max, max] once.
    for (int64_t r = -o.max_distance; r <= o.max_distance; ++r) buckets_.push_back(bucket_of(r, o));
  }
  int64_t heads() const { return table_.size(1); }
  const Tensor& table() const { return table_; }
  int64_t num_buckets() const { return options_.num_buckets; }
  int64_t bucket(int64_t relative) const {
    const int64_t m = options_.max_distance;
    return buckets_[static_cast<size_t>(std::clamp(relative, -m, m) + m)];
  }
  // Relative positions kv - q - offset over a block: [lo, hi].
  int64_t lowest(const AttentionBlock& b) const {
    return b.kv_begin - (b.q_end - 1) - options_.query_offset;
  }
  int64_t highest(const AttentionBlock& b) const {
    return b.kv_end - 1 - b.q_begin - options_.query_offset;
  }

  double score(double s, int64_t, int64_t h, int64_t q, int64_t kv) const override {
    return s + f64_.data<double>()[bucket(kv - q - options_.query_offset) * heads() + h];
  }
  bool needs_raw_scores() const override { return false; }
  void apply(const AttentionBlock& b, float* scores, int64_t ld) const override {
    // The bias depends on kv - q alone: one value per diagonal of the block,
    // then each row adds a contiguous run of them (vectorises).
    const int64_t lo = lowest(b), hi = highest(b), cols = b.kv_end - b.kv_begin;
    std::vector<float> by_diagonal(static_cast<size_t>(hi - lo + 1));
    const float* t = f32_.data<float>();
    for (int64_t r = lo; r <= hi; ++r) by_diagonal[r - lo] = t[bucket(r) * heads() + b.head];
    for (int64_t q = b.q_begin; q < b.q_end; ++q) {
      float* row = scores + (q - b.q_begin) * ld;
      const float* bias = by_diagonal.data() + (b.kv_begin - q - options_.query_offset - lo);
      for (int64_t j = 0; j < cols; ++j) row[j] += bias[j];
    }
  }
  void backward(const AttentionBlock&, const float*, float*, int64_t) const override {}  // d/ds = 1
  void check(int64_t, int64_t heads, int64_t, int64_t) const override {
    QKV_CHECK(heads == this->heads(), "t5_bias_score: the table has ", this->heads(),
              " heads; the attention has ", heads);
  }
  std::vector<Tensor> parameters() const override { return {table_}; }
  std::unique_ptr<ScoreModGradients> start_gradients(int64_t batch, int64_t heads, int64_t,
                                                     int64_t) const override {
    return std::make_unique<T5Gradients>(*this, batch, heads);
  }

 private:
  T5BiasOptions options_;
  Tensor table_;     // [num_buckets, heads] as given
  Tensor f32_, f64_;  // the table in f32 (the fused kernels) and f64 (the pair-wise form)
  std::vector<int64_t> buckets_;
};

T5Gradients::T5Gradients(const T5BiasScore& mod, int64_t batch, int64_t heads)
    : mod_(mod),
      batch_(batch),
      heads_(heads),
      sums_(static_cast<size_t>(batch * heads * mod.num_buckets()), 0.0) {}

template <class T>
void T5Gradients::accumulate_as(const AttentionBlock& b, const T* grad, int64_t ld) {
  // Sum each diagonal of the block, then the diagonals into their buckets.
  const int64_t lo = mod_.lowest(b), hi = mod_.highest(b), cols = b.kv_end - b.kv_begin;
  std::vector<T> diagonal(static_cast<size_t>(hi - lo + 1), T{0});
  for (int64_t q = b.q_begin; q < b.q_end; ++q) {
    const T* row = grad + (q - b.q_begin) * ld;
    T* acc = diagonal.data() + (b.q_end - 1 - q);  // column j is r = lo + (q_end - 1 - q) + j
    for (int64_t j = 0; j < cols; ++j) acc[j] += row[j];
  }
  double* sums = sums_.data() + (b.batch * heads_ + b.head) * mod_.num_buckets();
  for (int64_t r = lo; r <= hi; ++r) sums[mod_.bucket(r)] += diagonal[r - lo];
}

std::vector<Tensor> T5Gradients::finish() {
  const int64_t buckets = mod_.num_buckets();
  Tensor out = Tensor::zeros({buckets, heads_}, DType::f64);
  double* o = out.data<double>();
  for (int64_t r = 0; r < buckets; ++r)
    for (int64_t h = 0; h < heads_; ++h) {
      double total = 0;
      for (int64_t b = 0; b < batch_; ++b) total += sums_[(b * heads_ + h) * buckets + r];
      o[r * heads_ + h] = total;
    }
  return {mod_.table().dtype() == DType::f64 ? out : out.to(DType::f32)};
}

// ---- Shaw ------------------------------------------------------------------

// table[b, h, q, clip(kv - q - offset, -k, k) + k] per pair: Shaw's key term
// (table = scale q . a^K) as a score modifier, and the value term's dP
// contribution (table = dO . a^V). Every row of the table belongs to one
// (batch, head), so its gradient needs no synchronisation.
class ClippedRelativeBias : public ScoreMod {
 public:
  ClippedRelativeBias(Tensor table, int64_t k, int64_t offset)
      : table_(std::move(table)), k_(k), offset_(offset) {}

  double score(double s, int64_t b, int64_t h, int64_t q, int64_t kv) const override {
    const int64_t r = std::clamp(kv - q - offset_, -k_, k_) + k_;
    return s + (table_.dtype() == DType::f64 ? row<double>(b, h, q)[r] : row<float>(b, h, q)[r]);
  }
  bool needs_raw_scores() const override { return false; }
  void apply(const AttentionBlock& b, float* scores, int64_t ld) const override {
    for (int64_t q = b.q_begin; q < b.q_end; ++q) {
      const float* t = row<float>(b.batch, b.head, q);
      float* s = scores + (q - b.q_begin) * ld;
      const Runs runs = split(b, q);
      for (int64_t j = 0; j < runs.left; ++j) s[j] += t[0];
      const float* middle = t + (b.kv_begin - q - offset_ + k_);
      for (int64_t j = runs.left; j < runs.right; ++j) s[j] += middle[j];
      for (int64_t j = runs.right; j < runs.cols; ++j) s[j] += t[2 * k_];
    }
  }
  void backward(const AttentionBlock&, const float*, float*, int64_t) const override {}  // d/ds = 1
  void check(int64_t batch, int64_t heads, int64_t lq, int64_t) const override {
    QKV_CHECK(table_.size(0) == batch && table_.size(1) == heads && table_.size(2) == lq,
              "shaw_attention: internal table ", shape_string(table_.shape()),
              " does not match the scores [", batch, ", ", heads, ", ", lq, ", *]");
  }
  std::vector<Tensor> parameters() const override { return {table_}; }
  std::unique_ptr<ScoreModGradients> start_gradients(int64_t, int64_t, int64_t,
                                                     int64_t) const override;

  // Columns of a block row before which the distance is clipped to -k, and
  // from which it is clipped to +k.
  struct Runs {
    int64_t left, right, cols;
  };
  Runs split(const AttentionBlock& b, int64_t q) const {
    const int64_t cols = b.kv_end - b.kv_begin;
    const int64_t left = std::clamp(q + offset_ - k_ + 1 - b.kv_begin, int64_t{0}, cols);
    const int64_t right = std::clamp(q + offset_ + k_ - b.kv_begin, left, cols);
    return {left, right, cols};
  }
  // The table's entries of query q: 2k + 1 of them. f32 for the fused
  // kernels' block forms; f64 on the f64 path, which reads pairs.
  int64_t row_offset(int64_t b, int64_t h, int64_t q) const {
    return ((b * table_.size(1) + h) * table_.size(2) + q) * (2 * k_ + 1);
  }
  template <class T>
  const T* row(int64_t b, int64_t h, int64_t q) const {
    return table_.data<T>() + row_offset(b, h, q);
  }
  int64_t k() const { return k_; }
  int64_t offset() const { return offset_; }
  const Tensor& table() const { return table_; }

 private:
  Tensor table_;  // [B, H, Lq, 2k + 1] f32 or f64, contiguous
  int64_t k_, offset_;
};

class ClippedRelativeGradients : public ScoreModGradients {
 public:
  explicit ClippedRelativeGradients(const ClippedRelativeBias& mod)
      : mod_(mod), grad_(Tensor::zeros(mod.table().shape(), mod.table().dtype())) {}
  void accumulate(const AttentionBlock& b, const float*, const float* grad, int64_t ld) override {
    accumulate_as(b, grad, ld);
  }
  void accumulate_f64(const AttentionBlock& b, const double*, const double* grad,
                      int64_t ld) override {
    if (grad_.dtype() == DType::f64)
      accumulate_as(b, grad, ld);
    else
      ScoreModGradients::accumulate_f64(b, nullptr, grad, ld);  // rounds, to the f32 table's grad
  }
  std::vector<Tensor> finish() override { return {grad_}; }

 private:
  // grad_ holds T, as the table does.
  template <class T>
  void accumulate_as(const AttentionBlock& b, const T* grad, int64_t ld) {
    const int64_t k = mod_.k();
    for (int64_t q = b.q_begin; q < b.q_end; ++q) {
      T* t = grad_.data<T>() + mod_.row_offset(b.batch, b.head, q);
      const T* g = grad + (q - b.q_begin) * ld;
      const auto runs = mod_.split(b, q);
      T left = 0, right = 0;
      for (int64_t j = 0; j < runs.left; ++j) left += g[j];
      T* middle = t + (b.kv_begin - q - mod_.offset() + k);
      for (int64_t j = runs.left; j < runs.right; ++j) middle[j] += g[j];
      for (int64_t j = runs.right; j < runs.cols; ++j) right += g[j];
      t[0] += left;
      t[2 * k] += right;
    }
  }
  const ClippedRelativeBias& mod_;
  Tensor grad_;
};

std::unique_ptr<ScoreModGradients> ClippedRelativeBias::start_gradients(int64_t, int64_t, int64_t,
                                                                        int64_t) const {
  return std::make_unique<ClippedRelativeGradients>(*this);
}

// [B, H, L, C] contiguous copy of q / dO in the attention's layout, in dtype.
Tensor bhld_as(const Tensor& t, AttentionLayout layout, DType dtype) {
  return detail::like_bhld(t, layout).to(dtype).contiguous();
}

// rows [B, H, L, C] x m [C, N] (or m^T) -> [B, H, L, N]
Tensor rows_times(const Tensor& rows, const Tensor& m, bool transpose_m) {
  const Shape s = rows.shape();
  const Tensor out =
      matmul(rows.reshape({s[0] * s[1] * s[2], s[3]}), m, {.transpose_b = transpose_m});
  return out.reshape({s[0], s[1], s[2], out.size(1)});
}

// sum over (b, h, i) of a[b, h, i, :]^T b[b, h, i, :]: [Ca, Cb]
Tensor sum_outer(const Tensor& a, const Tensor& b) {
  const int64_t rows = a.numel() / a.size(3);
  return matmul(a.reshape({rows, a.size(3)}), b.reshape({rows, b.size(3)}), {.transpose_a = true});
}

struct ShawSetup {
  AttentionOptions options;  // the caller's, with the key term chained in front
  DType dtype = DType::f32;  // of the tables and the relative terms: f64 on the f64 path
  Tensor q;                  // [B, H, Lq, D] in dtype
  double scale = 1.0;        // the attention's, as it rounds it for dtype
};

ShawSetup setup_shaw(const Tensor& q, const Tensor& k, const Tensor& v, const ShawPositions& pos,
                     const AttentionOptions& options, const char* op) {
  QKV_CHECK(pos.max_distance >= 1, op, ": max_distance must be >= 1, got ", pos.max_distance);
  const detail::AttentionPlan plan = detail::plan_attention(q, k, v, options, op);
  const int64_t buckets = 2 * pos.max_distance + 1;
  auto check_table = [&](const Tensor& t, const char* name, int64_t width) {
    if (!t.defined()) return;
    QKV_CHECK(t.dim() == 2 && t.size(0) == buckets && t.size(1) == width && is_floating(t.dtype()),
              op, ": argument ", name, " has shape ", shape_string(t.shape()), " (",
              dtype_name(t.dtype()), "); expected a float [2 * max_distance + 1, ", width, "] = [",
              buckets, ", ", width, "]");
  };
  check_table(pos.key, "positions.key", plan.d);
  check_table(pos.value, "positions.value", plan.dv);
  QKV_CHECK(!pos.value.defined() || options.dropout == 0.0, op, ": dropout (", options.dropout,
            ") is not supported with relative value embeddings");
  ShawSetup s{options, plan.result_dtype()};  // f64 on the attention's f64 path
  s.q = bhld_as(q, options.layout, s.dtype);
  s.scale = s.dtype == DType::f64 ? plan.scale_f64 : plan.scale;
  s.options.return_lse = true;
  if (pos.key.defined()) {
    // scale * q_i . a^K_r for every row and distance: the key term's table.
    Tensor table = scale(rows_times(s.q, pos.key.to(s.dtype), /*transpose_m=*/true), s.scale);
    ScoreModPtr key =
        std::make_shared<ClippedRelativeBias>(std::move(table), pos.max_distance, pos.query_offset);
    s.options.score_mod = options.score_mod ? score_chain(key, options.score_mod) : key;
  }
  return s;
}

// value_weights() of an f64 plan, by definition: each row's probabilities
// in double (the oracle's), binned by clipped distance.
Tensor value_weights_f64(const detail::AttentionPlan& plan, const ShawPositions& pos,
                         const AttentionResult& result) {
  const int64_t kd = pos.max_distance, width = 2 * kd + 1;
  Tensor w = Tensor::zeros({plan.batch, plan.heads, plan.lq, width}, DType::f64);
  detail::parallel_for(0, plan.batch * plan.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> p(static_cast<size_t>(plan.lk));
    for (int64_t bh = begin; bh < end; ++bh) {
      const kernels::AttentionSlice s = plan.slice(bh / plan.heads, bh % plan.heads, result);
      for (int64_t i = 0; i < plan.lq; ++i) {
        detail::probabilities(s, i, p);
        double* out = w.data<double>() + (bh * plan.lq + i) * width;
        for (int64_t j = 0; j < plan.lk; ++j)
          out[std::clamp(j - i - pos.query_offset, -kd, kd) + kd] += p[j];
      }
    }
  });
  return w;
}

// W[b, h, i, r + k]: the probability mass of row i at clipped distance r.
// Distances inside (-k, k) are single keys, read from the recomputed
// probabilities of the band around the diagonal; the mass clipped to -k comes
// from the log-sum-exp of the keys left of the band (one more masked forward,
// skipped when the mask leaves no key right of the band), the rest is +k.
Tensor value_weights(const Tensor& q, const Tensor& k, const Tensor& v, const ShawPositions& pos,
                     const ShawSetup& setup, const AttentionResult& result, const char* op) {
  const detail::AttentionPlan plan = detail::plan_attention(q, k, v, setup.options, op);
  if (setup.dtype == DType::f64) return value_weights_f64(plan, pos, result);
  const int64_t kd = pos.max_distance, width = 2 * kd + 1, off = pos.query_offset;
  Tensor w = Tensor::zeros({plan.batch, plan.heads, plan.lq, width});
  // Keys right of the band (distance >= k) are visible only without a causal
  // diagonal closer than k.
  const bool right_empty =
      plan.causal_diagonal != kernels::kNoCausal && plan.causal_diagonal - off < kd;
  Tensor lse_left;
  if (!right_empty) {
    AttentionOptions left = setup.options;
    left.weights_heads.clear();
    const MaskModPtr before_band = causal_mask(off - kd);  // kv - q - off <= -k
    left.mask_mod = left.mask_mod ? mask_and(left.mask_mod, before_band) : before_band;
    const Tensor no_values =
        Tensor::zeros({1, 1, 1, 1}).expand({plan.batch, plan.kv_heads, plan.lk, 1});
    lse_left = attention(q, k, detail::like_bhld(no_values, setup.options.layout), left).lse;
  }
  const int64_t tiles = (plan.lq + kernels::kAttentionRowTile - 1) / kernels::kAttentionRowTile;
  const size_t workspace_floats = kernels::AttentionWorkspaceFloats(plan.d, plan.dv);
  detail::parallel_for(0, plan.batch * plan.heads * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> workspace(workspace_floats);
    std::vector<float> band;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / tiles, b = bh / plan.heads, h = bh % plan.heads;
      const int64_t i0 = task % tiles * kernels::kAttentionRowTile;
      const int64_t i1 = std::min(plan.lq, i0 + kernels::kAttentionRowTile);
      const kernels::AttentionSlice slice = plan.slice(b, h, result);
      const int64_t key_begin = std::clamp(i0 + off - kd + 1, int64_t{0}, plan.lk);
      const int64_t key_end = std::clamp(i1 - 1 + off + kd, key_begin, plan.lk);
      const int64_t band_width = key_end - key_begin;
      band.assign(static_cast<size_t>((i1 - i0) * std::max<int64_t>(band_width, 1)), 0.0f);
      if (band_width > 0)
        kernels::AttentionProbabilities(slice, i0, i1, key_begin, key_end, band.data(), band_width,
                                        workspace.data());
      for (int64_t i = i0; i < i1; ++i) {
        float* out = w.data<float>() + (bh * plan.lq + i) * width;
        double inside = 0;
        for (int64_t r = -kd + 1; r < kd; ++r) {
          const int64_t j = i + off + r;
          if (j < key_begin || j >= key_end) continue;
          out[r + kd] = band[(i - i0) * band_width + (j - key_begin)];
          inside += out[r + kd];
        }
        const float lse = slice.lse[i];
        const double mass = std::isfinite(lse) ? 1.0 : 0.0;
        double left = 0;
        if (lse_left.defined()) {
          const float l = lse_left.data<float>()[bh * plan.lq + i];
          left =
              std::isfinite(l) && std::isfinite(lse) ? std::exp(static_cast<double>(l) - lse) : 0.0;
        } else {
          left = mass - inside;
        }
        out[0] = static_cast<float>(std::max(0.0, left));
        out[2 * kd] = right_empty ? 0.0f : static_cast<float>(std::max(0.0, mass - inside - left));
      }
    }
  });
  return w;
}

}  // namespace

int64_t t5_relative_bucket(int64_t relative_position, const T5BiasOptions& options) {
  check_t5(options, "t5_relative_bucket");
  return bucket_of(relative_position, options);
}

ScoreModPtr t5_bias_score(const Tensor& table, const T5BiasOptions& options) {
  return std::make_shared<T5BiasScore>(table, options);
}

ShawResult shaw_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                          const ShawPositions& positions, const AttentionOptions& options) {
  const char* op = "shaw_attention";
  const ShawSetup setup = setup_shaw(q, k, v, positions, options, op);
  ShawResult r;
  r.attention = attention(q, k, v, setup.options);
  if (positions.value.defined()) {
    r.value_weights = value_weights(q, k, v, positions, setup, r.attention, op);
    // out_i += sum_r W[i, r] a^V_r, in the output's layout.
    const Tensor term = rows_times(r.value_weights, positions.value.to(setup.dtype), false);
    r.attention.output = add(r.attention.output, detail::like_bhld(term, options.layout));
  }
  return r;
}

ShawGradients shaw_attention_backward(const Tensor& grad_output, const Tensor& q, const Tensor& k,
                                      const Tensor& v, const ShawPositions& positions,
                                      const ShawResult& forward, const AttentionOptions& options,
                                      bool mask_requires_grad) {
  const char* op = "shaw_attention_backward";
  const ShawSetup setup = setup_shaw(q, k, v, positions, options, op);
  ShawGradients g;
  ScoreModPtr value_term;
  Tensor dout;
  if (positions.value.defined()) {
    QKV_CHECK(forward.value_weights.defined(), op,
              ": forward.value_weights is missing; pass the result of shaw_attention()");
    dout = bhld_as(grad_output, options.layout, setup.dtype);
    // out_i = ... + sum_r W[i, r] a^V_r: d a^V = W^T dO, and dP_ij gains dO_i . a^V_r(i, j).
    g.grad_value = sum_outer(forward.value_weights, dout);
    value_term = std::make_shared<ClippedRelativeBias>(
        rows_times(dout, positions.value.to(setup.dtype), /*transpose_m=*/true),
        positions.max_distance, positions.query_offset);
  }
  g.attention = detail::attention_backward_with(grad_output, q, k, v, forward.attention,
                                                setup.options, mask_requires_grad, value_term, op);
  if (positions.key.defined()) {
    // The key term's table T = scale q a^K^T: dq += scale dT a^K, d a^K = scale dT^T q.
    auto& grads = g.attention.grad_score_mod;
    const Tensor dt = grads.front();
    grads.erase(grads.begin());
    g.grad_key = scale(sum_outer(dt, setup.q), setup.scale);
    const Tensor dq = scale(rows_times(dt, positions.key.to(setup.dtype), false), setup.scale);
    g.attention.grad_q = add(g.attention.grad_q, detail::like_bhld(dq, options.layout));
  }
  return g;
}

}  // namespace qkv
