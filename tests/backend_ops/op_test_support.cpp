#include "op_test_support.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "planner/core/dtype.h"
#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"
#include "planner/core/units.h"
#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/backend/hardware_probe.h"
#include "runtime/backend/sim_backend.h"
#include "runtime/checkpoint/tiny_model.h"

namespace ferry::runtime::ops_test {

std::unique_ptr<Backend> HostFactory::make(std::string&) { return std::make_unique<cpu::CpuBackend>(); }

// Room for the largest case (a V4-Flash expert's three MXFP4 matrices and their activations).
std::unique_ptr<Backend> SimFactory::make(std::string&) {
  return std::make_unique<SimBackend>(SimDeviceSpec{core::kGiB, 0});
}

// A device that the probe lists must also open: only its absence skips.
std::unique_ptr<Backend> CudaFactory::make(std::string& why_absent) {
  std::vector<std::string> notes;
  if (probe_gpus(notes).empty()) {
    why_absent = "no CUDA device";
    for (const std::string& n : notes) why_absent += " (" + n + ")";
    return nullptr;
  }
  return cuda::make_cuda_backend(0);
}

reference::Matrix StoredWeight::decoded() const {
  using core::WeightFormat;
  const core::DType dtype = format == WeightFormat::F32    ? core::DType::F32
                            : format == WeightFormat::BF16 ? core::DType::BF16
                            : format == WeightFormat::FP8  ? core::DType::F8_E4M3
                                                           : core::DType::I8;
  const int64_t block = format == WeightFormat::FP8 ? core::kFp8Block : core::kFp4Block;
  auto bytes = [](const std::vector<uint8_t>& v) { return std::as_bytes(std::span<const uint8_t>(v)); };
  return reference::decode_matrix(dtype, bytes(codes), bytes(scales), rows, cols, block, "test weight");
}

StoredWeight stored_weight(core::WeightFormat f, int64_t rows, int64_t cols, double sd, std::mt19937_64& rng) {
  using core::WeightFormat;
  StoredWeight w{f, rows, cols, {}, {}};
  // FP8 and MXFP4 as random codes (every code but E4M3's NaNs: subnormals and the largest values included)
  // under random power-of-two scales near sd / the codes' typical magnitude (4 for E4M3, 2 for E2M1):
  // drawing and encoding normal values would cost more than everything else a case does at V4's sizes.
  std::uniform_int_distribution<int> jitter(-1, 1);
  uint64_t bits = 0;
  int left = 0;
  auto byte = [&] {  // eight random bytes from each draw
    if (left == 0) bits = rng(), left = 8;
    --left;
    return static_cast<uint8_t>(bits >> (8 * left));
  };
  auto scale_code = [&](double typical) {
    return core::e8m0_from_exponent(static_cast<int>(std::lround(std::log2(sd / typical))) + jitter(rng));
  };
  switch (f) {
    case WeightFormat::F32: {
      const std::vector<float> v = normal(rows * cols, sd, rng);
      w.codes.resize(v.size() * sizeof(float));
      std::memcpy(w.codes.data(), v.data(), w.codes.size());
      break;
    }
    case WeightFormat::BF16:
      for (float v : normal(rows * cols, sd, rng)) {
        const uint16_t b = core::float_to_bf16(v);
        w.codes.push_back(static_cast<uint8_t>(b & 0xFF));
        w.codes.push_back(static_cast<uint8_t>(b >> 8));
      }
      break;
    case WeightFormat::FP8:
      w.codes.resize(sz(rows * cols));
      for (uint8_t& c : w.codes) {
        do c = byte();
        while ((c & 0x7F) == 0x7F);
      }
      w.scales.resize(
          sz(((rows + core::kFp8Block - 1) / core::kFp8Block) * ((cols + core::kFp8Block - 1) / core::kFp8Block)));
      for (uint8_t& s : w.scales) s = scale_code(4);
      break;
    case WeightFormat::MXFP4:
      FERRY_CHECK(cols % core::kFp4Block == 0, "test: MXFP4 rows are whole blocks");
      w.codes.resize(sz(rows * cols / 2));
      for (uint8_t& c : w.codes) c = byte();
      w.scales.resize(sz(rows * cols / core::kFp4Block));
      for (uint8_t& s : w.scales) s = scale_code(2);
      break;
  }
  return w;
}

core::WeightView DeviceMemory::weight(const StoredWeight& w) {
  core::WeightView v;
  v.format = w.format;
  v.data = upload(w.codes, MemoryClass::Weights);
  v.scales = w.scales.empty() ? nullptr : upload(w.scales, MemoryClass::Weights);
  v.rows = v.tensor_rows = w.rows;
  v.cols = w.cols;
  return v;
}

void DeviceMemory::run(const ops::Op& op) { b_.wait(b_.run(op)); }

void* DeviceMemory::upload_bytes(const void* src, int64_t bytes, MemoryClass c) {
  // One byte at least, so that every buffer has an address of its own to be found by.
  DeviceBuffer buf = b_.allocate(c, std::max<int64_t>(bytes, 1));
  if (bytes > 0) b_.wait(b_.copy_to_device(buf, 0, src, bytes));
  buffers_.push_back(std::move(buf));
  return buffers_.back().data();
}

void DeviceMemory::read_bytes(const void* src, void* dst, int64_t bytes) const {
  if (bytes == 0) return;
  const auto* p = static_cast<const char*>(src);
  for (const DeviceBuffer& buf : buffers_) {
    const auto* base = static_cast<const char*>(buf.data());
    if (p < base || p + bytes > base + buf.bytes()) continue;
    b_.copy_to_host(dst, buf, p - base, bytes);
    return;
  }
  FERRY_THROW("test: reading memory that no buffer of this case holds");
}

std::string Outputs::first_difference(const Outputs& a, const Outputs& b) {
  if (a.blobs_.size() != b.blobs_.size()) return "different outputs";
  for (size_t i = 0; i < a.blobs_.size(); ++i) {
    const auto& [name, x] = a.blobs_[i];
    const auto& y = b.blobs_[i].second;
    if (name != b.blobs_[i].first || x.size() != y.size()) return name + ": different names or sizes";
    const auto at = std::mismatch(x.begin(), x.end(), y.begin());
    if (at.first != x.end()) return name + ": byte " + std::to_string(at.first - x.begin()) + " differs";
  }
  return "";
}

const std::vector<uint8_t>& Outputs::blob(std::string_view name) const {
  for (const auto& [n, b] : blobs_)
    if (n == name) return b;
  FERRY_THROW("test: no output named {}", name);
}

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = [] {
    std::vector<Shape> v;
    v.push_back({"tiny", core::config_from_json(tiny_config_json({}), "tiny"), 16});
    v.push_back({"v4-flash", core::preset_config("deepseek-v4-flash"), 128});
    return v;
  }();
  return s;
}

