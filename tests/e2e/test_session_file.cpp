// Saved KV sessions (runtime/model/session_file.h): save → a new session (a restart) → load → continue gives
// bitwise the tokens and logits of an unbroken run, for every KV type, on the host and on the simulated device; the
// prefix-reuse snapshots come back with it, so that a rewind into the restored sequence recomputes at most K−1
// tokens, exactly; every bad file is refused with one line naming the file and the problem, and the session is
// left as it was; a save removes the temporary files that killed saves left.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>

#include "forward_check.h"
#include "planner/core/error.h"
#include "runtime/backend/sim_backend.h"
#include "runtime/checkpoint/fingerprint.h"
#include "runtime/model/session_file.h"

namespace ferry::testing {
namespace {

namespace fs = std::filesystem;
using planner::KvType;

// Not multiples of the compression ratios (4, 16) nor of the window (16): the compressors hold partial blocks
// and the ring has wrapped at the save point.
constexpr int64_t kSaved = 75, kMore = 21, kDecode = 6;

runtime::SessionOptions options(KvType kv, runtime::Backend* device = nullptr, int64_t ctx = 256, int64_t ubatch = 32,
                                int64_t every = 0, int64_t keep = 4) {
  return {
      .ctx = ctx, .kv_type = kv, .ubatch = ubatch, .device = device, .snapshot_every = every, .snapshot_keep = keep};
}

const runtime::CheckpointFingerprint& fingerprint() {
  static const runtime::CheckpointFingerprint f = runtime::checkpoint_fingerprint(tiny_model_dir());
  return f;
}

struct Continuation {
  std::vector<int32_t> tokens;
  std::vector<float> logits;
};

// After the saved prefix: kMore more prompt tokens, then greedy decoding; every row of logits and the ids.
Continuation continue_from(runtime::Session& s) {
  runtime::GenerateOptions go;
  go.n_predict = kDecode;
  go.stop_at_eos = false;
  go.keep_logits = true;
  runtime::GenerateResult r = runtime::generate(s, prompt_tokens(kMore, 2), go);
  return {r.tokens, r.logits};
}

void expect_same(const Continuation& got, const Continuation& want) {
  EXPECT_EQ(got.tokens, want.tokens);
  ASSERT_EQ(got.logits.size(), want.logits.size());
  EXPECT_EQ(std::memcmp(got.logits.data(), want.logits.data(), got.logits.size() * sizeof(float)), 0)
      << "the logits differ from the unbroken run's";
}

runtime::Session& fed(runtime::Session& s, int64_t n = kSaved, uint64_t seed = 1) {
  std::vector<float> last;
  s.feed(prompt_tokens(n, seed), nullptr, &last);
  return s;
}

const Continuation& unbroken(KvType kv) {
  static std::map<KvType, Continuation> runs;
  if (!runs.count(kv)) {
    runtime::Session s(tiny_model(), options(kv));
    runs[kv] = continue_from(fed(s));
  }
  return runs.at(kv);
}

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("ferry-session-test-" + std::to_string(::getpid()));
  TempDir() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, ec);
    fs::remove_all(path, ec);
  }
};

std::vector<fs::path> entries(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename());
  return out;
}

// The device a session saves from and the one a restarted session loads onto: two simulated GPUs, or none (the
// host).
struct SaveAndLoadDevices {
  explicit SaveAndLoadDevices(bool on_sim) {
    if (!on_sim) return;
    // Sessions without a placement: the weights stay in host memory, which the device may then read.
    saving_device.emplace(runtime::SimDeviceSpec{int64_t{1} << 30, 0, false});
    loading_device.emplace(runtime::SimDeviceSpec{int64_t{1} << 30, 0, false});
  }
  runtime::Backend* saving() { return saving_device ? &*saving_device : nullptr; }
  runtime::Backend* loading() { return loading_device ? &*loading_device : nullptr; }

  std::optional<runtime::SimBackend> saving_device, loading_device;
};

