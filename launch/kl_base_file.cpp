#include "launch/kl_base_file.h"

#include <cstring>
#include <fstream>
#include <iterator>

#include "planner/core/error.h"
#include "planner/core/file_io.h"

namespace ferry::launch {
namespace {

constexpr char kMagic[8] = {'F', 'E', 'R', 'R', 'Y', 'K', 'L', 'D'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxSettings = 1 << 16;

uint64_t fnv1a(const char* data, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<unsigned char>(data[i])) * 1099511628211ULL;
  return h;
}

class Writer {
 public:
  template <typename T>
  void put(const T& v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  template <typename T>
  void put_all(const std::vector<T>& v) {
    bytes.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  std::string bytes;
};

// Reads fields in order from the checked bytes; the size was checked against the header before any array.
class Reader {
 public:
  Reader(const std::string& bytes, const std::string& name) : bytes_(bytes), name_(name) {}
  template <typename T>
  T get() {
    T v;
    take(&v, sizeof v);
    return v;
  }
  template <typename T>
  void get_all(std::vector<T>& v, int64_t n) {
    v.resize(static_cast<size_t>(n));
    take(v.data(), v.size() * sizeof(T));
  }
  std::string get_text(size_t n) {
    std::string s(n, '\0');
    take(s.data(), n);
    return s;
  }
  size_t at() const { return at_; }

 private:
  void take(void* out, size_t n) {
    FERRY_CHECK(at_ + n <= bytes_.size(), "{} is truncated", name_);
    std::memcpy(out, bytes_.data() + at_, n);
    at_ += n;
  }
  const std::string& bytes_;
  const std::string& name_;
  size_t at_ = 0;
};

void put_header(Writer& w, const KlBaseHeader& h) {
  w.bytes.append(kMagic, sizeof kMagic);
  w.put(kVersion);
  w.put(h.ctx);
  w.put(h.chunks);
  w.put(h.top_k);
  w.put(h.vocab);
  w.put(h.tokens_hash);
  w.put(h.model.config);
  w.put(h.model.headers);
  w.put(h.model.weights);
  w.put(h.model.shards);
  w.put(h.model.tensors);
  w.put(static_cast<uint32_t>(h.settings.size()));
  w.bytes += h.settings;
}

KlBaseHeader get_header(Reader& r, const std::string& name) {
  KlBaseHeader h;
  h.ctx = r.get<int64_t>();
  h.chunks = r.get<int64_t>();
  h.top_k = r.get<int32_t>();
  h.vocab = r.get<int32_t>();
  h.tokens_hash = r.get<uint64_t>();
  h.model.config = r.get<uint64_t>();
  h.model.headers = r.get<uint64_t>();
  h.model.weights = r.get<uint64_t>();
  h.model.shards = r.get<int64_t>();
  h.model.tensors = r.get<int64_t>();
  const auto settings = r.get<uint32_t>();
  FERRY_CHECK(h.ctx >= 3 && h.ctx <= (int64_t{1} << 30) && h.chunks >= 1 && h.chunks <= (int64_t{1} << 30) &&
                  h.vocab >= 1 && h.top_k >= 1 && h.top_k <= h.vocab && settings <= kMaxSettings,
              "{} has an impossible header (corrupted)", name);
  h.settings = r.get_text(settings);
  return h;
}

// The first difference between the base and this run that makes them incomparable, in words.
void check_matches(const KlBaseHeader& base, const KlBaseHeader& run, const std::string& name) {
  FERRY_CHECK(base.model == run.model, "{} was made with another model: {}", name, base.model.difference(run.model));
  FERRY_CHECK(base.ctx == run.ctx, "{} was made with --ctx {}, this run has --ctx {} (give the base's)", name, base.ctx,
              run.ctx);
  FERRY_CHECK(base.chunks == run.chunks, "{} covers {} chunks, this run {} (give the base's --file and --chunks)", name,
              base.chunks, run.chunks);
  FERRY_CHECK(base.tokens_hash == run.tokens_hash,
              "{} was made from another text: its tokens differ from --file's (give the base's --file)", name);
}

}  // namespace

uint64_t hash_tokens(std::span<const int32_t> tokens) {
  return fnv1a(reinterpret_cast<const char*>(tokens.data()), tokens.size_bytes());
}

void write_kl_base(const std::filesystem::path& file, const KlBase& base) {
  Writer w;
  put_header(w, base.header);
  w.put_all(base.nll);
  w.put_all(base.log_tail);
  w.put_all(base.ids);
  w.put_all(base.logp);
  w.put(fnv1a(w.bytes.data(), w.bytes.size()));
  core::write_file_atomically(
      file, [&](std::ostream& out) { out.write(w.bytes.data(), static_cast<std::streamsize>(w.bytes.size())); });
}

KlBase read_kl_base(const std::filesystem::path& file, const KlBaseHeader& run) {
  const std::string name = file.string();
  std::ifstream in(file, std::ios::binary);
  FERRY_CHECK(in.good() && !std::filesystem::is_directory(file), "cannot read {}", name);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  FERRY_CHECK(bytes.size() >= sizeof kMagic && std::memcmp(bytes.data(), kMagic, sizeof kMagic) == 0,
              "{} is not a KL base file of ferry perplexity (--kl-divergence-base)", name);
  Reader r(bytes, name);
  r.get_text(sizeof kMagic);
  const auto version = r.get<uint32_t>();
  FERRY_CHECK(version == kVersion, "{} is of format version {}, this ferry reads version {}", name, version, kVersion);
  FERRY_CHECK(bytes.size() >= sizeof(uint64_t) + r.at(), "{} is truncated", name);
  uint64_t sum = 0;
  std::memcpy(&sum, bytes.data() + bytes.size() - sizeof sum, sizeof sum);
  FERRY_CHECK(sum == fnv1a(bytes.data(), bytes.size() - sizeof sum), "{} is truncated or corrupted (checksum)", name);
  KlBase base;
  base.header = get_header(r, name);
  check_matches(base.header, run, name);
  const int64_t p = base.header.chunks * scored_per_chunk(base.header.ctx), k = base.header.top_k;
  const size_t data = static_cast<size_t>(p) * (sizeof(double) + sizeof(float) + k * 8);
  FERRY_CHECK(bytes.size() == r.at() + data + sizeof(uint64_t),
              "{} is truncated or corrupted: {} bytes, its header says {}", name, bytes.size(),
              r.at() + data + sizeof(uint64_t));
  r.get_all(base.nll, p);
  r.get_all(base.log_tail, p);
  r.get_all(base.ids, p * k);
  r.get_all(base.logp, p * k);
  for (const int32_t id : base.ids)
    FERRY_CHECK(id >= 0 && id < base.header.vocab, "{} has a token id {} outside the vocabulary", name, id);
  return base;
}

}  // namespace ferry::launch
