#include "planner/core/model_config.h"

#include <fmt/format.h>
#include <algorithm>
#include <nlohmann/json.hpp>

#include "planner/core/error.h"

namespace ferry::core {

using nlohmann::json;

std::string_view arch_name(Arch a) {
  switch (a) {
    case Arch::DeepseekV4: return "deepseek_v4";
    case Arch::DeepseekV3: return "deepseek_v3";
    case Arch::DeepseekV32: return "deepseek_v32";
  }
  return "?";
}

std::string_view attn_kind_name(AttnKind k) {
  switch (k) {
    case AttnKind::Swa: return "swa";
    case AttnKind::Csa: return "csa";
    case AttnKind::Hca: return "hca";
    case AttnKind::Mla: return "mla";
    case AttnKind::MlaDsa: return "mla+dsa";
  }
  return "?";
}

int64_t ModelConfig::compress_ratio(int64_t layer) const {
  if (arch != Arch::DeepseekV4) return 0;
  return compress_ratios.at(static_cast<size_t>(layer));
}

AttnKind ModelConfig::attn_kind(int64_t layer) const {
  switch (arch) {
    case Arch::DeepseekV3: return AttnKind::Mla;
    case Arch::DeepseekV32: return AttnKind::MlaDsa;
    case Arch::DeepseekV4: break;
  }
  const int64_t r = compress_ratio(layer);
  if (r == 0) return AttnKind::Swa;
  // The reference gives only ratio 4 the overlapping compressor and the indexer; any other ratio is HCA-like.
  return r == 4 ? AttnKind::Csa : AttnKind::Hca;
}

bool ModelConfig::is_moe_layer(int64_t layer) const {
  if (is_mtp_layer(layer)) return true;
  return layer >= first_k_dense_replace;
}

bool ModelConfig::is_hash_layer(int64_t layer) const {
  return arch == Arch::DeepseekV4 && !is_mtp_layer(layer) && layer < num_hash_layers;
}

namespace {

const char* json_type(const json& v) { return v.type_name(); }

class Reader {
 public:
  Reader(const json& j, std::string model_type) : j_(j), model_type_(std::move(model_type)) {}

  const json& require(const char* key) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null())
      FERRY_THROW("config.json: missing key '{}' (required for {})", key, model_type_);
    return *it;
  }

  int64_t integer(const char* key, int64_t lo, int64_t hi) const { return check_int(key, require(key), lo, hi); }

  int64_t integer_or(const char* key, int64_t fallback, int64_t lo, int64_t hi) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return fallback;
    return check_int(key, *it, lo, hi);
  }

  double number(const char* key) const { return check_number(key, require(key)); }

  double number_or(const char* key, double fallback) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return fallback;
    return check_number(key, *it);
  }

  std::string string_or(const char* key, std::string fallback) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return fallback;
    if (!it->is_string()) FERRY_THROW("config.json: key '{}' must be a string, got {}", key, json_type(*it));
    return it->get<std::string>();
  }

  static int64_t check_int(const std::string& key, const json& v, int64_t lo, int64_t hi) {
    if (!v.is_number_integer() &&
        !(v.is_number_float() && v.get<double>() == static_cast<double>(static_cast<int64_t>(v.get<double>()))))
      FERRY_THROW("config.json: key '{}' must be an integer, got {}", key, v.is_number() ? v.dump() : json_type(v));
    const int64_t x = v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(v.get<double>());
    if (x < lo || x > hi) FERRY_THROW("config.json: key '{}' = {} is out of range [{}, {}]", key, x, lo, hi);
    return x;
  }

  static double check_number(const std::string& key, const json& v) {
    if (!v.is_number()) FERRY_THROW("config.json: key '{}' must be a number, got {}", key, json_type(v));
    return v.get<double>();
  }

  const json& j() const { return j_; }

 private:
  const json& j_;
  std::string model_type_;
};

constexpr int64_t kMaxDim = int64_t(1) << 20;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxExperts = 65536;

void read_rope_scaling(const Reader& r, ModelConfig& c) {
  auto it = r.j().find("rope_scaling");
  if (it == r.j().end() || it->is_null()) return;
  if (!it->is_object()) FERRY_THROW("config.json: key 'rope_scaling' must be an object");
  Reader rs(*it, "rope_scaling");
  c.rope_factor = rs.number_or("factor", 1);
  c.rope_original_max_position = rs.integer_or("original_max_position_embeddings", 0, 0, int64_t(1) << 40);
  c.rope_beta_fast = rs.number_or("beta_fast", 32);
  c.rope_beta_slow = rs.number_or("beta_slow", 1);
  c.rope_mscale = rs.number_or("mscale", 0);
  c.rope_mscale_all_dim = rs.number_or("mscale_all_dim", 0);
}

