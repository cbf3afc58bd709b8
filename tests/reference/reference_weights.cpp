#include "reference_weights.h"

#include <array>
#include <cmath>
#include <cstring>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"
#include "planner/model_spec.h"
#include "runtime/checkpoint/checkpoint.h"

namespace ferry::reference {

Vec Matrix::operator*(const Vec& x) const {
  FERRY_CHECK(static_cast<int64_t>(x.size()) == cols, "reference: matrix-vector size mismatch");
  Vec y(static_cast<size_t>(rows), 0.0);
  // Four partial sums: four times the speed of one dependent chain of additions (most of the reference's time
  // is here), and in double the order of the additions is far below anything the tests resolve.
  const double* xv = x.data();
  for (int64_t r = 0; r < rows; ++r) {
    const double* wr = w.data() + r * cols;
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) {
      a0 += wr[c] * xv[c];
      a1 += wr[c + 1] * xv[c + 1];
      a2 += wr[c + 2] * xv[c + 2];
      a3 += wr[c + 3] * xv[c + 3];
    }
    for (; c < cols; ++c) a0 += wr[c] * xv[c];
    y[static_cast<size_t>(r)] = (a0 + a1) + (a2 + a3);
  }
  return y;
}

Vec Matrix::row(int64_t r) const {
  FERRY_CHECK(r >= 0 && r < rows, "reference: row out of range");
  return Vec(w.begin() + r * cols, w.begin() + (r + 1) * cols);
}

