#include "planner/core/tensor_table.h"

#include "planner/core/error.h"

namespace ferry::core {

std::string_view weight_class_name(WeightClass c) {
  switch (c) {
    case WeightClass::Attention: return "attention";
    case WeightClass::Compressor: return "compressor";
    case WeightClass::Indexer: return "indexer";
    case WeightClass::SharedExpert: return "shared_experts";
    case WeightClass::Router: return "router";
    case WeightClass::RoutedExpert: return "routed_experts";
    case WeightClass::DenseFfn: return "dense_ffn";
    case WeightClass::Embedding: return "embedding";
    case WeightClass::Head: return "head";
    case WeightClass::Mhc: return "mhc";
    case WeightClass::Norm: return "norms";
    case WeightClass::MtpProjection: return "mtp_projection";
    case WeightClass::Other: return "other";
    case WeightClass::kCount: break;
  }
  return "?";
}

namespace {

using F = TensorFormat;
using R = TensorRole;
using W = WeightClass;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Emits the rows of one layer (or the global rows, layer -1).
class Rows {
 public:
  Rows(const ModelConfig& c, int64_t layer, const std::function<void(TensorSpec&&)>& sink)
      : c_(c), layer_(static_cast<int32_t>(layer)), sink_(sink) {}

  void add(std::string name, F format, std::vector<int64_t> shape, W cls, R role = R::None) {
    sink_(TensorSpec{std::move(name), format, std::move(shape), cls, role, layer_, expert_});
  }
  // An FP8 block-quantized linear [out, in]; `prefix` names it without the `.weight`.
  void fp8(const std::string& prefix, int64_t out, int64_t in, W cls, R role = R::None) {
    add(prefix + ".weight", F::Fp8Linear, {out, in}, cls, role);
  }
  // A V4 routed-expert linear: MXFP4 (or FP8 for an `expert_dtype: fp8` checkpoint).
  void expert(const std::string& prefix, int64_t out, int64_t in, R role) {
    if (!c_.fp4_experts) return fp8(prefix, out, in, W::RoutedExpert, role);
    FERRY_CHECK(in % 2 == 0 && in % c_.fp4_block == 0,
                "expert input dimension {} is not a multiple of the FP4 block {}", in, c_.fp4_block);
    add(prefix + ".weight", F::Mxfp4Linear, {out, in}, W::RoutedExpert, role);
  }
  void bf16(std::string name, std::vector<int64_t> shape, W cls, R role = R::None) {
    add(std::move(name), F::Bf16Matrix, std::move(shape), cls, role);
  }
  void norm(std::string name, int64_t n, W cls = W::Norm, R role = R::None) {
    add(std::move(name), F::SmallBf16, {n}, cls, role);
  }
  void f32(std::string name, std::vector<int64_t> shape, W cls, R role = R::None) {
    add(std::move(name), F::SmallF32, std::move(shape), cls, role);
  }
  void set_expert(int64_t expert) { expert_ = static_cast<int32_t>(expert); }