void read_quantization(const Reader& r, ModelConfig& c) {
  auto it = r.j().find("quantization_config");
  if (it == r.j().end() || it->is_null()) {
    FERRY_THROW(
        "config.json: missing key 'quantization_config': ferry reads DeepSeek's FP8 checkpoints "
        "(quant_method fp8, 128x128 blocks)");
  }
  if (!it->is_object()) FERRY_THROW("config.json: key 'quantization_config' must be an object");
  Reader q(*it, "quantization_config");
  const std::string method = q.string_or("quant_method", "");
  if (method != "fp8")
    FERRY_THROW("config.json: unsupported quantization_config.quant_method '{}' (ferry reads 'fp8')", method);
  const std::string fmt = q.string_or("fmt", "e4m3");
  if (fmt != "e4m3") FERRY_THROW("config.json: unsupported quantization_config.fmt '{}' (expected e4m3)", fmt);
  auto bs = it->find("weight_block_size");
  if (bs != it->end()) {
    if (!bs->is_array() || bs->size() != 2 || !(*bs)[0].is_number_integer() || (*bs)[0] != (*bs)[1])
      FERRY_THROW("config.json: quantization_config.weight_block_size must be [N, N]");
    c.weight_block_size = Reader::check_int("quantization_config.weight_block_size", (*bs)[0], 1, 4096);
  }
}

void read_v4(const Reader& r, ModelConfig& c) {
  c.head_dim = r.integer("head_dim", 1, kMaxDim);
  c.qk_rope_head_dim = r.integer("qk_rope_head_dim", 2, c.head_dim);
  c.q_lora_rank = r.integer("q_lora_rank", 1, kMaxDim);
  c.o_groups = r.integer("o_groups", 1, kMaxDim);
  c.o_lora_rank = r.integer("o_lora_rank", 1, kMaxDim);
  c.sliding_window = r.integer("sliding_window", 1, kMaxDim);
  c.compress_rope_theta = r.number("compress_rope_theta");
  c.index_n_heads = r.integer("index_n_heads", 1, kMaxDim);
  c.index_head_dim = r.integer("index_head_dim", 1, kMaxDim);
  c.index_topk = r.integer("index_topk", 1, int64_t(1) << 30);
  c.num_hash_layers = r.integer_or("num_hash_layers", 0, 0, c.num_hidden_layers);
  c.hc_mult = r.integer("hc_mult", 1, 64);
  c.hc_sinkhorn_iters = r.integer_or("hc_sinkhorn_iters", 20, 0, 10000);
  c.hc_eps = r.number_or("hc_eps", 1e-6);
  c.swiglu_limit = r.number_or("swiglu_limit", 0);
  const int64_t kv_heads = r.integer_or("num_key_value_heads", 1, 1, kMaxDim);
  if (kv_heads != 1)
    FERRY_THROW("config.json: deepseek_v4 has one shared KV head, got num_key_value_heads = {}", kv_heads);
  if (c.num_attention_heads % c.o_groups != 0)
    FERRY_THROW("config.json: num_attention_heads ({}) must be a multiple of o_groups ({})", c.num_attention_heads,
                c.o_groups);
  const json& ratios = r.require("compress_ratios");
  if (!ratios.is_array()) FERRY_THROW("config.json: key 'compress_ratios' must be an array");
  if (static_cast<int64_t>(ratios.size()) != c.n_layers_total())
    FERRY_THROW(
        "config.json: compress_ratios has {} entries, expected {} (num_hidden_layers + num_nextn_predict_layers)",
        ratios.size(), c.n_layers_total());
  for (const auto& v : ratios) {
    const int64_t ratio = Reader::check_int("compress_ratios[]", v, 0, int64_t(1) << 20);
    if (ratio == 1) FERRY_THROW("config.json: compress_ratios entries must be 0 (SWA-only) or at least 2, got 1");
    c.compress_ratios.push_back(ratio);
  }
  c.scale_e8m0 = true;
  c.fp4_experts = r.string_or("expert_dtype", "fp4") == "fp4";
}

