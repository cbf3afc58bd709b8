// Built-in model presets, written as the config.json each model ships, so that a preset and the real file go
// through the same parser. deepseek-v4-flash is DeepSeek's published config.json verbatim; deepseek-v4-pro
// differs in the keys the V4-Pro card and ModelArgs give (docs: ../shared/spec/deepseek-v4.md §1);
// deepseek-v3 is DeepSeek-V3's config.json, deepseek-v3.2 adds V3.2-Exp's indexer keys.
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "planner/core/error.h"
#include "planner/core/model_config.h"

namespace ferry::core {
namespace {

struct Preset {
  std::string_view name;
  std::string_view config_json;
};

// clang-format off
const Preset kPresets[] = {
    {"deepseek-v4-flash", R"json({"architectures":["DeepseekV4ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":0,"eos_token_id":1,"hc_eps":1e-06,"hc_mult":4,"hc_sinkhorn_iters":20,"head_dim":512,"hidden_act":"silu","hidden_size":4096,"index_head_dim":128,"index_n_heads":64,"index_topk":512,"initializer_range":0.02,"max_position_embeddings":1048576,"model_type":"deepseek_v4","moe_intermediate_size":2048,"n_routed_experts":256,"n_shared_experts":1,"norm_topk_prob":true,"num_attention_heads":64,"num_experts_per_tok":6,"num_hidden_layers":43,"num_hash_layers":3,"num_key_value_heads":1,"num_nextn_predict_layers":1,"o_groups":8,"o_lora_rank":1024,"q_lora_rank":1024,"qk_rope_head_dim":64,"quantization_config":{"activation_scheme":"dynamic","fmt":"e4m3","quant_method":"fp8","scale_fmt":"ue8m0","weight_block_size":[128,128]},"rms_norm_eps":1e-06,"rope_scaling":{"beta_fast":32,"beta_slow":1,"factor":16,"original_max_position_embeddings":65536,"type":"yarn"},"rope_theta":10000,"routed_scaling_factor":1.5,"scoring_func":"sqrtsoftplus","sliding_window":128,"swiglu_limit":10.0,"tie_word_embeddings":false,"topk_method":"noaux_tc","torch_dtype":"bfloat16","transformers_version":"4.57.1","use_cache":true,"vocab_size":129280,"compress_rope_theta":160000,"compress_ratios":[0,0,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,0]})json"},
    {"deepseek-v4-pro", R"json({"architectures":["DeepseekV4ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":0,"eos_token_id":1,"hc_eps":1e-06,"hc_mult":4,"hc_sinkhorn_iters":20,"head_dim":512,"hidden_act":"silu","hidden_size":7168,"index_head_dim":128,"index_n_heads":64,"index_topk":1024,"initializer_range":0.02,"max_position_embeddings":1048576,"model_type":"deepseek_v4","moe_intermediate_size":3072,"n_routed_experts":384,"n_shared_experts":1,"norm_topk_prob":true,"num_attention_heads":128,"num_experts_per_tok":6,"num_hidden_layers":61,"num_hash_layers":3,"num_key_value_heads":1,"num_nextn_predict_layers":1,"o_groups":16,"o_lora_rank":1024,"q_lora_rank":1536,"qk_rope_head_dim":64,"quantization_config":{"activation_scheme":"dynamic","fmt":"e4m3","quant_method":"fp8","scale_fmt":"ue8m0","weight_block_size":[128,128]},"rms_norm_eps":1e-06,"rope_scaling":{"beta_fast":32,"beta_slow":1,"factor":16,"original_max_position_embeddings":65536,"type":"yarn"},"rope_theta":10000,"routed_scaling_factor":2.5,"scoring_func":"sqrtsoftplus","sliding_window":128,"swiglu_limit":10.0,"tie_word_embeddings":false,"topk_method":"noaux_tc","torch_dtype":"bfloat16","transformers_version":"4.57.1","use_cache":true,"vocab_size":129280,"compress_rope_theta":160000,"compress_ratios":[128,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,0]})json"},
    {"deepseek-v3", R"json({"architectures":["DeepseekV3ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":0,"eos_token_id":1,"first_k_dense_replace":3,"hidden_act":"silu","hidden_size":7168,"initializer_range":0.02,"intermediate_size":18432,"kv_lora_rank":512,"max_position_embeddings":163840,"model_type":"deepseek_v3","moe_intermediate_size":2048,"moe_layer_freq":1,"n_group":8,"n_routed_experts":256,"n_shared_experts":1,"norm_topk_prob":true,"num_attention_heads":128,"num_experts_per_tok":8,"num_hidden_layers":61,"num_key_value_heads":128,"num_nextn_predict_layers":1,"q_lora_rank":1536,"qk_nope_head_dim":128,"qk_rope_head_dim":64,"quantization_config":{"activation_scheme":"dynamic","fmt":"e4m3","quant_method":"fp8","weight_block_size":[128,128]},"rms_norm_eps":1e-06,"rope_scaling":{"beta_fast":32,"beta_slow":1,"factor":40,"mscale":1.0,"mscale_all_dim":1.0,"original_max_position_embeddings":4096,"type":"yarn"},"rope_theta":10000,"routed_scaling_factor":2.5,"scoring_func":"sigmoid","tie_word_embeddings":false,"topk_group":4,"topk_method":"noaux_tc","torch_dtype":"bfloat16","use_cache":true,"v_head_dim":128,"vocab_size":129280})json"},
    {"deepseek-v3.2", R"json({"architectures":["DeepseekV32ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":0,"eos_token_id":1,"first_k_dense_replace":3,"hidden_act":"silu","hidden_size":7168,"initializer_range":0.02,"intermediate_size":18432,"kv_lora_rank":512,"max_position_embeddings":163840,"model_type":"deepseek_v32","moe_intermediate_size":2048,"moe_layer_freq":1,"n_group":8,"n_routed_experts":256,"n_shared_experts":1,"norm_topk_prob":true,"num_attention_heads":128,"num_experts_per_tok":8,"num_hidden_layers":61,"num_key_value_heads":128,"num_nextn_predict_layers":1,"q_lora_rank":1536,"qk_nope_head_dim":128,"qk_rope_head_dim":64,"quantization_config":{"activation_scheme":"dynamic","fmt":"e4m3","quant_method":"fp8","weight_block_size":[128,128],"scale_fmt":"ue8m0"},"rms_norm_eps":1e-06,"rope_scaling":{"beta_fast":32,"beta_slow":1,"factor":40,"mscale":1.0,"mscale_all_dim":1.0,"original_max_position_embeddings":4096,"type":"yarn"},"rope_theta":10000,"routed_scaling_factor":2.5,"scoring_func":"sigmoid","tie_word_embeddings":false,"topk_group":4,"topk_method":"noaux_tc","torch_dtype":"bfloat16","use_cache":true,"v_head_dim":128,"vocab_size":129280,"index_head_dim":128,"index_n_heads":64,"index_topk":2048})json"},
};
// clang-format on

// Other names users type for the same architectures.
const std::pair<std::string_view, std::string_view> kAliases[] = {
    {"v4-flash", "deepseek-v4-flash"}, {"deepseek-v4", "deepseek-v4-flash"},
    {"v4-pro", "deepseek-v4-pro"},     {"deepseek-v3.1", "deepseek-v3"},
    {"deepseek-r1", "deepseek-v3"},    {"v3", "deepseek-v3"},
    {"deepseek-v32", "deepseek-v3.2"}, {"v3.2", "deepseek-v3.2"},
};

const Preset* find_preset(std::string_view name) {
  for (const auto& [alias, target] : kAliases)
    if (alias == name) name = target;
  for (const auto& p : kPresets)
    if (p.name == name) return &p;
  return nullptr;
}

}  // namespace

bool is_preset_name(std::string_view name) { return find_preset(name) != nullptr; }

std::vector<std::string> preset_names() {
  std::vector<std::string> out;
  for (const auto& p : kPresets) out.emplace_back(p.name);
  return out;
}

nlohmann::json preset_config_json(std::string_view name) {
  const Preset* p = find_preset(name);
  if (!p) {
    std::string known;
    for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
    FERRY_THROW("unknown model preset '{}' (known: {})", name, known);
  }
  return nlohmann::json::parse(p->config_json);
}

ModelConfig preset_config(std::string_view name) {
  const Preset* p = find_preset(name);
  return config_from_json(preset_config_json(name), std::string(p->name));
}

}  // namespace ferry::core
