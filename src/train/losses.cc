// The losses of qkv/losses.h. Inputs are brought to contiguous f32 once;
// per-element losses are evaluated in double from those f32 values and the
// reductions add them in fixed blocks (independent of the thread count), so
// results are deterministic. Rows of class scores go through the
// max-subtracted LogSoftmax / Softmax kernels of kernels/cpu/elementwise.h.
// With an f64 input everything is f64 instead (T = double below: the
// reference kernels of kernels/ref, for gradcheck), results and gradients too.
#include "qkv/losses.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/ref/elementwise_ref.h"

namespace qkv {
namespace {

constexpr int64_t kGrainElements = int64_t{1} << 15;

void check_float(const Tensor& t, const char* op, const char* arg) {
  QKV_CHECK(t.defined(), op, ": argument ", arg, " is an undefined tensor");
  QKV_CHECK(t.device().type == DeviceType::cpu, op, ": argument ", arg, " is on ",
            to_string(t.device()), "; only cpu tensors are supported");
  QKV_CHECK(is_floating(t.dtype()), op, ": argument ", arg, " has dtype ", dtype_name(t.dtype()),
            "; expected a floating dtype (f32, f64, bf16 or f16)");
}

bool any_f64(const Tensor& a, const Tensor& b = Tensor()) {
  return a.dtype() == DType::f64 || (b.defined() && b.dtype() == DType::f64);
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* op, const char* name_a,
                      const char* name_b) {
  QKV_CHECK(a.shape() == b.shape(), op, ": ", name_a, " has shape ", shape_string(a.shape()),
            " but ", name_b, " has shape ", shape_string(b.shape()), "; expected the same shape");
}

template <class T>
Tensor contiguous_as(const Tensor& x) {
  return x.to(dtype_of<T>::value).contiguous();
}

// Row kernels: the SIMD ones for float, the reference ones for double.
template <class T>
void log_softmax_row(const T* x, T* out, size_t n) {
  if constexpr (std::is_same_v<T, double>)
    kernels::ref::LogSoftmax<double>(x, out, n);
  else
    kernels::LogSoftmax(x, out, n);
}
template <class T>
void softmax_row(const T* x, T* out, size_t n) {
  if constexpr (std::is_same_v<T, double>)
    kernels::ref::Softmax<double>(x, out, n);
  else
    kernels::Softmax(x, out, n);
}

// Work per item, for grains and reduction blocks: `cost` floats per item.
int64_t items_per_block(int64_t cost) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(cost, 1));
}

// The loss tensor from per-item losses loss(i), i in [0, numel(loss_shape)):
// the items themselves (reduction none, shape `loss_shape`) or their sum
// divided by `divisor`, added in double over fixed blocks of `block` items.
template <class T, class ItemLoss>
Tensor reduce_loss(const Shape& loss_shape, Reduction reduction, double divisor, int64_t block,
                   ItemLoss loss) {
  const int64_t n = shape_numel(loss_shape);
  if (reduction == Reduction::none) {
    Tensor out = Tensor::empty(loss_shape, dtype_of<T>::value);
    T* o = out.data<T>();
    detail::parallel_for(0, n, block, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) o[i] = static_cast<T>(loss(i));
    });
    return out;
  }
  const int64_t blocks = (n + block - 1) / block;
  std::vector<double> partial(static_cast<size_t>(blocks));
  detail::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      double s = 0.0;
      for (int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i) s += loss(i);
      partial[static_cast<size_t>(b)] = s;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return Tensor::full({}, reduction == Reduction::sum ? total : total / divisor,
                      dtype_of<T>::value);
}

// The upstream gradient of each item of the loss: grad_output's one value
// over `divisor` for the reductions, or its element i for reduction none.
template <class T>
class Upstream {
 public:
  Upstream(const Tensor& grad_output, const Shape& loss_shape, Reduction reduction, double divisor,
           const char* op) {
    check_float(grad_output, op, "grad_output");
    if (reduction == Reduction::none) {
      QKV_CHECK(grad_output.shape() == loss_shape, op, ": grad_output has shape ",
                shape_string(grad_output.shape()), "; expected the loss's shape ",
                shape_string(loss_shape), " for reduction none");
      values_ = contiguous_as<T>(grad_output);
      data_ = values_.data<T>();
      return;
    }
    QKV_CHECK(grad_output.numel() == 1, op, ": grad_output has shape ",
              shape_string(grad_output.shape()), "; expected one element for reduction ",
              reduction_name(reduction));
    scalar_ = grad_output.item();
    if (reduction != Reduction::sum) scalar_ /= divisor;
  }
  double operator()(int64_t i) const { return data_ ? static_cast<double>(data_[i]) : scalar_; }

