#include "runtime/checkpoint/checkpoint_inspect.h"

#include <cstdio>
#include <unordered_map>

#include "planner/core/error.h"
#include "planner/core/safetensors_header.h"
#include "planner/core/units.h"

namespace ferry::runtime {

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

CheckpointReport inspect_checkpoint(const std::filesystem::path& dir) {
  CheckpointReport r;
  r.spec = planner::load_model_spec(dir.string());
  FERRY_CHECK(r.spec.source == planner::ModelSource::Checkpoint, "{} is not a checkpoint directory", dir.string());
  const core::CheckpointHeaders headers = core::read_checkpoint_headers(dir);
  r.shards = static_cast<int64_t>(headers.shards.size());
  for (const auto& t : r.spec.tensors) r.bytes_by_dtype[std::string(core::dtype_name(t.dtype))] += t.bytes;

  std::unordered_map<std::string, const core::TensorInfo*> implied;
  const std::vector<core::TensorInfo> inventory = core::make_tensor_inventory(r.spec.config);
  for (const auto& t : inventory) implied.emplace(t.name, &t);
  for (const auto& t : inventory) {
    const core::SafetensorsTensor* h = headers.find(t.name);
    if (!h) {
      r.problems.push_back("missing tensor '" + t.name + "' (" + std::string(core::dtype_name(t.dtype)) + " " +
                           shape_text(t.shape) + ")");
      continue;
    }
    if (h->shape != t.shape)
      r.problems.push_back("tensor '" + t.name + "' has shape " + shape_text(h->shape) + ", the config implies " +
                           shape_text(t.shape));
    if (h->dtype != t.dtype)
      r.problems.push_back("tensor '" + t.name + "' is " + std::string(core::dtype_name(h->dtype)) +
                           ", the config implies " + std::string(core::dtype_name(t.dtype)));
  }
  for (const auto& shard : headers.shards)
    for (const auto& t : shard.tensors)
      if (!implied.count(t.name)) r.problems.push_back("unexpected tensor '" + t.name + "' in " + shard.file);
  return r;
}

std::string format_report(const CheckpointReport& r) {
  const auto& c = r.spec.config;
  std::string out;
  char buf[512];
  std::snprintf(buf, sizeof buf, "checkpoint  %s\n", r.spec.origin.c_str());
  out += buf;
  int csa = 0, hca = 0, swa = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto k = c.attn_kind(l);
    csa += k == core::AttnKind::Csa;
    hca += k == core::AttnKind::Hca;
    swa += k == core::AttnKind::Swa;
  }
  std::snprintf(buf, sizeof buf,
                "config      %s: %lld layers (%d swa, %d csa, %d hca) + %lld mtp, dim %lld, %lld heads, %lld experts "
                "(top-%lld), vocab %lld, "
                "context %lld\n",
                std::string(core::arch_name(c.arch)).c_str(), (long long)c.num_hidden_layers, swa, csa, hca,
                (long long)c.num_nextn_predict_layers, (long long)c.hidden_size, (long long)c.num_attention_heads,
                (long long)c.n_routed_experts, (long long)c.num_experts_per_tok, (long long)c.vocab_size,
                (long long)c.max_position_embeddings);
  out += buf;
  std::snprintf(buf, sizeof buf, "tensors     %s in %lld shard%s, %s\n",
                core::format_count(r.spec.tensor_count).c_str(), (long long)r.shards, r.shards == 1 ? "" : "s",
                core::format_bytes(r.spec.total_bytes).c_str());
  out += buf;
  out += "by dtype\n";
  for (const auto& [d, b] : r.bytes_by_dtype) {
    std::snprintf(buf, sizeof buf, "  %-10s %14s\n", d.c_str(), core::format_bytes(b).c_str());
    out += buf;
  }
  out += "by class\n";
  for (size_t k = 0; k < core::kNumWeightClasses; ++k) {
    const int64_t b = r.spec.bytes_of(static_cast<core::WeightClass>(k));
    if (b == 0) continue;
    std::snprintf(buf, sizeof buf, "  %-16s %14s\n",
                  std::string(core::weight_class_name(static_cast<core::WeightClass>(k))).c_str(),
                  core::format_bytes(b).c_str());
    out += buf;
  }
  out += r.valid() ? "valid: every tensor matches the config\n"
                   : "INVALID: " + std::to_string(r.problems.size()) + " problem(s)\n";
  return out;
}

}  // namespace ferry::runtime