// Runs `f(kv, devices)` for every KV type, on the host and on simulated devices.
template <class F>
void for_every_kv_type_on_host_and_sim(F f) {
  for (const bool on_sim : {false, true})
    for (const KvType kv : planner::kKvTypesByFidelity) {
      SCOPED_TRACE(std::string(planner::kv_type_name(kv)) + (on_sim ? " on sim" : " on the host"));
      SaveAndLoadDevices devices(on_sim);
      f(kv, devices);
    }
}

TEST(SessionFile, ARestoredSessionContinuesBitwiseForEveryKvTypeOnHostAndSimulatedDevice) {
  TempDir dir;
  const fs::path file = dir.path / "s.ferry";
  for_every_kv_type_on_host_and_sim([&](KvType kv, SaveAndLoadDevices& devices) {
    {
      runtime::Session s(tiny_model(), options(kv, devices.saving()));
      const runtime::SessionFileStats st = runtime::save_session(fed(s), fingerprint(), file);
      EXPECT_EQ(st.tokens, kSaved);
      EXPECT_EQ(st.bytes, static_cast<int64_t>(fs::file_size(file)));
    }
    // The restart: another session, another context and chunk size, holding another sequence before.
    runtime::Session s(tiny_model(), options(kv, devices.loading(), 512, 7));
    fed(s, 30, 9);
    const runtime::SessionFileStats st = runtime::load_session(s, fingerprint(), file);
    EXPECT_EQ(st.tokens, kSaved);
    EXPECT_EQ(s.position(), kSaved);
    EXPECT_EQ(s.tokens(), prompt_tokens(kSaved));
    expect_same(continue_from(s), unbroken(kv));
  });
  EXPECT_EQ(entries(dir.path), std::vector<fs::path>{"s.ferry"}) << "a temporary file was left behind";
}

// Only what is in use is stored: the file does not grow with the context, and is far below the whole cache; the
// snapshots' part neither.
TEST(SessionFile, TheFileHoldsWhatIsUsedNotTheContextsCapacity) {
  TempDir dir;
  for (const int64_t every : {0, 8}) {
    runtime::Session small(tiny_model(), options(KvType::BF16, nullptr, 128, 32, every));
    runtime::Session large(tiny_model(), options(KvType::BF16, nullptr, 8192, 32, every));
    const int64_t a = runtime::save_session(fed(small), fingerprint(), dir.path / "a").bytes;
    const int64_t b = runtime::save_session(fed(large), fingerprint(), dir.path / "b").bytes;
    EXPECT_EQ(a, b) << "every " << every;
    if (every == 0) {
      EXPECT_LT(b * 10, planner::kv_total(large.cache().bytes()));
    }
  }
}

// The logits of every position of a fresh session fed `tokens` whole, on the host, without snapshots.
std::vector<float> fresh_logits(KvType kv, const std::vector<int32_t>& tokens) {
  runtime::Session s(tiny_model(), options(kv, nullptr, 512, 64));
  std::vector<float> all;
  s.feed(tokens, &all, nullptr);
  return all;
}

std::vector<int32_t> first(const std::vector<int32_t>& t, int64_t n) { return {t.begin(), t.begin() + n}; }

// Rewinds `s` to `p` (the cost `cost`), feeds `more` and compares its logits with a fresh prefill's, bit for bit.
void expect_rewinds_exactly(runtime::Session& s, int64_t p, int64_t cost, const std::vector<int32_t>& more, KvType kv) {
  std::vector<int32_t> whole = first(s.tokens(), p);
  EXPECT_EQ(s.rewind_cost(p), cost);
  EXPECT_EQ(s.rewind(p), cost);
  EXPECT_EQ(s.tokens(), whole);
  std::vector<float> got;
  s.feed(more, &got, nullptr);
  whole.insert(whole.end(), more.begin(), more.end());
  const std::vector<float> want = fresh_logits(kv, whole);
  const size_t skip = static_cast<size_t>(p * tiny_model().config().vocab_size);
  ASSERT_EQ(got.size() + skip, want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data() + skip, got.size() * sizeof(float)), 0)
      << "the logits after the rewind differ from a fresh prefill's";
}

