// The MoE layer's ops on every backend against the float64 reference: the router (sqrt-softplus scores,
// biased top-k with its tie rule, hash routing, normalised weights), the gather of an expert's input rows and
// the weighted combine of the experts' outputs. (The experts themselves: test_ops_linear.cpp.)
#include <algorithm>
#include <cmath>
#include <numeric>

#include "op_test_support.h"
#include "reference_op_math.h"

namespace ferry::runtime::ops_test {
namespace {

FERRY_OP_SUITE(MoeOps);

// Score routing: tokens of random logits, and one whose best experts tie exactly (equal logits and biases):
// the lower ids win. Scores and weights within the backend's route tolerance of their values, the choice of the
// largest biased score (OpTolerances).
TYPED_TEST(MoeOps, RouteByScore) {
  for (const Shape& s : shapes()) {
    const int64_t n = 4, E = s.c.n_routed_experts, k = s.c.num_experts_per_tok;
    std::mt19937_64 rng(41);
    std::vector<float> logits = normal(n * E, 2.0, rng), bias = normal(E, 0.1, rng);
    std::vector<int64_t> tied;  // token n − 1: k + 2 experts at logit 20 with bias 0, above every other
    for (int64_t e = 1; e < E && static_cast<int64_t>(tied.size()) < k + 2; e += 3) tied.push_back(e);
    for (int64_t e : tied) logits[sz((n - 1) * E + e)] = 20, bias[sz(e)] = 0;
    const auto out = this->run(Kind::Route, [&](DeviceMemory& m) {
      ops::Route op{m.upload(logits),
                    n,
                    E,
                    k,
                    m.upload(bias),
                    nullptr,
                    nullptr,
                    s.c.routed_scaling_factor,
                    m.zeros<int32_t>(n * k),
                    m.zeros<float>(n * k)};
      m.run(op);
      return Outputs()
          .add("scores", m.read(op.scores, n * E))
          .add("ids", m.read(op.ids, n * k))
          .add("weights", m.read(op.weights, n * k));
    });
    if (!out) return;
    const std::vector<int32_t> ids = out->i32("ids");
    const std::vector<float> weights = out->f32("weights");
    Vec ref_scores, ref_w, tol_w;
    for (int64_t t = 0; t < n; ++t) {
      const Vec sc = reference::route_scores(slice(logits, t, E));
      ref_scores.insert(ref_scores.end(), sc.begin(), sc.end());
      Vec biased(sc.size());
      double bmax = 0;
      for (int64_t e = 0; e < E; ++e) bmax = std::max(bmax, std::fabs(biased[sz(e)] = sc[sz(e)] + bias[sz(e)]));
      const std::vector<int32_t> chosen(ids.begin() + t * k, ids.begin() + (t + 1) * k);
      std::vector<int64_t> tie_class(sz(E), -1);
      for (int64_t e : tied) tie_class[sz(e)] = t == n - 1 ? 0 : -1;
      check_selection(chosen, biased, k, TypeParam::kTol.route * bmax, tie_class,
                      s.name + " route token " + std::to_string(t));
      const Vec w =
          reference::route_weights(sc, std::vector<int64_t>(chosen.begin(), chosen.end()), s.c.routed_scaling_factor);
      for (double v : w) ref_w.push_back(v), tol_w.push_back(TypeParam::kTol.route * std::fabs(v));
    }
    std::vector<int32_t> last(ids.end() - k, ids.end());
    std::sort(last.begin(), last.end());
    EXPECT_TRUE(std::equal(last.begin(), last.end(), tied.begin())) << s.name << ": the tie goes to the lower ids";
    Vec tol_scores(ref_scores.size());
    for (size_t i = 0; i < tol_scores.size(); ++i) tol_scores[i] = TypeParam::kTol.route * ref_scores[i];
    expect_near(out->f32("scores"), ref_scores, tol_scores, s.name + " route scores");
    expect_near(weights, ref_w, tol_w, s.name + " route weights");
  }
}

// Hash routing: each token's experts are its row of tid2eid (device memory); the weights as for scores.
TYPED_TEST(MoeOps, RouteByHash) {
  for (const Shape& s : shapes()) {
    const int64_t n = 3, E = s.c.n_routed_experts, k = s.c.num_experts_per_tok, vocab = 50;
    std::mt19937_64 rng(42);
    const std::vector<float> logits = normal(n * E, 2.0, rng);
    std::vector<int32_t> tid2eid;
    for (int64_t v = 0; v < vocab; ++v) {
      std::vector<int32_t> all(sz(E));
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      tid2eid.insert(tid2eid.end(), all.begin(), all.begin() + k);
    }
    const std::vector<int32_t> tokens{7, 49, 0};
    const auto out = this->run(Kind::Route, [&](DeviceMemory& m) {
      ops::Route op{m.upload(logits),
                    n,
                    E,
                    k,
                    nullptr,
                    m.upload(tid2eid),
                    tokens.data(),
                    s.c.routed_scaling_factor,
                    m.zeros<int32_t>(n * k),
                    m.zeros<float>(n * k)};
      m.run(op);
      return Outputs().add("ids", m.read(op.ids, n * k)).add("weights", m.read(op.weights, n * k));
    });
    if (!out) return;
    std::vector<int32_t> ref_ids;
    Vec ref_w, tol_w;
    for (int64_t t = 0; t < n; ++t) {
      const auto row = tid2eid.begin() + tokens[sz(t)] * k;
      ref_ids.insert(ref_ids.end(), row, row + k);
      const Vec w = reference::route_weights(reference::route_scores(slice(logits, t, E)),
                                             std::vector<int64_t>(row, row + k), s.c.routed_scaling_factor);
      for (double v : w) ref_w.push_back(v), tol_w.push_back(TypeParam::kTol.route * std::fabs(v));
    }
    EXPECT_EQ(out->i32("ids"), ref_ids) << s.name << " hash routing";
    expect_near(out->f32("weights"), ref_w, tol_w, s.name + " hash route weights");
  }
}

// An expert's input rows by the (token·k + choice) numbers of its tokens: exact copies.
TYPED_TEST(MoeOps, GatherRows) {
  for (const Shape& s : shapes()) {
    const int64_t n = 4, d = s.c.hidden_size, k = s.c.num_experts_per_tok;
    std::mt19937_64 rng(43);
    const std::vector<float> src = normal(n * d, 1.0, rng);
    const std::vector<int32_t> index{static_cast<int32_t>(3 * k + 1), 0, static_cast<int32_t>(k),
                                     static_cast<int32_t>(2 * k + k - 1)};
    const int64_t m = static_cast<int64_t>(index.size());
    const auto out = this->run(Kind::GatherRows, [&](DeviceMemory& dm) {
      ops::GatherRows op{dm.upload(src), d, dm.upload(index), k, m, dm.zeros<float>(m * d)};
      dm.run(op);
      return Outputs().add("dst", dm.read(op.dst, m * d));
    });
    if (!out) return;
    const Vec ref = reference::gather_rows(to_double(src), d, index, k);
    expect_exact(out->f32("dst"), ref, s.name + " gather rows");
  }
}

// y[t] += sum of the token's k weighted expert outputs, found through the sorted positions' choice numbers.
// Within the backend's combine tolerance of the sum of the terms' magnitudes.
TYPED_TEST(MoeOps, MoeCombine) {
  for (const Shape& s : shapes()) {
    const int64_t n = 3, d = s.c.hidden_size, k = s.c.num_experts_per_tok;
    std::mt19937_64 rng(44);
    const std::vector<float> eo = normal(n * k * d, 1.0, rng), y = normal(n * d, 1.0, rng);
    std::vector<float> w = normal(n * k, 1.0, rng);
    for (float& v : w) v = std::fabs(v);
    std::vector<int32_t> order(sz(n * k));  // sorted position p holds choice order[p]
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    const auto out = this->run(Kind::MoeCombine, [&](DeviceMemory& m) {
      ops::MoeCombine op{m.upload(eo), m.upload(order), m.upload(w), n, k, d, m.upload(y)};
      m.run(op);
      return Outputs().add("y", m.read(op.y, n * d));
    });
    if (!out) return;
    // Each token's outputs (and their magnitudes, for the tolerance) by choice: choice order[p] is at row p.
    std::vector<int64_t> row_of(sz(n * k));
    for (int64_t p = 0; p < n * k; ++p) row_of[sz(order[sz(p)])] = p;
    Vec ref, mag;
    for (int64_t t = 0; t < n; ++t) {
      std::vector<Vec> outs, abs_outs;
      Vec wt, yt = slice(y, t, d), abs_y(yt.size());
      for (int64_t i = 0; i < k; ++i) {
        outs.push_back(slice(eo, row_of[sz(t * k + i)], d));
        abs_outs.push_back(outs.back());
        for (double& v : abs_outs.back()) v = std::fabs(v);
        wt.push_back(w[sz(t * k + i)]);
      }
      for (size_t i = 0; i < yt.size(); ++i) abs_y[i] = std::fabs(yt[i]);
      const Vec yr = reference::moe_combine(yt, outs, wt), m = reference::moe_combine(abs_y, abs_outs, wt);
      ref.insert(ref.end(), yr.begin(), yr.end());
      for (double v : m) mag.push_back(TypeParam::kTol.combine * v);
    }
    expect_near(out->f32("y"), ref, mag, s.name + " moe combine");
  }
}

}  // namespace
}  // namespace ferry::runtime::ops_test
