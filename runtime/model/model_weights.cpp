#include "runtime/model/model_weights.h"

#include <cstring>
#include <string>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"
#include "planner/model_spec.h"

namespace ferry::runtime {

using core::TensorFormat;
using core::TensorRole;
using core::TensorSpec;

namespace {

// Where a weight goes: a matrix used in place, a small tensor decoded to fp32, or a hash table as int32; all
// null for a role of no such place. Built implicitly from a field's address, so that the role switches below
// read as a table.
struct Slot {
  Slot() = default;
  Slot(core::WeightView* p) : matrix(p) {}
  Slot(DeviceVector<float>* p) : floats(p) {}
  Slot(DeviceVector<int32_t>* p) : ints(p) {}
  core::WeightView* matrix = nullptr;
  DeviceVector<float>* floats = nullptr;
  DeviceVector<int32_t>* ints = nullptr;
};

CompressorWeights& present(std::optional<CompressorWeights>& c) {
  if (!c) c.emplace();
  return *c;
}

// The field of a layer that a table row's role names (core::TensorRole).
Slot layer_slot(LayerWeights& L, const TensorSpec& w) {
  using R = TensorRole;
  switch (w.role) {
    case R::HcAttnFn: return &L.hc_attn.fn;
    case R::HcAttnBase: return &L.hc_attn.base;
    case R::HcAttnScale: return &L.hc_attn.scale;
    case R::HcFfnFn: return &L.hc_ffn.fn;
    case R::HcFfnBase: return &L.hc_ffn.base;
    case R::HcFfnScale: return &L.hc_ffn.scale;
    case R::HcHeadFn: return &L.hc_head.fn;
    case R::HcHeadBase: return &L.hc_head.base;
    case R::HcHeadScale: return &L.hc_head.scale;
    case R::AttnNorm: return &L.attn_norm;
    case R::FfnNorm: return &L.ffn_norm;
    case R::WqA: return &L.wq_a;
    case R::QNorm: return &L.q_norm;
    case R::WqB: return &L.wq_b;
    case R::Wkv: return &L.wkv;
    case R::KvNorm: return &L.kv_norm;
    case R::WoA: return &L.wo_a;
    case R::WoB: return &L.wo_b;
    case R::AttnSink: return &L.attn_sink;
    case R::CompressorWkv: return &present(L.compressor).wkv;
    case R::CompressorWgate: return &present(L.compressor).wgate;
    case R::CompressorApe: return &present(L.compressor).ape;
    case R::CompressorNorm: return &present(L.compressor).norm;
    case R::IndexerWqB: return &L.indexer_wq_b;
    case R::IndexerWeightsProj: return &L.indexer_weights_proj;
    case R::IndexerCompressorWkv: return &present(L.indexer_compressor).wkv;
    case R::IndexerCompressorWgate: return &present(L.indexer_compressor).wgate;
    case R::IndexerCompressorApe: return &present(L.indexer_compressor).ape;
    case R::IndexerCompressorNorm: return &present(L.indexer_compressor).norm;
    case R::Gate: return &L.gate;
    case R::GateBias: return &L.gate_bias;
    case R::Tid2eid: return &L.tid2eid;
    case R::ExpertW1: return &L.experts.at(static_cast<size_t>(w.expert)).w1;
    case R::ExpertW2: return &L.experts.at(static_cast<size_t>(w.expert)).w2;
    case R::ExpertW3: return &L.experts.at(static_cast<size_t>(w.expert)).w3;
    case R::SharedW1: return &L.shared.w1;
    case R::SharedW2: return &L.shared.w2;
    case R::SharedW3: return &L.shared.w3;
    case R::EProj: return &L.e_proj;
    case R::HProj: return &L.h_proj;
    case R::ENorm: return &L.enorm;
    case R::HNorm: return &L.hnorm;
    case R::MtpNorm: return &L.mtp_norm;
    default: return {};
  }
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

}  // namespace

// Walks the tensor table (planner/core/tensor_table.h) and binds each row where its role says, in the form its
// format says, after checking its stored tensors against the checkpoint.
class WeightBinder {
 public:
  explicit WeightBinder(ModelWeights& m) : m_(m), c_(m.config_) {}

