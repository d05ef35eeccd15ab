// The sparse attention patterns of qkv/sparse_masks.h. Every visibility() is
// exact and works on the block's corners or on the layout blocks it covers
// (prefix sums, next / previous index tables), never pair by pair; every
// apply() hides runs of keys with std::fill.
#include "qkv/sparse_masks.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <limits>
#include <string>
#include <utility>

namespace qkv {
namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kNever = std::numeric_limits<int64_t>::max();
// Window extents beyond this could overflow q + extent; no sequence is that long.
constexpr int64_t kMaxExtent = int64_t{1} << 62;
constexpr int64_t kMaxRandomBlocks = 64;

int64_t floor_div(int64_t a, int64_t b) {
  return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}
int64_t floor_mod(int64_t a, int64_t b) {
  return a - floor_div(a, b) * b;
}
// Whether [a, b] holds a multiple of m (m > 0).
bool has_multiple(int64_t a, int64_t b, int64_t m) {
  return a <= b && floor_div(b, m) * m >= a;
}
// |[a0, a1] ∩ [b0, b1]|
int64_t overlap(int64_t a0, int64_t a1, int64_t b0, int64_t b1) {
  return std::max<int64_t>(0, std::min(a1, b1) - std::max(a0, b0) + 1);
}

bool empty_block(const AttentionBlock& b) {
  return b.q_begin >= b.q_end || b.kv_begin >= b.kv_end;
}

// One row of a block's scores (keys [k0, k1)): hides absolute keys [a, b).
struct Row {
  float* s;
  int64_t k0, k1;
  void hide(int64_t a, int64_t b) const {
    a = std::max(a, k0);
    b = std::min(b, k1);
    if (a < b) std::fill(s + (a - k0), s + (b - k0), kMinusInf);
  }
  void keep_at_most(int64_t last) const { hide(last + 1, k1); }
};

// Calls fn(Row, q) for every row of the block.
template <class Fn>
void for_rows(const AttentionBlock& b, float* scores, int64_t ld, Fn&& fn) {
  for (int64_t q = b.q_begin; q < b.q_end; ++q)
    fn(Row{scores + (q - b.q_begin) * ld, b.kv_begin, b.kv_end}, q);
}

BlockVisibility classify(bool any, bool all) {
  return !any ? BlockVisibility::none : all ? BlockVisibility::all : BlockVisibility::some;
}

// A bool or integer 0/1 tensor as flags, row-major.
std::vector<uint8_t> flags_of(const Tensor& t, const char* op, const char* name) {
  QKV_CHECK(t.defined(), op, ": argument ", name, " is undefined");
  QKV_CHECK(t.dtype() == DType::boolean || t.dtype() == DType::i32 || t.dtype() == DType::i64, op,
            ": argument ", name, " must be bool (or integer 0/1), got ", dtype_name(t.dtype()));
  const std::vector<double> values = t.to_values();
  std::vector<uint8_t> flags(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    QKV_CHECK(values[i] == 0 || values[i] == 1, op, ": argument ", name,
              " must hold only 0 and 1, got ", values[i], " at flat index ", i);
    flags[i] = values[i] != 0;
  }
  return flags;
}

// ---- dilated window ---------------------------------------------------------

// Longformer's dilated window, in d = kv - q: d in [lo, hi], d % dilation == 0.
class DilatedWindowMask : public MaskMod {
 public:
  DilatedWindowMask(int64_t left, int64_t right, int64_t dilation)
      : lo_(-left * dilation), hi_(right * dilation), step_(dilation) {}
  bool allowed(int64_t, int64_t, int64_t q, int64_t kv) const override {
    const int64_t d = kv - q;
    return d >= lo_ && d <= hi_ && floor_mod(d, step_) == 0;
  }
  BlockVisibility visibility(const AttentionBlock& b) const override {
    if (empty_block(b)) return BlockVisibility::none;
    // A rectangle of pairs meets every d between its extreme diagonals.
    const int64_t dmin = b.kv_begin - (b.q_end - 1), dmax = b.kv_end - 1 - b.q_begin;
    const bool any = has_multiple(std::max(dmin, lo_), std::min(dmax, hi_), step_);
    const bool all =
        dmin >= lo_ && dmax <= hi_ && (step_ == 1 || (dmin == dmax && floor_mod(dmin, step_) == 0));
    return classify(any, all);
  }
  void apply(const AttentionBlock& b, float* scores, int64_t ld) const override {
    for_rows(b, scores, ld, [&](const Row& row, int64_t q) {
      const int64_t first = q + lo_, last = q + hi_;
      row.hide(row.k0, first);
      row.keep_at_most(last);
      if (step_ == 1) return;
      // Inside the window only keys q + m * step stay: hide the gaps between them.
      const int64_t start = std::max(first, row.k0), end = std::min(last + 1, row.k1);
      if (start >= end) return;
      int64_t kept = start + floor_mod(q - start, step_);
      row.hide(start, kept);
      for (; kept < end; kept += step_) row.hide(kept + 1, std::min(kept + step_, end));
    });
  }

