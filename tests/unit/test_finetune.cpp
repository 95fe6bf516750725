// Quantization-aware fine-tuning of one network (train/finetune.hpp): learning under W4A4,
// gradients into the weights and the learned quantizer factors, determinism, the from-GHN start
// equal to ghn::evaluate, the random initialization, and clear errors for bad inputs.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "ghnq/arch/builder.hpp"
#include "ghnq/ghn/evaluate.hpp"
#include "ghnq/train/finetune.hpp"

using namespace ghnq;
using Catch::Matchers::Contains;

namespace {

/// n images 1 x s x s of 4 classes: class k has a bright quadrant k on noise.
data::dataset quadrants(std::int64_t n, std::int64_t s, std::uint64_t seed) {
  data::dataset d;
  d.name = "quadrants";
  d.num_classes = 4;
  d.images = tensor<std::uint8_t>({n, 1, s, s});
  rng g(seed);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<std::int64_t>(g.below(4));
    for (std::int64_t y = 0; y < s; ++y)
      for (std::int64_t x = 0; x < s; ++x) {
        int v = static_cast<int>(g.below(110));
        if ((y < s / 2) == (k < 2) && (x < s / 2) == (k % 2 == 0)) v += 100;
        d.images.data()[(i * s + y) * s + x] = static_cast<std::uint8_t>(v);
      }
    d.labels.push_back(static_cast<std::int32_t>(k));
  }
  return d;
}

/// conv 3x3 (1 -> 6) -> BN -> ReLU -> conv 3x3 stride 2 (6 -> 8) -> BN -> ReLU -> GAP -> linear (4 classes).
arch::network tiny_net() {
  arch::builder b(1, 8, 8, 4);
  const int c1 = b.conv(b.input(), 6, 3);
  const int r1 = b.relu(b.batch_norm(c1));
  const int c2 = b.conv(r1, 8, 3, 2);
  const int r2 = b.relu(b.batch_norm(c2));
  const int fl = b.flatten(b.global_avg_pool(r2));
  return b.finish(b.linear(fl, 4), "tiny");
}

train::finetune_options small_options() {
  train::finetune_options o;
  o.quant = exec::parse_quant_name("W4A4", {});
  o.quant.first_last_bits = 0;  // every layer at 4 bits
  o.steps = 40;
  o.batch_size = 16;
  o.lr = 0.05;
  o.eval_every = 20;
  o.calib_batches = 2;
  o.seed = 3;
  return o;
}

std::vector<float> flat(const std::vector<autograd::var<float>>& vs) {
  std::vector<float> out;
  for (const auto& v : vs)
    if (v.defined())
      for (float x : v.value().to_vector()) out.push_back(x);
  return out;
}

}  // namespace

TEST_CASE("finetune: learns under W4A4 from the standard random initialization", "[finetune]") {
  const auto net = tiny_net();
  const auto train_set = quadrants(320, 8, 1), test_set = quadrants(128, 8, 2);
  const auto init = train::random_init<float>(net, 7);
  const auto r = train::finetune(net, init, static_cast<const exec::quant_factors<float, backend::cpu_t>*>(nullptr),
                                 train_set, test_set, small_options());
  REQUIRE(r.curve.size() == 3);  // steps 0, 20, 40
  CHECK(r.curve[0].step == 0);
  CHECK(r.curve[1].step == 20);
  CHECK(r.curve[2].step == 40);
  CHECK(r.skipped == 0);
  for (const auto& p : r.curve) {
    CHECK(std::isfinite(p.loss));
    CHECK(std::isfinite(p.top1));
    CHECK(std::isfinite(p.top1_batch));
    CHECK(std::isfinite(p.test_loss));
  }
  CHECK(r.curve[2].loss < 0.8 * r.curve[0].loss);
  CHECK(r.curve[2].top1 > r.curve[0].top1 + 20.0);
  CHECK(r.curve[2].top1 > 60.0);
  CHECK(r.curve[2].ms >= r.curve[1].ms);
  CHECK(r.curve[1].lr > r.curve[2].lr);  // cosine
  // The running statistics were trained: not the (0, 1) initialization any more.
  REQUIRE(r.bn.size() == 2);
  CHECK(r.bn[0].running_mean.to_vector() != std::vector<float>(6, 0.0f));
}

