// The built-in mask and score modifiers. Each mask knows its visible region
// in closed form, so visibility() is O(1) (document: O(block edge)) and
// apply() fills runs of -inf rather than testing pairs one by one.
#include "qkv/modifiers.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

namespace qkv {
namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// Hides [0, a) and [b, cols) of a row, i.e. keeps keys [a, b) of the block.
void keep_run(float* row, int64_t cols, int64_t a, int64_t b) {
  a = std::clamp<int64_t>(a, 0, cols);
  b = std::clamp<int64_t>(b, a, cols);
  std::fill(row, row + a, kMinusInf);
  std::fill(row + b, row + cols, kMinusInf);
}

// A mask that keeps, per query q, one interval of keys [lo(q), hi(q)] with lo
// and hi non-decreasing in q: causal and sliding windows. Visibility of a
// block follows from its corner rows.
class IntervalMask : public MaskMod {
 public:
  IntervalMask(int64_t left, int64_t right) : left_(left), right_(right) {}
  bool allowed(int64_t, int64_t, int64_t q, int64_t kv) const override {
    return kv >= lo(q) && kv <= hi(q);
  }
  BlockVisibility visibility(const AttentionBlock& b) const override {
    if (b.q_begin >= b.q_end || b.kv_begin >= b.kv_end) return BlockVisibility::none;
    const int64_t first = b.q_begin, last = b.q_end - 1;
    if (b.kv_end - 1 < lo(first) || b.kv_begin > hi(last)) return BlockVisibility::none;
    if (b.kv_begin >= lo(last) && b.kv_end - 1 <= hi(first)) return BlockVisibility::all;
    return BlockVisibility::some;
  }
  void apply(const AttentionBlock& b, float* scores, int64_t ld) const override {
    const int64_t cols = b.kv_end - b.kv_begin;
    for (int64_t q = b.q_begin; q < b.q_end; ++q)
      keep_run(scores + (q - b.q_begin) * ld, cols, lo(q) - b.kv_begin,
               hi(q) == kUnbounded ? cols : hi(q) + 1 - b.kv_begin);
  }

 private:
  static constexpr int64_t kUnbounded = std::numeric_limits<int64_t>::max();
  int64_t lo(int64_t q) const { return left_ == kUnbounded ? 0 : q - left_; }
  int64_t hi(int64_t q) const { return right_ == kUnbounded ? kUnbounded : q + right_; }
  int64_t left_, right_;
};

class PrefixLmMask : public MaskMod {
 public:
  explicit PrefixLmMask(int64_t prefix) : prefix_(prefix) {}
  bool allowed(int64_t, int64_t, int64_t q, int64_t kv) const override {
    return kv < prefix_ || kv <= q;
  }
  BlockVisibility visibility(const AttentionBlock& b) const override {
    if (b.q_begin >= b.q_end || b.kv_begin >= b.kv_end) return BlockVisibility::none;
    if (b.kv_end <= prefix_ || b.kv_end - 1 <= b.q_begin) return BlockVisibility::all;
    if (b.kv_begin >= prefix_ && b.kv_begin > b.q_end - 1) return BlockVisibility::none;
    return BlockVisibility::some;
  }
  void apply(const AttentionBlock& b, float* scores, int64_t ld) const override {
    const int64_t cols = b.kv_end - b.kv_begin;
    for (int64_t q = b.q_begin; q < b.q_end; ++q)  // visible: [0, max(prefix, q + 1))
      keep_run(scores + (q - b.q_begin) * ld, cols, -b.kv_begin,
               std::max(prefix_, q + 1) - b.kv_begin);
  }