 private:
  Tensor values_;
  const T* data_ = nullptr;
  double scalar_ = 0.0;
};

// The divisor of reduction mean / batchmean for an element-wise loss over x.
double element_divisor(const Tensor& x, Reduction reduction) {
  if (reduction == Reduction::batchmean) return x.dim() == 0 ? 1.0 : static_cast<double>(x.size(0));
  return static_cast<double>(x.numel());
}

void check_reduction(Reduction reduction, bool batchmean_allowed, const char* op) {
  const bool known = reduction == Reduction::none || reduction == Reduction::mean ||
                     reduction == Reduction::sum || reduction == Reduction::batchmean;
  QKV_CHECK(known, op, ": reduction ", static_cast<int>(reduction), " is not a Reduction");
  QKV_CHECK(batchmean_allowed || reduction != Reduction::batchmean, op,
            ": reduction batchmean is only defined for the KL divergences; use mean, sum or none");
}

// Element-wise gradient: out[i] = grad(i) over [0, numel(like)), in like's
// dtype (f64 when T is double).
template <class T, class ItemGrad>
Tensor elementwise_grad(const Tensor& like, ItemGrad grad) {
  Tensor out = Tensor::empty(like.shape(), dtype_of<T>::value);
  T* o = out.data<T>();
  detail::parallel_for(0, out.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) o[i] = static_cast<T>(grad(i));
  });
  return std::is_same_v<T, double> ? out : out.to(like.dtype()).contiguous();
}

// ---- cross-entropy -------------------------------------------------------------

// Logits as [outer, C, inner] rows of classes, and the targets beside them.
template <class T>
struct ClassRows {
  Tensor logits;   // contiguous T
  Tensor targets;  // contiguous i64, [outer * inner]
  Shape loss_shape;
  int64_t outer = 1, classes = 1, inner = 1;
  int64_t counted = 0;  // non-ignored targets
  double smoothing = 0.0;
  int64_t ignore_index = -100;

  // The class scores of `row` (= o * inner + j): a pointer into the logits
  // when inner == 1, else gathered into `buffer`.
  const T* row_scores(int64_t row, std::vector<T>& buffer) const {
    const T* base = logits.template data<T>();
    if (inner == 1) return base + row * classes;
    const int64_t o = row / inner, j = row % inner;
    buffer.resize(static_cast<size_t>(classes));
    for (int64_t c = 0; c < classes; ++c)
      buffer[static_cast<size_t>(c)] = base[(o * classes + c) * inner + j];
    return buffer.data();
  }
};

template <class T>
ClassRows<T> class_rows(const Tensor& logits, const Tensor& targets,
                        const CrossEntropyOptions& options, const char* op) {
  check_float(logits, op, "logits");
  QKV_CHECK(targets.defined(), op, ": argument targets is an undefined tensor");
  QKV_CHECK(targets.dtype() == DType::i64 || targets.dtype() == DType::i32, op,
            ": targets have dtype ", dtype_name(targets.dtype()),
            "; expected class indices of dtype i64 or i32");
  check_reduction(options.reduction, false, op);
  QKV_CHECK(options.label_smoothing >= 0.0 && options.label_smoothing <= 1.0, op,
            ": label_smoothing is ", options.label_smoothing, "; expected a value in [0, 1]");
  QKV_CHECK(logits.dim() >= 1, op,
            ": logits are a scalar (shape []); expected [C], [N, C] or [N, C, d1, ...]");
  ClassRows<T> r;
  Shape expected;  // the targets' shape: logits' without the class dim
  if (logits.dim() == 1) {
    r.classes = logits.size(0);
  } else {
    r.outer = logits.size(0);
    r.classes = logits.size(1);
    expected.push_back(r.outer);
    for (int64_t d = 2; d < logits.dim(); ++d) {
      r.inner *= logits.size(d);
      expected.push_back(logits.size(d));
    }
  }
  QKV_CHECK(targets.shape() == expected, op, ": targets have shape ", shape_string(targets.shape()),
            " but logits of shape ", shape_string(logits.shape()), " need targets of shape ",
            shape_string(expected));
  QKV_CHECK(r.classes > 0 || targets.numel() == 0, op, ": logits of shape ",
            shape_string(logits.shape()), " have no classes (C = 0)");
  r.logits = contiguous_as<T>(logits);
  r.targets = targets.to(DType::i64).contiguous();
  r.loss_shape = expected;
  r.smoothing = options.label_smoothing;
  r.ignore_index = options.ignore_index;
  const int64_t* t = r.targets.template data<int64_t>();
  for (int64_t i = 0; i < r.targets.numel(); ++i) {
    if (t[i] == options.ignore_index) continue;
    QKV_CHECK(t[i] >= 0 && t[i] < r.classes, op, ": target ", t[i], " at flat index ", i,
              " is out of range for C = ", r.classes, " classes (expected 0 <= target < ",
              r.classes, " or ignore_index = ", options.ignore_index, ")");
    ++r.counted;
  }
  return r;
}

}  // namespace

