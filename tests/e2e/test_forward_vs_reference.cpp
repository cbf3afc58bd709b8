// The CPU forward pass against the independent float64 reference (tests/reference/) on the default tiny
// model: logits at every position, greedy generation, MTP, and the statistics the fp8 cache must meet.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>

#include "forward_check.h"
#include "reference_forward.h"
#include "reference_weights.h"

namespace ferry::testing {
namespace {

using planner::KvType;

struct Comparison {
  std::vector<int32_t> tokens;  // prompt + generated
  runtime::GenerateResult gen;
  reference::ReferenceOutput ref;
  std::vector<double> err;  // per position
};

constexpr int64_t kPrompt = 200, kGenerate = 64;

// The reference's weights (without MTP), loaded once for the comparisons and the tracing's many reruns.
const reference::ReferenceWeights& reference_weights() {
  static const reference::ReferenceWeights w = reference::load_reference_weights(tiny_model_dir(), false);
  return w;
}

// Prompt 200 tokens, greedy 64 more; the reference runs over all 264 tokens. Cached per KV type.
const Comparison& run_for(KvType kv) {
  static std::map<KvType, Comparison> cache;
  auto it = cache.find(kv);
  if (it != cache.end()) return it->second;
  Comparison r;
  const auto& model = tiny_model();
  const std::vector<int32_t> prompt = prompt_tokens(kPrompt);
  runtime::Session session(model, {.ctx = 1024, .kv_type = kv, .ubatch = 512, .mtp = false});
  runtime::GenerateOptions go;
  go.n_predict = kGenerate;
  go.stop_at_eos = false;
  go.keep_logits = true;
  r.gen = runtime::generate(session, prompt, go);
  r.tokens = prompt;
  r.tokens.insert(r.tokens.end(), r.gen.tokens.begin(), r.gen.tokens.end());
  reference::ReferenceOptions ro;
  ro.kv_type = kv;
  ro.mtp = false;
  ro.fragile_margin = 1e-4;
  r.ref = reference::reference_forward(reference_weights(), r.tokens, ro);
  const int64_t V = model.config().vocab_size;
  for (int64_t p = 0; p < static_cast<int64_t>(r.tokens.size()); ++p)
    r.err.push_back(rel_err(r.gen.logits.data() + p * V, r.ref.logits.data() + p * V, V));
  return cache.emplace(kv, std::move(r)).first->second;
}

constexpr double kDiverged = 1e-5;  // a position whose logits differ from the reference's by more has diverged
// A decision this close to its boundary (relative to the value) can go either way in float32: the float32 error
// of a value is about 1e-6 of its vector's norm after a few layers, which is 1e-5 of an element a tenth of it.
constexpr double kFloat32Noise = 1e-5;
// Aligned with the runtime's decisions, the reference is back at the level of the positions before the
// divergence there (twice their median, and at least float32's noise, 1e-6): well below kDiverged, so that flips
// which only offset part of the difference do not pass for its cause.
constexpr double kRestored = 1e-6;
constexpr int64_t kRecentPositions = 6;  // every fragile decision of these last positions is a candidate ...
constexpr size_t kCandidates = 48;       // ... then the closest to their boundary before them, up to this many

// Per-position relative errors of the runtime's logits `got` ([rows, V]) against a reference's ([<= rows, V]).
std::vector<double> errors_of(const std::vector<float>& got, const std::vector<double>& want, int64_t V) {
  std::vector<double> err;
  for (int64_t p = 0; p < static_cast<int64_t>(want.size()) / V; ++p)
    err.push_back(rel_err(got.data() + p * V, want.data() + p * V, V));
  return err;
}

// The relative error at position `row` of the reference with `flips` and, in turn, each of `candidates` also
// taken the other way.
using Trials = std::function<std::vector<double>(const std::vector<uint64_t>& flips,
                                                 const std::vector<reference::FragileEvent>& candidates, int64_t row)>;
// The reference (logits and fragile decisions) with `flips` taken the other way, and its per-position errors.
using Rerun = std::function<reference::ReferenceOutput(const std::vector<uint64_t>& flips)>;
using ErrorsOf = std::function<std::vector<double>(const reference::ReferenceOutput&)>;
constexpr int kMaxFlipsPerDivergence = 6;

// The level of the positions before p: the median of their errors (0 for p = 0).
double level_before(const std::vector<double>& err, int64_t p) {
  return p == 0 ? 0.0 : median(std::vector<double>(err.begin(), err.begin() + p));
}

// A divergence traces back to fragile decisions, shown by intervention: at the first position where the
// runtime and the reference differ by more than 1e-5, decisions of the reference at or before it that lie
// within float32 noise of their boundary (a rounding next to a grid midpoint or power of two, a near-tie at a
// top-k cut), taken the other way, bring the reference back to the runtime there, to the level of the
// positions before — so the runtime took those decisions the other way, legitimately, and the difference was
// their consequence. The single
// decision that restores the position is taken if there is one; otherwise (several small flips adding up) the
// one that reduces the difference most, if it at least halves it (a decision the runtime did not flip adds a
// difference of its own instead), and so on. A bug (a wrong formula, row, scale or mask) is no such decision
// and fails. Repeated for up to `rounds` divergences, each with the flips found before it.
void expect_divergence_traced(const reference::ReferenceOutput& plain, const Trials& trials, const Rerun& rerun,
                              const ErrorsOf& errors, int rounds, const char* what) {
  std::vector<uint64_t> flips;
  reference::ReferenceOutput ref = plain;
  for (int round = 0; round < rounds; ++round) {
    const std::vector<double> err = errors(ref);
    const auto it = std::find_if(err.begin(), err.end(), [](double e) { return e > kDiverged; });
    if (it == err.end()) {
      std::printf("%s: with %zu decision(s) taken the other way, every position within %.0e of the runtime\n", what,
                  flips.size(), kDiverged);
      return;
    }
    const int64_t p_div = it - err.begin();
    const double target = std::max(kRestored, 2 * level_before(err, p_div));
    // Candidates: every decision within float32 noise in the last few positions (a flipped row or selection is
    // read at once, so its effect usually passes 1e-5 within a few positions), and before them the ones closest
    // to their boundary (the likeliest to have flipped; a compressed row or an early window row can take a
    // while to show).
    std::vector<reference::FragileEvent> recent, earlier;
    for (const auto& e : ref.fragile)
      if (e.pos <= p_div && e.margin < kFloat32Noise)
        (e.pos > p_div - kRecentPositions ? recent : earlier).push_back(e);
    std::stable_sort(earlier.begin(), earlier.end(), [](const auto& a, const auto& b) { return a.margin < b.margin; });
    // The recent ones alone first (cheap: each trial runs only from its position on), then with the earlier ones.
    const std::vector<uint64_t> before = flips;
    double now = *it;
    std::string found;
    size_t tried = 0;
    for (const bool with_earlier : {false, true}) {
      if (with_earlier && earlier.empty()) break;
      std::vector<reference::FragileEvent> candidates = recent;
      if (with_earlier)
        for (const auto& e : earlier)
          if (candidates.size() < kCandidates) candidates.push_back(e);
      tried = candidates.size();
      flips = before;
      now = *it;
      found.clear();
      for (int k = 0; k < kMaxFlipsPerDivergence && now > target && !candidates.empty(); ++k) {
        const std::vector<double> after = trials(flips, candidates, p_div);
        const size_t best = static_cast<size_t>(std::min_element(after.begin(), after.end()) - after.begin());
        if (after[best] > now / 2) break;
        const auto& c = candidates[best];
        char line[160];
        std::snprintf(line, sizeof line, "\n    layer %lld's %s at position %lld (margin %.1e): %.1e",
                      static_cast<long long>(c.layer), reference::fragile_kind_name(c.kind),
                      static_cast<long long>(c.pos), c.margin, after[best]);
        found += line;
        flips.push_back(c.id);
        now = after[best];
        candidates.erase(candidates.begin() + static_cast<std::ptrdiff_t>(best));
      }
      if (now <= target) break;
    }
    ASSERT_LE(now, target) << what << ": position " << p_div << " diverges (rel err " << *it << ", median "
                           << level_before(err, p_div) << " before); taking the other "
                           << "way decisions within float32 noise of their boundary at or before it (" << tried
                           << " tried) brings the reference no closer than " << now
                           << " to the runtime there:" << found;
    std::printf(
        "%s: divergence %d at position %lld (rel err %.1e, median %.1e before) is, taken the other way in the "
        "reference:%s\n",
        what, round + 1, static_cast<long long>(p_div), *it, level_before(err, p_div), found.c_str());
    ref = rerun(flips);
  }
  std::printf("%s: %d divergences traced; later ones not examined\n", what, rounds);
}

void expect_divergence_traced(const Comparison& r, KvType kv, int rounds, const char* what) {
  const int64_t V = tiny_model().config().vocab_size;
  const auto& weights = reference_weights();
  reference::ReferenceOptions ro;
  ro.kv_type = kv;
  ro.mtp = false;
  ro.fragile_margin = kFloat32Noise;
  const Trials trials = [&](const std::vector<uint64_t>& flips, const auto& candidates, int64_t row) {
    reference::ReferenceOptions o = ro;
    o.flip = flips;
    o.positions = row + 1;
    std::vector<double> err;
    for (const auto& logits : reference::reference_alternatives(weights, r.tokens, o, candidates, row))
      err.push_back(rel_err(r.gen.logits.data() + row * V, logits.data(), V));
    return err;
  };
  const Rerun rerun = [&](const std::vector<uint64_t>& flips) {
    reference::ReferenceOptions o = ro;
    o.flip = flips;
    return reference::reference_forward(weights, r.tokens, o);
  };
  expect_divergence_traced(
      r.ref, trials, rerun, [&](const auto& ref) { return errors_of(r.gen.logits, ref.logits, V); }, rounds, what);
}

TEST(ForwardVsReference, Bf16PromptWithin1em3AndGreedyTokensIdentical) {
  const Comparison& r = run_for(KvType::BF16);
  const int64_t V = tiny_model().config().vocab_size;
  ASSERT_EQ(static_cast<int64_t>(r.gen.logits.size()), (kPrompt + kGenerate) * V);
  for (int64_t p = 0; p < kPrompt; ++p) EXPECT_LE(r.err[static_cast<size_t>(p)], 1e-3) << "position " << p;
  for (int64_t i = 0; i < kGenerate; ++i)
    EXPECT_EQ(r.gen.tokens[static_cast<size_t>(i)], argmax_of(r.ref.logits.data() + (kPrompt - 1 + i) * V, V))
        << "generated token " << i;
  const auto over = std::count_if(r.err.begin(), r.err.end(), [](double e) { return e > 1e-3; });
  std::printf("bf16: median rel err %.2e, max %.2e, %lld of %zu positions above 1e-3\n", median(r.err),
              *std::max_element(r.err.begin(), r.err.end()), static_cast<long long>(over), r.err.size());
}

TEST(ForwardVsReference, Bf16DivergenceTracesToAFragileDecision) {
  expect_divergence_traced(run_for(KvType::BF16), KvType::BF16, 1, "bf16");
}

TEST(ForwardVsReference, Fp8MeetsTheStatisticalCriterion) {
  const Comparison& r = run_for(KvType::FP8);
  const int64_t V = tiny_model().config().vocab_size;
  int64_t same = 0;
  for (int64_t p = 0; p < kPrompt; ++p)
    same += argmax_of(r.gen.logits.data() + p * V, V) == argmax_of(r.ref.logits.data() + p * V, V);
  EXPECT_GE(static_cast<double>(same) / kPrompt, 0.98);
  const std::vector<double> prompt_err(r.err.begin(), r.err.begin() + kPrompt);
  std::printf(
      "fp8: prompt median rel err %.2e, %.1f%% <= 1e-3; all %zu positions: median %.2e, %.1f%% <= 1e-3, max %.2e; "
      "argmax equal at %lld/%lld prompt positions\n",
      median(prompt_err), 100 * fraction_at_most(prompt_err, 1e-3), r.err.size(), median(r.err),
      100 * fraction_at_most(r.err, 1e-3), *std::max_element(r.err.begin(), r.err.end()), static_cast<long long>(same),
      static_cast<long long>(kPrompt));
  EXPECT_LE(median(prompt_err), 1e-4);
  EXPECT_GE(fraction_at_most(prompt_err, 1e-3), 0.95);
  EXPECT_LE(median(r.err), 1e-4);  // over the 64 generated tokens too
  EXPECT_GE(fraction_at_most(r.err, 1e-3), 0.95);
}

TEST(ForwardVsReference, Fp8DivergenceTracesToFragileDecisions) {
  expect_divergence_traced(run_for(KvType::FP8), KvType::FP8, 3, "fp8");
}

TEST(ForwardVsReference, QuantizedCachesTraceDivergenceToo) {
  for (KvType kv : {KvType::Q8_0, KvType::Q4_0})
    expect_divergence_traced(run_for(kv), kv, 2, planner::kv_type_name(kv).data());
}

TEST(ForwardVsReference, MtpLogitsMatchTheReference) {
  const auto& model = tiny_model();
  const std::vector<int32_t> prompt = prompt_tokens(64, 7);
  runtime::Session session(model, {.ctx = 256, .kv_type = KvType::BF16, .ubatch = 24, .mtp = true});
  std::vector<float> last;
  session.feed(prompt, nullptr, &last);
  reference::ReferenceOptions ro;
  ro.kv_type = KvType::BF16;
  const auto ref = reference::reference_forward(tiny_model_dir(), prompt, ro);
  const int64_t V = model.config().vocab_size, n = static_cast<int64_t>(prompt.size()) - 1;
  ASSERT_EQ(static_cast<int64_t>(session.mtp_logits().size()), n * V);
  ASSERT_EQ(static_cast<int64_t>(ref.mtp_logits.size()), n * V);
  std::vector<double> err;
  for (int64_t p = 0; p < n; ++p)
    err.push_back(rel_err(session.mtp_logits().data() + p * V, ref.mtp_logits.data() + p * V, V));
  EXPECT_LE(err[0], 1e-5);
  const auto weights = reference::load_reference_weights(tiny_model_dir(), true);
  auto with = [&](const std::vector<uint64_t>& flips, int64_t positions) {
    reference::ReferenceOptions o = ro;
    o.fragile_margin = kFloat32Noise;
    o.flip = flips;
    o.positions = positions;
    return reference::reference_forward(weights, prompt, o);
  };
  // MTP row p needs the main model through token p + 1; each trial is a run of its own (MTP divergences are rare).
  const Trials trials = [&](const std::vector<uint64_t>& flips, const auto& candidates, int64_t row) {
    std::vector<double> err;
    for (const auto& c : candidates) {
      std::vector<uint64_t> f = flips;
      f.push_back(c.id);
      err.push_back(rel_err(session.mtp_logits().data() + row * V, with(f, row + 2).mtp_logits.data() + row * V, V));
    }
    return err;
  };
  expect_divergence_traced(
      ref, trials, [&](const auto& flips) { return with(flips, -1); },
      [&](const auto& r) { return errors_of(session.mtp_logits(), r.mtp_logits, V); }, 2, "mtp");
}

}  // namespace
}  // namespace ferry::testing