// K = 8 and 41 tokens saved: snapshots at 16 … 40 (4 kept) come back, and a rewind to 33 recomputes 1 token, not 33.
TEST(SessionFile, ARestoredSessionKeepsItsSnapshotsForEveryKvTypeOnHostAndSimulatedDevice) {
  TempDir dir;
  const fs::path file = dir.path / "k8.ferry";
  const auto saved = prompt_tokens(41, 4), more = prompt_tokens(12, 5);
  for_every_kv_type_on_host_and_sim([&](KvType kv, SaveAndLoadDevices& devices) {
    {
      runtime::Session s(tiny_model(), options(kv, devices.saving(), 256, 32, 8));
      s.feed(saved, nullptr, nullptr);
      runtime::save_session(s, fingerprint(), file);
    }
    runtime::Session s(tiny_model(), options(kv, devices.loading(), 512, 7, 8));
    fed(s, 30, 9);
    runtime::load_session(s, fingerprint(), file);
    EXPECT_EQ(s.snapshots().positions(), (std::vector<int64_t>{16, 24, 32, 40}));
    expect_rewinds_exactly(s, 33, 1, more, kv);
  });
}

// A session taking snapshots at another period (or none) loads the file without them: a rewind recomputes from the
// start, still exactly. One keeping fewer keeps the latest.
TEST(SessionFile, SnapshotsOfAnotherPeriodAreLeftOutAndFewerKeptAreTheLatest) {
  TempDir dir;
  const fs::path file = dir.path / "k8.ferry";
  const auto saved = prompt_tokens(41, 4), more = prompt_tokens(12, 5);
  runtime::Session saving(tiny_model(), options(KvType::Q8_0, nullptr, 256, 32, 8));
  saving.feed(saved, nullptr, nullptr);
  runtime::save_session(saving, fingerprint(), file);
  for (const int64_t every : {0, 16}) {
    SCOPED_TRACE("every " + std::to_string(every));
    runtime::Session s(tiny_model(), options(KvType::Q8_0, nullptr, 256, 32, every));
    runtime::load_session(s, fingerprint(), file);
    EXPECT_EQ(s.snapshots().count(), 0);
    expect_rewinds_exactly(s, 33, 33, more, KvType::Q8_0);
  }
  runtime::Session s(tiny_model(), options(KvType::Q8_0, nullptr, 256, 32, 8, 2));
  runtime::load_session(s, fingerprint(), file);
  EXPECT_EQ(s.snapshots().positions(), (std::vector<int64_t>{32, 40}));
  EXPECT_EQ(s.snapshot_bytes(), planner::kv_snapshot_bytes(tiny_model().config(), KvType::Q8_0, 256, 2));
  expect_rewinds_exactly(s, 25, 25, more, KvType::Q8_0);
}

// Contexts shorter than the window (16) hold rings of ctx rows: a snapshot saved with one context loads into a
// session of another, either way.
TEST(SessionFile, SnapshotsLoadIntoAnotherContextBelowTheWindow) {
  TempDir dir;
  const fs::path file = dir.path / "short.ferry";
  const auto saved = prompt_tokens(12, 6);
  for (const KvType kv : planner::kKvTypesByFidelity)
    for (const auto& [from, to] : {std::pair<int64_t, int64_t>{12, 256}, {256, 12}, {12, 14}}) {
      SCOPED_TRACE(std::string(planner::kv_type_name(kv)) + " from ctx " + std::to_string(from) + " to " +
                   std::to_string(to));
      runtime::Session saving(tiny_model(), options(kv, nullptr, from, 32, 4));
      saving.feed(saved, nullptr, nullptr);
      runtime::save_session(saving, fingerprint(), file);
      runtime::Session s(tiny_model(), options(kv, nullptr, to, 32, 4));
      runtime::load_session(s, fingerprint(), file);
      EXPECT_EQ(s.snapshots().positions(), (std::vector<int64_t>{4, 8, 12}));
      expect_rewinds_exactly(s, 9, 1, prompt_tokens(3, 7), kv);
    }
}