namespace {

template <class T>
Tensor cross_entropy_as(const Tensor& logits, const Tensor& targets,
                        const CrossEntropyOptions& options) {
  const ClassRows<T> r = class_rows<T>(logits, targets, options, "cross_entropy");
  const int64_t c = r.classes;
  const double eps = r.smoothing;
  const int64_t* t = r.targets.template data<int64_t>();
  return reduce_loss<T>(r.loss_shape, options.reduction, static_cast<double>(r.counted),
                        items_per_block(c), [&](int64_t row) {
                       if (t[row] == r.ignore_index) return 0.0;
                       thread_local std::vector<T> scores, logp;
                       const T* x = r.row_scores(row, scores);
                       logp.resize(static_cast<size_t>(c));
                       log_softmax_row<T>(x, logp.data(), static_cast<size_t>(c));
                       const double nll = -static_cast<double>(logp[static_cast<size_t>(t[row])]);
                       // torch only takes the smoothing term when eps > 0, so a
                       // -inf logit does not turn 0 * inf into NaN without it.
                       if (eps == 0.0) return nll;
                       double smooth = 0.0;
                       for (T v : logp) smooth -= v;
                       return (1.0 - eps) * nll + eps / static_cast<double>(c) * smooth;
                     });
}

template <class T>
Tensor cross_entropy_backward_as(const Tensor& grad_output, const Tensor& logits,
                                 const Tensor& targets, const CrossEntropyOptions& options) {
  const char* op = "cross_entropy_backward";
  const ClassRows<T> r = class_rows<T>(logits, targets, options, op);
  const Upstream<T> g(grad_output, r.loss_shape, options.reduction, static_cast<double>(r.counted),
                   op);
  const int64_t c = r.classes, inner = r.inner;
  const double eps = r.smoothing;
  const double off = eps / static_cast<double>(std::max<int64_t>(c, 1));
  const int64_t* t = r.targets.template data<int64_t>();
  Tensor out = Tensor::zeros(logits.shape(), dtype_of<T>::value);
  T* o = out.data<T>();
  detail::parallel_for(0, r.outer * inner, items_per_block(c), [&](int64_t begin, int64_t end) {
    std::vector<T> scores, p(static_cast<size_t>(c));
    for (int64_t row = begin; row < end; ++row) {
      if (t[row] == r.ignore_index) continue;
      softmax_row<T>(r.row_scores(row, scores), p.data(), static_cast<size_t>(c));
      const double gi = g(row);
      T* dst = o + (row / inner * c) * inner + row % inner;
      for (int64_t k = 0; k < c; ++k) {
        const double onehot = k == t[row] ? 1.0 - eps : 0.0;
        dst[k * inner] =
            static_cast<T>(gi * (static_cast<double>(p[static_cast<size_t>(k)]) - off - onehot));
      }
    }
  });
  return std::is_same_v<T, double> ? out : out.to(logits.dtype()).contiguous();
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets,
                     const CrossEntropyOptions& options) {
  if (logits.defined() && any_f64(logits)) return cross_entropy_as<double>(logits, targets, options);
  return cross_entropy_as<float>(logits, targets, options);
}

Tensor cross_entropy_backward(const Tensor& grad_output, const Tensor& logits,
                              const Tensor& targets, const CrossEntropyOptions& options) {
  if (logits.defined() && any_f64(logits))
    return cross_entropy_backward_as<double>(grad_output, logits, targets, options);
  return cross_entropy_backward_as<float>(grad_output, logits, targets, options);
}

// ---- mse ---------------------------------------------------------------------

Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction) {
  const char* op = "mse_loss";
  check_float(input, op, "input");
  check_float(target, op, "target");
  check_same_shape(input, target, op, "input", "target");
  check_reduction(reduction, false, op);
  const auto loss = [&]<class T>() {
    const Tensor x = contiguous_as<T>(input), y = contiguous_as<T>(target);
    const T* px = x.template data<T>();
    const T* py = y.template data<T>();
    return reduce_loss<T>(input.shape(), reduction, element_divisor(input, reduction),
                          kGrainElements, [&](int64_t i) {
                            const double d = static_cast<double>(px[i]) - static_cast<double>(py[i]);
                            return d * d;
                          });
  };
  return any_f64(input, target) ? loss.operator()<double>() : loss.operator()<float>();
}

