// The hyperparameters of a DeepSeek model, read from a Hugging Face config.json or a built-in preset.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace ferry::core {

enum class Arch : uint8_t {
  DeepseekV4,   // V4-Flash, V4-Pro: shared-KV MQA with SWA + CSA/HCA compression, mHC, hash routing
  DeepseekV3,   // V3, V3.1, R1: MLA
  DeepseekV32,  // V3.2: MLA + DSA lightning indexer
};

std::string_view arch_name(Arch a);  // the config.json model_type: deepseek_v4, deepseek_v3, deepseek_v32

// Attention type of one layer of a V4 model, from `compress_ratios`.
enum class AttnKind : uint8_t { Swa, Csa, Hca, Mla, MlaDsa };
std::string_view attn_kind_name(AttnKind k);

struct ModelConfig {
  Arch arch = Arch::DeepseekV4;
  std::string name;  // preset name or where the config came from, for reports

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_nextn_predict_layers = 0;  // MTP layers (DeepSeek ships one)
  int64_t num_attention_heads = 0;
  int64_t max_position_embeddings = 0;
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;
  double rms_norm_eps = 1e-6;

  // Attention, V4
  int64_t head_dim = 0;  // q, k and v head size (512)
  int64_t qk_rope_head_dim = 0;
  int64_t q_lora_rank = 0;
  int64_t o_groups = 0;
  int64_t o_lora_rank = 0;
  int64_t sliding_window = 0;
  std::vector<int64_t> compress_ratios;  // num_hidden_layers + MTP entries; 0 = SWA-only, 4 = CSA, 128 = HCA
  double rope_theta = 10000;
  double compress_rope_theta = 0;
  // Attention, V3 (MLA)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t v_head_dim = 0;
  // Lightning indexer (V4 CSA layers, V3.2 every layer)
  int64_t index_n_heads = 0;
  int64_t index_head_dim = 0;
  int64_t index_topk = 0;
  // RoPE scaling (YaRN)
  double rope_factor = 1;
  int64_t rope_original_max_position = 0;
  double rope_beta_fast = 32;
  double rope_beta_slow = 1;
  double rope_mscale = 0;
  double rope_mscale_all_dim = 0;

  // MoE
  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t intermediate_size = 0;      // dense FFN (V3's first layers)
  int64_t first_k_dense_replace = 0;  // V3: leading dense layers
  int64_t num_hash_layers = 0;        // V4: leading hash-routed layers (tid2eid)
  int64_t n_group = 1;
  int64_t topk_group = 1;
  double routed_scaling_factor = 1;
  std::string scoring_func;
  double swiglu_limit = 0;  // 0 = unclamped

  // Hyper-connections (mHC), V4
  int64_t hc_mult = 1;
  int64_t hc_sinkhorn_iters = 0;
  double hc_eps = 1e-6;

  // Weight encoding
  int64_t weight_block_size = 128;  // FP8 128x128 blocks
  bool scale_e8m0 = false;          // V4: F8_E8M0 `.scale`; V3: F32 `weight_scale_inv`
  bool fp4_experts = false;         // V4: routed experts MXFP4 (I8 packed + E8M0 per 32)
  int64_t fp4_block = 32;

  int64_t n_layers_total() const { return num_hidden_layers + num_nextn_predict_layers; }
  // Layer `i` in [0, n_layers_total()); the MTP layers follow the main ones.
  bool is_mtp_layer(int64_t i) const { return i >= num_hidden_layers; }
  AttnKind attn_kind(int64_t layer) const;
  int64_t compress_ratio(int64_t layer) const;  // 0 for non-V4 models
  bool is_moe_layer(int64_t layer) const;       // false for V3's leading dense layers
  bool is_hash_layer(int64_t layer) const;
  // The shared experts are one MLP this wide: n_shared_experts routed experts side by side (V3; V4 has one).
  int64_t shared_expert_width() const { return moe_intermediate_size * n_shared_experts; }
};

// From a parsed config.json. Throws ferry::Error naming the key or the unsupported model_type.
ModelConfig config_from_json(const nlohmann::json& j, std::string name);
// From config.json text (throws on malformed JSON with the parser's position).
ModelConfig config_from_json_text(std::string_view text, std::string name);

// Built-in presets: deepseek-v4-flash, deepseek-v4-pro, deepseek-v3 (also v3.1, r1), deepseek-v3.2.
bool is_preset_name(std::string_view name);
ModelConfig preset_config(std::string_view name);
std::vector<std::string> preset_names();

// The config.json of a preset, with the keys DeepSeek's own config.json has (make-tiny and tests use it).
nlohmann::json preset_config_json(std::string_view name);

}  // namespace ferry::core