  LayerWeights layer(int64_t i) {
    LayerWeights L;
    L.index = i;
    L.ratio = c_.compress_ratio(i);
    L.hash_routed = c_.is_hash_layer(i);
    L.prefix = core::layer_prefix(c_, i);
    L.experts.resize(static_cast<size_t>(c_.n_routed_experts));
    core::for_each_layer_weight(c_, i, [&](TensorSpec&& w) { bind(w, layer_slot(L, w)); });
    return L;
  }

  void globals() {
    core::for_each_global_weight(c_, [&](TensorSpec&& w) { bind(w, global_slot(w)); });
  }

 private:
  Slot global_slot(const TensorSpec& w) {
    switch (w.role) {
      case TensorRole::Embed: return &m_.embed_;
      case TensorRole::Head: return &m_.head_;
      case TensorRole::FinalNorm: return &m_.norm_;
      case TensorRole::HcHeadFn: return &m_.hc_head_.fn;
      case TensorRole::HcHeadBase: return &m_.hc_head_.base;
      case TensorRole::HcHeadScale: return &m_.hc_head_.scale;
      default: return {};
    }
  }

  void bind(const TensorSpec& w, const Slot& s) {
    auto misplaced = [&] { return "tensor table: " + w.name + " has no place of its format in the loaded model"; };
    switch (w.format) {
      case TensorFormat::Fp8Linear:
      case TensorFormat::Mxfp4Linear:
      case TensorFormat::Bf16Matrix:
        FERRY_CHECK(s.matrix, misplaced());
        *s.matrix = matrix(w);
        return;
      case TensorFormat::SmallBf16:
      case TensorFormat::SmallF32:
        FERRY_CHECK(s.floats, misplaced());
        *s.floats = floats(w);
        return;
      case TensorFormat::HashTable:
        FERRY_CHECK(s.ints, misplaced());
        *s.ints = hash_table(w);
        return;
      case TensorFormat::Unexplained: break;
    }
    FERRY_THROW(misplaced());
  }

  // Checks a stored tensor against the checkpoint: present, with the table's dtype and shape.
  const core::SafetensorsTensor& check(const core::TensorInfo& t) {
    FERRY_CHECK(m_.ckpt_->has(t.name), "checkpoint is missing tensor {}", t.name);
    const auto& h = m_.ckpt_->info(t.name);
    FERRY_CHECK(h.dtype == t.dtype, "tensor {} has dtype {}, expected {}", t.name, core::dtype_name(h.dtype),
                core::dtype_name(t.dtype));
    FERRY_CHECK(h.shape == t.shape, "tensor {} has shape {}, expected {}", t.name, shape_text(h.shape),
                shape_text(t.shape));
    m_.weight_bytes_ += h.end - h.begin;
    return h;
  }

  // The one stored tensor of a weight that is not a scaled linear, checked.
  core::TensorInfo single(const TensorSpec& w) {
    std::vector<core::TensorInfo> t = core::stored_tensors(c_, w);
    check(t.front());
    return std::move(t.front());
  }

  void hold(const TensorSpec& w, int64_t bytes) { m_.class_bytes_[static_cast<size_t>(w.cls)] += bytes; }

  // A matrix in its stored encoding: FP8 or MXFP4 codes with their scales, or BF16.
  core::WeightView matrix(const TensorSpec& w) {
    const std::vector<core::TensorInfo> t = core::stored_tensors(c_, w);
    for (const auto& x : t) check(x);
    core::WeightView v;
    v.rows = v.tensor_rows = w.shape[0];
    v.cols = w.shape[1];
    if (w.format == TensorFormat::Bf16Matrix) {
      v.format = core::WeightFormat::BF16;
      v.data = aligned(t[0].name, 2);
    } else {
      v.format = w.format == TensorFormat::Fp8Linear ? core::WeightFormat::FP8 : core::WeightFormat::MXFP4;
      v.data = bytes(t[0].name);
      v.scales = bytes(t[1].name);
    }
    hold(w, core::weight_view_bytes(v));
    return v;
  }