 private:
  int64_t prefix_;
};

class DocumentMask : public MaskMod {
 public:
  explicit DocumentMask(const Tensor& ids) : ids_(ids.to(DType::i64).contiguous()) {
    QKV_CHECK(ids.dim() == 2, "document_mask: document_ids must be [B, L], got ",
              shape_string(ids.shape()));
  }
  bool allowed(int64_t b, int64_t, int64_t q, int64_t kv) const override {
    return id(b, q) == id(b, kv);
  }
  void check(int64_t batch, int64_t, int64_t lq, int64_t lk) const override {
    QKV_CHECK(ids_.size(0) == batch && ids_.size(1) >= std::max(lq, lk),
              "document_mask: document_ids has shape ", shape_string(ids_.shape()),
              "; attention needs [B, L] = [", batch, ", ", std::max(lq, lk), "] (or longer rows)");
  }
  BlockVisibility visibility(const AttentionBlock& blk) const override {
    if (blk.q_begin >= blk.q_end || blk.kv_begin >= blk.kv_end) return BlockVisibility::none;
    const auto [qlo, qhi] = range(blk.batch, blk.q_begin, blk.q_end);
    const auto [klo, khi] = range(blk.batch, blk.kv_begin, blk.kv_end);
    if (qlo == qhi && klo == khi && qlo == klo) return BlockVisibility::all;
    // Ids are compared for equality: disjoint ranges share no document. (Packed
    // sequences have sorted ids, so most off-diagonal blocks are caught here.)
    if (qhi < klo || khi < qlo) return BlockVisibility::none;
    return BlockVisibility::some;
  }
  void apply(const AttentionBlock& blk, float* scores, int64_t ld) const override {
    for (int64_t q = blk.q_begin; q < blk.q_end; ++q) {
      float* row = scores + (q - blk.q_begin) * ld;
      const int64_t doc = id(blk.batch, q);
      for (int64_t kv = blk.kv_begin; kv < blk.kv_end; ++kv)
        if (id(blk.batch, kv) != doc) row[kv - blk.kv_begin] = kMinusInf;
    }
  }

 private:
  int64_t id(int64_t b, int64_t i) const {
    QKV_DCHECK(b < ids_.size(0) && i < ids_.size(1), "document_mask: index out of range");
    return ids_.data<int64_t>()[b * ids_.size(1) + i];
  }
  std::pair<int64_t, int64_t> range(int64_t b, int64_t begin, int64_t end) const {
    const int64_t* p = ids_.data<int64_t>() + b * ids_.size(1);
    const auto [lo, hi] = std::minmax_element(p + begin, p + end);
    return {*lo, *hi};
  }
  Tensor ids_;
};

class CustomMask : public MaskMod {
 public:
  explicit CustomMask(std::function<bool(int64_t, int64_t, int64_t, int64_t)> fn)
      : fn_(std::move(fn)) {}
  bool allowed(int64_t b, int64_t h, int64_t q, int64_t kv) const override {
    return fn_(b, h, q, kv);
  }

 private:
  std::function<bool(int64_t, int64_t, int64_t, int64_t)> fn_;
};

class AndMask : public MaskMod {
 public:
  AndMask(MaskModPtr a, MaskModPtr b) : a_(std::move(a)), b_(std::move(b)) {}
  void check(int64_t batch, int64_t heads, int64_t lq, int64_t lk) const override {
    a_->check(batch, heads, lq, lk);
    b_->check(batch, heads, lq, lk);
  }
  bool allowed(int64_t b, int64_t h, int64_t q, int64_t kv) const override {
    return a_->allowed(b, h, q, kv) && b_->allowed(b, h, q, kv);
  }
  BlockVisibility visibility(const AttentionBlock& blk) const override {
    const BlockVisibility x = a_->visibility(blk);
    if (x == BlockVisibility::none) return x;
    const BlockVisibility y = b_->visibility(blk);
    if (y == BlockVisibility::none) return y;
    return x == BlockVisibility::all && y == BlockVisibility::all ? BlockVisibility::all
                                                                  : BlockVisibility::some;
  }
  void apply(const AttentionBlock& blk, float* scores, int64_t ld) const override {
    a_->apply(blk, scores, ld);  // each hides its own pairs: together, the intersection
    b_->apply(blk, scores, ld);
  }

 private:
  MaskModPtr a_, b_;
};

class OrMask : public MaskMod {
 public:
  OrMask(MaskModPtr a, MaskModPtr b) : a_(std::move(a)), b_(std::move(b)) {}
  void check(int64_t batch, int64_t heads, int64_t lq, int64_t lk) const override {
    a_->check(batch, heads, lq, lk);
    b_->check(batch, heads, lq, lk);
  }
  bool allowed(int64_t b, int64_t h, int64_t q, int64_t kv) const override {
    return a_->allowed(b, h, q, kv) || b_->allowed(b, h, q, kv);
  }
  BlockVisibility visibility(const AttentionBlock& blk) const override {
    const BlockVisibility x = a_->visibility(blk);
    if (x == BlockVisibility::all) return x;
    const BlockVisibility y = b_->visibility(blk);
    if (y == BlockVisibility::all) return y;
    return x == BlockVisibility::none && y == BlockVisibility::none ? BlockVisibility::none
                                                                    : BlockVisibility::some;
  }
  void apply(const AttentionBlock& blk, float* scores, int64_t ld) const override {
    // Only one side can hide part of the block: then that side decides alone.
    const BlockVisibility x = a_->visibility(blk), y = b_->visibility(blk);
    if (x == BlockVisibility::none) return b_->apply(blk, scores, ld);
    if (y == BlockVisibility::none) return a_->apply(blk, scores, ld);
    MaskMod::apply(blk, scores, ld);
  }

