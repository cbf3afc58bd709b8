#include "planner/core/tensor_inventory.h"

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

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

class Builder {
 public:
  Builder(const ModelConfig& c, const std::function<void(TensorInfo&&)>& sink) : c_(c), sink_(sink) {}

  void add(std::string name, DType dtype, std::vector<int64_t> shape, WeightClass cls) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    sink_(TensorInfo{std::move(name), dtype, std::move(shape), n * dtype_size(dtype), cls, layer_, expert_});
  }

  // An FP8 block-quantized linear: E4M3 weight with one scale per 128x128 block (E8M0 `.scale` in V4, F32
  // `weight_scale_inv` in V3).
  void fp8_linear(const std::string& prefix, int64_t out, int64_t in, WeightClass cls) {
    add(prefix + ".weight", DType::F8_E4M3, {out, in}, cls);
    const int64_t b = c_.weight_block_size;
    if (c_.scale_e8m0)
      add(prefix + ".scale", DType::F8_E8M0, {ceil_div(out, b), ceil_div(in, b)}, cls);
    else
      add(prefix + ".weight_scale_inv", DType::F32, {ceil_div(out, b), ceil_div(in, b)}, cls);
  }

  // A V4 routed-expert linear: FP4 E2M1 packed two per byte along K, one E8M0 scale per 32 K elements.
  void fp4_linear(const std::string& prefix, int64_t out, int64_t in, WeightClass cls) {
    FERRY_CHECK(in % 2 == 0 && in % c_.fp4_block == 0, "expert input dimension " + std::to_string(in) +
                                                           " is not a multiple of the FP4 block " +
                                                           std::to_string(c_.fp4_block));
    add(prefix + ".weight", DType::I8, {out, in / 2}, cls);
    add(prefix + ".scale", DType::F8_E8M0, {out, in / c_.fp4_block}, cls);
  }

  void bf16(const std::string& name, std::vector<int64_t> shape, WeightClass cls) {
    add(name, DType::BF16, std::move(shape), cls);
  }
  void f32(const std::string& name, std::vector<int64_t> shape, WeightClass cls) {
    add(name, DType::F32, std::move(shape), cls);
  }

  void set_layer(int64_t layer) { layer_ = static_cast<int32_t>(layer); }
  void set_expert(int64_t expert) { expert_ = static_cast<int32_t>(expert); }

 private:
  const ModelConfig& c_;
  const std::function<void(TensorInfo&&)>& sink_;
  int32_t layer_ = -1;
  int32_t expert_ = -1;
};

// ---- DeepSeek V4: names as in inference/model.py, no `model.` prefix ----

void v4_compressor(Builder& b, const std::string& p, int64_t ratio, int64_t d, int64_t dim, WeightClass cls) {
  const int64_t coff = ratio == 4 ? 2 : 1;  // ratio 4 compresses overlapping windows: two halves per row
  b.bf16(p + ".wkv.weight", {coff * d, dim}, cls);
  b.bf16(p + ".wgate.weight", {coff * d, dim}, cls);
  b.f32(p + ".ape", {ratio, coff * d}, cls);
  b.bf16(p + ".norm.weight", {d}, cls);
}

