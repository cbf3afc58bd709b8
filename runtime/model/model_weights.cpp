#include "runtime/model/model_weights.h"

#include <cstring>
#include <string>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"
#include "planner/model_spec.h"

namespace ferry::runtime {

using core::DType;
using core::WeightFormat;
using core::WeightView;

class WeightBinder {
 public:
  explicit WeightBinder(ModelWeights& m) : m_(m), c_(m.config_) {}

  const core::SafetensorsTensor& info(const std::string& name, core::DType dtype, std::vector<int64_t> shape) {
    FERRY_CHECK(m_.ckpt_->has(name), "checkpoint is missing tensor " + name);
    const auto& t = m_.ckpt_->info(name);
    FERRY_CHECK(t.dtype == dtype, "tensor " + name + " has dtype " + std::string(core::dtype_name(t.dtype)) +
                                      ", expected " + std::string(core::dtype_name(dtype)));
    FERRY_CHECK(t.shape == shape,
                "tensor " + name + " has shape " + shape_text(t.shape) + ", expected " + shape_text(shape));
    m_.weight_bytes_ += t.end - t.begin;
    return t;
  }

  // A matrix in its stored encoding: FP8 (+ .scale), MXFP4 (I8 + .scale), BF16 or F32.
  core::WeightView matrix(const std::string& name, core::WeightFormat f, int64_t rows, int64_t cols) {
    core::WeightView v;
    v.format = f;
    v.rows = v.tensor_rows = rows;
    v.cols = cols;
    switch (f) {
      case core::WeightFormat::FP8:
        info(name + ".weight", core::DType::F8_E4M3, {rows, cols});
        info(name + ".scale", core::DType::F8_E8M0, {(rows + 127) / 128, (cols + 127) / 128});
        v.data = bytes(name + ".weight");
        v.scales = bytes(name + ".scale");
        break;
      case core::WeightFormat::MXFP4:
        FERRY_CHECK(cols % 32 == 0, name + ": FP4 columns must be a multiple of 32");
        info(name + ".weight", core::DType::I8, {rows, cols / 2});
        info(name + ".scale", core::DType::F8_E8M0, {rows, cols / 32});
        v.data = bytes(name + ".weight");
        v.scales = bytes(name + ".scale");
        break;
      case core::WeightFormat::BF16:
        info(name + ".weight", core::DType::BF16, {rows, cols});
        v.data = aligned(name + ".weight", 2);
        break;
      case core::WeightFormat::F32:
        info(name + ".weight", core::DType::F32, {rows, cols});
        v.data = aligned(name + ".weight", 4);
        break;
    }
    return v;
  }

  // A small tensor decoded to float: BF16 (norm weights) or F32.
  DeviceVector<float> floats(const std::string& name, std::vector<int64_t> shape) {
    FERRY_CHECK(m_.ckpt_->has(name), "checkpoint is missing tensor " + name);
    const core::DType dt = m_.ckpt_->info(name).dtype;
    FERRY_CHECK(dt == core::DType::BF16 || dt == core::DType::F32,
                "tensor " + name + " has dtype " + std::string(core::dtype_name(dt)) + ", expected BF16 or F32");
    info(name, dt, shape);
    const auto raw = m_.ckpt_->bytes(name);
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    DeviceVector<float> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      if (dt == core::DType::BF16) {
        uint16_t b;
        std::memcpy(&b, raw.data() + 2 * i, 2);
        out[static_cast<size_t>(i)] = core::bf16_to_float(b);
      } else {
        std::memcpy(&out[static_cast<size_t>(i)], raw.data() + 4 * i, 4);
      }
    }
    return out;
  }

  DeviceVector<int32_t> hash_table(const std::string& name) {
    const int64_t vocab = c_.vocab_size, k = c_.num_experts_per_tok;
    info(name, core::DType::I64, {vocab, k});
    const auto raw = m_.ckpt_->bytes(name);
    DeviceVector<int32_t> out(static_cast<size_t>(vocab * k));
    for (int64_t i = 0; i < vocab * k; ++i) {
      int64_t e;
      std::memcpy(&e, raw.data() + 8 * i, 8);
      FERRY_CHECK(e >= 0 && e < c_.n_routed_experts, "tensor " + name + " routes token " + std::to_string(i / k) +
                                                         " to expert " + std::to_string(e) + ", beyond " +
                                                         std::to_string(c_.n_routed_experts) + " experts");
      out[static_cast<size_t>(i)] = static_cast<int32_t>(e);
    }
    return out;
  }

  HcWeights hc_weights(const std::string& p, const std::string& site, int64_t mix) {
    const int64_t hc = c_.hc_mult, d = c_.hidden_size;
    HcWeights w;
    w.fn = floats(p + "hc_" + site + "_fn", {mix, hc * d});
    w.base = floats(p + "hc_" + site + "_base", {mix});
    w.scale = floats(p + "hc_" + site + "_scale", {site == "head" ? 1 : 3});
    return w;
  }

  CompressorWeights compressor(const std::string& p, int64_t ratio, int64_t dim) {
    const int64_t coff = ratio == 4 ? 2 : 1, d = c_.hidden_size;
    CompressorWeights w;
    w.wkv = matrix(p + "wkv", core::WeightFormat::BF16, coff * dim, d);
    w.wgate = matrix(p + "wgate", core::WeightFormat::BF16, coff * dim, d);
    w.ape = floats(p + "ape", {ratio, coff * dim});
    w.norm = floats(p + "norm.weight", {dim});
    return w;
  }