 private:
  MaskModPtr a_, b_;
};

class BiasScore : public ScoreMod {
 public:
  explicit BiasScore(std::function<float(int64_t, int64_t, int64_t, int64_t)> fn)
      : fn_(std::move(fn)) {}
  double score(double s, int64_t b, int64_t h, int64_t q, int64_t kv) const override {
    return s + fn_(b, h, q, kv);
  }
  void apply(const AttentionBlock& blk, float* scores, int64_t ld) const override {
    for (int64_t q = blk.q_begin; q < blk.q_end; ++q) {
      float* row = scores + (q - blk.q_begin) * ld;
      for (int64_t kv = blk.kv_begin; kv < blk.kv_end; ++kv)
        row[kv - blk.kv_begin] += fn_(blk.batch, blk.head, q, kv);
    }
  }
  bool needs_raw_scores() const override { return false; }
  void backward(const AttentionBlock&, const float*, float*, int64_t) const override {}  // d/ds = 1

 private:
  std::function<float(int64_t, int64_t, int64_t, int64_t)> fn_;
};

class SoftcapScore : public ScoreMod {
 public:
  explicit SoftcapScore(float cap) : cap_(cap) {
    QKV_CHECK(cap > 0 && std::isfinite(cap), "softcap_score: cap must be positive, got ", cap);
  }
  double score(double s, int64_t, int64_t, int64_t, int64_t) const override {
    return cap_ * std::tanh(s / cap_);
  }
  double derivative(double s, int64_t, int64_t, int64_t, int64_t) const override {
    const double t = std::tanh(s / cap_);
    return 1.0 - t * t;
  }
  // In f32, as the fused kernels compute.
  void apply(const AttentionBlock& blk, float* scores, int64_t ld) const override {
    for (int64_t q = blk.q_begin; q < blk.q_end; ++q) {
      float* row = scores + (q - blk.q_begin) * ld;
      for (int64_t j = 0; j < blk.kv_end - blk.kv_begin; ++j) row[j] = cap_ * std::tanh(row[j] / cap_);
    }
  }
  void backward(const AttentionBlock& blk, const float* raw, float* grad,
                int64_t ld) const override {
    for (int64_t q = blk.q_begin; q < blk.q_end; ++q)
      for (int64_t j = 0; j < blk.kv_end - blk.kv_begin; ++j) {
        const int64_t at = (q - blk.q_begin) * ld + j;
        const float t = std::tanh(raw[at] / cap_);
        grad[at] *= 1.0f - t * t;
      }
  }

 private:
  float cap_;
};

// Elements a block spans in a buffer of row stride ld (the last row unpadded).
size_t block_size(const AttentionBlock& blk, int64_t ld) {
  return static_cast<size_t>((blk.q_end - blk.q_begin - 1) * ld + (blk.kv_end - blk.kv_begin));
}

// A modifier's block forms over f32 scores (the fused kernels') or f64 ones
// (the oracle's rows, pair by pair in double).
void apply_as(const ScoreMod& mod, const AttentionBlock& blk, float* scores, int64_t ld) {
  mod.apply(blk, scores, ld);
}
void apply_as(const ScoreMod& mod, const AttentionBlock& blk, double* scores, int64_t ld) {
  for (int64_t q = blk.q_begin; q < blk.q_end; ++q)
    for (int64_t kv = blk.kv_begin; kv < blk.kv_end; ++kv) {
      double& s = scores[(q - blk.q_begin) * ld + kv - blk.kv_begin];
      s = mod.score(s, blk.batch, blk.head, q, kv);
    }
}
void backward_as(const ScoreMod& mod, const AttentionBlock& blk, const float* raw, float* grad,
                 int64_t ld) {
  mod.backward(blk, raw, grad, ld);
}
void backward_as(const ScoreMod& mod, const AttentionBlock& blk, const double* raw, double* grad,
                 int64_t ld) {
  for (int64_t q = blk.q_begin; q < blk.q_end; ++q)
    for (int64_t kv = blk.kv_begin; kv < blk.kv_end; ++kv) {
      const int64_t at = (q - blk.q_begin) * ld + kv - blk.kv_begin;
      grad[at] *= mod.derivative(raw ? raw[at] : 0.0, blk.batch, blk.head, q, kv);
    }
}
void accumulate_into(ScoreModGradients& g, const AttentionBlock& blk, const float* raw,
                     const float* grad, int64_t ld) {
  g.accumulate(blk, raw, grad, ld);
}
void accumulate_into(ScoreModGradients& g, const AttentionBlock& blk, const double* raw,
                     const double* grad, int64_t ld) {
  g.accumulate_f64(blk, raw, grad, ld);
}

// (b . a)'s learned gradients: b's from the upstream gradient at a's output,
// a's from that gradient carried back through b.
class ChainGradients : public ScoreModGradients {
 public:
  ChainGradients(const ScoreMod& a, const ScoreMod& b, std::unique_ptr<ScoreModGradients> ag,
                 std::unique_ptr<ScoreModGradients> bg)
      : a_(a), b_(b), ag_(std::move(ag)), bg_(std::move(bg)) {}
  void accumulate(const AttentionBlock& blk, const float* raw, const float* grad,
                  int64_t ld) override {
    accumulate_as(blk, raw, grad, ld);
  }
  void accumulate_f64(const AttentionBlock& blk, const double* raw, const double* grad,
                      int64_t ld) override {
    accumulate_as(blk, raw, grad, ld);
  }
  std::vector<Tensor> finish() override {
    std::vector<Tensor> out = ag_ ? ag_->finish() : std::vector<Tensor>{};
    if (bg_)
      for (Tensor& t : bg_->finish()) out.push_back(std::move(t));
    return out;
  }

