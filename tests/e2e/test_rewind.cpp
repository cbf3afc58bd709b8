// Prefix reuse (issue 17): a session extended, or rewound to an earlier position and fed something else, computes
// bitwise the logits of a fresh session fed the whole sequence, for every KV type, on the CPU and on the simulated
// device; rewinding recomputes at most K−1 tokens from a kept snapshot, and the snapshots hold exactly what the
// planner counts.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "forward_check.h"
#include "planner/core/error.h"
#include "runtime/backend/sim_backend.h"

namespace ferry::testing {
namespace {

using planner::KvType;

constexpr int64_t kEvery = 8;  // K; the tiny model's window is 16, its ratios 4 and 16
constexpr int64_t kCtx = 512;

size_t sz(int64_t v) { return static_cast<size_t>(v); }

runtime::SessionOptions options(KvType kv, runtime::Backend* device, int64_t every = kEvery, int64_t keep = 4) {
  return {.ctx = kCtx, .kv_type = kv, .ubatch = 64, .device = device, .snapshot_every = every, .snapshot_keep = keep};
}

// Every logit of a fresh session, without snapshots and in the default chunks, on the CPU.
std::vector<float> fresh_logits(KvType kv, const std::vector<int32_t>& tokens) {
  runtime::Session s(tiny_model(), {.ctx = kCtx, .kv_type = kv});
  std::vector<float> all;
  s.feed(tokens, &all, nullptr);
  return all;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::vector<int32_t> prefix(const std::vector<int32_t>& a, int64_t p) { return {a.begin(), a.begin() + p}; }

// Rows [first, first + rows) of `want` (rows of vocab logits) against `got`, bit for bit.
void expect_rows(const std::vector<float>& got, const std::vector<float>& want, int64_t first,
                 const std::string& what) {
  const int64_t V = tiny_model().config().vocab_size;
  ASSERT_LE(static_cast<int64_t>(got.size()) + first * V, static_cast<int64_t>(want.size())) << what;
  int64_t differ = 0;
  for (size_t i = 0; i < got.size(); ++i) differ += std::memcmp(&got[i], &want[sz(first * V) + i], sizeof(float)) != 0;
  EXPECT_EQ(differ, 0) << what << ": " << differ << " of " << got.size() << " logits differ from a fresh prefill";
}

// Runs f(device, name) on the CPU and on a simulated device (its own compute stream, the cache in its memory).
template <class F>
void on_every_place(F&& f) {
  f(nullptr, "cpu");
  runtime::SimBackend gpu({int64_t{1} << 30, 0, false});  // the weights stay in host memory: no placement here
  f(&gpu, "sim");
}

std::string label(KvType kv, const char* place) { return std::string(planner::kv_type_name(kv)) + " " + place; }

TEST(Rewind, FeedingMoreGivesTheLogitsOfTheWholeSequence) {
  const auto a = prompt_tokens(100, 2), b = prompt_tokens(45, 3);
  for (KvType kv : planner::kKvTypesByFidelity) {
    const auto want = fresh_logits(kv, concat(a, b));
    on_every_place([&](runtime::Backend* device, const char* place) {
      runtime::Session s(tiny_model(), options(kv, device));
      std::vector<float> la, lb;
      s.feed(a, &la, nullptr);
      s.feed(b, &lb, nullptr);
      expect_rows(la, want, 0, label(kv, place) + " A");
      expect_rows(lb, want, 100, label(kv, place) + " B after A");
      EXPECT_EQ(s.snapshots().positions(), (std::vector<int64_t>{120, 128, 136, 144}));
    });
  }
}

// The session holds `tokens` and its cache counts the compressed entries of that many positions.
void expect_at(const runtime::Session& s, const std::vector<int32_t>& tokens, const std::string& what) {
  const int64_t p = static_cast<int64_t>(tokens.size());
  EXPECT_EQ(s.position(), p) << what;
  EXPECT_EQ(s.tokens(), tokens) << what;
  for (int64_t l = 0; l < s.cache().n_layers(); ++l) {
    const runtime::LayerKv& L = s.cache().layer(l);
    if (L.ratio > 0) {
      EXPECT_EQ(L.n_compressed, p / L.ratio) << what << ", layer " << l;
    }
  }
}

// A is long enough to pass the window and many compressed blocks; the points: the end, inside the window of the
// end, just after / at / just before a multiple of K, below K, and 0. Every snapshot is kept.
TEST(Rewind, RewindingInsideTheSequenceGivesTheLogitsOfAFreshPrefill) {
  const auto a = prompt_tokens(300, 5), c = prompt_tokens(20, 6);
  const int64_t points[] = {300, 290, 161, 160, 159, 7, 0};
  for (KvType kv : planner::kKvTypesByFidelity) {
    std::vector<std::vector<float>> want;
    for (int64_t p : points) want.push_back(fresh_logits(kv, concat(prefix(a, p), c)));
    on_every_place([&](runtime::Backend* device, const char* place) {
      runtime::Session s(tiny_model(), options(kv, device, kEvery, 64));
      s.feed(a, nullptr, nullptr);
      for (size_t i = 0; i < std::size(points); ++i) {
        const int64_t p = points[i];
        const std::string what = label(kv, place) + " rewound to " + std::to_string(p);
        const int64_t cost = p == s.position() ? 0 : p % kEvery;
        EXPECT_EQ(s.rewind_cost(p), cost) << what;
        EXPECT_EQ(s.rewind(p), cost) << what;
        expect_at(s, prefix(a, p), what);
        std::vector<float> lc;
        s.feed(c, &lc, nullptr);
        expect_rows(lc, want[i], p, what);
        EXPECT_EQ(s.rewind(p), p % kEvery) << what << ", back from C";
        expect_at(s, prefix(a, p), what + ", back from C");
      }
    });
  }
}

// Snapshots older than the kept ones are gone: the rewind recomputes from 0, and is still exact.
TEST(Rewind, RewindingBeforeEveryKeptSnapshotRecomputesFromTheStart) {
  const auto a = prompt_tokens(300, 5), c = prompt_tokens(20, 6);
  const KvType kv = KvType::FP8;
  runtime::Session s(tiny_model(), options(kv, nullptr, kEvery, 2));
  s.feed(a, nullptr, nullptr);
  EXPECT_EQ(s.snapshots().positions(), (std::vector<int64_t>{288, 296}));
  EXPECT_EQ(s.rewind_cost(100), 100);
  EXPECT_EQ(s.rewind(100), 100);
  EXPECT_EQ(s.snapshots().positions(), (std::vector<int64_t>{88, 96}));
  std::vector<float> lc;
  s.feed(c, &lc, nullptr);
  expect_rows(lc, fresh_logits(kv, concat(prefix(a, 100), c)), 100, "fp8 rewound before every snapshot");
  // Without snapshots every rewind recomputes from the start, exactly.
  runtime::Session plain(tiny_model(), options(kv, nullptr, 0));
  plain.feed(a, nullptr, nullptr);
  EXPECT_EQ(plain.rewind(250), 250);
  plain.feed(c, &lc, nullptr);
  expect_rows(lc, fresh_logits(kv, concat(prefix(a, 250), c)), 250, "fp8 rewound without snapshots");
  EXPECT_EQ(plain.snapshot_bytes(), 0);
}

// Decode one token at a time, take back up to K tokens, decode others: what a chat's regenerate does.
TEST(Rewind, RollingBackDecodedTokensGivesTheLogitsOfAFreshPrefill) {
  const auto prompt = prompt_tokens(100, 7);
  const int64_t V = tiny_model().config().vocab_size;
  for (KvType kv : planner::kKvTypesByFidelity)
    on_every_place([&](runtime::Backend* device, const char* place) {
      runtime::Session s(tiny_model(), options(kv, device));
      std::vector<float> rows, last;  // rows[p]: the logits after position p, as the session computed them
      s.feed(prompt, &rows, nullptr);
      auto decode = [&](int64_t n, uint64_t seed) {
        const auto other = prompt_tokens(n, seed);
        for (int64_t i = 0; i < n; ++i) {
          // Alternate greedy tokens with others, so that the rollbacks change what follows.
          const int32_t t = i % 2 ? other[sz(i)] : static_cast<int32_t>(argmax_of(last.data(), V));
          s.feed({&t, 1}, nullptr, &last);
          rows.insert(rows.end(), last.begin(), last.end());
        }
      };
      auto roll_back = [&](int64_t n) {
        const int64_t p = s.position() - n;
        EXPECT_LE(s.rewind(p), kEvery - 1) << label(kv, place) << " back " << n;
        rows.resize(sz(p * V));
        last.assign(rows.end() - V, rows.end());
      };
      last.assign(rows.end() - V, rows.end());
      decode(21, 8);
      roll_back(kEvery);
      decode(10, 9);
      roll_back(3);
      decode(6, 10);
      roll_back(1);
      decode(4, 11);
      EXPECT_EQ(s.position(), 100 + 21 - 8 + 10 - 3 + 6 - 1 + 4);
      expect_rows(rows, fresh_logits(kv, s.tokens()), 0, label(kv, place) + " after rollbacks");
    });
}

TEST(Rewind, SnapshotBytesAreThePlannersAndBoundedByKeep) {
  const auto& c = tiny_model().config();
  for (KvType kv : planner::kKvTypesByFidelity) {
    const std::string what(planner::kv_type_name(kv));
    auto planned = [&](int64_t ctx, int64_t n) { return planner::kv_snapshot_bytes(c, kv, ctx, n); };
    runtime::Session s(tiny_model(), options(kv, nullptr, kEvery, 3));
    s.feed(prompt_tokens(7), nullptr, nullptr);
    EXPECT_EQ(s.snapshot_bytes(), 0) << what;
    s.feed(prompt_tokens(13), nullptr, nullptr);
    EXPECT_EQ(s.snapshot_bytes(), planned(kCtx, 2)) << what;
    s.feed(prompt_tokens(280), nullptr, nullptr);
    EXPECT_EQ(s.snapshot_bytes(), planned(kCtx, 3)) << what;
    EXPECT_EQ(s.snapshots().count(), 3) << what;
    s.rewind(17);
    EXPECT_EQ(s.snapshot_bytes(), planned(kCtx, 2)) << what;
    EXPECT_GT(planned(kCtx, 1), planner::kv_total(s.cache().bytes()) / 100) << what;
    // A context shorter than the window: rings of ctx rows.
    runtime::SessionOptions o = options(kv, nullptr, 4, 3);
    o.ctx = 10;
    runtime::Session small(tiny_model(), o);
    small.feed(prompt_tokens(10), nullptr, nullptr);
    EXPECT_EQ(small.snapshot_bytes(), planner::kv_snapshot_bytes(c, kv, 10, 2)) << what;
    EXPECT_LT(planner::kv_snapshot_bytes(c, kv, 10, 1), planned(kCtx, 1)) << what;
    small.reset();
    EXPECT_EQ(small.snapshot_bytes(), 0) << what;
  }
}

TEST(Rewind, ABadPositionFailsWithOneLineAndChangesNothing) {
  const auto a = prompt_tokens(50, 12), b = prompt_tokens(10, 13);
  runtime::Session s(tiny_model(), options(KvType::Q8_0, nullptr));
  s.feed(a, nullptr, nullptr);
  const auto before = s.snapshots().positions();
  for (int64_t p : {int64_t{-1}, int64_t{51}, int64_t{1000}}) {
    try {
      s.rewind(p);
      ADD_FAILURE() << "rewind(" << p << ") was accepted";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
      EXPECT_NE(m.find(std::to_string(p)), std::string::npos) << m;
    }
    EXPECT_EQ(s.position(), 50);
    EXPECT_EQ(s.tokens(), a);
    EXPECT_EQ(s.snapshots().positions(), before);
  }
  EXPECT_EQ(s.rewind(50), 0);
  std::vector<float> lb;
  s.feed(b, &lb, nullptr);
  expect_rows(lb, fresh_logits(KvType::Q8_0, concat(a, b)), 50, "q8_0 after refused rewinds");
}

TEST(Rewind, MtpSessionsRefuseWithOneLine) {
  runtime::SessionOptions o = options(KvType::FP8, nullptr);
  o.mtp = true;
  EXPECT_THROW((runtime::Session{tiny_model(), o}), Error);
  o.snapshot_every = 0;
  runtime::Session s(tiny_model(), o);
  s.feed(prompt_tokens(20), nullptr, nullptr);
  EXPECT_EQ(s.rewind(20), 0);
  EXPECT_THROW(s.rewind(10), Error);
  EXPECT_EQ(s.position(), 20);
  EXPECT_THROW((runtime::Session{tiny_model(), options(KvType::FP8, nullptr, -1)}), Error);
  EXPECT_THROW((runtime::Session{tiny_model(), options(KvType::FP8, nullptr, kEvery, 0)}), Error);
}

}  // namespace
}  // namespace ferry::testing