TEST_CASE("finetune: gradients reach the weights and the LSQ / PACT factors", "[finetune]") {
  const auto net = tiny_net();
  const auto train_set = quadrants(64, 8, 1), test_set = quadrants(32, 8, 2);
  const auto init = train::random_init<float>(net, 7);
  auto o = small_options();
  o.steps = 3;
  o.eval_every = 3;
  o.quant.wq = exec::weight_quantizer::lsq;
  o.quant.aq = exec::act_quantizer::pact;
  exec::quant_factors<float, backend::cpu_t> f0;  // a given factor for the first conv's weight
  f0.weight.assign(net.ops.size(), {});
  f0.weight[1] = autograd::var<float>(tensor<float>::from({1}, {0.25f}));
  const auto r = train::finetune(net, init, &f0, train_set, test_set, o);
  const auto infos = arch::parameters(net);
  for (std::size_t i = 0; i < infos.size(); ++i) {
    INFO(infos[i].name);
    CHECK(r.params[i].value().to_vector() != init[i].to_vector());  // every parameter moved
  }
  int n_w = 0, n_a = 0;
  for (std::size_t i = 0; i < net.ops.size(); ++i) {
    const bool qop = net.ops[i].type == arch::op_type::conv || net.ops[i].type == arch::op_type::linear;
    CHECK(r.factors.weight[i].defined() == qop);
    CHECK(r.factors.input[i].defined() == qop);
    if (!qop) continue;
    INFO("op " << i);
    const float start_w = i == 1 ? 0.25f : 0.0f;
    CHECK(r.factors.weight[i].value().to_vector()[0] != start_w);
    CHECK(r.factors.input[i].value().to_vector()[0] != 0.0f);
    n_w += r.factors.weight[i].requires_grad();
    n_a += r.factors.input[i].requires_grad();
  }
  CHECK(n_w == 3);
  CHECK(n_a == 3);
  // Frozen factors keep their initial values; uniform quantizers have none.
  o.learn_factors = false;
  const auto fr = train::finetune(net, init, &f0, train_set, test_set, o);
  CHECK(fr.factors.weight[1].value().to_vector()[0] == 0.25f);
  CHECK(fr.factors.input[1].value().to_vector()[0] == 0.0f);
  CHECK(!fr.factors.weight[1].requires_grad());
  o.quant.wq = exec::weight_quantizer::uniform;
  o.quant.aq = exec::act_quantizer::uniform;
  const auto un = train::finetune(net, init, &f0, train_set, test_set, o);
  for (std::size_t i = 0; i < net.ops.size(); ++i) CHECK(!un.factors.weight[i].defined());
}