namespace {

using core::DType;

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

template <class T>
T load_le(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// BF16 / F16 / F32 values, little-endian; `what` names them in errors.
Vec decode_plain(DType dtype, std::span<const std::byte> raw, const std::string& what) {
  Vec v;
  switch (dtype) {
    case DType::BF16:
      for (size_t i = 0; i + 2 <= raw.size(); i += 2)
        v.push_back(core::bf16_to_float(load_le<uint16_t>(raw.data() + i)));
      break;
    case DType::F16:
      for (size_t i = 0; i + 2 <= raw.size(); i += 2)
        v.push_back(core::f16_to_float(load_le<uint16_t>(raw.data() + i)));
      break;
    case DType::F32:
      for (size_t i = 0; i + 4 <= raw.size(); i += 4) v.push_back(load_le<float>(raw.data() + i));
      break;
    default: FERRY_THROW("reference: {} has an unsupported dtype for a dense tensor", what);
  }
  return v;
}

// Reads and decodes tensors by their stored dtype, checking every shape it is told to expect.
class Reader {
 public:
  Reader(const std::filesystem::path& dir, const core::ModelConfig& c) : ck_(runtime::Checkpoint::open(dir)), c_(c) {}

  // `prefix` + ".weight" (and ".scale" for FP8 / FP4) as a logical [rows, cols] matrix.
  Matrix matrix(const std::string& prefix, int64_t rows, int64_t cols) {
    const std::string name = prefix + ".weight";
    const auto& t = info(name);
    std::span<const std::byte> scales;
    int64_t block = 0;
    if (t.dtype == core::DType::F8_E4M3) {
      block = c_.weight_block_size;
      expect_shape(t, {rows, cols});
      scales = scale_bytes(prefix + ".scale", {(rows + block - 1) / block, (cols + block - 1) / block});
    } else if (t.dtype == core::DType::I8) {  // packed FP4
      block = c_.fp4_block;
      FERRY_CHECK(cols % 2 == 0 && cols % block == 0, "reference: {} has an FP4 row length that is not whole blocks",
                  name);
      expect_shape(t, {rows, cols / 2});
      scales = scale_bytes(prefix + ".scale", {rows, cols / block});
    } else {
      expect_shape(t, {rows, cols});
    }
    Matrix m = decode_matrix(t.dtype, ck_.bytes(name), scales, rows, cols, block, name);
    check_finite(name, m.w);
    return m;
  }

  // A BF16 / F16 / F32 tensor of any shape with `numel` elements.
  Vec vec(const std::string& name, int64_t numel) {
    const auto& t = info(name);
    int64_t n = 1;
    for (int64_t s : t.shape) n *= s;
    FERRY_CHECK(n == numel, "reference: {} has shape {}, expected {} elements", name, shape_text(t.shape), numel);
    Vec v = decode_plain(t.dtype, ck_.bytes(name), name);
    FERRY_CHECK(static_cast<int64_t>(v.size()) == numel, "reference: {} has the wrong byte size", name);
    check_finite(name, v);
    return v;
  }

  std::vector<int64_t> integers(const std::string& name, int64_t rows, int64_t cols) {
    const auto& t = info(name);
    expect_shape(t, {rows, cols});
    const auto raw = ck_.bytes(name);
    std::vector<int64_t> v(static_cast<size_t>(rows * cols));
    FERRY_CHECK(t.dtype == core::DType::I64 || t.dtype == core::DType::I32, "reference: {} must be I64 or I32", name);
    const size_t es = t.dtype == core::DType::I64 ? 8 : 4;
    FERRY_CHECK(raw.size() == v.size() * es, "reference: {} has the wrong byte size", name);
    for (size_t i = 0; i < v.size(); ++i)
      v[i] = es == 8 ? load_le<int64_t>(raw.data() + 8 * i) : load_le<int32_t>(raw.data() + 4 * i);
    return v;
  }

 private:
  const core::SafetensorsTensor& info(const std::string& name) const {
    FERRY_CHECK(ck_.has(name), "reference: checkpoint is missing tensor {}", name);
    return ck_.info(name);
  }

  static void expect_shape(const core::SafetensorsTensor& t, const std::vector<int64_t>& shape) {
    FERRY_CHECK(t.shape == shape, "reference: {} has shape {}, expected {}", t.name, shape_text(t.shape),
                shape_text(shape));
  }

  static void check_finite(const std::string& name, const Vec& v) {
    for (double x : v) FERRY_CHECK(std::isfinite(x), "reference: {} decodes to a non-finite value", name);
  }

  // E8M0 block scales, checked.
  std::span<const std::byte> scale_bytes(const std::string& name, const std::vector<int64_t>& shape) {
    const auto& t = info(name);
    FERRY_CHECK(t.dtype == core::DType::F8_E8M0, "reference: {} must be F8_E8M0", name);
    expect_shape(t, shape);
    const auto raw = ck_.bytes(name);
    for (std::byte b : raw)
      FERRY_CHECK(std::isfinite(core::e8m0_to_float(static_cast<uint8_t>(b))),
                  "reference: {} decodes to a non-finite value", name);
    return raw;
  }

  runtime::Checkpoint ck_;
  const core::ModelConfig& c_;
};

HcWeights hc_weights(Reader& rd, const std::string& prefix, int64_t rows, int64_t n_scales,
                     const core::ModelConfig& c) {
  return {rd.vec(prefix + "_fn", rows * c.hc_mult * c.hidden_size), rd.vec(prefix + "_base", rows),
          rd.vec(prefix + "_scale", n_scales)};
}

CompressorWeights compressor_weights(Reader& rd, const std::string& p, int64_t ratio, int64_t D,
                                     const core::ModelConfig& c) {
  const int64_t coff = ratio == 4 ? 2 : 1;  // ratio 4 compresses overlapping blocks: two halves per token
  CompressorWeights w;
  w.wkv = rd.matrix(p + "wkv", coff * D, c.hidden_size);
  w.wgate = rd.matrix(p + "wgate", coff * D, c.hidden_size);
  w.ape = Matrix{ratio, coff * D, rd.vec(p + "ape", ratio * coff * D)};
  w.norm = rd.vec(p + "norm.weight", D);
  return w;
}

// A SwiGLU MLP `inter` wide: a routed expert, or the shared experts (one MLP n_shared routed experts wide).
ExpertWeights expert_weights(Reader& rd, const std::string& p, const core::ModelConfig& c, int64_t inter) {
  const int64_t d = c.hidden_size;
  return {rd.matrix(p + "w1", inter, d), rd.matrix(p + "w2", d, inter), rd.matrix(p + "w3", inter, d)};
}

LayerWeights layer_weights(Reader& rd, int64_t i, const core::ModelConfig& c) {
  const bool mtp = c.is_mtp_layer(i);
  const std::string p =
      mtp ? "mtp." + std::to_string(i - c.num_hidden_layers) + "." : "layers." + std::to_string(i) + ".";
  const int64_t d = c.hidden_size, nh = c.num_attention_heads, hd = c.head_dim, hc = c.hc_mult;
  const int64_t G = c.o_groups, E = c.n_routed_experts;
  LayerWeights L;
  L.index = i;
  L.ratio = c.compress_ratio(i);
  L.hash_routed = !mtp && i < c.num_hash_layers;  // the MTP layer always routes by score
  L.hc_attn = hc_weights(rd, p + "hc_attn", (2 + hc) * hc, 3, c);
  L.hc_ffn = hc_weights(rd, p + "hc_ffn", (2 + hc) * hc, 3, c);
  L.attn_norm = rd.vec(p + "attn_norm.weight", d);
  L.ffn_norm = rd.vec(p + "ffn_norm.weight", d);
  L.wq_a = rd.matrix(p + "attn.wq_a", c.q_lora_rank, d);
  L.q_norm = rd.vec(p + "attn.q_norm.weight", c.q_lora_rank);
  L.wq_b = rd.matrix(p + "attn.wq_b", nh * hd, c.q_lora_rank);
  L.wkv = rd.matrix(p + "attn.wkv", hd, d);
  L.kv_norm = rd.vec(p + "attn.kv_norm.weight", hd);
  L.wo_a = rd.matrix(p + "attn.wo_a", G * c.o_lora_rank, nh * hd / G);
  L.wo_b = rd.matrix(p + "attn.wo_b", d, G * c.o_lora_rank);
  L.attn_sink = rd.vec(p + "attn.attn_sink", nh);
  if (L.ratio > 0) L.compressor = compressor_weights(rd, p + "attn.compressor.", L.ratio, hd, c);
  if (L.ratio == 4) {
    L.index_compressor = compressor_weights(rd, p + "attn.indexer.compressor.", L.ratio, c.index_head_dim, c);
    L.index_wq_b = rd.matrix(p + "attn.indexer.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank);
    L.index_weights_proj = rd.matrix(p + "attn.indexer.weights_proj", c.index_n_heads, d);
  }
  L.gate = rd.matrix(p + "ffn.gate", E, d);
  if (L.hash_routed) {
    L.tid2eid = rd.integers(p + "ffn.gate.tid2eid", c.vocab_size, c.num_experts_per_tok);
    for (int64_t e : L.tid2eid) FERRY_CHECK(e >= 0 && e < E, "reference: {}ffn.gate.tid2eid names a missing expert", p);
  } else {
    L.gate_bias = rd.vec(p + "ffn.gate.bias", E);
  }
  for (int64_t e = 0; e < E; ++e)
    L.experts.push_back(expert_weights(rd, p + "ffn.experts." + std::to_string(e) + ".", c, c.moe_intermediate_size));
  if (c.n_shared_experts > 0) L.shared = expert_weights(rd, p + "ffn.shared_experts.", c, c.shared_expert_width());
  if (mtp) {
    L.e_proj = rd.matrix(p + "e_proj", d, d);
    L.h_proj = rd.matrix(p + "h_proj", d, d);
    L.enorm = rd.vec(p + "enorm.weight", d);
    L.hnorm = rd.vec(p + "hnorm.weight", d);
    L.norm = rd.vec(p + "norm.weight", d);
    L.hc_head = hc_weights(rd, p + "hc_head", hc, 1, c);
  }
  return L;
}

}  // namespace

Matrix decode_matrix(DType dtype, std::span<const std::byte> codes, std::span<const std::byte> scales, int64_t rows,
                     int64_t cols, int64_t block, const std::string& what) {
  Matrix m{rows, cols, Vec(static_cast<size_t>(rows * cols))};
  const auto* b = reinterpret_cast<const uint8_t*>(codes.data());
  const auto* sc = reinterpret_cast<const uint8_t*>(scales.data());
  // The scalar decoders' values by code: a weight of V4's size decodes several times faster from tables.
  static const auto tables = [] {
    std::array<std::array<double, 256>, 3> t{};  // E4M3, E8M0, E2M1 (the low 16 codes)
    for (int c = 0; c < 256; ++c) {
      t[0][c] = core::e4m3_to_float(static_cast<uint8_t>(c));
      t[1][c] = core::e8m0_to_float(static_cast<uint8_t>(c));
      t[2][c] = core::e2m1_to_float(static_cast<uint8_t>(c & 0xF));
    }
    return t;
  }();
  const auto &e4m3 = tables[0], &e8m0 = tables[1], &e2m1 = tables[2];
  auto scale = [&](int64_t i) { return e8m0[sc[i]]; };
  if (dtype == DType::F8_E4M3) {  // E4M3 codes × the E8M0 scale of their block×block block
    const int64_t scale_cols = (cols + block - 1) / block;
    FERRY_CHECK(static_cast<int64_t>(codes.size()) == rows * cols &&
                    static_cast<int64_t>(scales.size()) == (rows + block - 1) / block * scale_cols,
                "reference: {} has the wrong byte size", what);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t col = 0; col < cols; ++col)
        m.w[static_cast<size_t>(r * cols + col)] =
            e4m3[b[r * cols + col]] * scale((r / block) * scale_cols + col / block);
  } else if (dtype == DType::I8) {  // packed FP4: element 2k in the low nibble of byte k of the row
    FERRY_CHECK(cols % 2 == 0 && cols % block == 0 && static_cast<int64_t>(codes.size()) == rows * cols / 2 &&
                    static_cast<int64_t>(scales.size()) == rows * (cols / block),
                "reference: {} has the wrong byte size", what);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t col = 0; col < cols; ++col) {
        const uint8_t byte = b[r * (cols / 2) + col / 2];
        const uint8_t code = col % 2 == 0 ? core::fp4_low(byte) : core::fp4_high(byte);
        m.w[static_cast<size_t>(r * cols + col)] = e2m1[code] * scale(r * (cols / block) + col / block);
      }
  } else {
    m.w = decode_plain(dtype, codes, what);
    FERRY_CHECK(static_cast<int64_t>(m.w.size()) == rows * cols, "reference: {} has the wrong byte size", what);
  }
  return m;
}

