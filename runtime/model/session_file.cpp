#include "runtime/model/session_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "planner/core/error.h"

namespace ferry::runtime {

namespace {

constexpr char kMagic[8] = {'F', 'E', 'R', 'R', 'Y', 'S', 'E', 'S'};
constexpr size_t kKvNameBytes = 8;
// magic, version, KV type name, fingerprint (3 hashes, 2 counts), tokens, layers, payload bytes, snapshot_every,
// snapshots, snapshot bytes, header CRC.
constexpr int64_t kHeaderBytes = 8 + 4 + kKvNameBytes + 5 * 8 + 6 * 8 + 4;
constexpr int64_t kRecordFields = 7;
constexpr size_t kIoChunk = size_t{4} << 20;

std::string errno_text() { return std::strerror(errno); }

// zlib returns the initial value for a null buffer, which an empty part's data() may be.
uint32_t crc_of(uint32_t crc, const void* p, size_t n) {
  if (n == 0) return crc;
  return static_cast<uint32_t>(crc32_z(crc, static_cast<const Bytef*>(p), n));
}

// What one layer's record holds: the sizes, then the bytes of each part in this order.
struct LayerRecord {
  int64_t ratio = 0, n_compressed = 0, window_bytes = 0, compressed_bytes = 0, index_bytes = 0, main_floats = 0,
          index_floats = 0;
  bool operator==(const LayerRecord&) const = default;
  int64_t bytes() const {
    return kRecordFields * 8 + window_bytes + compressed_bytes + index_bytes +
           2 * (main_floats + index_floats) * static_cast<int64_t>(sizeof(float));
  }
};

// The part of layer l in use once `pos` tokens have been fed: the window slots written so far, the compressed
// rows and indexer keys below n_compressed, and the whole compressor states.
LayerRecord used_part(const KvCache& cache, int64_t l, int64_t pos) {
  const LayerKv& L = cache.layer(l);
  LayerRecord r;
  r.ratio = L.ratio;
  r.n_compressed = L.ratio > 0 ? pos / L.ratio : 0;
  r.window_bytes = std::min(pos, L.window_rows) * cache.main_layout().bytes;
  r.compressed_bytes = L.compressed.empty() ? 0 : r.n_compressed * cache.main_layout().bytes;
  r.index_bytes = L.index_keys.empty() ? 0 : r.n_compressed * cache.index_layout().bytes;
  r.main_floats = static_cast<int64_t>(L.main_state.kv.size());
  r.index_floats = static_cast<int64_t>(L.index_state.kv.size());
  return r;
}

int64_t payload_bytes(const KvCache& cache, int64_t pos) {
  int64_t b = pos * static_cast<int64_t>(sizeof(int32_t));
  for (int64_t l = 0; l < cache.n_layers(); ++l) b += used_part(cache, l, pos).bytes();
  return b;
}

struct Header {
  uint32_t version = kSessionFormatVersion;
  std::string kv_type;
  CheckpointFingerprint model;
  int64_t tokens = 0, layers = 0, payload = 0;  // payload: the tokens and layer records
  int64_t snapshot_every = 0, snapshots = 0, snapshot_bytes = 0;
};

// The snapshot section of a session's file: per kept snapshot its position, then its stored form.
int64_t snapshot_section_bytes(const Session& s) {
  int64_t b = 0;
  for (int64_t pos : s.snapshots().positions())
    b += static_cast<int64_t>(sizeof pos) + KvSnapshots::stored_bytes(s.cache(), pos);
  return b;
}

template <class T>
void append(std::string& out, const T& v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

std::string encode_header(const Header& h) {
  std::string out(kMagic, sizeof kMagic);
  append(out, h.version);
  std::string name = h.kv_type;
  name.resize(kKvNameBytes, '\0');
  out += name;
  for (uint64_t v : {h.model.config, h.model.headers, h.model.weights}) append(out, v);
  for (int64_t v : {h.model.shards, h.model.tensors, h.tokens, h.layers, h.payload, h.snapshot_every, h.snapshots,
                    h.snapshot_bytes})
    append(out, v);
  append(out, crc_of(0, out.data(), out.size()));
  return out;
}

// Reads fields in order from a header's bytes.
struct FieldReader {
  const char* p;
  template <class T>
  T next() {
    T v;
    std::memcpy(&v, p, sizeof v);
    p += sizeof v;
    return v;
  }
};

// Parses a header whose magic has been checked; throws on a damaged one.
Header decode_header(const std::string& bytes, const std::string& file) {
  FieldReader f{bytes.data() + sizeof kMagic};
  Header h;
  h.version = f.next<uint32_t>();
  FERRY_CHECK(h.version == kSessionFormatVersion, "{}: ferry session format version {}, this ferry reads version {}",
              file, h.version, kSessionFormatVersion);
  const uint32_t want = crc_of(0, bytes.data(), static_cast<size_t>(kHeaderBytes - 4));
  uint32_t got = 0;
  std::memcpy(&got, bytes.data() + kHeaderBytes - 4, sizeof got);
  FERRY_CHECK(got == want, "{}: corrupted (the header's checksum does not match)", file);
  h.kv_type.assign(f.p, strnlen(f.p, kKvNameBytes));
  f.p += kKvNameBytes;
  h.model.config = f.next<uint64_t>();
  h.model.headers = f.next<uint64_t>();
  h.model.weights = f.next<uint64_t>();
  h.model.shards = f.next<int64_t>();
  h.model.tensors = f.next<int64_t>();
  h.tokens = f.next<int64_t>();
  h.layers = f.next<int64_t>();
  h.payload = f.next<int64_t>();
  h.snapshot_every = f.next<int64_t>();
  h.snapshots = f.next<int64_t>();
  h.snapshot_bytes = f.next<int64_t>();
  return h;
}

// A file descriptor closed on every path.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Buffered writes with a running CRC; large parts go straight to the file.
class Writer {
 public:
  Writer(int fd, std::string name) : fd_(fd), name_(std::move(name)) {}
  void put(const void* p, size_t n) {
    crc_ = crc_of(crc_, p, n);
    if (buf_.size() + n > kIoChunk) flush();
    if (n >= kIoChunk)
      write_all(static_cast<const char*>(p), n);
    else
      buf_.append(static_cast<const char*>(p), n);
  }
  void flush() {
    write_all(buf_.data(), buf_.size());
    buf_.clear();
  }
  uint32_t crc() const { return crc_; }

 private:
  void write_all(const char* p, size_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      FERRY_CHECK(w > 0, "{}: cannot write ({})", name_, errno_text());
      p += w;
      n -= static_cast<size_t>(w);
    }
  }
  int fd_;
  std::string name_, buf_;
  uint32_t crc_ = 0;
};

// Reads the file from an offset on, with a running CRC; a null destination reads and checks without keeping.
class Reader {
 public:
  Reader(int fd, int64_t offset, uint32_t crc, std::string name)
      : fd_(fd), at_(offset), crc_(crc), name_(std::move(name)) {}
  void get(void* dst, size_t n) {
    while (n > 0) {
      char* to = static_cast<char*>(dst);
      size_t m = n;
      if (!dst) {
        scratch_.resize(std::min(n, kIoChunk));
        to = scratch_.data();
        m = scratch_.size();
      }
      const ssize_t r = ::pread(fd_, to, m, at_);
      if (r < 0 && errno == EINTR) continue;
      FERRY_CHECK(r >= 0, "{}: cannot read ({})", name_, errno_text());
      FERRY_CHECK(r > 0, "{}: truncated (it ended at byte {} while being read)", name_, at_);
      crc_ = crc_of(crc_, to, static_cast<size_t>(r));
      at_ += r;
      n -= static_cast<size_t>(r);
      if (dst) dst = to + r;
    }
  }
  template <class T>
  T next() {
    T v{};
    get(&v, sizeof v);
    return v;
  }
  uint32_t crc() const { return crc_; }