  LayerWeights layer(int64_t i) {
    const auto& c = c_;
    const int64_t d = c.hidden_size, nh = c.num_attention_heads, hd = c.head_dim, hc = c.hc_mult;
    LayerWeights L;
    L.index = i;
    L.ratio = c.compress_ratio(i);
    L.prefix = c.is_mtp_layer(i) ? "mtp." + std::to_string(i - c.num_hidden_layers) + "."
                                 : "layers." + std::to_string(i) + ".";
    L.hash_routed = !c.is_mtp_layer(i) && i < c.num_hash_layers;
    const std::string& p = L.prefix;
    const int64_t mix = (2 + hc) * hc;
    L.hc_attn = hc_weights(p, "attn", mix);
    L.hc_ffn = hc_weights(p, "ffn", mix);
    L.attn_norm = floats(p + "attn_norm.weight", {d});
    L.ffn_norm = floats(p + "ffn_norm.weight", {d});
    const std::string a = p + "attn.";
    L.wq_a = matrix(a + "wq_a", core::WeightFormat::FP8, c.q_lora_rank, d);
    L.q_norm = floats(a + "q_norm.weight", {c.q_lora_rank});
    L.wq_b = matrix(a + "wq_b", core::WeightFormat::FP8, nh * hd, c.q_lora_rank);
    L.wkv = matrix(a + "wkv", core::WeightFormat::FP8, hd, d);
    L.kv_norm = floats(a + "kv_norm.weight", {hd});
    L.wo_a = matrix(a + "wo_a", core::WeightFormat::FP8, c.o_groups * c.o_lora_rank, nh * hd / c.o_groups);
    L.wo_b = matrix(a + "wo_b", core::WeightFormat::FP8, d, c.o_groups * c.o_lora_rank);
    L.attn_sink = floats(a + "attn_sink", {nh});
    if (L.ratio > 0) L.compressor = compressor(a + "compressor.", L.ratio, hd);
    if (L.ratio == 4) {
      L.indexer_compressor = compressor(a + "indexer.compressor.", 4, c.index_head_dim);
      L.indexer_wq_b =
          matrix(a + "indexer.wq_b", core::WeightFormat::FP8, c.index_n_heads * c.index_head_dim, c.q_lora_rank);
      L.indexer_weights_proj = matrix(a + "indexer.weights_proj", core::WeightFormat::BF16, c.index_n_heads, d);
    }
    const std::string f = p + "ffn.";
    const int64_t E = c.n_routed_experts, inter = c.moe_intermediate_size;
    L.gate = matrix(f + "gate", core::WeightFormat::BF16, E, d);
    if (L.hash_routed)
      L.tid2eid = hash_table(f + "gate.tid2eid");
    else
      L.gate_bias = floats(f + "gate.bias", {E});
    const core::WeightFormat ef = c.fp4_experts ? core::WeightFormat::MXFP4 : core::WeightFormat::FP8;
    L.experts.resize(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = f + "experts." + std::to_string(e) + ".";
      L.experts[static_cast<size_t>(e)] = {matrix(x + "w1", ef, inter, d), matrix(x + "w2", ef, d, inter),
                                           matrix(x + "w3", ef, inter, d)};
    }
    const std::string s = f + "shared_experts.";
    L.shared = {matrix(s + "w1", core::WeightFormat::FP8, inter, d),
                matrix(s + "w2", core::WeightFormat::FP8, d, inter),
                matrix(s + "w3", core::WeightFormat::FP8, inter, d)};
    if (c.is_mtp_layer(i)) {
      L.e_proj = matrix(p + "e_proj", core::WeightFormat::FP8, d, d);
      L.h_proj = matrix(p + "h_proj", core::WeightFormat::FP8, d, d);
      L.enorm = floats(p + "enorm.weight", {d});
      L.hnorm = floats(p + "hnorm.weight", {d});
      L.mtp_norm = floats(p + "norm.weight", {d});
      L.hc_head = hc_weights(p, "head", hc);
    }
    return L;
  }

 private:
  static std::string shape_text(const std::vector<int64_t>& s) {
    std::string t = "[";
    for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
    return t + "]";
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
  FERRY_CHECK(spec.config.arch == core::Arch::DeepseekV4, "ferry runs DeepSeek V4 checkpoints; " + dir.string() +
                                                              " is " + std::string(core::arch_name(spec.config.arch)));
  m.config_ = spec.config;
  m.ckpt_ = std::make_shared<Checkpoint>(Checkpoint::open(dir));
  const auto& c = m.config_;
  FERRY_CHECK(c.hc_mult >= 1 && c.o_groups >= 1 && c.num_attention_heads % c.o_groups == 0,
              "config: num_attention_heads must be a multiple of o_groups");
  FERRY_CHECK(c.index_head_dim % 32 == 0 && (c.index_head_dim & (c.index_head_dim - 1)) == 0,
              "config: index_head_dim must be a power of two (Hadamard)");
  WeightBinder b(m);
  const int64_t d = c.hidden_size;
  m.embed_ = b.matrix("embed", core::WeightFormat::BF16, c.vocab_size, d);
  m.head_ = b.matrix("head", core::WeightFormat::BF16, c.vocab_size, d);
  m.norm_ = b.floats("norm.weight", {d});
  m.hc_head_ = b.hc_weights("", "head", c.hc_mult);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) m.layers_.push_back(b.layer(i));
  if (c.num_nextn_predict_layers > 0) m.mtp_ = b.layer(c.num_hidden_layers);
  return m;
}

void ModelWeights::embed_row(int64_t token, float* out) const {
  const auto* row = reinterpret_cast<const uint16_t*>(embed_.data) + token * embed_.cols;
  for (int64_t k = 0; k < embed_.cols; ++k) out[k] = core::bf16_to_float(row[k]);
}

}  // namespace ferry::runtime
