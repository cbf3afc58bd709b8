// A small V4 config.json for planner tests: V4-Flash's keys with small shapes and every kind of layer (SWA, CSA,
// HCA, hash-routed MoE), so that a checkpoint of it stays a few MB. Tests set the expert count and width they need.
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

#include "planner/core/model_config.h"

namespace ferry_test {

inline nlohmann::json small_v4_config(int64_t experts, int64_t expert_width) {
  auto j = ferry::core::preset_config_json("deepseek-v4-flash");
  j["hidden_size"] = 256;
  j["num_hidden_layers"] = 4;
  j["num_attention_heads"] = 4;
  j["head_dim"] = 128;
  j["q_lora_rank"] = 64;
  j["o_groups"] = 2;
  j["o_lora_rank"] = 32;
  j["n_routed_experts"] = experts;
  j["moe_intermediate_size"] = expert_width;
  j["index_n_heads"] = 2;
  j["index_head_dim"] = 64;
  j["index_topk"] = 8;
  j["vocab_size"] = 512;
  j["num_hash_layers"] = 1;
  j["compress_ratios"] = {0, 4, 16, 4, 0};
  return j;
}

}  // namespace ferry_test