void v4_layer(Builder& b, const ModelConfig& c, int64_t layer, const std::string& p) {
  const int64_t dim = c.hidden_size, h = c.num_attention_heads, hd = c.head_dim;
  using W = WeightClass;
  b.fp8_linear(p + "attn.wq_a", c.q_lora_rank, dim, W::Attention);
  b.bf16(p + "attn.q_norm.weight", {c.q_lora_rank}, W::Norm);
  b.fp8_linear(p + "attn.wq_b", h * hd, c.q_lora_rank, W::Attention);
  b.fp8_linear(p + "attn.wkv", hd, dim, W::Attention);
  b.bf16(p + "attn.kv_norm.weight", {hd}, W::Norm);
  b.fp8_linear(p + "attn.wo_a", c.o_groups * c.o_lora_rank, h * hd / c.o_groups, W::Attention);
  b.fp8_linear(p + "attn.wo_b", dim, c.o_groups * c.o_lora_rank, W::Attention);
  b.f32(p + "attn.attn_sink", {h}, W::Attention);
  const int64_t ratio = c.compress_ratio(layer);
  if (ratio > 0) v4_compressor(b, p + "attn.compressor", ratio, hd, dim, W::Compressor);
  if (ratio == 4) {
    b.fp8_linear(p + "attn.indexer.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank, W::Indexer);
    b.bf16(p + "attn.indexer.weights_proj.weight", {c.index_n_heads, dim}, W::Indexer);
    v4_compressor(b, p + "attn.indexer.compressor", ratio, c.index_head_dim, dim, W::Indexer);
  }
  b.bf16(p + "attn_norm.weight", {dim}, W::Norm);
  b.bf16(p + "ffn_norm.weight", {dim}, W::Norm);
  const int64_t mix = (2 + c.hc_mult) * c.hc_mult;
  for (const char* site : {"attn", "ffn"}) {
    b.f32(p + "hc_" + site + "_fn", {mix, c.hc_mult * dim}, W::Mhc);
    b.f32(p + "hc_" + site + "_base", {mix}, W::Mhc);
    b.f32(p + "hc_" + site + "_scale", {3}, W::Mhc);
  }
  b.bf16(p + "ffn.gate.weight", {c.n_routed_experts, dim}, W::Router);
  if (c.is_hash_layer(layer))
    b.add(p + "ffn.gate.tid2eid", DType::I64, {c.vocab_size, c.num_experts_per_tok}, W::Router);
  else
    b.f32(p + "ffn.gate.bias", {c.n_routed_experts}, W::Router);
  const int64_t inter = c.moe_intermediate_size;
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    b.set_expert(e);
    const std::string ep = p + "ffn.experts." + std::to_string(e);
    if (c.fp4_experts) {
      b.fp4_linear(ep + ".w1", inter, dim, W::RoutedExpert);
      b.fp4_linear(ep + ".w2", dim, inter, W::RoutedExpert);
      b.fp4_linear(ep + ".w3", inter, dim, W::RoutedExpert);
    } else {
      b.fp8_linear(ep + ".w1", inter, dim, W::RoutedExpert);
      b.fp8_linear(ep + ".w2", dim, inter, W::RoutedExpert);
      b.fp8_linear(ep + ".w3", inter, dim, W::RoutedExpert);
    }
  }
  b.set_expert(-1);
  const int64_t shared = inter * c.n_shared_experts;
  if (shared > 0) {
    b.fp8_linear(p + "ffn.shared_experts.w1", shared, dim, W::SharedExpert);
    b.fp8_linear(p + "ffn.shared_experts.w2", dim, shared, W::SharedExpert);
    b.fp8_linear(p + "ffn.shared_experts.w3", shared, dim, W::SharedExpert);
  }
}

void v4_head(Builder& b, const ModelConfig& c, const std::string& p) {
  b.f32(p + "hc_head_fn", {c.hc_mult, c.hc_mult * c.hidden_size}, WeightClass::Mhc);
  b.f32(p + "hc_head_base", {c.hc_mult}, WeightClass::Mhc);
  b.f32(p + "hc_head_scale", {1}, WeightClass::Mhc);
}

void v4_inventory(Builder& b, const ModelConfig& c) {
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    b.set_layer(i);
    v4_layer(b, c, i, "layers." + std::to_string(i) + ".");
  }
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const int64_t layer = c.num_hidden_layers + k;
    const std::string p = "mtp." + std::to_string(k) + ".";
    b.set_layer(layer);
    v4_layer(b, c, layer, p);
    b.fp8_linear(p + "e_proj", c.hidden_size, c.hidden_size, WeightClass::MtpProjection);
    b.fp8_linear(p + "h_proj", c.hidden_size, c.hidden_size, WeightClass::MtpProjection);
    b.bf16(p + "enorm.weight", {c.hidden_size}, WeightClass::Norm);
    b.bf16(p + "hnorm.weight", {c.hidden_size}, WeightClass::Norm);
    b.bf16(p + "norm.weight", {c.hidden_size}, WeightClass::Norm);
    v4_head(b, c, p);
  }
  b.set_layer(-1);
  b.bf16("embed.weight", {c.vocab_size, c.hidden_size}, WeightClass::Embedding);
  b.bf16("head.weight", {c.vocab_size, c.hidden_size}, WeightClass::Head);
  b.bf16("norm.weight", {c.hidden_size}, WeightClass::Norm);
  v4_head(b, c, "");
}

// ---- DeepSeek V3 / V3.2: Hugging Face names (`model.layers.N.`) ----

