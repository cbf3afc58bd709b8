#include "runtime/model/op_support.h"

#include <algorithm>
#include <string>

#include "planner/core/error.h"

namespace ferry::runtime {

using ops::Kind;

std::vector<Kind> ops_of_layer(const core::ModelConfig& c, int64_t layer) {
  std::vector<Kind> k = {Kind::HcPre,    Kind::RmsNorm,   Kind::Linear,        Kind::Rope,
                         Kind::KvEncode, Kind::Attention, Kind::KvWindowStore, Kind::HcPost,
                         Kind::Route,    Kind::ExpertFfn, Kind::GatherRows,    Kind::MoeCombine};
  const int64_t ratio = c.compress_ratio(layer);
  if (ratio > 0) k.push_back(Kind::Compress);
  if (ratio == 4) k.push_back(Kind::IndexerSelect);
  return k;
}

std::vector<Kind> ops_of_model(const core::ModelConfig& c, bool mtp) {
  std::vector<Kind> all = {Kind::Embed, Kind::HcHead};
  if (mtp) all.push_back(Kind::AddStreams);
  const int64_t layers = c.num_hidden_layers + (mtp ? c.num_nextn_predict_layers : 0);
  for (int64_t l = 0; l < layers; ++l)
    for (Kind k : ops_of_layer(c, l))
      if (std::find(all.begin(), all.end(), k) == all.end()) all.push_back(k);
  std::sort(all.begin(), all.end());
  return all;
}

void require_ops(const Backend& device, std::span<const Kind> kinds, std::string_view what) {
  std::vector<Kind> lacking;
  for (Kind k : kinds)
    if (!device.supports(k) && std::find(lacking.begin(), lacking.end(), k) == lacking.end()) lacking.push_back(k);
  std::sort(lacking.begin(), lacking.end());
  std::string missing;
  for (Kind k : lacking) missing += (missing.empty() ? "" : ", ") + std::string(ops::kind_name(k));
  FERRY_CHECK(missing.empty(), "{} cannot run {}: it has no kernel for {}", device.name(), what, missing);
}

}  // namespace ferry::runtime