 private:
  int64_t lo_, hi_, step_;
};

// ---- Sparse Transformer -------------------------------------------------------

// Fixed (Child et al. 2019, eq. for A(1) ∪ A(2)): the query's own block, plus
// the last `summary` keys of every block.
class SparseFixedMask : public MaskMod {
 public:
  SparseFixedMask(int64_t block, int64_t summary, bool causal)
      : c_(block), first_summary_(block - summary), causal_(causal) {}
  bool allowed(int64_t, int64_t, int64_t q, int64_t kv) const override {
    if (causal_ && kv > q) return false;
    return kv / c_ == q / c_ || kv % c_ >= first_summary_;
  }
  BlockVisibility visibility(const AttentionBlock& b) const override {
    if (empty_block(b)) return BlockVisibility::none;
    const int64_t q0 = b.q_begin, q_last = b.q_end - 1, k0 = b.kv_begin, k_last = b.kv_end - 1;
    // Some pair is visible through a summary key (causal: one <= the last query)
    // or through a block shared by a query and a key (causal: and k0 <= the last
    // query; then the shared block's latest query and earliest key qualify).
    const bool summary = next_summary(k0) <= (causal_ ? std::min(k_last, q_last) : k_last);
    const bool shared = q0 / c_ <= k_last / c_ && k0 / c_ <= q_last / c_;
    const bool any = summary || (shared && (!causal_ || k0 <= q_last));
    if (!any) return BlockVisibility::none;
    if (causal_ && k_last > q0) return BlockVisibility::some;
    // All visible: every non-summary key lies in the one block all queries share.
    const int64_t first = next_plain(k0), last = prev_plain(k_last);
    const bool all =
        first > last || (q0 / c_ == q_last / c_ && first / c_ == q0 / c_ && last / c_ == q0 / c_);
    return classify(true, all);
  }
  void apply(const AttentionBlock& b, float* scores, int64_t ld) const override {
    for_rows(b, scores, ld, [&](const Row& row, int64_t q) {
      const int64_t own = q / c_;
      for (int64_t j = row.k0 / c_; j * c_ < row.k1; ++j)
        if (j != own) row.hide(j * c_, j * c_ + first_summary_);
      if (causal_) row.keep_at_most(q);
    });
  }