 private:
  const ModelConfig& c_;
  int32_t layer_;
  int32_t expert_ = -1;
  const std::function<void(TensorSpec&&)>& sink_;
};

// ---- DeepSeek V4: names as in inference/model.py, no `model.` prefix ----

struct CompressorRoles {
  R wkv, wgate, ape, norm;
};
constexpr CompressorRoles kMainCompressor{R::CompressorWkv, R::CompressorWgate, R::CompressorApe, R::CompressorNorm};
constexpr CompressorRoles kIndexerCompressor{R::IndexerCompressorWkv, R::IndexerCompressorWgate,
                                             R::IndexerCompressorApe, R::IndexerCompressorNorm};

struct HcRoles {
  R fn, base, scale;
};
constexpr HcRoles kHcAttn{R::HcAttnFn, R::HcAttnBase, R::HcAttnScale};
constexpr HcRoles kHcFfn{R::HcFfnFn, R::HcFfnBase, R::HcFfnScale};
constexpr HcRoles kHcHead{R::HcHeadFn, R::HcHeadBase, R::HcHeadScale};

void v4_compressor(Rows& b, const std::string& p, int64_t ratio, int64_t d, int64_t dim, W cls, CompressorRoles r) {
  const int64_t coff = ratio == 4 ? 2 : 1;  // ratio 4 compresses overlapping windows: two halves per row
  b.bf16(p + ".wkv.weight", {coff * d, dim}, cls, r.wkv);
  b.bf16(p + ".wgate.weight", {coff * d, dim}, cls, r.wgate);
  b.f32(p + ".ape", {ratio, coff * d}, cls, r.ape);
  b.norm(p + ".norm.weight", d, cls, r.norm);
}

// One mHC mixing site: `mix` rows over the hc_mult streams; the head's scale has one entry, a block's three.
void v4_hc(Rows& b, const ModelConfig& c, const std::string& p, int64_t mix, int64_t scales, HcRoles r) {
  b.f32(p + "_fn", {mix, c.hc_mult * c.hidden_size}, W::Mhc, r.fn);
  b.f32(p + "_base", {mix}, W::Mhc, r.base);
  b.f32(p + "_scale", {scales}, W::Mhc, r.scale);
}

void v4_attention(Rows& b, const ModelConfig& c, int64_t layer, const std::string& p) {
  const int64_t dim = c.hidden_size, h = c.num_attention_heads, hd = c.head_dim;
  b.fp8(p + "attn.wq_a", c.q_lora_rank, dim, W::Attention, R::WqA);
  b.norm(p + "attn.q_norm.weight", c.q_lora_rank, W::Norm, R::QNorm);
  b.fp8(p + "attn.wq_b", h * hd, c.q_lora_rank, W::Attention, R::WqB);
  b.fp8(p + "attn.wkv", hd, dim, W::Attention, R::Wkv);
  b.norm(p + "attn.kv_norm.weight", hd, W::Norm, R::KvNorm);
  b.fp8(p + "attn.wo_a", c.o_groups * c.o_lora_rank, h * hd / c.o_groups, W::Attention, R::WoA);
  b.fp8(p + "attn.wo_b", dim, c.o_groups * c.o_lora_rank, W::Attention, R::WoB);
  b.f32(p + "attn.attn_sink", {h}, W::Attention, R::AttnSink);
  const int64_t ratio = c.compress_ratio(layer);
  if (ratio > 0) v4_compressor(b, p + "attn.compressor", ratio, hd, dim, W::Compressor, kMainCompressor);
  if (ratio == 4) {
    b.fp8(p + "attn.indexer.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank, W::Indexer, R::IndexerWqB);
    b.bf16(p + "attn.indexer.weights_proj.weight", {c.index_n_heads, dim}, W::Indexer, R::IndexerWeightsProj);
    v4_compressor(b, p + "attn.indexer.compressor", ratio, c.index_head_dim, dim, W::Indexer, kIndexerCompressor);
  }
}

void v4_moe(Rows& b, const ModelConfig& c, int64_t layer, const std::string& p) {
  const int64_t dim = c.hidden_size;
  b.bf16(p + "ffn.gate.weight", {c.n_routed_experts, dim}, W::Router, R::Gate);
  if (c.is_hash_layer(layer))
    b.add(p + "ffn.gate.tid2eid", F::HashTable, {c.vocab_size, c.num_experts_per_tok}, W::Router, R::Tid2eid);
  else
    b.f32(p + "ffn.gate.bias", {c.n_routed_experts}, W::Router, R::GateBias);
  const int64_t inter = c.moe_intermediate_size;
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    b.set_expert(e);
    const std::string ep = p + "ffn.experts." + std::to_string(e);
    b.expert(ep + ".w1", inter, dim, R::ExpertW1);
    b.expert(ep + ".w2", dim, inter, R::ExpertW2);
    b.expert(ep + ".w3", inter, dim, R::ExpertW3);
  }
  b.set_expert(-1);
  const int64_t shared = c.shared_expert_width();  // one expert: the config reader checks it, as V4's reference
  b.fp8(p + "ffn.shared_experts.w1", shared, dim, W::SharedExpert, R::SharedW1);
  b.fp8(p + "ffn.shared_experts.w2", dim, shared, W::SharedExpert, R::SharedW2);
  b.fp8(p + "ffn.shared_experts.w3", shared, dim, W::SharedExpert, R::SharedW3);
}

void v4_layer(Rows& b, const ModelConfig& c, int64_t layer) {
  const bool mtp = c.is_mtp_layer(layer);
  const std::string p = layer_prefix(c, layer);
  const int64_t dim = c.hidden_size, mix = (2 + c.hc_mult) * c.hc_mult;
  v4_attention(b, c, layer, p);
  b.norm(p + "attn_norm.weight", dim, W::Norm, R::AttnNorm);
  b.norm(p + "ffn_norm.weight", dim, W::Norm, R::FfnNorm);
  v4_hc(b, c, p + "hc_attn", mix, 3, kHcAttn);
  v4_hc(b, c, p + "hc_ffn", mix, 3, kHcFfn);
  v4_moe(b, c, layer, p);
  if (!mtp) return;
  b.fp8(p + "e_proj", dim, dim, W::MtpProjection, R::EProj);
  b.fp8(p + "h_proj", dim, dim, W::MtpProjection, R::HProj);
  b.norm(p + "enorm.weight", dim, W::Norm, R::ENorm);
  b.norm(p + "hnorm.weight", dim, W::Norm, R::HNorm);
  b.norm(p + "norm.weight", dim, W::Norm, R::MtpNorm);
  v4_hc(b, c, p + "hc_head", c.hc_mult, 1, kHcHead);
}

void v4_globals(Rows& b, const ModelConfig& c) {
  b.bf16("embed.weight", {c.vocab_size, c.hidden_size}, W::Embedding, R::Embed);
  b.bf16("head.weight", {c.vocab_size, c.hidden_size}, W::Head, R::Head);
  b.norm("norm.weight", c.hidden_size, W::Norm, R::FinalNorm);
  v4_hc(b, c, "hc_head", c.hc_mult, 1, kHcHead);
}

// ---- DeepSeek V3 / V3.2: Hugging Face names (`model.layers.N.`) ----

void v3_attention(Rows& b, const ModelConfig& c, const std::string& a) {
  const int64_t dim = c.hidden_size, h = c.num_attention_heads;
  b.fp8(a + "q_a_proj", c.q_lora_rank, dim, W::Attention);
  b.norm(a + "q_a_layernorm.weight", c.q_lora_rank);
  b.fp8(a + "q_b_proj", h * (c.qk_nope_head_dim + c.qk_rope_head_dim), c.q_lora_rank, W::Attention);
  b.fp8(a + "kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, dim, W::Attention);
  b.norm(a + "kv_a_layernorm.weight", c.kv_lora_rank);
  b.fp8(a + "kv_b_proj", h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, W::Attention);
  b.fp8(a + "o_proj", dim, h * c.v_head_dim, W::Attention);
  if (c.arch != Arch::DeepseekV32) return;
  b.fp8(a + "indexer.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank, W::Indexer);
  b.fp8(a + "indexer.wk", c.index_head_dim, dim, W::Indexer);
  b.norm(a + "indexer.k_norm.weight", c.index_head_dim, W::Indexer);
  b.norm(a + "indexer.k_norm.bias", c.index_head_dim, W::Indexer);
  b.bf16(a + "indexer.weights_proj.weight", {c.index_n_heads, dim}, W::Indexer);
}

void v3_mlp(Rows& b, const ModelConfig& c, int64_t layer, const std::string& m) {
  const int64_t dim = c.hidden_size;
  if (!c.is_moe_layer(layer)) {
    b.fp8(m + "gate_proj", c.intermediate_size, dim, W::DenseFfn);
    b.fp8(m + "up_proj", c.intermediate_size, dim, W::DenseFfn);
    b.fp8(m + "down_proj", dim, c.intermediate_size, W::DenseFfn);
    return;
  }
  b.bf16(m + "gate.weight", {c.n_routed_experts, dim}, W::Router);
  b.f32(m + "gate.e_score_correction_bias", {c.n_routed_experts}, W::Router);
  const int64_t inter = c.moe_intermediate_size;
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    b.set_expert(e);
    const std::string ep = m + "experts." + std::to_string(e) + ".";
    b.fp8(ep + "gate_proj", inter, dim, W::RoutedExpert);
    b.fp8(ep + "up_proj", inter, dim, W::RoutedExpert);
    b.fp8(ep + "down_proj", dim, inter, W::RoutedExpert);
  }
  b.set_expert(-1);
  const int64_t shared = c.shared_expert_width();
  if (shared > 0) {
    b.fp8(m + "shared_experts.gate_proj", shared, dim, W::SharedExpert);
    b.fp8(m + "shared_experts.up_proj", shared, dim, W::SharedExpert);
    b.fp8(m + "shared_experts.down_proj", dim, shared, W::SharedExpert);
  }
}

void v3_layer(Rows& b, const ModelConfig& c, int64_t layer) {
  const int64_t dim = c.hidden_size;
  const std::string p = layer_prefix(c, layer);
  b.norm(p + "input_layernorm.weight", dim);
  b.norm(p + "post_attention_layernorm.weight", dim);
  v3_attention(b, c, p + "self_attn.");
  v3_mlp(b, c, layer, p + "mlp.");
  if (!c.is_mtp_layer(layer)) return;
  // V3's MTP layer carries its own copies of the embedding and the output head.
  b.norm(p + "enorm.weight", dim);
  b.norm(p + "hnorm.weight", dim);
  b.bf16(p + "eh_proj.weight", {dim, 2 * dim}, W::MtpProjection);
  b.bf16(p + "embed_tokens.weight", {c.vocab_size, dim}, W::Embedding);
  b.norm(p + "shared_head.norm.weight", dim);
  b.bf16(p + "shared_head.head.weight", {c.vocab_size, dim}, W::Head);
}

void v3_globals(Rows& b, const ModelConfig& c) {
  b.bf16("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, W::Embedding);
  b.norm("model.norm.weight", c.hidden_size);
  b.bf16("lm_head.weight", {c.vocab_size, c.hidden_size}, W::Head);
}

TensorInfo stored(const TensorSpec& w, std::string name, DType dtype, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return TensorInfo{std::move(name), dtype,   std::move(shape), n * dtype_size(dtype),
                    w.cls,           w.layer, w.expert,         w.format};
}

}  // namespace

std::string layer_prefix(const ModelConfig& c, int64_t layer) {
  if (c.arch != Arch::DeepseekV4) return "model.layers." + std::to_string(layer) + ".";
  if (c.is_mtp_layer(layer)) return "mtp." + std::to_string(layer - c.num_hidden_layers) + ".";
  return "layers." + std::to_string(layer) + ".";
}

void for_each_layer_weight(const ModelConfig& c, int64_t layer, const std::function<void(TensorSpec&&)>& sink) {
  FERRY_CHECK(layer >= 0 && layer < c.n_layers_total(), "tensor table: no layer {}", layer);
  Rows b(c, layer, sink);
  if (c.arch == Arch::DeepseekV4)
    v4_layer(b, c, layer);
  else
    v3_layer(b, c, layer);
}

void for_each_global_weight(const ModelConfig& c, const std::function<void(TensorSpec&&)>& sink) {
  Rows b(c, -1, sink);
  if (c.arch == Arch::DeepseekV4)
    v4_globals(b, c);
  else
    v3_globals(b, c);
}

void for_each_weight(const ModelConfig& c, const std::function<void(TensorSpec&&)>& sink) {
  for (int64_t i = 0; i < c.n_layers_total(); ++i) for_each_layer_weight(c, i, sink);
  for_each_global_weight(c, sink);
}

std::string scale_tensor_name(const ModelConfig& c, const TensorSpec& w) {
  constexpr std::string_view kWeight = ".weight";
  FERRY_CHECK((w.format == F::Fp8Linear || w.format == F::Mxfp4Linear) && w.name.ends_with(kWeight),
              "tensor table: {} is not a scaled linear", w.name);
  const std::string prefix = w.name.substr(0, w.name.size() - kWeight.size());
  return prefix + (w.format == F::Fp8Linear && !c.scale_e8m0 ? ".weight_scale_inv" : ".scale");
}

std::vector<TensorInfo> stored_tensors(const ModelConfig& c, const TensorSpec& w) {
  switch (w.format) {
    case F::Fp8Linear: {
      const int64_t out = w.shape[0], in = w.shape[1], b = c.weight_block_size;
      return {stored(w, w.name, DType::F8_E4M3, {out, in}),
              stored(w, scale_tensor_name(c, w), c.scale_e8m0 ? DType::F8_E8M0 : DType::F32,
                     {ceil_div(out, b), ceil_div(in, b)})};
    }
    case F::Mxfp4Linear: {
      const int64_t out = w.shape[0], in = w.shape[1];
      return {stored(w, w.name, DType::I8, {out, in / 2}),
              stored(w, scale_tensor_name(c, w), DType::F8_E8M0, {out, in / c.fp4_block})};
    }
    case F::Bf16Matrix:
    case F::SmallBf16: return {stored(w, w.name, DType::BF16, w.shape)};
    case F::SmallF32: return {stored(w, w.name, DType::F32, w.shape)};
    case F::HashTable: return {stored(w, w.name, DType::I64, w.shape)};
    case F::Unexplained: break;
  }
  FERRY_THROW("tensor table: {} has no storage format", w.name);
}

void for_each_tensor(const ModelConfig& c, const std::function<void(TensorInfo&&)>& sink) {
  for_each_weight(c, [&](TensorSpec&& w) {
    for (TensorInfo& t : stored_tensors(c, w)) sink(std::move(t));
  });
}

std::vector<TensorInfo> make_tensor_inventory(const ModelConfig& c) {
  std::vector<TensorInfo> out;
  const size_t per_layer = static_cast<size_t>(c.n_routed_experts) * 6 + 64;
  out.reserve(per_layer * static_cast<size_t>(c.n_layers_total()) + 16);
  for_each_tensor(c, [&](TensorInfo&& t) { out.push_back(std::move(t)); });
  return out;
}

}  // namespace ferry::core
