// Saved KV sessions (runtime/model/session_file.h): save → a new session (a restart) → load → continue gives
// bitwise the tokens and logits of an unbroken run, for every KV type, on the host and on the simulated device;
// every bad file is refused with one line naming the file and the problem, and the session is left as it was.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
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

runtime::SessionOptions options(KvType kv, runtime::Backend* device = nullptr, int64_t ctx = 256, int64_t ubatch = 32) {
  return {.ctx = ctx, .kv_type = kv, .ubatch = ubatch, .device = device};
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

TEST(SessionFile, ARestoredSessionContinuesBitwiseForEveryKvTypeOnHostAndSimulatedDevice) {
  TempDir dir;
  const fs::path file = dir.path / "s.ferry";
  for (const bool on_sim : {false, true})
    for (const KvType kv : planner::kKvTypesByFidelity) {
      SCOPED_TRACE(std::string(planner::kv_type_name(kv)) + (on_sim ? " on sim" : " on the host"));
      std::optional<runtime::SimBackend> saving_device, loading_device;
      if (on_sim) {
        saving_device.emplace(runtime::SimDeviceSpec{int64_t{1} << 30, 0});
        loading_device.emplace(runtime::SimDeviceSpec{int64_t{1} << 30, 0});
      }
      {
        runtime::Session s(tiny_model(), options(kv, on_sim ? &*saving_device : nullptr));
        const runtime::SessionFileStats st = runtime::save_session(fed(s), fingerprint(), file);
        EXPECT_EQ(st.tokens, kSaved);
        EXPECT_EQ(st.bytes, static_cast<int64_t>(fs::file_size(file)));
      }
      // The restart: another session, another context and chunk size, holding another sequence before.
      runtime::Session s(tiny_model(), options(kv, on_sim ? &*loading_device : nullptr, 512, 7));
      fed(s, 30, 9);
      const runtime::SessionFileStats st = runtime::load_session(s, fingerprint(), file);
      EXPECT_EQ(st.tokens, kSaved);
      EXPECT_EQ(s.position(), kSaved);
      EXPECT_EQ(s.tokens(), prompt_tokens(kSaved));
      expect_same(continue_from(s), unbroken(kv));
    }
  EXPECT_EQ(entries(dir.path), std::vector<fs::path>{"s.ferry"}) << "a temporary file was left behind";
}

// Only what is in use is stored: the file does not grow with the context, and is far below the whole cache.
TEST(SessionFile, TheFileHoldsWhatIsUsedNotTheContextsCapacity) {
  TempDir dir;
  runtime::Session small(tiny_model(), options(KvType::BF16, nullptr, 128));
  runtime::Session large(tiny_model(), options(KvType::BF16, nullptr, 8192));
  const int64_t a = runtime::save_session(fed(small), fingerprint(), dir.path / "a").bytes;
  const int64_t b = runtime::save_session(fed(large), fingerprint(), dir.path / "b").bytes;
  EXPECT_EQ(a, b);
  EXPECT_LT(b * 10, planner::kv_total(large.cache().bytes()));
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

class BadSessionFile : public ::testing::Test {
 protected:
  void SetUp() override {
    runtime::Session s(tiny_model(), options(KvType::FP8));
    runtime::save_session(fed(s), fingerprint(), good_);
    bytes_ = read(good_);
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
  // `want`; the session still holds its sequence and continues it exactly.
  static void expect_refused(const fs::path& file, const std::string& want, int64_t ctx = 256) {
    SCOPED_TRACE(file.string() + ": " + want);
    runtime::Session s(tiny_model(), options(KvType::FP8, nullptr, ctx));
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
    expect_same(continue_from(s), unbroken(KvType::FP8));
  }

  TempDir dir_;
  fs::path good_ = dir_.path / "good.ferry";
  std::string bytes_;
};

TEST_F(BadSessionFile, TheGoodFileLoads) {
  runtime::Session s(tiny_model(), options(KvType::FP8));
  runtime::load_session(s, fingerprint(), good_);
  expect_same(continue_from(s), unbroken(KvType::FP8));
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
  for (const size_t at : {size_t{100}, size_t{400}, n / 2, n - 4, n - 1})
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
  for (size_t at : {size_t{13}, size_t{30}, size_t{70}})  // KV type name, fingerprint, token count
    expect_refused(flipped(at), "corrupted (the header's checksum does not match)");
  const size_t n = bytes_.size();
  // The tokens, a layer record, the middle of the state, the last state byte, the checksum itself.
  for (size_t at : {size_t{100}, size_t{100 + 4 * kSaved + 3}, n / 2, n - 5, n - 1})
    expect_refused(flipped(at), "corrupted (the checksum does not match)");
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
  runtime::Session longer(tiny_model(), options(KvType::FP8));
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

}  // namespace
}  // namespace ferry::testing