 private:
  int fd_;
  int64_t at_;
  uint32_t crc_;
  std::string name_;
  std::vector<char> scratch_;
};

void refuse_unsupported(const Session& s, const std::string& file) {
  FERRY_CHECK(!s.options().mtp, "{}: sessions with --mtp cannot be saved or restored yet", file);
  FERRY_CHECK(!s.options().ranks, "{}: sessions under mpirun cannot be saved or restored yet", file);
}

// The test hook of save_session (session_file.h): a pause mid-write for a kill -9.
void stall_if_asked(const std::string& tmp) {
  const char* s = std::getenv("FERRY_TEST_SESSION_SAVE_STALL_S");
  if (!s) return;
  const int seconds = std::atoi(s);
  std::fprintf(stderr, "session: save stalled for %d s with %s partly written (FERRY_TEST_SESSION_SAVE_STALL_S)\n",
               seconds, tmp.c_str());
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
}

void write_session(const Session& s, const CheckpointFingerprint& model, int fd, const std::string& tmp) {
  const KvCache& cache = s.cache();
  const int64_t pos = s.position();
  Header h;
  h.kv_type = std::string(planner::kv_type_name(s.options().kv_type));
  h.model = model;
  h.tokens = pos;
  h.layers = cache.n_layers();
  h.payload = payload_bytes(cache, pos);
  h.snapshot_every = s.options().snapshot_every;
  h.snapshots = s.snapshots().count();
  h.snapshot_bytes = snapshot_section_bytes(s);
  Writer w(fd, tmp);
  const std::string header = encode_header(h);
  w.put(header.data(), header.size());
  w.put(s.tokens().data(), s.tokens().size() * sizeof(int32_t));
  w.flush();
  stall_if_asked(tmp);
  for (int64_t l = 0; l < cache.n_layers(); ++l) {
    const LayerKv& L = cache.layer(l);
    const LayerRecord r = used_part(cache, l, pos);
    FERRY_CHECK(r.n_compressed == L.n_compressed, "layer {} holds {} compressed rows at position {}, not {}", l,
                L.n_compressed, pos, r.n_compressed);
    for (int64_t v :
         {r.ratio, r.n_compressed, r.window_bytes, r.compressed_bytes, r.index_bytes, r.main_floats, r.index_floats})
      w.put(&v, sizeof v);
    w.put(L.window.data(), static_cast<size_t>(r.window_bytes));
    w.put(L.compressed.data(), static_cast<size_t>(r.compressed_bytes));
    w.put(L.index_keys.data(), static_cast<size_t>(r.index_bytes));
    for (const CompressorState* st : {&L.main_state, &L.index_state}) {
      w.put(st->kv.data(), st->kv.size() * sizeof(float));
      w.put(st->score.data(), st->score.size() * sizeof(float));
    }
  }
  const std::vector<int64_t> positions = s.snapshots().positions();
  for (int64_t i = 0; i < h.snapshots; ++i) {
    w.put(&positions[static_cast<size_t>(i)], sizeof(int64_t));
    s.snapshots().store(cache, i, [&](const void* p, size_t n) { w.put(p, n); });
  }
  const uint32_t crc = w.crc();
  w.put(&crc, sizeof crc);
  w.flush();
}

std::filesystem::path directory_of(const std::filesystem::path& path) {
  return path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
}

// This host's name as a file name part ('/' would make it a path).
std::string host_name() {
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  std::string h = name;
  std::replace(h.begin(), h.end(), '/', '_');
  return h;
}

// The pid of a temporary file's "<pid>.<serial>" (session_temp_path); 0 when it is not that.
int temp_owner(std::string_view pid_serial) {
  const size_t dot = pid_serial.find('.');
  if (dot == std::string_view::npos) return 0;
  const char* end = pid_serial.data() + pid_serial.size();
  int pid = 0;
  uint64_t serial = 0;
  const auto p = std::from_chars(pid_serial.data(), pid_serial.data() + dot, pid);
  const auto s = std::from_chars(pid_serial.data() + dot + 1, end, serial);
  const bool whole = p.ec == std::errc() && p.ptr == pid_serial.data() + dot && s.ec == std::errc() && s.ptr == end;
  return whole && pid > 0 ? pid : 0;
}

// Removes the temporary files that saves of `path` killed mid-write left: session_temp_path's names of this host
// whose process no longer exists. A live process's, whoever it runs as (kill answers EPERM, not ESRCH), is never
// touched, so two processes may save the same name at once (the last rename wins, each file whole); another
// host's (a shared directory) is left alone, since its process cannot be seen from here. A pid reused since
// keeps its file until that process ends too. Best effort: a listing or removal that fails changes nothing else.
void remove_stale_temps(const std::filesystem::path& path) {
  const std::string prefix = path.filename().string() + "." + host_name() + ".", suffix = ".tmp";
  std::error_code ec;
  for (std::filesystem::directory_iterator it(directory_of(path), ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) || !name.ends_with(suffix)) continue;
    const int pid = temp_owner({name.data() + prefix.size(), name.size() - prefix.size() - suffix.size()});
    if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) ::unlink(it->path().c_str());
  }
}

