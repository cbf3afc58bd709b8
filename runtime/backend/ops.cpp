#include "runtime/backend/ops.h"

namespace ferry::runtime::ops {

std::string_view kind_name(Kind k) {
  switch (k) {
    case Kind::Embed: return "embed";
    case Kind::RmsNorm: return "rms_norm";
    case Kind::Rope: return "rope";
    case Kind::HcPre: return "hc_pre";
    case Kind::HcPost: return "hc_post";
    case Kind::HcHead: return "hc_head";
    case Kind::Linear: return "linear";
    case Kind::LinearGrouped: return "linear_grouped";
    case Kind::ExpertFfn: return "expert_ffn";
    case Kind::KvEncode: return "kv_encode";
    case Kind::KvWindowStore: return "kv_window_store";
    case Kind::Compress: return "compress";
    case Kind::IndexerSelect: return "indexer_select";
    case Kind::Attention: return "attention";
    case Kind::Route: return "route";
    case Kind::GatherRows: return "gather_rows";
    case Kind::MoeCombine: return "moe_combine";
    case Kind::AddStreams: return "add_streams";
  }
  return "?";
}

}  // namespace ferry::runtime::ops