TEST_CASE("finetune: deterministic (same curve and parameters twice, and with one thread)", "[finetune]") {
  const auto net = tiny_net();
  const auto train_set = quadrants(96, 8, 1), test_set = quadrants(48, 8, 2);
  const auto init = train::random_init<float>(net, 9);
  auto o = small_options();
  o.steps = 8;
  o.eval_every = 4;
  o.quant.wq = exec::weight_quantizer::lsq;
  o.quant.aq = exec::act_quantizer::lsq;
  o.optimizer = train::finetune_optimizer::adam;
  o.lr = 1e-3;
  const exec::quant_factors<float, backend::cpu_t>* none = nullptr;
  const auto a = train::finetune(net, init, none, train_set, test_set, o);
  const auto b = train::finetune(net, init, none, train_set, test_set, o);
  auto same_curve = [](const train::finetune_result<float, backend::cpu_t>& x,
                       const train::finetune_result<float, backend::cpu_t>& y) {
    REQUIRE(x.curve.size() == y.curve.size());
    for (std::size_t k = 0; k < x.curve.size(); ++k) {
      CHECK(x.curve[k].loss == y.curve[k].loss);
      CHECK(x.curve[k].top1 == y.curve[k].top1);
      CHECK(x.curve[k].top1_batch == y.curve[k].top1_batch);
      CHECK(x.curve[k].test_loss == y.curve[k].test_loss);
    }
    CHECK(flat(x.params) == flat(y.params));
    CHECK(flat(x.factors.input) == flat(y.factors.input));
  };
  same_curve(a, b);
  {
    thread_limit one(1);
    const auto c = train::finetune(net, init, none, train_set, test_set, o);
    same_curve(a, c);
  }
  // A different seed changes the data order and so the result.
  o.seed = 4;
  const auto d = train::finetune(net, init, none, train_set, test_set, o);
  CHECK(flat(d.params) != flat(a.params));
}

TEST_CASE("finetune: from a GHN's prediction, step 0 is ghn::evaluate's accuracy of the predicted network",
          "[finetune][ghn]") {
  using cfg = ghn2q_config<backend::cpu_t, float, 8, 10>;
  rng g(5);
  hypernet<cfg> ghn(g);
  for (auto& p : ghn.parameters())  // a non-zero quant head: the predicted factors differ from 0
    if (p.name() == "quant.head.bias") p.value() = tensor<float>::from({2}, {0.3f, -0.2f});
  auto archs = ghn::held_out_architectures(arch::variant::in_distribution, 1, 11, 1, 8, 8, 10);
  REQUIRE(archs.size() == 1);
  const auto& net = archs[0].net;
  auto train_set = quadrants(96, 8, 1), test_set = quadrants(100, 8, 2);
  train_set.num_classes = test_set.num_classes = 10;
  const auto norm = data::fashion_mnist_normalization();
  for (const char* q : {"W4A4", "W2A2"}) {
    INFO(q);
    exec::quant_config qc = exec::parse_quant_name(q, {});
    qc.wq = exec::weight_quantizer::lsq;
    qc.aq = exec::act_quantizer::lsq;
    ghn::eval_options eo;
    eo.quant = qc;
    eo.norm = norm;
    eo.parallel = false;
    const auto rows = ghn::evaluate(ghn, archs, test_set, eo);
    const auto init = train::predict_init(ghn, net, qc);
    REQUIRE(init.params.size() == arch::parameters(net).size());
    bool nonzero_factor = false;
    for (const auto& f : init.factors.weight)
      if (f.defined()) nonzero_factor = nonzero_factor || f.value().to_vector()[0] != 0.0f;
    CHECK(nonzero_factor);
    auto o = small_options();
    o.quant = qc;
    o.norm = norm;
    o.steps = 2;
    o.eval_every = 2;
    const auto r = train::finetune(net, init.params, &init.factors, train_set, test_set, o);
    REQUIRE(r.curve.size() == 2);
    CHECK(r.curve[0].top1_batch == rows[0].top1);  // bit-identical forward passes
    o.eval = train::finetune_eval::batch;
    o.steps = 0;
    const auto r0 = train::finetune(net, init.params, &init.factors, train_set, test_set, o);
    REQUIRE(r0.curve.size() == 1);
    CHECK(r0.curve[0].top1_batch == rows[0].top1);
    CHECK(r0.curve[0].test_loss == Approx(rows[0].loss).epsilon(1e-6));
    CHECK(std::isnan(r0.curve[0].top1));
    CHECK(std::isnan(r0.curve[0].loss));  // no training batch was drawn
  }
}