TEST(SessionFile, AnEmptySessionRoundTrips) {
  TempDir dir;
  runtime::Session empty(tiny_model(), options(KvType::FP8));
  runtime::save_session(empty, fingerprint(), dir.path / "e");
  runtime::Session s(tiny_model(), options(KvType::FP8));
  runtime::load_session(fed(s), fingerprint(), dir.path / "e");
  EXPECT_EQ(s.position(), 0);
  EXPECT_TRUE(s.tokens().empty());
  runtime::Session fresh(tiny_model(), options(KvType::FP8));
  expect_same(continue_from(s), continue_from(fresh));
}

// The good file: kSaved tokens with snapshots at 48 … 72 (K = 8), its snapshot section [snapshots_at_, size − 4).
class BadSessionFile : public ::testing::Test {
 protected:
  void SetUp() override {
    runtime::Session s(tiny_model(), options(KvType::FP8, nullptr, 256, 32, 8));
    runtime::save_session(fed(s), fingerprint(), good_);
    ASSERT_EQ(s.snapshots().positions(), kSnapshots);
    bytes_ = read(good_);
    runtime::Session plain(tiny_model(), options(KvType::FP8));
    snapshots_at_ = runtime::save_session(fed(plain), fingerprint(), dir_.path / "plain").bytes - 4;
    fs::remove(dir_.path / "plain");
    ASSERT_LT(snapshots_at_ + 4 * 8, bytes_.size());
  }

  static std::string read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  fs::path write(const std::string& name, const std::string& bytes) const {
    const fs::path p = dir_.path / name;
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
  }

  // Loading `file` into a session holding another sequence fails with one line naming the file and containing
  // `want`; the session still holds its sequence and snapshots and continues it exactly.
  static void expect_refused(const fs::path& file, const std::string& want, int64_t ctx = 256) {
    SCOPED_TRACE(file.string() + ": " + want);
    runtime::Session s(tiny_model(), options(KvType::FP8, nullptr, ctx, 32, 8));
    fed(s);
    try {
      runtime::load_session(s, fingerprint(), file);
      ADD_FAILURE() << "the file was accepted";
    } catch (const ferry::Error& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
      EXPECT_EQ(m.rfind(file.string(), 0), 0u) << m;
      EXPECT_NE(m.find(want), std::string::npos) << m;
    }
    EXPECT_EQ(s.position(), kSaved);
    EXPECT_EQ(s.tokens(), prompt_tokens(kSaved));
    EXPECT_EQ(s.snapshots().positions(), kSnapshots);
    expect_same(continue_from(s), unbroken(KvType::FP8));
  }

  // A file's bytes with the header's checksum (of its first 108 bytes) and the trailer's made right again after
  // a change: CRC-32 as zlib computes it (reflected, polynomial 0xEDB88320).
  static std::string checksummed(std::string b) {
    for (const size_t n : {size_t{108}, b.size() - 4}) {
      uint32_t crc = 0xFFFFFFFFu;
      for (size_t i = 0; i < n; ++i) {
        crc ^= static_cast<uint8_t>(b[i]);
        for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
      }
      crc = ~crc;
      std::memcpy(b.data() + n, &crc, 4);
    }
    return b;
  }

  static inline const std::vector<int64_t> kSnapshots{48, 56, 64, 72};
  TempDir dir_;
  fs::path good_ = dir_.path / "good.ferry";
  std::string bytes_;
  size_t snapshots_at_ = 0;
};

TEST_F(BadSessionFile, TheGoodFileLoads) {
  runtime::Session s(tiny_model(), options(KvType::FP8, nullptr, 256, 32, 8));
  runtime::load_session(s, fingerprint(), good_);
  EXPECT_EQ(s.snapshots().positions(), kSnapshots);
  expect_same(continue_from(s), unbroken(KvType::FP8));
  // The checksum test below recomputes zlib's CRC-32: unchanged bytes keep the file as it is.
  EXPECT_EQ(checksummed(bytes_), bytes_);
}

TEST_F(BadSessionFile, AnotherModelIsRefused) {
  const fs::path other_dir = dir_.path / "other-model";
  runtime::make_tiny_model(other_dir, {.seed = 7});
  const runtime::ModelWeights other = runtime::ModelWeights::load(other_dir);
  runtime::Session s(other, options(KvType::FP8));
  const fs::path file = dir_.path / "other.ferry";
  runtime::save_session(fed(s), runtime::checkpoint_fingerprint(other_dir), file);
  expect_refused(file, "saved from another model (the weights differ");
}

