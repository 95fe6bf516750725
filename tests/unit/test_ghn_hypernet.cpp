#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "ghnq/arch/deepnets.hpp"
#include "ghnq/arch/families.hpp"
#include "ghnq/arch/sampler.hpp"
#include "ghnq/exec/executor.hpp"
#include "ghnq/ghn/hypernet.hpp"
#include "support/gradcheck.hpp"

using namespace ghnq;

TEST_CASE("hypernet: the CIFAR-10 GHN-2 configuration has 1,620,764 parameters", "[ghn][hypernet]") {
  rng g(0);
  hypernet<ghn2_config<>> ghn(g);
  CHECK(ghn.num_params() == 1620764);
}

TEST_CASE("hypernet: every parameter of every bench network is predicted with its shape", "[ghn][hypernet]") {
  const std::string path = std::string(GHNQ_SOURCE_DIR) + "/../shared/bench/deepnets_conv.json";
  std::ifstream f(path);
  if (!f) {
    WARN("bench file " << path << " not found: skipping");
    return;
  }
  const auto j = nlohmann::json::parse(f);
  rng g(1);
  hypernet<ghn2_config<>> ghn(g);
  autograd::tape<float> tp;
  autograd::no_grad<autograd::tape<float>> ng(tp);
  std::vector<arch::network> nets;
  for (const auto& e : j.at("nets")) {
    auto a = arch::net_args_from_json(e.at("net_args"));
    a.C = e.at("eval").at("C").get<int>();
    a.fc_dim = e.at("eval").at("fc_dim").get<int>();
    nets.push_back(arch::deepnets_network(a));
  }
  graph::graph_batch batch;
  std::vector<const arch::network*> ptrs;
  for (const auto& n : nets) {
    batch.add(hypernet<ghn2_config<>>::graph_of(n));
    ptrs.push_back(&n);
  }
  const auto pred = ghn.predict(tp, ptrs, batch);
  REQUIRE(pred.size() == nets.size());
  for (std::size_t k = 0; k < nets.size(); ++k) {
    const auto infos = arch::parameters(nets[k]);
    REQUIRE(pred[k].size() == infos.size());
    for (std::size_t p = 0; p < infos.size(); ++p) {
      INFO("net " << k << " " << infos[p].name);
      REQUIRE(pred[k][p].shape() == infos[p].shape);
      bool finite = true;
      for (std::int64_t i = 0; i < pred[k][p].value().numel(); ++i) finite = finite && std::isfinite(pred[k][p].value().flat(i));
      REQUIRE(finite);
    }
  }
  // The predicted parameters run: logits of the right shape on a CIFAR-sized batch.
  exec::executor<backend::cpu_t, float> ex(nets[0]);
  auto x = autograd::var<float>(test::random_tensor<float>({4, 3, 32, 32}, g));
  auto logits = ex.forward(tp, x, pred[0]);
  CHECK(logits.shape() == shape({4, 10}));
}

TEST_CASE("hypernet: batched prediction equals one network at a time", "[ghn][hypernet]") {
  rng g(2);
  hypernet<ghn2_config<backend::cpu_t, double, 8>> ghn(g);
  autograd::tape<double> tp;
  autograd::no_grad<autograd::tape<double>> ng(tp);
  const auto a = arch::resnet20(3, 16, 16, 10, 4);
  arch::sampler s({}, 5);
  auto args = s.next();
  args.C = 8;
  const auto b = arch::deepnets_network(args, 3, 16, 16, 10);
  graph::graph_batch batch;
  batch.add(hypernet<ghn2_config<backend::cpu_t, double, 8>>::graph_of(a));
  batch.add(hypernet<ghn2_config<backend::cpu_t, double, 8>>::graph_of(b));
  const auto both = ghn.predict(tp, {&a, &b}, batch);
  const auto pa = ghn.predict(tp, a), pb = ghn.predict(tp, b);
  for (std::size_t p = 0; p < pa.size(); ++p) test::require_close(both[0][p].value(), pa[p].value(), 1e-12, 1e-10);
  for (std::size_t p = 0; p < pb.size(); ++p) test::require_close(both[1][p].value(), pb[p].value(), 1e-12, 1e-10);
}

TEST_CASE("hypernet: gradient check of loss -> executor -> predictions -> GHN weights (double)", "[ghn][gradcheck]") {
  using cfg = ghn2_config<backend::cpu_t, double, 8>;
  rng g(3);
  hypernet<cfg> ghn(g);
  const auto net = arch::resnet20(1, 8, 8, 10, 2);
  exec::executor<backend::cpu_t, double> ex(net);
  auto x = autograd::var<double>(test::random_tensor<double>({4, 1, 8, 8}, g));
  std::vector<std::int32_t> labels = {1, 7, 3, 3};
  auto loss_of = [&](bool record) {
    autograd::tape<double> tp;
    tp.set_recording(record);
    auto params = ghn.predict(tp, net);
    auto l = nn::cross_entropy(tp, ex.forward(tp, x, params), labels);
    if (record) tp.backward(l);
    return l.value().flat(0);
  };
  auto ps = ghn.parameters();
  for (auto& p : ps) p.reset_grad();
  loss_of(true);
  rng pick(4);
  int checked = 0;
  for (auto& p : ps) {
    REQUIRE(p.has_grad());
    const std::int64_t n = p.value().numel();
    for (int t = 0; t < 3; ++t) {
      const auto e = static_cast<std::int64_t>(pick.below(static_cast<std::uint64_t>(n)));
      const double x0 = p.value().flat(e), eps = 1e-5;
      p.value().flat(e) = x0 + eps;
      const double lp = loss_of(false);
      p.value().flat(e) = x0 - eps;
      const double lm = loss_of(false);
      p.value().flat(e) = x0;
      const double num = (lp - lm) / (2 * eps), ana = p.grad().flat(e);
      INFO(p.name() << "[" << e << "]: analytic " << ana << " numeric " << num);
      REQUIRE(std::abs(ana - num) <= 1e-7 + 1e-4 * std::max(std::abs(ana), std::abs(num)));
      ++checked;
    }
  }
  CHECK(checked == 3 * static_cast<int>(ps.size()));
}
