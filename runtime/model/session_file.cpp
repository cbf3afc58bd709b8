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
#include "runtime/model/session_io.h"

namespace ferry::runtime {

namespace {

using session_io::crc_of;
using session_io::Fd;
using session_io::Reader;

constexpr char kMagic[8] = {'F', 'E', 'R', 'R', 'Y', 'S', 'E', 'S'};
constexpr size_t kKvNameBytes = 8;
// magic, version, KV type name, fingerprint (3 hashes, 2 counts), tokens, layers, payload bytes, snapshot_every,
// snapshots, snapshot bytes, header CRC.
constexpr int64_t kHeaderBytes = 8 + 4 + kKvNameBytes + 5 * 8 + 6 * 8 + 4;
constexpr int64_t kRecordFields = 7;

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
// rows and indexer keys below n_compressed, and the whole compressor states. From the layer's shape: a rank knows
// every layer's record, also of the layers it does not hold.
LayerRecord used_part(const KvCache& cache, int64_t l, int64_t pos) {
  const LayerShape& S = cache.shape(l);
  LayerRecord r;
  r.ratio = S.ratio;
  r.n_compressed = S.compressed() ? pos / S.ratio : 0;
  r.window_bytes = std::min(pos, S.window_rows) * cache.main_layout().bytes;
  r.compressed_bytes = S.compressed() ? r.n_compressed * cache.main_layout().bytes : 0;
  r.index_bytes = S.indexed() ? r.n_compressed * cache.index_layout().bytes : 0;
  r.main_floats = S.state_floats;
  r.index_floats = S.index_state_floats;
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

// The ranks a session's file moves between (RankExchange), or one process, which holds and reads every layer.
struct Ranks {
  RankExchange* x = nullptr;
  bool leads() const { return !x || x->leads(); }
  bool keeps(int64_t l) const { return !x || x->keeps_layer(l); }
  bool runs(int64_t l) const { return !x || x->runs_layer(l); }
  void agree(std::string_view what, const std::function<void()>& step) const { x ? x->agree(what, step) : step(); }
  void broadcast(void* p, int64_t n) const {
    if (x) x->broadcast(p, n);
  }
  template <class T>
  void broadcast(std::vector<T>& v) const {
    broadcast(v.data(), static_cast<int64_t>(v.size() * sizeof(T)));
  }
};

using Put = std::function<void(const void*, size_t)>;

// Layer l's record (session_file.h's payload): its sizes, then the parts in use at position `pos`.
void put_record(const KvCache& cache, int64_t l, int64_t pos, const Put& put) {
  const LayerKv& L = cache.layer(l);
  const LayerRecord r = used_part(cache, l, pos);
  FERRY_CHECK(r.n_compressed == L.n_compressed, "layer {} holds {} compressed rows at position {}, not {}", l,
              L.n_compressed, pos, r.n_compressed);
  for (int64_t v :
       {r.ratio, r.n_compressed, r.window_bytes, r.compressed_bytes, r.index_bytes, r.main_floats, r.index_floats})
    put(&v, sizeof v);
  put(L.window.data(), static_cast<size_t>(r.window_bytes));
  put(L.compressed.data(), static_cast<size_t>(r.compressed_bytes));
  put(L.index_keys.data(), static_cast<size_t>(r.index_bytes));
  for (const CompressorState* st : {&L.main_state, &L.index_state}) {
    put(st->kv.data(), st->kv.size() * sizeof(float));
    put(st->score.data(), st->score.size() * sizeof(float));
  }
}

// Layer l's part of a save, as its keeper sends it to rank 0: its record, then its share of each kept snapshot.
std::string encode_layer(const Session& s, int64_t l) {
  std::string out;
  const Put put = [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); };
  put_record(s.cache(), l, s.position(), put);
  for (int64_t i = 0; i < s.snapshots().count(); ++i) s.snapshots().store_layer(s.cache(), i, l, put);
  return out;
}

// Where a save writes: rank 0's (or the one process's) temporary file, with the first write error kept rather than
// thrown, so that rank 0 still takes every rank's layers and none waits for it in vain.
struct SaveSink {
  SaveSink(const CheckpointFingerprint& m, std::filesystem::path p) : model(m), path(std::move(p)) {}
  const CheckpointFingerprint& model;
  std::filesystem::path path;
  std::optional<session_io::TempFile> tmp;
  std::optional<session_io::Writer> w;
  std::string error;
  void put(const void* p, size_t n) {
    if (!error.empty()) return;
    try {
      w->put(p, n);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
};

Header header_of(const Session& s, const CheckpointFingerprint& model, const std::vector<int64_t>& positions) {
  Header h;
  h.kv_type = std::string(planner::kv_type_name(s.options().kv_type));
  h.model = model;
  h.tokens = s.position();
  h.layers = s.cache().n_layers();
  h.payload = payload_bytes(s.cache(), h.tokens);
  h.snapshot_every = s.options().snapshot_every;
  h.snapshots = static_cast<int64_t>(positions.size());
  for (int64_t pos : positions)
    h.snapshot_bytes += static_cast<int64_t>(sizeof pos) + KvSnapshots::stored_bytes(s.cache(), pos);
  return h;
}

// Every rank's part of a save; `sink` on rank 0 (the one process) only. The layers come to rank 0 in order from
// their keepers: it writes each record as it comes and the snapshots' shares (small) at the end, the file exactly
// as one process writes it.
SessionFileStats save_parts(const Session& s, const Ranks& ranks, SaveSink* sink) {
  std::vector<int64_t> head{s.position(), s.snapshots().count()};
  ranks.broadcast(head);
  std::vector<int64_t> positions = s.snapshots().positions();
  positions.resize(static_cast<size_t>(head[1]));
  ranks.broadcast(positions);
  ranks.agree("saving a session file", [&] {
    FERRY_CHECK(head[0] == s.position() && positions == s.snapshots().positions(),
                "session: this rank's part holds {} tokens and {} snapshots, rank 0's {} and {}", s.position(),
                s.snapshots().count(), head[0], head[1]);
    if (!sink) return;
    sink->tmp.emplace(sink->path);
    sink->w.emplace(sink->tmp->fd(), sink->tmp->name());
  });
  const KvCache& cache = s.cache();
  std::vector<std::string> shares(static_cast<size_t>(cache.n_layers()));
  if (sink) {
    const Header h = header_of(s, sink->model, positions);
    const std::string header = encode_header(h);
    sink->put(header.data(), header.size());
    sink->put(s.tokens().data(), s.tokens().size() * sizeof(int32_t));
    if (sink->error.empty()) sink->w->flush();
    session_io::stall_if_asked(sink->tmp->name());
  }
  for (int64_t l = 0; l < cache.n_layers(); ++l) {
    const int64_t record = used_part(cache, l, s.position()).bytes();
    int64_t bytes = record;
    for (int64_t pos : positions) bytes += KvSnapshots::stored_layer_bytes(cache, l, pos);
    std::string part;
    if (ranks.keeps(l))
      part = encode_layer(s, l);
    else if (sink)
      part.resize(static_cast<size_t>(bytes));
    else
      continue;
    FERRY_CHECK(static_cast<int64_t>(part.size()) == bytes, "layer {}'s part of a session is {} bytes, not {}", l,
                part.size(), bytes);
    if (ranks.x) ranks.x->layer_to_leader(l, part.data(), bytes);
    if (!sink) continue;
    sink->put(part.data(), static_cast<size_t>(record));
    shares[static_cast<size_t>(l)] = part.substr(static_cast<size_t>(record));
  }
  if (!sink) return {};
  std::vector<size_t> at(shares.size(), 0);
  for (int64_t pos : positions) {
    sink->put(&pos, sizeof pos);
    for (size_t l = 0; l < shares.size(); ++l) {
      const auto n = static_cast<size_t>(KvSnapshots::stored_layer_bytes(cache, static_cast<int64_t>(l), pos));
      sink->put(shares[l].data() + at[l], n);
      at[l] += n;
    }
  }
  const uint32_t crc = sink->w->crc();
  sink->put(&crc, sizeof crc);
  if (sink->error.empty()) sink->w->flush();
  FERRY_CHECK(sink->error.empty(), "{}", sink->error);
  sink->tmp->commit();
  const Header h = header_of(s, sink->model, positions);
  return {h.tokens, kHeaderBytes + h.payload + h.snapshot_bytes + 4};
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
std::vector<int64_t> check_snapshots(int fd, const KvCache& layout, const Header& h, const std::string& file) {
  const int64_t first = kHeaderBytes + h.payload, end = first + h.snapshot_bytes;
  int64_t at = first, prev = 0, i = 0;
  std::vector<int64_t> positions;
  for (; i < h.snapshots && at + 8 <= end; ++i) {
    Reader r(fd, at, 0, file);
    prev = snapshot_position(r, prev, h, file);
    positions.push_back(prev);
    at += 8 + KvSnapshots::stored_bytes(layout, prev);
  }
  FERRY_CHECK(i == h.snapshots && at == end, "{}: its {} snapshots do not fill the {} bytes its header gives them",
              file, h.snapshots, h.snapshot_bytes);
  return positions;
}

// What rank 0 has checked of a file and every rank needs to load its part: the tokens, whether the snapshots are
// kept (the session takes them every snapshot_every tokens too: with another period its rewinds would not find
// them where its K−1 bound needs them) and their positions, and every layer's record.
struct LoadPlan {
  int64_t tokens = 0;
  bool snapshots = false;
  std::vector<int64_t> positions;
  std::vector<LayerRecord> records;
};

// Rank 0's reads of a load's second pass, with the first error kept rather than thrown (zeros read instead), so
// that rank 0 still sends every rank its layers and none waits for it in vain.
struct LoadSource {
  LoadSource(const CheckpointFingerprint& m, std::filesystem::path p) : model(m), path(std::move(p)) {}
  const CheckpointFingerprint& model;
  std::filesystem::path path;
  std::string file = path.string();
  std::optional<session_io::Fd> fd;
  int64_t size = 0;
  Header h;
  uint32_t header_crc = 0;
  std::optional<Reader> r;
  std::string error;
  void get(void* p, size_t n) {
    if (error.empty()) {
      try {
        r->get(p, n);
        return;
      } catch (const std::exception& e) {
        error = e.what();
      }
    }
    if (p) std::memset(p, 0, n);
  }
  void fail(std::string e) {
    if (error.empty()) error = std::move(e);
  }
};

// Layer l's record from the source (rank 0) into every runner's cache, part after part.
void load_layer(KvCache& cache, int64_t l, const LayerRecord& rec, const Ranks& ranks, LoadSource* src,
                std::vector<uint8_t>& scratch) {
  const bool runs = ranks.runs(l);
  if (!runs && !src) return;
  if (src) {
    LayerRecord got;
    for (int64_t* f : {&got.ratio, &got.n_compressed, &got.window_bytes, &got.compressed_bytes, &got.index_bytes,
                       &got.main_floats, &got.index_floats})
      src->get(f, sizeof *f);
    if (got != rec) src->fail(fmt::format("{}: changed while being read (layer {}'s record)", src->file, l));
  }
  LayerKv& L = cache.layer(l);
  auto move = [&](void* dst, int64_t n) {
    if (!runs) {
      scratch.resize(static_cast<size_t>(n));
      dst = scratch.data();
    }
    if (src) src->get(dst, static_cast<size_t>(n));
    if (ranks.x) ranks.x->layer_from_leader(l, dst, n);
  };
  move(L.window.data(), rec.window_bytes);
  move(L.compressed.data(), rec.compressed_bytes);
  move(L.index_keys.data(), rec.index_bytes);
  const auto floats = static_cast<int64_t>(sizeof(float));
  move(L.main_state.kv.data(), rec.main_floats * floats);
  move(L.main_state.score.data(), rec.main_floats * floats);
  move(L.index_state.kv.data(), rec.index_floats * floats);
  move(L.index_state.score.data(), rec.index_floats * floats);
  if (runs) L.n_compressed = rec.n_compressed;
}

// The kept snapshots: each from the source to every runner of each layer, kept by each rank for its layers.
void load_snapshots(const KvCache& cache, KvSnapshots& snaps, const LoadPlan& plan, const Ranks& ranks,
                    LoadSource* src) {
  int64_t prev = 0;
  for (const int64_t want : plan.positions) {
    if (src) {
      const int64_t pos = src->error.empty() ? snapshot_position(*src->r, prev, src->h, src->file) : want;
      if (pos != want) src->fail(fmt::format("{}: changed while being read (a snapshot's position)", src->file));
      prev = pos;
    }
    std::string mine;
    std::string part;
    for (int64_t l = 0; l < cache.n_layers(); ++l) {
      if (!src && !ranks.runs(l)) continue;
      part.assign(static_cast<size_t>(KvSnapshots::stored_layer_bytes(cache, l, want)), '\0');
      if (src) src->get(part.data(), part.size());
      if (ranks.x) ranks.x->layer_from_leader(l, part.data(), static_cast<int64_t>(part.size()));
      if (ranks.runs(l)) mine += part;
    }
    size_t at = 0;
    snaps.load(cache, want, [&](void* p, size_t n) {
      std::memcpy(p, mine.data() + at, n);
      at += n;
    });
  }
}

// Every rank's part of a load's second pass, in Session::restore: the tokens and every layer from rank 0 (the
// one process) to the runners, then whether rank 0's reads all succeeded, agreed (a failure resets every rank).
std::vector<int32_t> load_parts(KvCache& cache, KvSnapshots& snaps, const LoadPlan& plan, const Ranks& ranks,
                                LoadSource* src) {
  std::vector<int32_t> tokens(static_cast<size_t>(plan.tokens));
  if (src) src->get(tokens.data(), tokens.size() * sizeof(int32_t));
  ranks.broadcast(tokens);
  std::vector<uint8_t> scratch;
  for (int64_t l = 0; l < cache.n_layers(); ++l)
    load_layer(cache, l, plan.records[static_cast<size_t>(l)], ranks, src, scratch);
  if (plan.snapshots) {
    load_snapshots(cache, snaps, plan, ranks, src);
  } else if (src) {
    src->get(nullptr, static_cast<size_t>(src->h.snapshot_bytes));
  }
  if (src) {
    const uint32_t crc = src->r->crc();
    uint32_t got = 0;
    src->get(&got, sizeof got);
    if (got != crc) src->fail(fmt::format("{}: changed while being read (the checksum no longer matches)", src->file));
  }
  ranks.agree("loading a session file", [&] { FERRY_CHECK(!src || src->error.empty(), "{}", src->error); });
  return tokens;
}

// The header, checked against the session it is to be loaded into; every check that needs no more than the
// header, so that another model's file is refused without reading gigabytes.
Header checked_header(int fd, int64_t size, const Session& s, const CheckpointFingerprint& model,
                      const std::string& file, std::string& bytes) {
  bytes.assign(static_cast<size_t>(std::min(size, kHeaderBytes)), '\0');
  const ssize_t got = ::pread(fd, bytes.data(), bytes.size(), 0);
  FERRY_CHECK(got == static_cast<ssize_t>(bytes.size()), "{}: cannot read ({})", file,
              got < 0 ? session_io::errno_text() : "short read");
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

// Rank 0's first pass (the one process's), before any session changes: the header, the whole file against its
// checksum, the layer records and the snapshots' positions. Fills `plan`.
void check_file(LoadSource& src, const Session& s, LoadPlan& plan) {
  src.fd.emplace(session_io::open_session_file(src.path, src.size));
  std::string header;
  src.h = checked_header(src.fd->fd, src.size, s, src.model, src.file, header);
  src.header_crc = crc_of(0, header.data(), header.size());
  {
    Reader r(src.fd->fd, kHeaderBytes, src.header_crc, src.file);
    r.get(nullptr, static_cast<size_t>(src.h.payload + src.h.snapshot_bytes));
    const uint32_t crc = r.crc();
    FERRY_CHECK(r.next<uint32_t>() == crc, "{}: corrupted (the checksum does not match)", src.file);
  }
  check_records(src.fd->fd, s.cache(), src.h.tokens, src.file);
  plan.positions = check_snapshots(src.fd->fd, s.cache(), src.h, src.file);
  plan.tokens = src.h.tokens;
  plan.snapshots = src.h.snapshot_every == s.options().snapshot_every;
  if (!plan.snapshots) plan.positions.clear();
  for (int64_t l = 0; l < s.cache().n_layers(); ++l) plan.records.push_back(used_part(s.cache(), l, plan.tokens));
}

// Every rank's load; `src` on rank 0 (the one process) only. Rank 0 checks the whole file, then every rank its
// layers' records against its own cache, each agreed before any rank changes anything; the second pass then
// reads the file again rather than holding it in memory (it can be gigabytes).
SessionFileStats load_all(Session& s, const Ranks& ranks, LoadSource* src) {
  LoadPlan plan;
  ranks.agree("checking a session file", [&] {
    if (src) check_file(*src, s, plan);
  });
  std::vector<int64_t> head{plan.tokens, plan.snapshots, static_cast<int64_t>(plan.positions.size())};
  ranks.broadcast(head);
  plan.tokens = head[0];
  plan.snapshots = head[1] != 0;
  plan.positions.resize(static_cast<size_t>(head[2]));
  ranks.broadcast(plan.positions);
  plan.records.resize(static_cast<size_t>(s.cache().n_layers()));
  ranks.broadcast(plan.records);
  ranks.agree("checking a session file's layers", [&] {
    FERRY_CHECK(plan.tokens <= s.options().ctx, "session: a file of {} tokens does not fit this rank's context of {}",
                plan.tokens, s.options().ctx);
    for (int64_t l = 0; l < s.cache().n_layers(); ++l)
      FERRY_CHECK(!ranks.runs(l) || plan.records[static_cast<size_t>(l)] == used_part(s.cache(), l, plan.tokens),
                  "session: layer {}'s record in the file does not match this rank's layer", l);
  });
  if (src) src->r.emplace(src->fd->fd, kHeaderBytes, src->header_crc, src->file);
  s.restore([&](KvCache& cache, KvSnapshots& snaps) { return load_parts(cache, snaps, plan, ranks, src); });
  return {plan.tokens, src ? src->size : 0};
}

// Rank 0 (or the one process) saves or loads: under mpirun the other ranks follow with their parts, under the
// step lock.
RankExchange* leading_ranks(const Session& s, const std::string& file) {
  FERRY_CHECK(!s.options().mtp, "{}: sessions with --mtp cannot be saved or restored yet", file);
  RankExchange* x = s.options().ranks;
  FERRY_CHECK(!x || x->leads(), "{}: only rank 0 saves or loads a session file", file);
  return x;
}

}  // namespace

SessionFileStats save_session(const Session& session, const CheckpointFingerprint& model,
                              const std::filesystem::path& path) {
  RankExchange* x = leading_ranks(session, path.string());
  std::unique_lock<std::mutex> step;
  if (x) step = x->announce_session_file(false);
  SaveSink sink(model, path);
  return save_parts(session, Ranks{x}, &sink);
}

SessionFileStats load_session(Session& session, const CheckpointFingerprint& model, const std::filesystem::path& path) {
  RankExchange* x = leading_ranks(session, path.string());
  std::unique_lock<std::mutex> step;
  if (x) step = x->announce_session_file(true);
  LoadSource src(model, path);
  return load_all(session, Ranks{x}, &src);
}

void follow_session_file(Session& session, bool load) {
  const Ranks ranks{session.options().ranks};
  FERRY_CHECK(ranks.x && !ranks.x->leads(), "transport: only a rank other than 0 follows a session file");
  if (load)
    load_all(session, ranks, nullptr);
  else
    save_parts(session, ranks, nullptr);
}

}  // namespace ferry::runtime