 private:
  // The first key >= x that is (not) a summary key, or kNever; the last plain key <= x, or -1.
  int64_t next_summary(int64_t x) const {
    if (first_summary_ == c_) return kNever;
    const int64_t r = x % c_;
    return r >= first_summary_ ? x : x - r + first_summary_;
  }
  int64_t next_plain(int64_t x) const {
    if (first_summary_ == 0) return kNever;
    return x % c_ < first_summary_ ? x : (x / c_ + 1) * c_;
  }
  int64_t prev_plain(int64_t x) const {
    if (first_summary_ == 0) return -1;
    const int64_t r = x % c_;
    return r < first_summary_ ? x : x - r + first_summary_ - 1;
  }
  int64_t c_, first_summary_;
  bool causal_;
};

// Strided: the previous (and next) stride - 1 keys, plus every stride-th key.
class SparseStridedMask : public MaskMod {
 public:
  SparseStridedMask(int64_t stride, bool causal) : l_(stride), causal_(causal) {}
  bool allowed(int64_t, int64_t, int64_t q, int64_t kv) const override {
    const int64_t d = q - kv;
    if (causal_ && d < 0) return false;
    return (d < l_ && d > -l_) || floor_mod(d, l_) == 0;
  }
  BlockVisibility visibility(const AttentionBlock& b) const override {
    if (empty_block(b)) return BlockVisibility::none;
    int64_t dmin = b.q_begin - (b.kv_end - 1);
    const int64_t dmax = b.q_end - 1 - b.kv_begin;
    const bool cut = causal_ && dmin < 0;  // some pairs have kv > q
    if (causal_) dmin = std::max<int64_t>(dmin, 0);
    const bool any =
        dmin <= dmax && (overlap(dmin, dmax, 1 - l_, l_ - 1) > 0 || has_multiple(dmin, dmax, l_));
    if (!any) return BlockVisibility::none;
    if (cut) return BlockVisibility::some;
    // Hidden: |d| >= l and d not a multiple. Outside the band the interval may
    // only touch a single multiple of l.
    auto only_multiple = [&](int64_t a, int64_t z) {
      return a > z || (a == z && floor_mod(a, l_) == 0);
    };
    const bool all = l_ == 1 || (only_multiple(std::max(dmin, l_), dmax) &&
                                 only_multiple(dmin, std::min(dmax, -l_)));
    return classify(true, all);
  }
  void apply(const AttentionBlock& b, float* scores, int64_t ld) const override {
    for_rows(b, scores, ld, [&](const Row& row, int64_t q) {
      if (causal_) row.keep_at_most(q);
      if (l_ == 1) return;
      // Between consecutive multiples (keys q + m l) hide what is outside the band.
      const int64_t band_lo = q - l_ + 1, band_hi = q + l_ - 1;
      auto hide_gap = [&](int64_t a, int64_t z) {  // keys [a, z)
        row.hide(a, std::min(z, band_lo));
        row.hide(std::max(a, band_hi + 1), z);
      };
      int64_t kept = row.k0 + floor_mod(q - row.k0, l_);
      hide_gap(row.k0, kept);
      for (; kept < row.k1; kept += l_) hide_gap(kept + 1, std::min(kept + l_, row.k1));
    });
  }