Tensor mse_loss_backward(const Tensor& grad_output, const Tensor& input, const Tensor& target,
                         Reduction reduction) {
  const char* op = "mse_loss_backward";
  check_float(input, op, "input");
  check_float(target, op, "target");
  check_same_shape(input, target, op, "input", "target");
  check_reduction(reduction, false, op);
  const auto gradient = [&]<class T>() {
    const Upstream<T> g(grad_output, input.shape(), reduction, element_divisor(input, reduction),
                        op);
    const Tensor x = contiguous_as<T>(input), y = contiguous_as<T>(target);
    const T* px = x.template data<T>();
    const T* py = y.template data<T>();
    return elementwise_grad<T>(input, [&](int64_t i) {
      return 2.0 * (static_cast<double>(px[i]) - static_cast<double>(py[i])) * g(i);
    });
  };
  return any_f64(input, target) ? gradient.operator()<double>() : gradient.operator()<float>();
}

// ---- KL divergence -----------------------------------------------------------------

namespace {

// torch's element loss: xlogy(t, t) - t * x, or exp(t) * (t - x) with log_target.
double kl_element(double x, double t, bool log_target) {
  if (log_target) return std::exp(t) * (t - x);
  const double xlogy = std::isnan(t) ? t : t == 0.0 ? 0.0 : t * std::log(t);
  return xlogy - t * x;
}

void check_kl(const Tensor& input, const Tensor& target, Reduction reduction, const char* op) {
  check_float(input, op, "input");
  check_float(target, op, "target");
  check_same_shape(input, target, op, "input", "target");
  check_reduction(reduction, true, op);
}

}  // namespace

Tensor kl_div(const Tensor& input, const Tensor& target, Reduction reduction, bool log_target) {
  check_kl(input, target, reduction, "kl_div");
  const auto loss = [&]<class T>() {
    const Tensor x = contiguous_as<T>(input), y = contiguous_as<T>(target);
    const T* px = x.template data<T>();
    const T* py = y.template data<T>();
    return reduce_loss<T>(input.shape(), reduction, element_divisor(input, reduction),
                          kGrainElements,
                          [&](int64_t i) { return kl_element(px[i], py[i], log_target); });
  };
  return any_f64(input, target) ? loss.operator()<double>() : loss.operator()<float>();
}

Tensor kl_div_backward(const Tensor& grad_output, const Tensor& input, const Tensor& target,
                       Reduction reduction, bool log_target) {
  const char* op = "kl_div_backward";
  check_kl(input, target, reduction, op);
  const auto gradient = [&]<class T>() {
    const Upstream<T> g(grad_output, input.shape(), reduction, element_divisor(input, reduction),
                        op);
    const Tensor y = contiguous_as<T>(target);
    const T* py = y.template data<T>();
    return elementwise_grad<T>(input, [&](int64_t i) {
      const double t = py[i];
      return -(log_target ? std::exp(t) : t) * g(i);
    });
  };
  return any_f64(input, target) ? gradient.operator()<double>() : gradient.operator()<float>();
}

// ---- distillation ------------------------------------------------------------------