  // A small tensor decoded to fp32: BF16 (norm weights) or F32.
  DeviceVector<float> floats(const TensorSpec& w) {
    const core::TensorInfo t = single(w);
    const auto raw = m_.ckpt_->bytes(t.name);
    const size_t n = raw.size() / core::dtype_size(t.dtype);
    DeviceVector<float> out(n);
    for (size_t i = 0; i < n; ++i) {
      if (t.dtype == core::DType::BF16) {
        uint16_t b;
        std::memcpy(&b, raw.data() + 2 * i, 2);
        out[i] = core::bf16_to_float(b);
      } else {
        std::memcpy(&out[i], raw.data() + 4 * i, 4);
      }
    }
    hold(w, static_cast<int64_t>(n * sizeof(float)));
    return out;
  }

  // Hash routing's token -> expert ids [vocab, top-k], narrowed to int32 and checked against the expert count.
  DeviceVector<int32_t> hash_table(const TensorSpec& w) {
    const core::TensorInfo t = single(w);
    const auto raw = m_.ckpt_->bytes(t.name);
    const int64_t n = t.shape[0] * t.shape[1], k = t.shape[1];
    DeviceVector<int32_t> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      int64_t e;
      std::memcpy(&e, raw.data() + 8 * i, 8);
      FERRY_CHECK(e >= 0 && e < c_.n_routed_experts, "tensor {} routes token {} to expert {}, beyond {} experts",
                  t.name, i / k, e, c_.n_routed_experts);
      out[static_cast<size_t>(i)] = static_cast<int32_t>(e);
    }
    hold(w, n * static_cast<int64_t>(sizeof(int32_t)));
    return out;
  }

  const uint8_t* bytes(const std::string& name) {
    return reinterpret_cast<const uint8_t*>(m_.ckpt_->bytes(name).data());
  }

  // Element access through typed pointers needs natural alignment; safetensors does not promise it.
  const uint8_t* aligned(const std::string& name, size_t alignment) {
    const auto raw = m_.ckpt_->bytes(name);
    if (reinterpret_cast<uintptr_t>(raw.data()) % alignment == 0) return reinterpret_cast<const uint8_t*>(raw.data());
    auto& copy = m_.owned_.emplace_back(raw.size() + alignment);
    uint8_t* dst = copy.data();
    while (reinterpret_cast<uintptr_t>(dst) % alignment) ++dst;
    std::memcpy(dst, raw.data(), raw.size());
    return dst;
  }

  ModelWeights& m_;
  const core::ModelConfig& c_;
};

ModelWeights ModelWeights::load(const std::filesystem::path& dir) {
  ModelWeights m;
  const planner::ModelSpec spec = planner::load_model_spec(dir.string());
  FERRY_CHECK(spec.config.arch == core::Arch::DeepseekV4, "ferry runs DeepSeek V4 checkpoints; {} is {}", dir.string(),
              core::arch_name(spec.config.arch));
  m.config_ = spec.config;
  m.ckpt_ = std::make_shared<Checkpoint>(Checkpoint::open(dir));
  const auto& c = m.config_;
  FERRY_CHECK(c.hc_mult >= 1 && c.o_groups >= 1 && c.num_attention_heads % c.o_groups == 0,
              "config: num_attention_heads must be a multiple of o_groups");
  FERRY_CHECK(c.index_head_dim % 32 == 0 && (c.index_head_dim & (c.index_head_dim - 1)) == 0,
              "config: index_head_dim must be a power of two (Hadamard)");
  FERRY_CHECK(c.weight_block_size == core::kFp8Block,
              "config: quantization_config.weight_block_size is {}; ferry's FP8 kernels read 128x128 blocks",
              c.weight_block_size);
  WeightBinder b(m);
  b.globals();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) m.layers_.push_back(b.layer(i));
  if (c.num_nextn_predict_layers > 0) m.mtp_ = b.layer(c.num_hidden_layers);
  return m;
}

void ModelWeights::embed_row(int64_t token, float* out) const {
  const auto* row = reinterpret_cast<const uint16_t*>(embed_.data) + token * embed_.cols;
  for (int64_t k = 0; k < embed_.cols; ++k) out[k] = core::bf16_to_float(row[k]);
}

}  // namespace ferry::runtime