 private:
  int64_t l_;
  bool causal_;
};

// ---- block-sparse layout ----------------------------------------------------------

class BlockSparseMask : public MaskMod {
 public:
  BlockSparseMask(const Tensor& layout, int64_t block_q, int64_t block_k)
      : bq_(block_q), bk_(block_k) {
    QKV_CHECK(block_q >= 1 && block_k >= 1,
              "block_sparse_mask: block_q and block_k must be >= 1, got ", block_q, " and ",
              block_k);
    QKV_CHECK(layout.defined() && (layout.dim() == 2 || layout.dim() == 3),
              "block_sparse_mask: layout must be [H, nq_blocks, nk_blocks] or [nq_blocks, "
              "nk_blocks], got ",
              layout.defined() ? shape_string(layout.shape()) : std::string("undefined"));
    const std::vector<uint8_t> cells = flags_of(layout, "block_sparse_mask", "layout");
    heads_ = layout.dim() == 3 ? layout.size(0) : 1;
    nq_ = layout.size(-2);
    nk_ = layout.size(-1);
    shape_ = layout.shape();
    // Per head, counts of visible cells in [0, i) x [0, j): any block's count in O(1).
    sums_.assign(static_cast<size_t>(heads_ * (nq_ + 1) * (nk_ + 1)), 0);
    for (int64_t h = 0; h < heads_; ++h)
      for (int64_t i = 0; i < nq_; ++i)
        for (int64_t j = 0; j < nk_; ++j)
          sums_[at(h, i + 1, j + 1)] = cells[(h * nq_ + i) * nk_ + j] + sums_[at(h, i, j + 1)] +
                                       sums_[at(h, i + 1, j)] - sums_[at(h, i, j)];
  }
  void check(int64_t, int64_t heads, int64_t lq, int64_t lk) const override {
    QKV_CHECK((heads_ == 1 || heads_ == heads) && nq_ * bq_ >= lq && nk_ * bk_ >= lk,
              "block_sparse_mask: layout ", shape_string(shape_), " with blocks of ", bq_, " x ",
              bk_, " does not cover H = ", heads, ", Lq = ", lq, ", Lk = ", lk,
              " (needs H or 1 heads, >= ", (lq + bq_ - 1) / bq_,
              " query blocks and >= ", (lk + bk_ - 1) / bk_, " key blocks)");
  }
  bool allowed(int64_t, int64_t h, int64_t q, int64_t kv) const override {
    return cell(h, q / bq_, kv / bk_);
  }
  BlockVisibility visibility(const AttentionBlock& b) const override {
    if (empty_block(b)) return BlockVisibility::none;
    const int64_t i0 = b.q_begin / bq_, i1 = (b.q_end - 1) / bq_ + 1;
    const int64_t j0 = b.kv_begin / bk_, j1 = (b.kv_end - 1) / bk_ + 1;
    QKV_DCHECK(i1 <= nq_ && j1 <= nk_, "block_sparse_mask: block outside the layout");
    const int64_t h = head(b.head);
    const int64_t visible =
        sums_[at(h, i1, j1)] - sums_[at(h, i0, j1)] - sums_[at(h, i1, j0)] + sums_[at(h, i0, j0)];
    return classify(visible > 0, visible == (i1 - i0) * (j1 - j0));
  }
  void apply(const AttentionBlock& b, float* scores, int64_t ld) const override {
    for_rows(b, scores, ld, [&](const Row& row, int64_t q) {
      const int64_t i = q / bq_;
      for (int64_t j = row.k0 / bk_; j * bk_ < row.k1; ++j)
        if (!cell(b.head, i, j)) row.hide(j * bk_, (j + 1) * bk_);
    });
  }

 private:
  int64_t head(int64_t h) const { return heads_ == 1 ? 0 : h; }
  size_t at(int64_t h, int64_t i, int64_t j) const {
    return static_cast<size_t>((h * (nq_ + 1) + i) * (nk_ + 1) + j);
  }
  bool cell(int64_t h, int64_t i, int64_t j) const {
    QKV_DCHECK(i < nq_ && j < nk_, "block_sparse_mask: position outside the layout");
    h = head(h);
    return sums_[at(h, i + 1, j + 1)] - sums_[at(h, i, j + 1)] - sums_[at(h, i + 1, j)] +
               sums_[at(h, i, j)] !=
           0;
  }
  int64_t bq_, bk_, heads_ = 1, nq_ = 0, nk_ = 0;
  Shape shape_;
  std::vector<int64_t> sums_;
};

// ---- BigBird --------------------------------------------------------------------

class BigBirdMask : public MaskMod {
 public:
  BigBirdMask(int64_t block, int64_t window_blocks, int64_t global_blocks, int64_t random_blocks,
              uint64_t seed, bool causal)
      : bs_(block),
        half_(window_blocks / 2),
        g_(global_blocks),
        r_(random_blocks),
        seed_(seed),
        causal_(causal) {}