std::vector<float> normal(int64_t n, double sd, std::mt19937_64& rng) {
  std::normal_distribution<double> g(0.0, sd);
  std::vector<float> v(sz(n));
  for (float& x : v) x = static_cast<float>(g(rng));
  return v;
}

Vec to_double(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

namespace {

// Collects the elements out of tolerance and reports the first few.
class Failures {
 public:
  explicit Failures(std::string what) : what_(std::move(what)) {}
  void add(size_t i, double got, double ref, double bound) {
    if (count_++ < 5) text_ << "\n  [" << i << "] got " << got << ", reference " << ref << ", allowed " << bound;
  }
  ~Failures() { EXPECT_EQ(count_, 0) << what_ << ": " << count_ << " elements out of tolerance" << text_.str(); }

 private:
  std::string what_;
  int64_t count_ = 0;
  std::ostringstream text_;
};

}  // namespace

void expect_near(const std::vector<float>& got, const Vec& ref, const Vec& tol, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  Failures f(what);
  for (size_t i = 0; i < got.size(); ++i) {
    const double bound = tol.size() == 1 ? tol[0] : tol[i];
    if (!(std::fabs(got[i] - ref[i]) <= bound)) f.add(i, got[i], ref[i], bound);
  }
}

void expect_exact(const std::vector<float>& got, const Vec& ref, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  Failures f(what);
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != static_cast<float>(ref[i])) f.add(i, got[i], ref[i], 0);
}

void expect_rounded(const std::vector<float>& got, const Vec& ref, const Vec& exact, const Vec& noise,
                    int64_t max_flips, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  ASSERT_EQ(got.size(), exact.size()) << what;
  int64_t flips = 0;
  {
    Failures f(what);
    for (size_t i = 0; i < got.size(); ++i) {
      if (std::fabs(got[i] - ref[i]) <= noise[i]) continue;  // the same value (a grid point, or not rounded)
      const double bound = std::fabs(ref[i] - exact[i]) + 2 * noise[i];
      if (std::fabs(got[i] - exact[i]) <= bound)
        ++flips;
      else
        f.add(i, got[i], ref[i], bound);
    }
  }
  EXPECT_LE(flips, max_flips) << what << ": values on the other side of a rounding boundary";
}

void check_selection(const std::vector<int32_t>& got, const Vec& score, int64_t k, double tol,
                     const std::vector<int64_t>& tie_class, const std::string& what) {
  const int64_t n = static_cast<int64_t>(score.size()), want = std::min(k, n);
  ASSERT_EQ(static_cast<int64_t>(got.size()), want) << what;
  const std::set<int32_t> chosen(got.begin(), got.end());
  ASSERT_EQ(static_cast<int64_t>(chosen.size()), want) << what << ": an entry chosen twice";
  ASSERT_TRUE(chosen.empty() || (*chosen.begin() >= 0 && *chosen.rbegin() < n)) << what << ": out of range";
  if (want == n) return;
  Vec sorted = score;
  std::nth_element(sorted.begin(), sorted.begin() + (want - 1), sorted.end(), std::greater<>());
  const double cut = sorted[sz(want - 1)];
  std::set<int64_t> passed_over;  // tie classes with an entry left out so far
  for (int64_t j = 0; j < n; ++j) {
    const bool in = chosen.count(static_cast<int32_t>(j)) > 0;
    if (in) {
      EXPECT_GE(score[sz(j)], cut - tol) << what << ": entry " << j << " chosen below the cut";
    } else {
      EXPECT_LE(score[sz(j)], cut + tol) << what << ": entry " << j << " left out above the cut";
    }
    const int64_t c = tie_class.empty() ? -1 : tie_class[sz(j)];
    if (c < 0) continue;
    if (in) {
      EXPECT_EQ(passed_over.count(c), 0u) << what << ": entry " << j << " chosen over a lower one it ties with";
    } else {
      passed_over.insert(c);
    }
  }
}

Vec abs_products(const reference::Matrix& w, const Vec& x) {
  Vec out(sz(w.rows), 0.0);
  for (int64_t r = 0; r < w.rows; ++r) {
    const double* row = w.w.data() + r * w.cols;
    double sum = 0;
    for (int64_t k = 0; k < w.cols; ++k) sum += std::fabs(row[k] * x[sz(k)]);
    out[sz(r)] = sum;
  }
  return out;
}

ops::RopeFreqs rope_table(const Vec& freqs) { return {freqs.data(), static_cast<int64_t>(freqs.size())}; }

}  // namespace ferry::runtime::ops_test