ReferenceWeights load_reference_weights(const std::filesystem::path& model_dir, bool with_mtp) {
  FERRY_CHECK(std::filesystem::is_directory(model_dir), "reference: {} is not a model directory", model_dir.string());
  ReferenceWeights w;
  w.config = planner::load_model_spec(model_dir.string()).config;
  const core::ModelConfig& c = w.config;
  FERRY_CHECK(c.arch == core::Arch::DeepseekV4, "reference: only DeepSeek V4 checkpoints are supported");
  FERRY_CHECK(c.o_groups > 0 && c.num_attention_heads % c.o_groups == 0, "reference: heads must split into o_groups");
  FERRY_CHECK(c.head_dim > c.qk_rope_head_dim && c.index_head_dim >= c.qk_rope_head_dim,
              "reference: rope dims exceed a head");
  FERRY_CHECK(static_cast<int64_t>(c.compress_ratios.size()) >= c.n_layers_total(),
              "reference: compress_ratios is too short");
  Reader rd(model_dir, c);
  w.embed = rd.matrix("embed", c.vocab_size, c.hidden_size);
  w.head = rd.matrix("head", c.vocab_size, c.hidden_size);
  w.norm = rd.vec("norm.weight", c.hidden_size);
  w.hc_head = hc_weights(rd, "hc_head", c.hc_mult, 1, c);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) w.layers.push_back(layer_weights(rd, i, c));
  if (with_mtp && c.num_nextn_predict_layers > 0) w.mtp = layer_weights(rd, c.num_hidden_layers, c);
  return w;
}

}  // namespace ferry::reference