  void check(int64_t, int64_t, int64_t, int64_t lk) const override {
    const int64_t blocks = (lk + bs_ - 1) / bs_;
    int64_t bound = -1;
    if (key_blocks_.compare_exchange_strong(bound, blocks) || bound == blocks) return;
    QKV_CHECK(false, "bigbird_mask: this mask drew its random blocks among ", bound,
              " key blocks; Lk = ", lk, " has ", blocks, " blocks of ", bs_,
              " (make one mask per key length)");
  }
  bool allowed(int64_t, int64_t h, int64_t q, int64_t kv) const override {
    if (r_ > 0) key_blocks();  // unbound: an error for every pair, not only random ones
    if (causal_ && kv > q) return false;
    const int64_t i = q / bs_, j = kv / bs_;
    return count(h, i, j, j) != 0;
  }
  BlockVisibility visibility(const AttentionBlock& b) const override {
    if (empty_block(b)) return BlockVisibility::none;
    const int64_t q_last = b.q_end - 1, j0 = b.kv_begin / bs_, j1 = (b.kv_end - 1) / bs_;
    bool any = false, all = !causal_ || b.kv_end - 1 <= b.q_begin;
    for (int64_t i = b.q_begin / bs_; i <= q_last / bs_ && (!any || all); ++i) {
      // Causal: within query block i the latest query is q_max; a key block helps only up to it.
      const int64_t q_max = std::min(q_last, (i + 1) * bs_ - 1);
      const int64_t last_key_block = causal_ ? std::min(j1, q_max / bs_) : j1;
      const bool reachable = !causal_ || b.kv_begin <= q_max;
      if (all && count(b.head, i, j0, j1) != j1 - j0 + 1) all = false;
      if (!any && reachable && count(b.head, i, j0, last_key_block) > 0) any = true;
    }
    return classify(any, all);
  }
  void apply(const AttentionBlock& b, float* scores, int64_t ld) const override {
    std::array<std::pair<int64_t, int64_t>, kMaxRandomBlocks + 2> keep{};  // visible key blocks
    int64_t i_done = -1, runs = 0;
    for_rows(b, scores, ld, [&](const Row& row, int64_t q) {
      if (causal_) row.keep_at_most(q);
      const int64_t i = q / bs_;
      if (i < g_) return;  // a global query sees every key
      if (i != i_done) {   // the visible key blocks of query block i, sorted
        i_done = i;
        runs = 0;
        keep[runs++] = {0, g_ - 1};
        keep[runs++] = {std::max<int64_t>(i - half_, 0), i + half_};
        const RandomBlocks draw = random_blocks(b.head, i);
        for (int64_t t = 0; t < draw.n; ++t) keep[runs++] = {draw.block[t], draw.block[t]};
        std::sort(keep.begin(), keep.begin() + runs);
      }
      int64_t from = row.k0;  // first key not known to be visible
      for (int64_t t = 0; t < runs; ++t) {
        row.hide(from, keep[t].first * bs_);
        from = std::max(from, (keep[t].second + 1) * bs_);
      }
      row.hide(from, row.k1);
    });
  }

 private:
  struct RandomBlocks {
    int64_t n = 0;
    std::array<int64_t, kMaxRandomBlocks> block{};
  };

  int64_t key_blocks() const {
    const int64_t n = key_blocks_.load(std::memory_order_acquire);
    QKV_CHECK(n >= 0,
              "bigbird_mask: the mask is not bound to a key length yet (attention() and "
              "mask_to_tensor() bind it on first use)");
    return n;
  }