namespace {

// Student and teacher rows over the last dim, each divided by T in f32 (as
// torch's `logits / T`) and turned into log-probabilities.
struct DistillationRows {
  Tensor student, teacher;  // contiguous f32 (f64) log_softmax(x / T), [rows, n]
  int64_t rows = 0, n = 0;
};

template <class E>
DistillationRows distillation_rows(const Tensor& student_logits, const Tensor& teacher_logits,
                                   double temperature, Reduction reduction, const char* op) {
  check_float(student_logits, op, "student_logits");
  check_float(teacher_logits, op, "teacher_logits");
  check_same_shape(student_logits, teacher_logits, op, "student_logits", "teacher_logits");
  check_reduction(reduction, true, op);
  QKV_CHECK(student_logits.dim() >= 1, op,
            ": logits are scalars (shape []); expected classes along the last dim");
  QKV_CHECK(temperature > 0.0 && std::isfinite(temperature), op, ": temperature is ", temperature,
            "; expected a finite value > 0");
  DistillationRows r;
  r.n = student_logits.size(-1);
  r.rows = r.n == 0 ? 0 : student_logits.numel() / r.n;
  const E t = static_cast<E>(temperature);
  const auto log_probs = [&](const Tensor& logits) {
    Tensor out = contiguous_as<E>(logits).clone();
    E* p = out.data<E>();
    const int64_t n = r.n;
    detail::parallel_for(0, r.rows, items_per_block(n), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        E* x = p + row * n;
        for (int64_t k = 0; k < n; ++k) x[k] /= t;
        log_softmax_row<E>(x, x, static_cast<size_t>(n));
      }
    });
    return out;
  };
  r.student = log_probs(student_logits);
  r.teacher = log_probs(teacher_logits);
  return r;
}

}  // namespace

Tensor kl_div_distillation(const Tensor& student_logits, const Tensor& teacher_logits,
                           double temperature, Reduction reduction) {
  const auto loss = [&]<class E>() {
    const DistillationRows r = distillation_rows<E>(student_logits, teacher_logits, temperature,
                                                    reduction, "kl_div_distillation");
    const E* ls = r.student.data<E>();
    const E* lt = r.teacher.data<E>();
    const double t2 = temperature * temperature;
    return reduce_loss<E>(student_logits.shape(), reduction,
                          element_divisor(student_logits, reduction), kGrainElements,
                          [&](int64_t i) { return t2 * kl_element(ls[i], lt[i], true); });
  };
  return any_f64(student_logits, teacher_logits) ? loss.operator()<double>()
                                                 : loss.operator()<float>();
}

namespace {

template <class E>
Tensor distillation_gradient(const Tensor& grad_output, const Tensor& student_logits,
                             const Tensor& teacher_logits, double temperature,
                             Reduction reduction, const char* op) {
  const DistillationRows r =
      distillation_rows<E>(student_logits, teacher_logits, temperature, reduction, op);
  const Upstream<E> g(grad_output, student_logits.shape(), reduction,
                      element_divisor(student_logits, reduction), op);
  const E* ls = r.student.data<E>();
  const E* lt = r.teacher.data<E>();
  const int64_t n = r.n;
  Tensor out = Tensor::empty(student_logits.shape(), dtype_of<E>::value);
  E* o = out.data<E>();
  detail::parallel_for(0, r.rows, items_per_block(n), [&](int64_t begin, int64_t end) {
    std::vector<double> w(static_cast<size_t>(n));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t base = row * n;
      double total = 0.0;
      for (int64_t k = 0; k < n; ++k) {
        w[static_cast<size_t>(k)] = g(base + k) * std::exp(static_cast<double>(lt[base + k]));
        total += w[static_cast<size_t>(k)];
      }
      for (int64_t k = 0; k < n; ++k) {
        const double ps = std::exp(static_cast<double>(ls[base + k]));
        o[base + k] = static_cast<E>(temperature * (ps * total - w[static_cast<size_t>(k)]));
      }
    }
  });
  return out;
}

}  // namespace

Tensor kl_div_distillation_backward(const Tensor& grad_output, const Tensor& student_logits,
                                    const Tensor& teacher_logits, double temperature,
                                    Reduction reduction) {
  const char* op = "kl_div_distillation_backward";
  if (any_f64(student_logits, teacher_logits))
    return distillation_gradient<double>(grad_output, student_logits, teacher_logits, temperature,
                                         reduction, op);
  return distillation_gradient<float>(grad_output, student_logits, teacher_logits, temperature,
                                      reduction, op)
      .to(student_logits.dtype())
      .contiguous();
}


}  // namespace qkv
