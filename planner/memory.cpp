#include "planner/memory.h"

#include <algorithm>

namespace ferry::planner {

int64_t activation_bytes_per_token(const ModelConfig& c) {
  const int64_t dim = c.hidden_size, heads = c.num_attention_heads, topk = c.num_experts_per_tok;
  const int64_t inter = c.moe_intermediate_size, shared = c.moe_intermediate_size * c.n_shared_experts;
  const bool v4 = c.arch == Arch::DeepseekV4;
  const int64_t q_head = v4 ? c.head_dim : c.qk_nope_head_dim + c.qk_rope_head_dim;
  const int64_t kv_row = v4 ? c.head_dim : c.kv_lora_rank + c.qk_rope_head_dim;
  const int64_t o_head = v4 ? c.head_dim : c.v_head_dim;
  int64_t floats = 0;
  floats += 2 * c.hc_mult * dim;             // residual streams in and out (hc_mult = 1 for V3)
  floats += 2 * dim;                         // block input, normalised input
  floats += c.q_lora_rank + heads * q_head;  // q low-rank and q
  floats += kv_row;                          // this token's kv row
  floats += heads * o_head;                  // attention output
  floats += heads * kAttnKeyTile;            // scores of one key tile
  if (v4) floats += c.o_groups * c.o_lora_rank;  // grouped low-rank output
  if (c.index_n_heads > 0) floats += c.index_n_heads * c.index_head_dim + kIndexerTile;  // indexer q + scores
  floats += c.n_routed_experts;              // router logits
  floats += topk * (dim + 2 * inter + dim);  // routed inputs, gate/up, outputs
  floats += 2 * std::max(shared, c.intermediate_size);  // shared expert or dense FFN gate/up
  int64_t bytes = floats * 4;
  if (c.index_topk > 0) bytes += c.index_topk * 8;  // running top-k: score + id
  return bytes;
}

int64_t compute_workspace_bytes(const ModelConfig& c, int64_t ubatch, bool logits_all) {
  const int64_t logits_rows = logits_all ? ubatch : 1;
  return ubatch * activation_bytes_per_token(c) + logits_rows * c.vocab_size * 4;
}

int64_t cpu_expert_workspace_bytes(const ModelConfig& c, int64_t ubatch) {
  const int64_t routed_tokens = ubatch * c.num_experts_per_tok;
  return routed_tokens * (c.hidden_size + 2 * c.moe_intermediate_size + c.hidden_size) * 4;
}

int64_t expert_stream_slot_bytes(const ModelSpec& s) {
  return 2 * s.config.num_experts_per_tok * s.expert_bytes();
}

int64_t pinned_staging_bytes(const ModelSpec& s, int64_t ubatch) {
  return expert_stream_slot_bytes(s) + 2 * ubatch * s.config.hidden_size * 4;
}

}  // namespace ferry::planner