 private:
  template <class T>
  void accumulate_as(const AttentionBlock& blk, const T* raw, const T* grad, int64_t ld) {
    const size_t size = block_size(blk, ld);
    std::vector<T> mid;  // a's output, b's input
    if (raw != nullptr) {
      mid.assign(raw, raw + size);
      apply_as(a_, blk, mid.data(), ld);
    }
    const T* b_raw = raw != nullptr ? mid.data() : nullptr;
    if (bg_) accumulate_into(*bg_, blk, b_raw, grad, ld);
    if (ag_) {
      std::vector<T> g(grad, grad + size);
      backward_as(b_, blk, b_raw, g.data(), ld);
      accumulate_into(*ag_, blk, raw, g.data(), ld);
    }
  }
  const ScoreMod& a_;
  const ScoreMod& b_;
  std::unique_ptr<ScoreModGradients> ag_, bg_;
};

class ChainScore : public ScoreMod {
 public:
  ChainScore(ScoreModPtr a, ScoreModPtr b) : a_(std::move(a)), b_(std::move(b)) {}
  double score(double s, int64_t b, int64_t h, int64_t q, int64_t kv) const override {
    return b_->score(a_->score(s, b, h, q, kv), b, h, q, kv);
  }
  double derivative(double s, int64_t b, int64_t h, int64_t q, int64_t kv) const override {
    return b_->derivative(a_->score(s, b, h, q, kv), b, h, q, kv) * a_->derivative(s, b, h, q, kv);
  }
  bool needs_raw_scores() const override {
    return a_->needs_raw_scores() || b_->needs_raw_scores();
  }
  void apply(const AttentionBlock& blk, float* scores, int64_t ld) const override {
    a_->apply(blk, scores, ld);
    b_->apply(blk, scores, ld);
  }
  void backward(const AttentionBlock& blk, const float* raw, float* grad,
                int64_t ld) const override {
    if (raw == nullptr) {  // neither derivative depends on the scores
      b_->backward(blk, nullptr, grad, ld);
      a_->backward(blk, nullptr, grad, ld);
      return;
    }
    std::vector<float> mid(raw, raw + block_size(blk, ld));
    a_->apply(blk, mid.data(), ld);
    b_->backward(blk, mid.data(), grad, ld);
    a_->backward(blk, raw, grad, ld);
  }
  void check(int64_t batch, int64_t heads, int64_t lq, int64_t lk) const override {
    a_->check(batch, heads, lq, lk);
    b_->check(batch, heads, lq, lk);
  }
  std::vector<Tensor> parameters() const override {
    std::vector<Tensor> p = a_->parameters();
    for (Tensor& t : b_->parameters()) p.push_back(std::move(t));
    return p;
  }
  std::unique_ptr<ScoreModGradients> start_gradients(int64_t batch, int64_t heads, int64_t lq,
                                                     int64_t lk) const override {
    auto ag = a_->start_gradients(batch, heads, lq, lk);
    auto bg = b_->start_gradients(batch, heads, lq, lk);
    if (!ag && !bg) return nullptr;
    return std::make_unique<ChainGradients>(*a_, *b_, std::move(ag), std::move(bg));
  }