// Syncs the directory so that the rename itself survives a power loss.
void sync_directory(const std::filesystem::path& dir, const std::string& file) {
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  FERRY_CHECK(d.fd >= 0 && ::fsync(d.fd) == 0, "{}: saved, but syncing its directory failed ({})", file, errno_text());
}

// The layer records, read at their places once the checksum has passed: a file that a ferry of the same format
// version wrote for this model matches them; any other is refused before the cache is touched.
void check_records(int fd, const KvCache& layout, int64_t tokens, const std::string& file) {
  int64_t at = kHeaderBytes + tokens * static_cast<int64_t>(sizeof(int32_t));
  for (int64_t l = 0; l < layout.n_layers(); ++l) {
    const LayerRecord want = used_part(layout, l, tokens);
    Reader r(fd, at, 0, file);
    LayerRecord got;
    for (int64_t* f : {&got.ratio, &got.n_compressed, &got.window_bytes, &got.compressed_bytes, &got.index_bytes,
                       &got.main_floats, &got.index_floats})
      *f = r.next<int64_t>();
    FERRY_CHECK(got == want, "{}: layer {}'s record does not match this model's layer", file, l);
    at += want.bytes();
  }
}

// The next snapshot's position, after `prev`: a multiple of the file's snapshot_every within its tokens.
int64_t snapshot_position(Reader& r, int64_t prev, const Header& h, const std::string& file) {
  const auto pos = r.next<int64_t>();
  FERRY_CHECK(pos > prev && pos <= h.tokens && pos % h.snapshot_every == 0,
              "{}: holds a snapshot of position {} (after {}), not a multiple of {} up to its {} tokens", file, pos,
              prev, h.snapshot_every, h.tokens);
  return pos;
}