void read_v3(const Reader& r, ModelConfig& c) {
  c.q_lora_rank = r.integer("q_lora_rank", 1, kMaxDim);
  c.kv_lora_rank = r.integer("kv_lora_rank", 1, kMaxDim);
  c.qk_nope_head_dim = r.integer("qk_nope_head_dim", 1, kMaxDim);
  c.qk_rope_head_dim = r.integer("qk_rope_head_dim", 2, kMaxDim);
  c.v_head_dim = r.integer("v_head_dim", 1, kMaxDim);
  c.intermediate_size = r.integer("intermediate_size", 1, kMaxDim);
  c.first_k_dense_replace = r.integer_or("first_k_dense_replace", 0, 0, c.num_hidden_layers);
  c.n_group = r.integer_or("n_group", 1, 1, kMaxExperts);
  c.topk_group = r.integer_or("topk_group", 1, 1, c.n_group);
  if (c.arch == Arch::DeepseekV32) {
    c.index_n_heads = r.integer("index_n_heads", 1, kMaxDim);
    c.index_head_dim = r.integer("index_head_dim", 1, kMaxDim);
    c.index_topk = r.integer("index_topk", 1, int64_t(1) << 30);
  }
  c.scale_e8m0 = false;
  c.fp4_experts = false;
}

}  // namespace

ModelConfig config_from_json(const json& j, std::string name) {
  if (!j.is_object()) FERRY_THROW("config.json: expected a JSON object at the top level");
  std::string model_type;
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) model_type = it->get<std::string>();
  ModelConfig c;
  c.name = std::move(name);
  if (model_type == "deepseek_v4")
    c.arch = Arch::DeepseekV4;
  else if (model_type == "deepseek_v3")
    c.arch = Arch::DeepseekV3;
  else if (model_type == "deepseek_v32")
    c.arch = Arch::DeepseekV32;
  else {
    FERRY_THROW(
        "unsupported architecture {}: ferry supports deepseek_v4 (V4-Flash, V4-Pro), deepseek_v3 (V3, V3.1, R1) and "
        "deepseek_v32 (V3.2)",
        model_type.empty() ? std::string("(no model_type in config.json)") : fmt::format("'{}'", model_type));
  }
  Reader r(j, model_type);
  c.vocab_size = r.integer("vocab_size", 2, int64_t(1) << 24);
  c.hidden_size = r.integer("hidden_size", 1, kMaxDim);
  c.num_hidden_layers = r.integer("num_hidden_layers", 1, kMaxLayers);
  c.num_nextn_predict_layers = r.integer_or("num_nextn_predict_layers", 0, 0, 16);
  c.num_attention_heads = r.integer("num_attention_heads", 1, kMaxDim);
  c.max_position_embeddings = r.integer("max_position_embeddings", 1, int64_t(1) << 34);
  c.bos_token_id = r.integer_or("bos_token_id", 0, 0, c.vocab_size - 1);
  c.eos_token_id = r.integer_or("eos_token_id", 1, 0, c.vocab_size - 1);
  c.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6);
  c.rope_theta = r.number_or("rope_theta", 10000);
  c.n_routed_experts = r.integer("n_routed_experts", 1, kMaxExperts);
  c.n_shared_experts = r.integer_or("n_shared_experts", 0, 0, 64);
  c.num_experts_per_tok = r.integer("num_experts_per_tok", 1, c.n_routed_experts);
  c.moe_intermediate_size = r.integer("moe_intermediate_size", 1, kMaxDim);
  c.routed_scaling_factor = r.number_or("routed_scaling_factor", 1);
  c.scoring_func = r.string_or("scoring_func", "softmax");
  read_rope_scaling(r, c);
  read_quantization(r, c);
  if (c.arch == Arch::DeepseekV4)
    read_v4(r, c);
  else
    read_v3(r, c);
  if (c.weight_block_size <= 0) FERRY_THROW("config.json: weight_block_size must be positive");
  return c;
}

ModelConfig config_from_json_text(std::string_view text, std::string name) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    // nlohmann's message names the byte offset; keep it on one line.
    std::string what = e.what();
    std::replace(what.begin(), what.end(), '\n', ' ');
    FERRY_THROW("config.json is not valid JSON: {}", what);
  }
  return config_from_json(j, std::move(name));
}

}  // namespace ferry::core
