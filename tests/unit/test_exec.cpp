#include <catch2/catch.hpp>

#include <cmath>

#include "ghnq/arch/families.hpp"
#include "ghnq/arch/sampler.hpp"
#include "ghnq/exec/executor.hpp"
#include "ghnq/exec/meta_batch.hpp"
#include "support/gradcheck.hpp"

using namespace ghnq;

namespace {

/// A small DeepNets-1M network: the sampled genotype at a tiny width and few cells.
arch::network small_sampled_net(std::uint64_t seed, int C, int in_c, int hw, int cells = 0) {
  arch::sampler s({}, seed);
  auto a = s.next();
  a.C = C;
  a.fc_dim = 8;
  if (cells > 0) a.n_cells = std::min(a.n_cells, cells);
  return arch::deepnets_network(a, in_c, hw, hw, 10);
}

template <class T>
autograd::var<T> random_images(rng& g, std::int64_t n, int c, int hw) {
  return autograd::var<T>(test::random_tensor<T>({n, c, hw, hw}, g));
}

std::vector<std::int32_t> random_labels(rng& g, std::int64_t n) {
  std::vector<std::int32_t> y(static_cast<std::size_t>(n));
  for (auto& v : y) v = static_cast<std::int32_t>(g.below(10));
  return y;
}

}  // namespace

TEST_CASE("executor runs the families forward and backward on both input sizes", "[exec]") {
  rng g(1);
  for (const auto& name : arch::family_names()) {
    for (int in_c : {1, 3}) {
      const int hw = in_c == 1 ? 28 : 32;
      exec::executor<backend::cpu_t, float> ex(arch::family(name, in_c, hw, hw, 10));
      auto params = ex.init_parameters(g);
      autograd::tape<float> tp;
      auto x = random_images<float>(g, 4, in_c, hw);
      auto logits = ex.forward(tp, x, params);
      REQUIRE(logits.shape() == shape({4, 10}));
      auto loss = nn::cross_entropy(tp, logits, random_labels(g, 4));
      tp.backward(loss);
      INFO(name << " on " << in_c << "x" << hw << "x" << hw);
      for (auto& p : params) {
        REQUIRE(p.has_grad());
        double norm = 0;
        for (std::int64_t i = 0; i < p.grad().numel(); ++i) norm += std::abs(p.grad().flat(i));
        REQUIRE(std::isfinite(norm));
      }
    }
  }
}

TEST_CASE("executor rejects wrong parameter sets and inputs", "[exec]") {
  rng g(2);
  exec::executor<backend::cpu_t, float> ex(arch::resnet20(1, 28, 28, 10));
  auto params = ex.init_parameters(g);
  autograd::tape<float> tp;
  auto x = random_images<float>(g, 2, 1, 28);
  auto fewer = params;
  fewer.pop_back();
  CHECK_THROWS_AS(ex.forward(tp, x, fewer), shape_error);
  auto wrong = params;
  wrong[0] = autograd::parameter(tensor<float>::zeros({3, 3}));
  CHECK_THROWS_WITH(ex.forward(tp, x, wrong), Catch::Contains(ex.params()[0].name));
  CHECK_THROWS_AS(ex.forward(tp, random_images<float>(g, 2, 3, 32), params), shape_error);
}

TEST_CASE("whole sampled network: gradient check in double", "[exec][gradcheck]") {
  // Every parameter tensor and the input, at a few elements each, against central differences.
  for (std::uint64_t seed : {3u, 11u}) {
    exec::executor<backend::cpu_t, double> ex(small_sampled_net(seed, 4, 3, 8, 4));
    rng g(seed);
    auto params = ex.init_parameters(g);
    auto x = autograd::parameter(test::random_tensor<double>({3, 3, 8, 8}, g), "x");
    const auto labels = random_labels(g, 3);
    exec::run_options opt;  // batch statistics, as GHN-2 trains
    auto loss_of = [&](bool record) {
      autograd::tape<double> tp;
      tp.set_recording(record);
      auto l = nn::cross_entropy(tp, ex.forward(tp, x, params, opt), labels);
      if (record) tp.backward(l);
      return l.value().flat(0);
    };
    for (auto& p : params) p.reset_grad();
    x.reset_grad();
    loss_of(true);
    std::vector<autograd::var<double>> all = params;
    all.push_back(x);
    int checked = 0;
    for (auto& p : all) {
      // Parameters of ops that cannot reach the output get no gradient: numerically zero too.
      const std::int64_t n = p.value().numel();
      for (std::int64_t e : {std::int64_t(0), n / 2, n - 1}) {
        const double x0 = p.value().flat(e), eps = 1e-5;
        p.value().flat(e) = x0 + eps;
        const double lp = loss_of(false);
        p.value().flat(e) = x0 - eps;
        const double lm = loss_of(false);
        p.value().flat(e) = x0;
        const double num = (lp - lm) / (2 * eps), ana = p.has_grad() ? p.grad().flat(e) : 0.0;
        INFO("seed " << seed << " " << p.name() << "[" << e << "]: analytic " << ana << " numeric " << num);
        REQUIRE(std::abs(ana - num) <= 1e-6 + 1e-4 * std::max(std::abs(ana), std::abs(num)));
        ++checked;
      }
    }
    CHECK(checked >= 3 * 5);
  }
}