TEST_F(BadSessionFile, AnotherKvTypeIsRefused) {
  runtime::Session s(tiny_model(), options(KvType::Q8_0));
  const fs::path file = dir_.path / "q8.ferry";
  runtime::save_session(fed(s), fingerprint(), file);
  expect_refused(file, "saved with KV type q8_0, this session uses fp8");
}

TEST_F(BadSessionFile, AContextTooSmallIsRefused) {
  runtime::Session s(tiny_model(), options(KvType::FP8));
  const fs::path file = dir_.path / "long.ferry";
  runtime::save_session(fed(s, 110), fingerprint(), file);
  expect_refused(file, "holds 110 tokens, more than the context of 102", kSaved + kMore + kDecode);
}

TEST_F(BadSessionFile, TruncatedFilesAreRefused) {
  const size_t n = bytes_.size();
  expect_refused(write("t0", ""), "empty, not a session file");
  for (const size_t at : {size_t{5}, size_t{60}})
    expect_refused(write("t" + std::to_string(at), bytes_.substr(0, at)), "truncated");
  const size_t a = snapshots_at_;  // the snapshot section: its first position, inside it, its last bytes
  for (const size_t at : {size_t{100}, size_t{400}, n / 2, a, a + 5, a + 100, (a + n) / 2, n - 5, n - 4, n - 1})
    expect_refused(write("t" + std::to_string(at), bytes_.substr(0, at)), "truncated");
  expect_refused(write("long", bytes_ + "x"), "1 bytes longer than its header says");
}

TEST_F(BadSessionFile, FlippedBytesAreRefused) {
  auto flipped = [&](size_t at) {
    std::string b = bytes_;
    b[at] = static_cast<char>(b[at] ^ 0x10);
    return write("f" + std::to_string(at), b);
  };
  expect_refused(flipped(0), "not a ferry session file");
  expect_refused(flipped(9), "ferry session format version");
  // KV type name, fingerprint, token count, snapshot_every, snapshot count, snapshot bytes.
  for (size_t at : {size_t{13}, size_t{30}, size_t{62}, size_t{86}, size_t{94}, size_t{102}})
    expect_refused(flipped(at), "corrupted (the header's checksum does not match)");
  const size_t n = bytes_.size(), a = snapshots_at_;
  // The tokens, a layer record, the middle of the state, the first snapshot's position, its state, the last
  // snapshot's middle, the last state byte, the checksum itself.
  for (size_t at : {size_t{112}, size_t{112 + 4 * kSaved + 3}, n / 2, a, a + 100, (a + n) / 2, n - 5, n - 1})
    expect_refused(flipped(at), "corrupted (the checksum does not match)");
}

// A file of format version 1 (before the snapshots) is refused as another version.
TEST_F(BadSessionFile, AnotherFormatVersionIsRefused) {
  std::string b = bytes_;
  b[8] = 1;
  expect_refused(write("v1", b), "ferry session format version 1, this ferry reads version 2");
}

// Snapshots whose positions do not fit the file, under a right checksum, are refused before the session changes.
TEST_F(BadSessionFile, SnapshotsThatDoNotFitAreRefused) {
  auto with = [&](size_t at, int64_t v) {
    std::string b = bytes_;
    std::memcpy(b.data() + at, &v, sizeof v);
    return checksummed(b);
  };
  const size_t step = (bytes_.size() - 4 - snapshots_at_) / kSnapshots.size();  // a position and its state
  auto with_position = [&](size_t i, int64_t pos) { return with(snapshots_at_ + i * step, pos); };
  expect_refused(write("p49", with_position(0, 49)), "holds a snapshot of position 49 (after 0), not a multiple of 8");
  expect_refused(write("p48", with_position(1, 48)), "holds a snapshot of position 48 (after 48)");
  expect_refused(write("p80", with_position(3, 80)), "holds a snapshot of position 80 (after 64)");
  // The header's count: more than the section holds, or fewer than its bytes.
  expect_refused(write("n5", with(92, 5)),
                 "its 5 snapshots do not fill the " + std::to_string(bytes_.size() - 4 - snapshots_at_) + " bytes");
  expect_refused(write("n3", with(92, 3)), "its header's snapshot fields do not fit (3 snapshots every 8 tokens");
}