  // min(r, m) distinct key blocks, uniform among the m candidates: the blocks
  // below n (causal: below min(i + 1, n)) that are neither global nor in i's
  // window. Floyd's algorithm: for u = m - t, ..., m - 1 draw x = next() %
  // (u + 1) and take x, or u when x is taken already; candidate c maps to the
  // c-th candidate block in increasing order. The stream is qkv::Generator
  // (splitmix64) seeded by s = next(seed) ^ head, then next(s) ^ i.
  RandomBlocks random_blocks(int64_t head, int64_t i) const {
    RandomBlocks out;
    if (r_ == 0 || i < g_) return out;
    const int64_t n = causal_ ? std::min(i + 1, key_blocks()) : key_blocks();
    const int64_t lo = std::max(i - half_, g_), hi = std::min(i + half_, n - 1);
    const int64_t before = lo <= hi ? lo - g_ : std::max<int64_t>(n - g_, 0);
    const int64_t after = lo <= hi ? n - 1 - hi : 0;
    const int64_t m = before + after;
    const int64_t t = std::min(r_, m);
    uint64_t state = Generator(seed_).next_u64() ^ static_cast<uint64_t>(head);
    state = Generator(state).next_u64() ^ static_cast<uint64_t>(i);
    Generator stream(state);
    std::array<int64_t, kMaxRandomBlocks> picked{};
    for (int64_t u = m - t; u < m; ++u) {
      const int64_t x = static_cast<int64_t>(stream.next_u64() % static_cast<uint64_t>(u + 1));
      const bool taken =
          std::find(picked.begin(), picked.begin() + out.n, x) != picked.begin() + out.n;
      picked[out.n++] = taken ? u : x;
    }
    for (int64_t s = 0; s < out.n; ++s)
      out.block[s] = picked[s] < before ? g_ + picked[s] : hi + 1 + (picked[s] - before);
    std::sort(out.block.begin(), out.block.begin() + out.n);
    return out;
  }

  // How many of key blocks [j0, j1] query block i sees (before causality).
  int64_t count(int64_t head, int64_t i, int64_t j0, int64_t j1) const {
    if (j0 > j1) return 0;
    if (i < g_) return j1 - j0 + 1;
    // Global, window and random blocks are disjoint (the window counted from g on).
    int64_t n = overlap(0, g_ - 1, j0, j1) + overlap(std::max(i - half_, g_), i + half_, j0, j1);
    if (n == j1 - j0 + 1) return n;
    const RandomBlocks draw = random_blocks(head, i);
    for (int64_t t = 0; t < draw.n; ++t) n += draw.block[t] >= j0 && draw.block[t] <= j1;
    return n;
  }

  int64_t bs_, half_, g_, r_;
  uint64_t seed_;
  bool causal_;
  mutable std::atomic<int64_t> key_blocks_{-1};  // bound by the first check()
};

// ---- Longformer -------------------------------------------------------------------

class LongformerMask : public MaskMod {
 public:
  // flags: rows x length, row-major; strict: the length must cover the call's.
  LongformerMask(int64_t left, int64_t right, std::vector<uint8_t> flags, int64_t rows,
                 int64_t length, bool strict)
      : left_(left),
        right_(right),
        rows_(rows),
        len_(length),
        strict_(strict),
        flags_(std::move(flags)) {
    prefix_.assign(static_cast<size_t>(rows_ * (len_ + 1)), 0);
    next_plain_.assign(static_cast<size_t>(rows_ * (len_ + 1)), len_);
    prev_plain_.assign(static_cast<size_t>(rows_ * len_), -1);
    for (int64_t r = 0; r < rows_; ++r) {
      const uint8_t* f = flags_.data() + r * len_;
      int64_t* p = prefix_.data() + r * (len_ + 1);
      int64_t* next = next_plain_.data() + r * (len_ + 1);
      int64_t* prev = prev_plain_.data() + r * len_;
      for (int64_t x = 0; x < len_; ++x) {
        p[x + 1] = p[x] + f[x];
        prev[x] = f[x] ? (x > 0 ? prev[x - 1] : -1) : x;
      }
      for (int64_t x = len_ - 1; x >= 0; --x) next[x] = f[x] ? next[x + 1] : x;
    }
  }
  void check(int64_t batch, int64_t, int64_t lq, int64_t lk) const override {
    if (!strict_) return;
    QKV_CHECK((rows_ == 1 || rows_ == batch) && len_ >= std::max(lq, lk),
              "longformer_mask: global has shape [",
              rows_ == 1 ? std::string() : std::to_string(rows_) + ", ", len_,
              "]; attention needs [L] or [B, L] with B = ", batch, " and L >= ", std::max(lq, lk));
  }
  bool allowed(int64_t b, int64_t, int64_t q, int64_t kv) const override {
    return (kv >= q - left_ && kv <= q + right_) || global(b, q) || global(b, kv);
  }
  BlockVisibility visibility(const AttentionBlock& blk) const override {
    if (empty_block(blk)) return BlockVisibility::none;
    const int64_t b = blk.batch, q0 = blk.q_begin, q1 = blk.q_end, k0 = blk.kv_begin,
                  k1 = blk.kv_end;
    const bool window = overlap(k0 - (q1 - 1), k1 - 1 - q0, -left_, right_) > 0;
    if (!window && count(b, q0, q1) == 0 && count(b, k0, k1) == 0) return BlockVisibility::none;
    // All visible: every non-global key within the window of every non-global
    // query; the extreme ones decide.
    const int64_t qa = first_plain(b, q0), ka = first_plain(b, k0);
    if (qa >= q1 || ka >= k1) return BlockVisibility::all;
    const int64_t qz = last_plain(b, q1 - 1), kz = last_plain(b, k1 - 1);
    return classify(true, ka >= qz - left_ && kz <= qa + right_);
  }
  void apply(const AttentionBlock& blk, float* scores, int64_t ld) const override {
    const int64_t b = blk.batch;
    for_rows(blk, scores, ld, [&](const Row& row, int64_t q) {
      if (global(b, q)) return;
      auto hide_plain = [&](int64_t a, int64_t z) {  // non-global keys of [a, z)
        a = std::max(a, row.k0);
        z = std::min(z, row.k1);
        if (a >= z) return;
        if (count(b, a, z) == 0) return row.hide(a, z);
        for (int64_t kv = a; kv < z; ++kv)
          if (!global(b, kv)) row.s[kv - row.k0] = kMinusInf;
      };
      hide_plain(row.k0, q - left_);
      hide_plain(q + right_ + 1, row.k1);
    });
  }