// The snapshot section, read at its place once the checksum has passed (as check_records): positions that fit,
// each followed by the stored form this model's snapshot of it has, filling the section exactly.
void check_snapshots(int fd, const KvCache& layout, const Header& h, const std::string& file) {
  const int64_t first = kHeaderBytes + h.payload, end = first + h.snapshot_bytes;
  int64_t at = first, prev = 0, i = 0;
  for (; i < h.snapshots && at + 8 <= end; ++i) {
    Reader r(fd, at, 0, file);
    prev = snapshot_position(r, prev, h, file);
    at += 8 + KvSnapshots::stored_bytes(layout, prev);
  }
  FERRY_CHECK(i == h.snapshots && at == end, "{}: its {} snapshots do not fill the {} bytes its header gives them",
              file, h.snapshots, h.snapshot_bytes);
}

// Reads the checked snapshots into `snaps` when the session takes them every h.snapshot_every tokens too (with
// another period its rewinds would not find them where its K−1 bound needs them); past them otherwise.
void read_snapshots(Reader& r, const KvCache& cache, KvSnapshots& snaps, int64_t every, const Header& h,
                    const std::string& file) {
  if (every != h.snapshot_every) {
    r.get(nullptr, static_cast<size_t>(h.snapshot_bytes));
    return;
  }
  int64_t prev = 0;
  for (int64_t i = 0; i < h.snapshots; ++i) {
    prev = snapshot_position(r, prev, h, file);
    snaps.load(cache, prev, [&](void* p, size_t n) { r.get(p, n); });
  }
}