void v3_layer(Builder& b, const ModelConfig& c, int64_t layer, const std::string& p) {
  const int64_t dim = c.hidden_size, h = c.num_attention_heads;
  using W = WeightClass;
  b.bf16(p + "input_layernorm.weight", {dim}, W::Norm);
  b.bf16(p + "post_attention_layernorm.weight", {dim}, W::Norm);
  const std::string a = p + "self_attn.";
  b.fp8_linear(a + "q_a_proj", c.q_lora_rank, dim, W::Attention);
  b.bf16(a + "q_a_layernorm.weight", {c.q_lora_rank}, W::Norm);
  b.fp8_linear(a + "q_b_proj", h * (c.qk_nope_head_dim + c.qk_rope_head_dim), c.q_lora_rank, W::Attention);
  b.fp8_linear(a + "kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, dim, W::Attention);
  b.bf16(a + "kv_a_layernorm.weight", {c.kv_lora_rank}, W::Norm);
  b.fp8_linear(a + "kv_b_proj", h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, W::Attention);
  b.fp8_linear(a + "o_proj", dim, h * c.v_head_dim, W::Attention);
  if (c.arch == Arch::DeepseekV32) {
    b.fp8_linear(a + "indexer.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank, W::Indexer);
    b.fp8_linear(a + "indexer.wk", c.index_head_dim, dim, W::Indexer);
    b.bf16(a + "indexer.k_norm.weight", {c.index_head_dim}, W::Indexer);
    b.bf16(a + "indexer.k_norm.bias", {c.index_head_dim}, W::Indexer);
    b.bf16(a + "indexer.weights_proj.weight", {c.index_n_heads, dim}, W::Indexer);
  }
  const std::string m = p + "mlp.";
  if (!c.is_moe_layer(layer)) {
    b.fp8_linear(m + "gate_proj", c.intermediate_size, dim, W::DenseFfn);
    b.fp8_linear(m + "up_proj", c.intermediate_size, dim, W::DenseFfn);
    b.fp8_linear(m + "down_proj", dim, c.intermediate_size, W::DenseFfn);
    return;
  }
  b.bf16(m + "gate.weight", {c.n_routed_experts, dim}, W::Router);
  b.f32(m + "gate.e_score_correction_bias", {c.n_routed_experts}, W::Router);
  const int64_t inter = c.moe_intermediate_size;
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    b.set_expert(e);
    const std::string ep = m + "experts." + std::to_string(e) + ".";
    b.fp8_linear(ep + "gate_proj", inter, dim, W::RoutedExpert);
    b.fp8_linear(ep + "up_proj", inter, dim, W::RoutedExpert);
    b.fp8_linear(ep + "down_proj", dim, inter, W::RoutedExpert);
  }
  b.set_expert(-1);
  const int64_t shared = inter * c.n_shared_experts;
  if (shared > 0) {
    b.fp8_linear(m + "shared_experts.gate_proj", shared, dim, W::SharedExpert);
    b.fp8_linear(m + "shared_experts.up_proj", shared, dim, W::SharedExpert);
    b.fp8_linear(m + "shared_experts.down_proj", dim, shared, W::SharedExpert);
  }
}

void v3_inventory(Builder& b, const ModelConfig& c) {
  for (int64_t i = 0; i < c.n_layers_total(); ++i) {
    b.set_layer(i);
    const std::string p = "model.layers." + std::to_string(i) + ".";
    v3_layer(b, c, i, p);
    if (c.is_mtp_layer(i)) {
      // V3's MTP layer carries its own copies of the embedding and the output head.
      b.bf16(p + "enorm.weight", {c.hidden_size}, WeightClass::Norm);
      b.bf16(p + "hnorm.weight", {c.hidden_size}, WeightClass::Norm);
      b.bf16(p + "eh_proj.weight", {c.hidden_size, 2 * c.hidden_size}, WeightClass::MtpProjection);
      b.bf16(p + "embed_tokens.weight", {c.vocab_size, c.hidden_size}, WeightClass::Embedding);
      b.bf16(p + "shared_head.norm.weight", {c.hidden_size}, WeightClass::Norm);
      b.bf16(p + "shared_head.head.weight", {c.vocab_size, c.hidden_size}, WeightClass::Head);
    }
  }
  b.set_layer(-1);
  b.bf16("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, WeightClass::Embedding);
  b.bf16("model.norm.weight", {c.hidden_size}, WeightClass::Norm);
  b.bf16("lm_head.weight", {c.vocab_size, c.hidden_size}, WeightClass::Head);
}

}  // namespace

void for_each_tensor(const ModelConfig& c, const std::function<void(TensorInfo&&)>& sink) {
  Builder b(c, sink);
  if (c.arch == Arch::DeepseekV4)
    v4_inventory(b, c);
  else
    v3_inventory(b, c);
}

std::vector<TensorInfo> make_tensor_inventory(const ModelConfig& c) {
  std::vector<TensorInfo> out;
  const size_t per_layer = static_cast<size_t>(c.n_routed_experts) * 6 + 64;
  out.reserve(per_layer * static_cast<size_t>(c.n_layers_total()) + 16);
  for_each_tensor(c, [&](TensorInfo&& t) { out.push_back(std::move(t)); });
  return out;
}

}  // namespace ferry::core