 private:
  ScoreModPtr a_, b_;
};

}  // namespace

BlockVisibility MaskMod::visibility(const AttentionBlock& b) const {
  bool any = false, every = true;
  for (int64_t q = b.q_begin; q < b.q_end; ++q)
    for (int64_t kv = b.kv_begin; kv < b.kv_end; ++kv) {
      const bool ok = allowed(b.batch, b.head, q, kv);
      any |= ok;
      every &= ok;
    }
  return !any ? BlockVisibility::none : every ? BlockVisibility::all : BlockVisibility::some;
}

void MaskMod::apply(const AttentionBlock& b, float* scores, int64_t ld) const {
  for (int64_t q = b.q_begin; q < b.q_end; ++q)
    for (int64_t kv = b.kv_begin; kv < b.kv_end; ++kv)
      if (!allowed(b.batch, b.head, q, kv))
        scores[(q - b.q_begin) * ld + kv - b.kv_begin] = kMinusInf;
}

void MaskMod::check(int64_t, int64_t, int64_t, int64_t) const {}

double ScoreMod::derivative(double, int64_t, int64_t, int64_t, int64_t) const {
  return 1.0;
}

void ScoreModGradients::accumulate_f64(const AttentionBlock& b, const double* raw,
                                       const double* grad, int64_t ld) {
  const size_t size = block_size(b, ld);
  std::vector<float> raw32, grad32(grad, grad + size);
  if (raw != nullptr) raw32.assign(raw, raw + size);
  accumulate(b, raw != nullptr ? raw32.data() : nullptr, grad32.data(), ld);
}

void ScoreMod::check(int64_t, int64_t, int64_t, int64_t) const {}

std::unique_ptr<ScoreModGradients> ScoreMod::start_gradients(int64_t, int64_t, int64_t,
                                                             int64_t) const {
  return nullptr;
}

void ScoreMod::apply(const AttentionBlock& b, float* scores, int64_t ld) const {
  for (int64_t q = b.q_begin; q < b.q_end; ++q) {
    float* row = scores + (q - b.q_begin) * ld;
    for (int64_t kv = b.kv_begin; kv < b.kv_end; ++kv)
      row[kv - b.kv_begin] =
          static_cast<float>(score(row[kv - b.kv_begin], b.batch, b.head, q, kv));
  }
}

void ScoreMod::backward(const AttentionBlock& b, const float* raw, float* grad, int64_t ld) const {
  for (int64_t q = b.q_begin; q < b.q_end; ++q)
    for (int64_t kv = b.kv_begin; kv < b.kv_end; ++kv) {
      const int64_t at = (q - b.q_begin) * ld + kv - b.kv_begin;
      grad[at] *= static_cast<float>(derivative(raw ? raw[at] : 0.0f, b.batch, b.head, q, kv));
    }
}

MaskModPtr causal_mask(int64_t offset) {
  return std::make_shared<IntervalMask>(std::numeric_limits<int64_t>::max(), offset);
}
MaskModPtr sliding_window_mask(int64_t left, int64_t right) {
  QKV_CHECK(left >= 0 && right >= 0, "sliding_window_mask: left and right must be >= 0, got ", left,
            " and ", right);
  return std::make_shared<IntervalMask>(left, right);
}
MaskModPtr prefix_lm_mask(int64_t prefix) {
  QKV_CHECK(prefix >= 0, "prefix_lm_mask: prefix must be >= 0, got ", prefix);
  return std::make_shared<PrefixLmMask>(prefix);
}
MaskModPtr document_mask(const Tensor& ids) {
  return std::make_shared<DocumentMask>(ids);
}
MaskModPtr custom_mask(std::function<bool(int64_t, int64_t, int64_t, int64_t)> fn) {
  return std::make_shared<CustomMask>(std::move(fn));
}
MaskModPtr mask_and(MaskModPtr a, MaskModPtr b) {
  return std::make_shared<AndMask>(std::move(a), std::move(b));
}
MaskModPtr mask_or(MaskModPtr a, MaskModPtr b) {
  return std::make_shared<OrMask>(std::move(a), std::move(b));
}
ScoreModPtr bias_score(std::function<float(int64_t, int64_t, int64_t, int64_t)> fn) {
  return std::make_shared<BiasScore>(std::move(fn));
}
ScoreModPtr softcap_score(float cap) {
  return std::make_shared<SoftcapScore>(cap);
}
ScoreModPtr score_chain(ScoreModPtr a, ScoreModPtr b) {
  return std::make_shared<ChainScore>(std::move(a), std::move(b));
}

}  // namespace qkv