// Reads the checked payload into `cache`; returns the tokens.
std::vector<int32_t> read_payload(Reader& r, KvCache& cache, int64_t tokens, const std::string& file) {
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  r.get(ids.data(), ids.size() * sizeof(int32_t));
  for (int64_t l = 0; l < cache.n_layers(); ++l) {
    LayerRecord got;
    for (int64_t* f : {&got.ratio, &got.n_compressed, &got.window_bytes, &got.compressed_bytes, &got.index_bytes,
                       &got.main_floats, &got.index_floats})
      *f = r.next<int64_t>();
    FERRY_CHECK(got == used_part(cache, l, tokens), "{}: changed while being read (layer {}'s record)", file, l);
    LayerKv& L = cache.layer(l);
    r.get(L.window.data(), static_cast<size_t>(got.window_bytes));
    r.get(L.compressed.data(), static_cast<size_t>(got.compressed_bytes));
    r.get(L.index_keys.data(), static_cast<size_t>(got.index_bytes));
    for (CompressorState* st : {&L.main_state, &L.index_state}) {
      r.get(st->kv.data(), st->kv.size() * sizeof(float));
      r.get(st->score.data(), st->score.size() * sizeof(float));
    }
    L.n_compressed = got.n_compressed;
  }
  return ids;
}

// Opens a saved session for reading: a regular file, or a one-line error naming what it is instead.
int open_session_file(const std::filesystem::path& path, int64_t& size) {
  const std::string file = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FERRY_CHECK(fd >= 0, "{}: cannot open the session file ({})", file, errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const bool dir = S_ISDIR(st.st_mode);
    ::close(fd);
    FERRY_THROW("{}: {}, not a session file", file, dir ? "a directory" : "not a regular file");
  }
  size = static_cast<int64_t>(st.st_size);
  return fd;
}

// The header, checked against the session it is to be loaded into; every check that needs no more than the
// header, so that another model's file is refused without reading gigabytes.
Header checked_header(int fd, int64_t size, const Session& s, const CheckpointFingerprint& model,
                      const std::string& file, std::string& bytes) {
  bytes.assign(static_cast<size_t>(std::min(size, kHeaderBytes)), '\0');
  const ssize_t got = ::pread(fd, bytes.data(), bytes.size(), 0);
  FERRY_CHECK(got == static_cast<ssize_t>(bytes.size()), "{}: cannot read ({})", file,
              got < 0 ? errno_text() : "short read");
  FERRY_CHECK(size > 0, "{}: empty, not a session file", file);
  FERRY_CHECK(std::memcmp(bytes.data(), kMagic, std::min(bytes.size(), sizeof kMagic)) == 0,
              "{}: not a ferry session file", file);
  FERRY_CHECK(size >= kHeaderBytes, "{}: truncated ({} bytes, shorter than the {}-byte header)", file, size,
              kHeaderBytes);
  const Header h = decode_header(bytes, file);
  FERRY_CHECK(h.model == model, "{}: saved from another model ({})", file, model.difference(h.model));
  const std::string_view kv = planner::kv_type_name(s.options().kv_type);
  FERRY_CHECK(h.kv_type == kv, "{}: saved with KV type {}, this session uses {}", file, h.kv_type, kv);
  FERRY_CHECK(h.tokens >= 0 && h.tokens <= s.options().ctx, "{}: holds {} tokens, more than the context of {}", file,
              h.tokens, s.options().ctx);
  FERRY_CHECK(h.layers == s.cache().n_layers(), "{}: holds {} layers, this model {}", file, h.layers,
              s.cache().n_layers());
  const int64_t payload = payload_bytes(s.cache(), h.tokens);
  FERRY_CHECK(h.payload == payload, "{}: its header counts {} bytes of state for {} tokens, this model needs {}", file,
              h.payload, h.tokens, payload);
  // Bounds, not the exact size (the positions are in the section): each snapshot is at most that of the last position.
  const bool snapshots_fit =
      h.snapshot_every >= 0 && h.snapshots >= 0 &&
      (h.snapshots == 0 || (h.snapshot_every > 0 && h.snapshots <= h.tokens / h.snapshot_every)) &&
      h.snapshot_bytes >= 8 * h.snapshots &&
      h.snapshot_bytes <= h.snapshots * (8 + KvSnapshots::stored_bytes(s.cache(), h.tokens));
  FERRY_CHECK(snapshots_fit, "{}: its header's snapshot fields do not fit ({} snapshots every {} tokens in {} bytes)",
              file, h.snapshots, h.snapshot_every, h.snapshot_bytes);
  const int64_t want = kHeaderBytes + payload + h.snapshot_bytes + 4;
  FERRY_CHECK(size >= want, "{}: truncated ({} bytes, its header says {})", file, size, want);
  FERRY_CHECK(size == want, "{}: {} bytes longer than its header says ({} bytes)", file, size - want, want);
  return h;
}

}  // namespace