TEST_F(BadSessionFile, ADirectoryAMissingFileAndANonSessionFileAreRefused) {
  fs::create_directories(dir_.path / "adir");
  expect_refused(dir_.path / "adir", "a directory, not a session file");
  expect_refused(dir_.path / "missing", "cannot open the session file (No such file or directory)");
  expect_refused(write("text", "hello, this is not a session at all, but it is long enough to hold a header"),
                 "not a ferry session file");
  expect_refused(good_ / "inside", "cannot open the session file (Not a directory)");
}

// Root reads a file whatever its mode, so this case needs another user; tests/cli/check_run_session.py runs it
// as nobody when the tests run as root.
TEST_F(BadSessionFile, AFileWithoutReadPermissionIsRefused) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root, which ignores file modes (the CLI test covers it)";
  fs::permissions(good_, fs::perms::none);
  expect_refused(good_, "cannot open the session file (Permission denied)");
}

// A save that fails mid-write (here: the file-size limit, which binds root too) leaves the previous file as it
// was and no temporary file behind.
TEST_F(BadSessionFile, AFailedSaveLeavesThePreviousFile) {
  runtime::Session longer(tiny_model(), options(KvType::FP8, nullptr, 256, 32, 8));
  fed(longer, 200);
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  struct rlimit small = old;
  small.rlim_cur = bytes_.size() / 2;
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string message;
  try {
    runtime::save_session(longer, fingerprint(), good_);
  } catch (const ferry::Error& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(message.find("cannot write (File too large)"), std::string::npos) << message;
  EXPECT_EQ(read(good_), bytes_);
  EXPECT_EQ(entries(dir_.path), std::vector<fs::path>{"good.ferry"});
  // A save into a path that cannot hold a file is refused, naming it.
  try {
    runtime::save_session(longer, fingerprint(), good_ / "x");
    ADD_FAILURE() << "saved inside a file";
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("Not a directory"), std::string::npos) << e.what();
  }
  fs::create_directories(dir_.path / "adir");
  EXPECT_THROW(runtime::save_session(longer, fingerprint(), dir_.path / "adir"), ferry::Error);
}

// A save removes the temporary files that saves of the same file killed mid-write left (their process is gone),
// and nothing else: not a live process's, another file's, another host's, nor a name of another form.
TEST(SessionFile, ASaveRemovesTheTemporaryFilesOfGoneProcessesOnly) {
  TempDir dir;
  const fs::path file = dir.path / "s.ferry";
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);  // reaped: its pid names no process now
  const fs::path stale = runtime::session_temp_path(file, child, 3);
  const std::string name = stale.filename().string();  // s.ferry.<host>.<pid>.3.tmp
  ASSERT_TRUE(name.starts_with("s.ferry.") && name.ends_with("." + std::to_string(child) + ".3.tmp")) << name;
  const std::vector<fs::path> kept = {runtime::session_temp_path(file, ::getppid(), 0),  // a live process's save
                                      runtime::session_temp_path(dir.path / "other", child, 0),  // another file's
                                      dir.path / ("s.ferry.x" + name.substr(8)),                 // another host's
                                      dir.path / (name.substr(0, name.size() - 6) + ".tmp"),     // no serial
                                      dir.path / (name + ".x")};
  for (const fs::path& p : kept) std::ofstream(p) << "partial";
  std::ofstream(stale) << "partial";
  runtime::Session s(tiny_model(), options(KvType::FP8));
  runtime::save_session(fed(s, 10), fingerprint(), file);
  EXPECT_FALSE(fs::exists(stale)) << stale;
  for (const fs::path& p : kept) EXPECT_TRUE(fs::exists(p)) << p;
  EXPECT_EQ(entries(dir.path).size(), kept.size() + 1);
}

}  // namespace
}  // namespace ferry::testing