 private:
  const int64_t* row_of(const std::vector<int64_t>& v, int64_t b, int64_t width) const {
    return v.data() + (rows_ == 1 ? 0 : b) * width;
  }
  bool global(int64_t b, int64_t x) const {
    return x < len_ && flags_[static_cast<size_t>((rows_ == 1 ? 0 : b) * len_ + x)] != 0;
  }
  int64_t count(int64_t b, int64_t a, int64_t z) const {  // globals in [a, z)
    const int64_t* p = row_of(prefix_, b, len_ + 1);
    return p[std::min(z, len_)] - p[std::min(a, len_)];
  }
  int64_t first_plain(int64_t b, int64_t x) const {
    return x >= len_ ? x : row_of(next_plain_, b, len_ + 1)[x];
  }
  int64_t last_plain(int64_t b, int64_t x) const {
    return x >= len_ ? x : row_of(prev_plain_, b, len_)[x];
  }

  int64_t left_, right_, rows_, len_;
  bool strict_;
  std::vector<uint8_t> flags_;
  std::vector<int64_t> prefix_, next_plain_, prev_plain_;
};

void check_extent(const char* op, int64_t left, int64_t right) {
  QKV_CHECK(left >= 0 && right >= 0 && left <= kMaxExtent && right <= kMaxExtent, op,
            ": left and right must be in [0, 2^62], got ", left, " and ", right);
}

}  // namespace

MaskModPtr dilated_window_mask(int64_t left, int64_t right, int64_t dilation) {
  QKV_CHECK(dilation >= 1, "dilated_window_mask: dilation must be >= 1, got ", dilation);
  check_extent("dilated_window_mask", left, right);
  QKV_CHECK(left <= kMaxExtent / dilation && right <= kMaxExtent / dilation,
            "dilated_window_mask: left * dilation and right * dilation must be <= 2^62, got left ",
            left, ", right ", right, ", dilation ", dilation);
  return std::make_shared<DilatedWindowMask>(left, right, dilation);
}

