// The attention variants' shared pieces (attention_variant.h).
#include "nn/attention_variant.h"

#include <cmath>

#include "qkv/ops.h"

namespace qkv::nn::detail {

VariantTensors make_variant(const AttentionVariant& variant, int64_t embed_dim, int64_t num_heads,
                            int64_t vdim, Generator& generator, const char* op) {
  const int64_t e = embed_dim, h = num_heads, dh = e / h;
  const bool softmax = variant.kernel == AttentionKernel::softmax;
  QKV_CHECK(softmax || !variant.mask_mod, op, ": a mask_mod needs the softmax kernel, not ",
            name_of(kAttentionKernelNames, variant.kernel));
  const AttentionPositions p = variant.positions;
  QKV_CHECK(softmax || p == AttentionPositions::none || p == AttentionPositions::rotary, op,
            ": ALiBi, T5 and Shaw positions need the softmax kernel, not ",
            name_of(kAttentionKernelNames, variant.kernel));
  VariantTensors out;
  // T5 initialises its bucket table N(0, d_model^-1/2) (transformers'
  // T5PreTrainedModel); Shaw's tables and Linformer's projections likewise
  // N(0, 1 / fan): neither paper fixes one.
  if (p == AttentionPositions::t5) {
    const T5BiasOptions t = t5_for_heads(variant.t5);
    t5_relative_bucket(0, t);  // validates the options
    out.learned.emplace_back(
        "relative_attention_bias.weight",
        scale(randn({t.num_buckets, h}, generator), 1.0 / std::sqrt(static_cast<double>(e))));
  }
  if (p == AttentionPositions::shaw) {
    const int64_t k = variant.shaw_max_distance;
    QKV_CHECK(k >= 1, op, ": shaw_max_distance must be >= 1, got ", k);
    QKV_CHECK(vdim == e, op, ": Shaw positions need vdim == embed_dim");
    const double std = 1.0 / std::sqrt(static_cast<double>(dh));
    out.learned.emplace_back("relative_key", scale(randn({2 * k + 1, dh}, generator), std));
    out.learned.emplace_back("relative_value", scale(randn({2 * k + 1, dh}, generator), std));
  }
  if (variant.kernel == AttentionKernel::linformer) {
    const int64_t n = variant.max_length, k = variant.linformer_k;
    QKV_CHECK(n > 0 && k > 0, op, ": linformer needs max_length > 0 and linformer_k > 0, got ", n,
              " and ", k);
    const Shape shape = variant.linformer_per_head ? Shape{h, k, n} : Shape{k, n};
    const double std = 1.0 / std::sqrt(static_cast<double>(k));
    out.learned.emplace_back("linformer_e", scale(randn(shape, generator), std));
    out.learned.emplace_back("linformer_f", scale(randn(shape, generator), std));
  }
  if (variant.kernel == AttentionKernel::performer) {
    QKV_CHECK(variant.performer_features > 0, op, ": performer_features must be > 0, got ",
              variant.performer_features);
    out.performer_projection =
        performer_projection(variant.performer_features, dh, variant.performer_seed);
  }
  return out;
}

Tensor redraw_performer_features(const AttentionVariant& variant, int64_t head_dim, uint64_t seed,
                                 const char* op) {
  QKV_CHECK(variant.kernel == AttentionKernel::performer, op, ": the kernel is ",
            name_of(kAttentionKernelNames, variant.kernel), ", not performer");
  return performer_projection(variant.performer_features, head_dim, seed);
}

RotaryOptions rotary_for_heads(RotaryOptions r) {
  r.layout = AttentionLayout::blhd;
  r.offset = 0;
  return r;
}

T5BiasOptions t5_for_heads(T5BiasOptions t) {
  t.query_offset = 0;
  return t;
}

ScoreModPtr fixed_score_mod(const AttentionVariant& variant, int64_t num_heads) {
  return variant.positions == AttentionPositions::alibi ? alibi_score(alibi_slopes(num_heads))
                                                        : nullptr;
}

LinearAttentionOptions linear_kernel_options(const AttentionVariant& variant,
                                             const AttentionOptions& options, bool need_weights,
                                             const char* op) {
  const std::string_view name = name_of(kAttentionKernelNames, variant.kernel);
  QKV_CHECK(!need_weights, op, ": the ", name,
            " kernel forms no attention weights; pass need_weights = false");
  QKV_CHECK(!options.mask.defined() && !options.key_padding_mask.defined(), op, ": the ", name,
            " kernel takes no attn_mask or key_padding_mask");
  QKV_CHECK(options.dropout == 0.0, op, ": the ", name,
            " kernel has no attention-weight dropout; set dropout = 0 or call train(false)");
  const bool causal = options.causal != Causal::none;
  QKV_CHECK(!causal || variant.kernel != AttentionKernel::linformer, op,
            ": the linformer kernel cannot be causal");
  return {.causal = causal};
}

}  // namespace qkv::nn::detail