TEST_CASE("finetune: random_init is the executor's standard initialization", "[finetune]") {
  const auto net = tiny_net();
  exec::executor<> ex(net);
  rng g(21);
  const auto ref = ex.init_parameters(g);
  const auto init = train::random_init<float>(net, 21);
  REQUIRE(init.size() == ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) CHECK(init[i].to_vector() == ref[i].value().to_vector());
  CHECK(train::random_init<float>(net, 22)[0].to_vector() != init[0].to_vector());
}

TEST_CASE("finetune: bad options, parameters, factors and datasets are clear errors", "[finetune]") {
  const auto net = tiny_net();
  const auto train_set = quadrants(64, 8, 1), test_set = quadrants(16, 8, 2);
  const auto init = train::random_init<float>(net, 7);
  const exec::quant_factors<float, backend::cpu_t>* none = nullptr;
  auto run = [&](const train::finetune_options& o) { train::finetune(net, init, none, train_set, test_set, o); };
  auto bad = [&](auto&& edit, const std::string& msg) {
    auto o = small_options();
    edit(o);
    CHECK_THROWS_WITH(run(o), Contains(msg));
  };
  bad([](auto& o) { o.steps = -1; }, "steps");
  bad([](auto& o) { o.batch_size = 1; }, "batch_size");
  bad([](auto& o) { o.lr = -0.1; }, "lr");
  bad([](auto& o) { o.lr = std::numeric_limits<double>::quiet_NaN(); }, "lr");
  bad([](auto& o) { o.warmup = 40; }, "warmup");
  bad([](auto& o) { o.momentum = 1.0; }, "momentum");
  bad([](auto& o) { o.eval_every = 0; }, "eval_every");
  bad([](auto& o) { o.test_limit = -5; }, "test_limit");
  bad([](auto& o) { o.factor_lr = -1; }, "factor_lr");
  bad([](auto& o) { o.bn_momentum = 1.5; }, "bn_momentum");
  bad([](auto& o) { o.quant.w_bits = 40; }, "w_bits");
  bad([](auto& o) { o.quant.w_bits_of_op[3] = 4; }, "only conv and linear");  // op 3 is a ReLU
  bad([](auto& o) {
    o.optimizer = train::finetune_optimizer::adam;
    o.nesterov = true;
  }, "nesterov");
  bad([](auto& o) { o.batch_size = 100; }, "fewer than one batch");
  CHECK_THROWS_AS(train::parse_finetune_optimizer("rmsprop"), value_error);
  CHECK(train::parse_finetune_optimizer("adam") == train::finetune_optimizer::adam);

  const auto o = small_options();
  auto short_init = init;
  short_init.pop_back();
  CHECK_THROWS_WITH(train::finetune(net, short_init, none, train_set, test_set, o), Contains("parameters"));
  auto wrong = init;
  wrong[0] = tensor<float>::zeros({6, 1, 5, 5});
  CHECK_THROWS_WITH(train::finetune(net, wrong, none, train_set, test_set, o), Contains("expected [6, 1, 3, 3]"));
  CHECK_THROWS_AS(train::finetune(net, wrong, none, train_set, test_set, o), shape_error);
  const auto big = quadrants(32, 10, 3);
  CHECK_THROWS_WITH(train::finetune(net, init, none, big, test_set, o), Contains("the network takes [N, 1, 8, 8]"));
  auto many = test_set;
  many.num_classes = 10;
  CHECK_THROWS_WITH(train::finetune(net, init, none, train_set, many, o), Contains("classes"));
  auto lsq = o;
  lsq.quant.wq = exec::weight_quantizer::lsq;
  exec::quant_factors<float, backend::cpu_t> f;
  f.weight.assign(2, {});
  CHECK_THROWS_WITH(train::finetune(net, init, &f, train_set, test_set, lsq), Contains("one entry per op"));
  f.weight.assign(net.ops.size(), {});
  f.weight[1] = autograd::var<float>(tensor<float>::zeros({4}));
  CHECK_THROWS_WITH(train::finetune(net, init, &f, train_set, test_set, lsq), Contains("expected [1] or [out_channels]"));
}