MaskModPtr sparse_fixed_mask(int64_t block, int64_t summary, bool causal) {
  QKV_CHECK(block >= 1 && summary >= 0 && summary <= block,
            "sparse_fixed_mask: need block >= 1 and 0 <= summary <= block, got block ", block,
            ", summary ", summary);
  return std::make_shared<SparseFixedMask>(block, summary, causal);
}

MaskModPtr sparse_strided_mask(int64_t stride, bool causal) {
  QKV_CHECK(stride >= 1 && stride <= kMaxExtent, "sparse_strided_mask: stride must be >= 1, got ",
            stride);
  return std::make_shared<SparseStridedMask>(stride, causal);
}

MaskModPtr block_sparse_mask(const Tensor& layout, int64_t block_q, int64_t block_k) {
  return std::make_shared<BlockSparseMask>(layout, block_q, block_k);
}

MaskModPtr bigbird_mask(int64_t block, int64_t window_blocks, int64_t global_blocks,
                        int64_t random_blocks, uint64_t seed, bool causal) {
  QKV_CHECK(block >= 1, "bigbird_mask: block must be >= 1, got ", block);
  QKV_CHECK(window_blocks >= 1 && window_blocks % 2 == 1 && window_blocks <= kMaxExtent / block,
            "bigbird_mask: window_blocks must be odd and >= 1 (the block itself and as many on "
            "each side), got ",
            window_blocks);
  QKV_CHECK(global_blocks >= 0 && global_blocks <= kMaxExtent / block,
            "bigbird_mask: global_blocks must be >= 0, got ", global_blocks);
  QKV_CHECK(random_blocks >= 0 && random_blocks <= kMaxRandomBlocks,
            "bigbird_mask: random_blocks must be in [0, ", kMaxRandomBlocks, "], got ",
            random_blocks);
  return std::make_shared<BigBirdMask>(block, window_blocks, global_blocks, random_blocks, seed,
                                       causal);
}

MaskModPtr longformer_mask(int64_t left, int64_t right, const Tensor& global) {
  check_extent("longformer_mask", left, right);
  QKV_CHECK(global.defined() && (global.dim() == 1 || global.dim() == 2),
            "longformer_mask: global must be bool [L] or [B, L], got ",
            global.defined() ? shape_string(global.shape()) : std::string("undefined"));
  const int64_t rows = global.dim() == 2 ? global.size(0) : 1;
  return std::make_shared<LongformerMask>(left, right,
                                          flags_of(global, "longformer_mask", "global"), rows,
                                          global.size(-1), /*strict=*/true);
}

MaskModPtr longformer_mask(int64_t left, int64_t right,
                           const std::vector<int64_t>& global_indices) {
  check_extent("longformer_mask", left, right);
  int64_t length = 0;
  for (int64_t x : global_indices) {
    QKV_CHECK(x >= 0 && x < kMaxExtent, "longformer_mask: global index ", x,
              " is negative or too large");
    length = std::max(length, x + 1);
  }
  std::vector<uint8_t> flags(static_cast<size_t>(length), 0);
  for (int64_t x : global_indices) flags[static_cast<size_t>(x)] = 1;
  return std::make_shared<LongformerMask>(left, right, std::move(flags), 1, length,
                                          /*strict=*/false);
}

Tensor mask_to_tensor(const MaskMod& mask, int64_t batch, int64_t heads, int64_t lq, int64_t lk) {
  QKV_CHECK(batch >= 0 && heads >= 0 && lq >= 0 && lk >= 0,
            "mask_to_tensor: sizes must be >= 0, got B ", batch, ", H ", heads, ", Lq ", lq,
            ", Lk ", lk);
  mask.check(batch, heads, lq, lk);
  Tensor out = Tensor::empty({batch, heads, lq, lk}, DType::boolean);
  bool* p = out.data<bool>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t q = 0; q < lq; ++q)
        for (int64_t kv = 0; kv < lk; ++kv) *p++ = mask.allowed(b, h, q, kv);
  return out;
}

}  // namespace qkv
