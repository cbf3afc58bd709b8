#include "planner/memory.h"

#include <algorithm>

namespace ferry::planner {

int64_t activation_bytes_per_token(const core::ModelConfig& c) {
  const int64_t dim = c.hidden_size, heads = c.num_attention_heads, topk = c.num_experts_per_tok;
  const int64_t inter = c.moe_intermediate_size, shared = c.shared_expert_width();
  const bool v4 = c.arch == core::Arch::DeepseekV4;
  const int64_t q_head = v4 ? c.head_dim : c.qk_nope_head_dim + c.qk_rope_head_dim;
  const int64_t kv_row = v4 ? c.head_dim : c.kv_lora_rank + c.qk_rope_head_dim;
  const int64_t o_head = v4 ? c.head_dim : c.v_head_dim;
  int64_t floats = 0;
  floats += 2 * c.hc_mult * dim;                 // residual streams in and out (hc_mult = 1 for V3)
  floats += 2 * dim;                             // block input, normalised input
  floats += c.q_lora_rank + heads * q_head;      // q low-rank and q
  floats += kv_row;                              // this token's kv row
  floats += heads * o_head;                      // attention output
  floats += heads * kAttnKeyTile;                // scores of one key tile
  if (v4) floats += c.o_groups * c.o_lora_rank;  // grouped low-rank output
  if (c.index_n_heads > 0) floats += c.index_n_heads * c.index_head_dim + kIndexerTile;  // indexer q + scores
  floats += c.n_routed_experts;                                                          // router logits
  floats += topk * (dim + 2 * inter + dim);             // routed inputs, gate/up, outputs
  floats += 2 * std::max(shared, c.intermediate_size);  // shared expert or dense FFN gate/up
  int64_t bytes = floats * 4;
  if (c.index_topk > 0) bytes += c.index_topk * 8;  // running top-k: score + id
  return bytes;
}

int64_t compute_workspace_bytes(const core::ModelConfig& c, int64_t ubatch, bool logits_all) {
  const int64_t logits_rows = logits_all ? ubatch : 1;
  return ubatch * activation_bytes_per_token(c) + logits_rows * c.vocab_size * 4;
}

CpuTileLayout cpu_tile_layout(const core::ModelConfig& c) {
  const int64_t nh = c.num_attention_heads;
  CpuTileLayout t;
  t.key_rows = kAttnKeyTile * c.head_dim;
  t.scores = std::max(kAttnKeyTile, kIndexerTile);
  t.per_thread = t.key_rows + t.scores + nh * c.head_dim + 2 * nh;
  return t;
}

int64_t cpu_tile_scratch_floats(const core::ModelConfig& c) { return cpu_tile_layout(c).per_thread; }

CpuForwardWorkspace cpu_forward_workspace(const core::ModelConfig& c, KvType kv, int64_t n, int64_t threads, bool mtp) {
  CpuForwardWorkspace w;
  const int64_t d = c.hidden_size, nh = c.num_attention_heads, hd = c.head_dim, hc = c.hc_mult;
  const int64_t topk = c.num_experts_per_tok, inter = c.moe_intermediate_size;
  w.ubatch = n;
  w.threads = threads;
  w.x = w.xn = w.y = n * d;
  w.mix = n * (2 * hc + hc * hc);
  w.qa = n * c.q_lora_rank;
  w.q = w.o = n * nh * hd;
  w.kv = n * hd;
  w.z = n * c.o_groups * c.o_lora_rank;
  w.comp = n * 2 * std::max(hd, c.index_head_dim);
  w.iq = n * c.index_n_heads * c.index_head_dim;
  w.iw = n * c.index_n_heads;
  w.key_tile = kIndexerTile * c.index_head_dim;
  w.gate = n * c.n_routed_experts;
  w.route_w = w.route_ids = w.expert_tokens = n * topk;
  w.xg = n * d;
  w.eo = n * topk * d;  // kept until the combine, so that host and device experts can run at once
  // The experts' gate and up: a routed expert's rows, or the shared experts' (one MLP n_shared wide).
  w.eg = w.eu = n * std::max(inter, c.shared_expert_width());
  w.residual = n * hc * d;
  w.mtp_residual = mtp ? w.residual + hc * d : 0;
  w.mtp_pending = mtp ? hc * d : 0;
  w.logits_row = c.vocab_size;
  w.tile_scratch = cpu_tile_scratch_floats(c);
  w.sel = n * c.index_topk;
  w.sel_count = n;
  w.kv_rows_bytes = n * kv_row_bytes(c, kv).main;
  return w;
}

int64_t CpuForwardWorkspace::bytes() const {
  const int64_t floats = x + xn + y + mix + qa + q + kv + o + z + 2 * comp + iq + iw + key_tile + gate + route_w + xg +
                         eg + eu + eo + residual + mtp_residual + mtp_pending + logits_row + threads * tile_scratch;
  const int64_t ints = sel + sel_count + route_ids + expert_tokens;
  return 4 * (floats + ints) + kv_rows_bytes;
}

int64_t forward_workspace_bytes(const core::ModelConfig& c, KvType kv, int64_t ubatch, int64_t threads, bool mtp,
                                bool logits_all) {
  if (c.arch != core::Arch::DeepseekV4) return compute_workspace_bytes(c, ubatch, logits_all);
  return cpu_forward_workspace(c, kv, ubatch, threads, mtp).bytes();
}

int64_t cpu_expert_workspace_bytes(const core::ModelConfig& c, int64_t ubatch) {
  return ubatch * (2 * c.hidden_size + 2 * c.moe_intermediate_size) * 4;
}

int64_t expert_stream_slot_bytes(const ModelSpec& s) { return 2 * s.config.num_experts_per_tok * s.expert_bytes(); }

int64_t pinned_staging_bytes(const ModelSpec& s) { return expert_stream_slot_bytes(s); }

}  // namespace ferry::planner