TEST_CASE("meta-batch networks in parallel give the same results as one by one", "[exec][parallel]") {
  rng g(4);
  std::vector<exec::executor<backend::cpu_t, float>> exs;
  for (std::uint64_t s = 0; s < 3; ++s) exs.emplace_back(small_sampled_net(100 + s, 8, 3, 16));
  exs.emplace_back(arch::resnet20(3, 16, 16, 10, 8));
  std::vector<exec::executor<backend::cpu_t, float>*> nets;
  for (auto& e : exs) nets.push_back(&e);
  auto make_params = [&](std::uint64_t seed) {
    rng pg(seed);
    std::vector<std::vector<autograd::var<float>>> ps;
    for (auto* e : nets) ps.push_back(e->init_parameters(pg));
    return ps;
  };
  auto pa = make_params(9), pb = make_params(9);
  auto x = random_images<float>(g, 8, 3, 16);
  const auto labels = random_labels(g, 8);
  const auto ra = exec::forward_backward(nets, pa, x, labels, {}, 0.0, true);
  const auto rb = exec::forward_backward(nets, pb, x, labels, {}, 0.0, false);
  for (std::size_t k = 0; k < nets.size(); ++k) {
    CHECK(ra[k].loss == rb[k].loss);
    CHECK(ra[k].correct == rb[k].correct);
    for (std::size_t i = 0; i < pa[k].size(); ++i) test::require_close(pa[k][i].grad(), pb[k][i].grad(), 0.0);
  }
}

TEST_CASE("batch-norm modes: batch statistics, calibrate-then-use running statistics", "[exec][bn]") {
  rng g(5);
  exec::executor<backend::cpu_t, double> ex(arch::resnet20(1, 12, 12, 10, 4));
  auto params = ex.init_parameters(g);
  autograd::tape<double> tp;
  autograd::no_grad<autograd::tape<double>> ng(tp);
  auto batch = random_images<double>(g, 6, 1, 12);
  // Batch statistics: a sample's logits depend on the rest of its batch.
  auto full = ex.forward(tp, batch, params);
  auto first = ex.forward(tp, autograd::var<double>(batch.value().slice(0, 0, 3).clone()), params);
  CHECK(std::abs(full.value()(0, 0) - first.value()(0, 0)) > 1e-9);
  // Calibrate on two batches: running mean is the average of their batch means.
  auto b2 = random_images<double>(g, 6, 1, 12);
  ex.calibrate(params, std::vector<autograd::var<double>>{batch, b2});
  const auto& st = ex.bn_states()[0];
  CHECK(st.num_batches_tracked == 2);
  // Running statistics: a sample's logits no longer depend on its batch.
  exec::run_options ro;
  ro.bn = exec::bn_mode::running_stats;
  auto rf = ex.forward(tp, batch, params, ro);
  auto r1 = ex.forward(tp, autograd::var<double>(batch.value().slice(0, 0, 3).clone()), params, ro);
  for (int c = 0; c < 10; ++c) CHECK(rf.value()(1, c) == Approx(r1.value()(1, c)).epsilon(1e-12));
  // Recalibrating on one batch only: running mean of the first BN equals that batch's mean of
  // its input channel, computed here from the stem conv directly.
  ex.calibrate(params, std::vector<autograd::var<double>>{batch});
  nn::conv2d_params cp = nn::conv2d_params::square(1, 1);
  auto stem = nn::conv2d(tp, batch, params[0], autograd::var<double>(), cp);
  for (std::int64_t c = 0; c < stem.shape()[1]; ++c) {
    double s = 0;
    for (std::int64_t n = 0; n < 6; ++n)
      for (std::int64_t i = 0; i < 144; ++i) s += stem.value().select(n).select(c).flat(i);
    CHECK(ex.bn_states()[0].running_mean.flat(c) == Approx(s / (6 * 144)).epsilon(1e-9));
  }
}

TEST_CASE("executor reaches an allocation-free steady state across training steps", "[exec][memory]") {
  rng g(6);
  exec::executor<backend::cpu_t, float> ex(small_sampled_net(7, 16, 3, 32));
  auto params = ex.init_parameters(g);
  auto x = random_images<float>(g, 16, 3, 32);
  const auto labels = random_labels(g, 16);
  auto step = [&]() {
    autograd::tape<float> tp;
    for (auto& p : params) p.zero_grad();
    auto loss = nn::cross_entropy(tp, ex.forward(tp, x, params), labels);
    tp.backward(loss);
  };
  step();
  step();
  const auto before = memory_stats();
  for (int i = 0; i < 3; ++i) step();
  const auto after = memory_stats();
  INFO("system allocations during 3 steady steps: " << after.system_allocations - before.system_allocations
                                                    << ", reuses: "
                                                    << after.reused_allocations - before.reused_allocations);
  CHECK(after.reused_allocations > before.reused_allocations);
  CHECK(after.system_allocations == before.system_allocations);
  CHECK(after.bytes_in_use == before.bytes_in_use);
}