std::filesystem::path session_temp_path(const std::filesystem::path& path, int64_t pid, int64_t serial) {
  std::filesystem::path tmp = path;
  tmp += fmt::format(".{}.{}.{}.tmp", host_name(), pid, serial);
  return tmp;
}

SessionFileStats save_session(const Session& session, const CheckpointFingerprint& model,
                              const std::filesystem::path& path) {
  const std::string file = path.string();
  refuse_unsupported(session, file);
  std::error_code ec;
  FERRY_CHECK(!std::filesystem::is_directory(path, ec), "{}: a directory; give a file name to save the session to",
              file);
  remove_stale_temps(path);
  // Unique per process and call: two slots of a server may save at once.
  static std::atomic<int64_t> serial{0};
  const std::filesystem::path tmp = session_temp_path(path, ::getpid(), serial++);
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  FERRY_CHECK(fd.fd >= 0, "{}: cannot create {} ({})", file, tmp.string(), errno_text());
  try {
    write_session(session, model, fd.fd, tmp.string());
    FERRY_CHECK(::fsync(fd.fd) == 0, "{}: cannot sync {} ({})", file, tmp.string(), errno_text());
    const int closed = ::close(fd.fd);
    fd.fd = -1;
    FERRY_CHECK(closed == 0, "{}: cannot close {} ({})", file, tmp.string(), errno_text());
    FERRY_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "{}: cannot replace it with {} ({})", file, tmp.string(),
                errno_text());
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  sync_directory(directory_of(path), file);
  return {session.position(),
          kHeaderBytes + payload_bytes(session.cache(), session.position()) + snapshot_section_bytes(session) + 4};
}

SessionFileStats load_session(Session& session, const CheckpointFingerprint& model, const std::filesystem::path& path) {
  const std::string file = path.string();
  refuse_unsupported(session, file);
  int64_t size = 0;
  Fd fd(open_session_file(path, size));
  std::string header;
  const Header h = checked_header(fd.fd, size, session, model, file, header);
  const uint32_t header_crc = crc_of(0, header.data(), header.size());
  // First pass: the whole file against its checksum, then the layer records, the session untouched.
  {
    Reader r(fd.fd, kHeaderBytes, header_crc, file);
    r.get(nullptr, static_cast<size_t>(h.payload + h.snapshot_bytes));
    const uint32_t crc = r.crc();
    FERRY_CHECK(r.next<uint32_t>() == crc, "{}: corrupted (the checksum does not match)", file);
  }
  check_records(fd.fd, session.cache(), h.tokens, file);
  check_snapshots(fd.fd, session.cache(), h, file);
  // Second pass: into the cache; the file is read again rather than held in memory (it can be gigabytes).
  Reader r(fd.fd, kHeaderBytes, header_crc, file);
  session.restore([&](KvCache& cache, KvSnapshots& snaps) {
    std::vector<int32_t> tokens = read_payload(r, cache, h.tokens, file);
    read_snapshots(r, cache, snaps, session.options().snapshot_every, h, file);
    const uint32_t crc = r.crc();
    FERRY_CHECK(r.next<uint32_t>() == crc, "{}: changed while being read (the checksum no longer matches)", file);
    return tokens;
  });
  return {h.tokens, size};
}

}  // namespace ferry::runtime
