#include "planner/model_spec.h"

#include <algorithm>
#include <filesystem>
#include <unordered_map>

#include "planner/core/error.h"
#include "planner/core/file_io.h"
#include "planner/core/safetensors_header.h"

namespace ferry::planner {

namespace fs = std::filesystem;

int64_t LayerWeights::non_routed() const {
  int64_t sum = 0;
  for (size_t i = 0; i < core::kNumWeightClasses; ++i)
    if (i != static_cast<size_t>(core::WeightClass::RoutedExpert)) sum += bytes[i];
  return sum;
}

int64_t ModelSpec::expert_bytes() const {
  for (const auto& l : layers)
    if (l.n_experts > 0) return l.expert_bytes;
  return 0;
}

int64_t ModelSpec::bytes_of(core::WeightClass c) const {
  const size_t k = static_cast<size_t>(c);
  int64_t sum = global[k];
  for (const auto& l : layers) sum += l.bytes[k];
  return sum;
}

int64_t ModelSpec::held_bytes_total() const {
  int64_t sum = 0;
  for (int64_t b : global) sum += b;
  for (const auto& l : layers)
    for (int64_t b : l.bytes) sum += b;
  return sum;
}

int64_t ModelSpec::mtp_bytes() const {
  int64_t sum = 0;
  for (int64_t i = config.num_hidden_layers; i < config.n_layers_total(); ++i)
    for (int64_t b : layers[static_cast<size_t>(i)].bytes) sum += b;
  return sum;
}

WeightTally::WeightTally(ModelSpec& spec) : spec_(spec) {
  const size_t n = static_cast<size_t>(spec.config.n_layers_total());
  spec.layers.assign(n, LayerWeights{});
  spec.global.fill(0);
  spec.total_bytes = 0;
  spec.tensor_count = 0;
  expert_bytes_.assign(n, {});
}

int64_t held_bytes(const core::TensorInfo& t, core::Arch arch) {
  if (arch != core::Arch::DeepseekV4) return t.bytes;
  if (t.format == core::TensorFormat::SmallBf16) return 2 * t.bytes;  // decoded to fp32
  if (t.format == core::TensorFormat::HashTable) return t.bytes / 2;  // narrowed to int32
  return t.bytes;
}

void WeightTally::add(const core::TensorInfo& t) {
  const int64_t bytes = held_bytes(t, spec_.config.arch);
  spec_.total_bytes += t.bytes;
  ++spec_.tensor_count;
  const size_t k = static_cast<size_t>(t.cls);
  if (t.layer < 0 || static_cast<size_t>(t.layer) >= spec_.layers.size()) {
    spec_.global[k] += bytes;
    return;
  }
  const size_t l = static_cast<size_t>(t.layer);
  spec_.layers[l].bytes[k] += bytes;
  if (t.cls == core::WeightClass::RoutedExpert && t.expert >= 0) {
    auto& per = expert_bytes_[l];
    if (per.size() <= static_cast<size_t>(t.expert)) per.resize(static_cast<size_t>(t.expert) + 1, 0);
    per[static_cast<size_t>(t.expert)] += bytes;
  }
}

void WeightTally::finish() {
  // Experts are counted by the ids that have bytes; a checkpoint missing some experts plans with the rest.
  for (size_t l = 0; l < spec_.layers.size(); ++l) {
    auto& lw = spec_.layers[l];
    lw.n_experts = 0;
    lw.expert_bytes = 0;
    for (int64_t b : expert_bytes_[l]) {
      if (b == 0) continue;
      ++lw.n_experts;
      lw.expert_bytes = std::max(lw.expert_bytes, b);
    }
  }
}

ModelSpec spec_from_config(core::ModelConfig config, ModelSource source, std::string origin) {
  ModelSpec spec;
  spec.config = std::move(config);
  spec.source = source;
  spec.origin = std::move(origin);
  WeightTally tally(spec);
  core::for_each_tensor(spec.config, [&](core::TensorInfo&& t) { tally.add(t); });
  tally.finish();
  return spec;
}

namespace {

// Layer of a checkpoint name the table does not know, by the table's layer prefixes; -1 if none.
int32_t layer_of_name(const core::ModelConfig& c, const std::string& name) {
  for (int64_t l = 0; l < c.n_layers_total(); ++l)
    if (name.starts_with(core::layer_prefix(c, l))) return static_cast<int32_t>(l);
  return -1;
}

// The checkpoint's own tensors, classified by the tensor table the config implies; exact bytes from the headers.
ModelSpec spec_from_checkpoint(const fs::path& dir) {
  const fs::path config_path = dir / "config.json";
  if (!fs::exists(config_path)) FERRY_THROW("model directory {} has no config.json", dir.string());
  core::ModelConfig config = core::config_from_json_text(core::read_text_file(config_path), dir.string());
  const core::CheckpointHeaders headers = core::read_checkpoint_headers(dir);
  const std::vector<core::TensorInfo> implied = core::make_tensor_inventory(config);

  ModelSpec spec;
  spec.config = std::move(config);
  spec.source = ModelSource::Checkpoint;
  spec.origin = dir.string();
  std::unordered_map<std::string, const core::TensorInfo*> by_name;
  by_name.reserve(implied.size());
  for (const auto& t : implied) by_name.emplace(t.name, &t);
  for (const auto& shard : headers.shards) {
    for (const auto& h : shard.tensors) {
      core::TensorInfo t;
      t.name = h.name;
      t.dtype = h.dtype;
      t.shape = h.shape;
      t.bytes = h.bytes();
      if (auto it = by_name.find(h.name); it != by_name.end()) {
        t.cls = it->second->cls;
        t.layer = it->second->layer;
        t.expert = it->second->expert;
        t.format = it->second->format;
      } else {
        t.layer = layer_of_name(spec.config, h.name);
        ++spec.unexpected_tensors;
      }
      spec.tensors.push_back(std::move(t));
    }
  }
  for (const auto& t : implied)
    if (!headers.find(t.name)) ++spec.missing_tensors;
  if (spec.missing_tensors > 0)
    spec.notes.push_back(std::to_string(spec.missing_tensors) +
                         " tensors the config implies are missing from the checkpoint (run `ferry inspect`)");
  if (spec.unexpected_tensors > 0)
    spec.notes.push_back(std::to_string(spec.unexpected_tensors) +
                         " checkpoint tensors are not implied by the config; counted as 'other'");
  WeightTally tally(spec);
  for (const auto& t : spec.tensors) tally.add(t);
  tally.finish();
  return spec;
}

}  // namespace

ModelSpec load_model_spec(const std::string& model) {
  if (model.empty()) FERRY_THROW("--model is empty: give a preset name, a config.json or a model directory");
  if (core::is_preset_name(model)) {
    core::ModelConfig c = core::preset_config(model);
    std::string name = c.name;
    return spec_from_config(std::move(c), ModelSource::Preset, name);
  }
  const fs::path p(model);
  std::error_code ec;
  if (fs::is_directory(p, ec)) return spec_from_checkpoint(p);
  if (fs::is_regular_file(p, ec)) {
    return spec_from_config(core::config_from_json_text(core::read_text_file(p), p.string()), ModelSource::ConfigJson,
                            p.string());
  }
  std::string known;
  for (const auto& n : core::preset_names()) known += (known.empty() ? "" : ", ") + n;
  FERRY_THROW("--model '{}' is neither a known preset ({}) nor an existing config.json or model directory", model,
              known);
}

}  // namespace ferry::planner
