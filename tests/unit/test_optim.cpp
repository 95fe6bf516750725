// Optimizers (SGD, Adam, AdamW), gradient clipping and learning-rate schedules against
// hand-computed values.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/train/clip.hpp"
#include "ghnq/train/optimizer.hpp"
#include "ghnq/train/schedule.hpp"

using namespace ghnq;
using train::adam;
using train::adamw;
using train::sgd;
using train::sgd_options;
using train::adam_options;
using train::adamw_options;

namespace {

template <class T>
autograd::var<T> make_param(std::vector<T> v, const char* name = "p") {
  const auto n = static_cast<std::int64_t>(v.size());
  return autograd::parameter(tensor<T>::from({n}, v), name);
}

template <class T>
void set_grad(const autograd::var<T>& p, std::vector<T> g) {
  auto& t = p.grad();
  REQUIRE(t.numel() == static_cast<std::int64_t>(g.size()));
  for (std::size_t i = 0; i < g.size(); ++i) t.flat(static_cast<std::int64_t>(i)) = g[i];
}

template <class T>
double tol() {
  return std::is_same_v<T, float> ? 2e-6 : 1e-12;
}

template <class T>
void check_values(const autograd::var<T>& p, std::vector<double> want, double margin_scale = 1.0) {
  REQUIRE(p.value().numel() == static_cast<std::int64_t>(want.size()));
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO("element " << i);
    CHECK(static_cast<double>(p.value().flat(static_cast<std::int64_t>(i))) ==
          Approx(want[i]).margin(tol<T>() * margin_scale).epsilon(0));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("sgd: plain and momentum steps match hand computation", "[optim]", float, double) {
  using T = TestType;
  const std::vector<T> g = {T(0.1), T(-0.2), T(0.3)};

  SECTION("plain SGD: p -= lr * g") {
    auto p = make_param<T>({1, -2, T(0.5)});
    sgd<T> opt({p}, {0.1});
    set_grad(p, g);
    opt.step();
    check_values(p, {0.99, -1.98, 0.47});
    opt.step();
    check_values(p, {0.98, -1.96, 0.44});
    CHECK(opt.step_count() == 2);
    CHECK(opt.state().tensors.empty());  // no momentum buffer without momentum
  }

  SECTION("momentum 0.9: buf = g, 1.9 g, 2.71 g") {
    auto p = make_param<T>({1, -2, T(0.5)});
    sgd<T> opt({p}, {0.1, 0.9});
    set_grad(p, g);
    opt.step();
    check_values(p, {0.99, -1.98, 0.47});
    opt.step();
    check_values(p, {0.971, -1.942, 0.413});
    opt.step();
    check_values(p, {0.9439, -1.8878, 0.3317});
    const auto st = opt.state();
    REQUIRE(st.tensors.count("momentum_buffer.0") == 1);
    CHECK(static_cast<double>(st.tensors.at("momentum_buffer.0").flat(1)) == Approx(-0.542).margin(tol<T>()));
  }

  SECTION("nesterov: d = g + momentum * buf") {
    auto p = make_param<T>({1, -2, T(0.5)});
    sgd_options o;
    o.lr = 0.1;
    o.momentum = 0.9;
    o.nesterov = true;
    sgd<T> opt({p}, o);
    set_grad(p, g);
    opt.step();  // buf = g, d = 1.9 g
    check_values(p, {0.981, -1.962, 0.443});
    opt.step();  // buf = 1.9 g, d = 2.71 g
    check_values(p, {0.9539, -1.9078, 0.3617});
  }

  SECTION("weight decay + dampening: the first buffer is the undamped gradient") {
    auto p = make_param<T>({1, -2, T(0.5)});
    sgd<T> opt({p}, {0.1, 0.9, 0.5, 0.1});
    set_grad(p, g);
    opt.step();  // d = g + 0.1 p = (0.2, -0.4, 0.35) = buf
    check_values(p, {0.98, -1.96, 0.465});
    opt.step();  // d = (0.198, -0.396, 0.3465); buf = 0.9 buf + 0.5 d = (0.279, -0.558, 0.48825)
    check_values(p, {0.9521, -1.9042, 0.416175});
  }
}

TEMPLATE_TEST_CASE("adam and adamw match hand computation", "[optim]", float, double) {
  using T = TestType;
  const std::vector<std::vector<T>> gs = {
      {T(0.1), T(-0.2), T(0.3)}, {T(-0.3), T(0.1), T(0.2)}, {T(0.05), T(0.05), T(-0.4)}};
  // Expected values computed from m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
  // p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) with lr 0.1, b = (0.9, 0.999), eps 1e-8.
  // Step 1 is p - lr * sign(g) (up to eps): the bias correction makes m_hat = g, v_hat = g^2.
  auto run = [&](auto& opt, const autograd::var<T>& p, const std::vector<std::vector<double>>& want) {
    for (std::size_t s = 0; s < gs.size(); ++s) {
      INFO("step " << s + 1);
      set_grad(p, gs[s]);
      opt.step();
      check_values(p, want[s], 3.0);
    }
  };

  SECTION("adam, no weight decay") {
    auto p = make_param<T>({1, -2, T(0.5)});
    adam<T> opt({p}, {0.1});
    run(opt, p,
        {{0.900000010000, -1.900000005000, 0.400000003333},
         {0.949418991120, -1.873366302719, 0.302964794330},
         {0.977168808992, -1.867227416904, 0.300235391085}});
    const auto st = opt.state();
    CHECK(st.counters.at("step") == 3);
    CHECK(st.counters.at("step.0") == 3);
    // m after 3 steps, element 0: 0.9 * (0.9 * 0.01 - 0.03) + 0.1 * 0.05 = -0.0139
    CHECK(static_cast<double>(st.tensors.at("exp_avg.0").flat(0)) == Approx(-0.0139).margin(1e-7));
    // v after 1 step would be 0.001 g^2; after 3 steps, element 2: 0.999^2*9e-5 + 0.999*4e-5 + 1.6e-4
    CHECK(static_cast<double>(st.tensors.at("exp_avg_sq.0").flat(2)) ==
          Approx(0.999 * 0.999 * 9e-5 + 0.999 * 4e-5 + 1.6e-4).epsilon(1e-5));
  }

  SECTION("adam, L2 weight decay added to the gradient") {
    auto p = make_param<T>({1, -2, T(0.5)});
    adam_options o;
    o.lr = 0.1;
    o.weight_decay = 0.1;
    adam<T> opt({p}, o);
    run(opt, p,
        {{0.900000005000, -1.900000002500, 0.400000002857},
         {0.907699802969, -1.818287554677, 0.302649845609},
         {0.885140815240, -1.738589629464, 0.287915061715}});
  }

  SECTION("adamw, decoupled weight decay p *= 1 - lr * wd before the Adam step") {
    auto p = make_param<T>({1, -2, T(0.5)});
    adamw_options o;
    CHECK(o.weight_decay == 1e-2);  // PyTorch's AdamW default
    o.lr = 0.1;
    o.weight_decay = 0.1;
    adamw<T> opt({p}, o);
    run(opt, p,
        {{0.890000010000, -1.880000005000, 0.395000003333},
         {0.930518991020, -1.834566302669, 0.294014794297},
         {0.948963618982, -1.810081753827, 0.288345243108}});
  }
}

TEMPLATE_TEST_CASE("optimizers skip parameters without a gradient buffer", "[optim]", float, double) {
  using T = TestType;
  auto a = make_param<T>({1, 2}, "a");
  auto b = make_param<T>({3, 4}, "b");

  SECTION("sgd") {
    sgd<T> opt({a, b}, {0.5, 0.9, 0.0, 0.1});
    set_grad(a, {T(1), T(1)});
    REQUIRE_FALSE(b.has_grad());
    opt.step();
    check_values(b, {3, 4});
    CHECK_FALSE(b.has_grad());  // step must not allocate it
    check_values(a, {1 - 0.5 * 1.1, 2 - 0.5 * 1.2});
    CHECK(opt.state().tensors.count("momentum_buffer.1") == 0);
    // zero_grad(true) drops the buffers: the next step leaves a unchanged
    opt.zero_grad(true);
    CHECK_FALSE(a.has_grad());
    const T a0 = a.value().flat(0);
    opt.step();
    CHECK(a.value().flat(0) == a0);
    // zero_grad() keeps zeroed buffers: weight decay and momentum still move a (as in PyTorch)
    set_grad(a, {T(0), T(0)});
    opt.zero_grad();
    REQUIRE(a.has_grad());
    opt.step();
    CHECK(a.value().flat(0) != a0);
  }

  SECTION("adam: per-parameter step counts for the bias correction") {
    adam<T> opt({a, b}, {0.1});
    set_grad(a, {T(1), T(-1)});
    opt.step();
    check_values(b, {3, 4});
    set_grad(b, {T(-2), T(2)});
    opt.step();  // b's first update: p - lr * sign(g)
    check_values(b, {3 + 0.1 * 2 / (2 + 1e-8), 4 - 0.1 * 2 / (2 + 1e-8)});
    const auto st = opt.state();
    CHECK(st.counters.at("step") == 2);
    CHECK(st.counters.at("step.0") == 2);
    CHECK(st.counters.at("step.1") == 1);
  }
}

TEMPLATE_TEST_CASE("optimizer state round-trips through state()/load_state()", "[optim]", float, double) {
  using T = TestType;
  ghnq::rng g(3);
  std::vector<T> init(7), grads(21);
  for (auto& v : init) v = static_cast<T>(g.normal());
  for (auto& v : grads) v = static_cast<T>(g.normal());
  auto grad_at = [&](int s) { return std::vector<T>(grads.begin() + 7 * s, grads.begin() + 7 * s + 7); };

  auto check_same = [&](auto make) {
    auto p1 = make_param<T>(init), p2 = make_param<T>(init);
    auto o1 = make(p1);
    for (int s = 0; s < 2; ++s) {
      set_grad(p1, grad_at(s));
      o1.step();
    }
    // p2 continues from p1's value and o1's state
    p2.value().copy_from(p1.value());
    auto o2 = make(p2);
    o2.load_state(o1.state());
    CHECK(o2.step_count() == 2);
    set_grad(p1, grad_at(2));
    set_grad(p2, grad_at(2));
    o1.step();
    o2.step();
    for (int i = 0; i < 7; ++i) CHECK(p1.value().flat(i) == p2.value().flat(i));
    // state() is a deep copy: changing it does not touch the optimizer
    auto st = o1.state();
    for (auto& kv : st.tensors) kv.second.fill(T(42));
    CHECK(o1.state().tensors.begin()->second.flat(0) != T(42));
  };
  SECTION("sgd") { check_same([](auto p) { return sgd<T>({p}, {0.1, 0.9, 0.1, 0.01, false}); }); }
  SECTION("adam") { check_same([](auto p) { return adam<T>({p}, {0.01}); }); }
  SECTION("adamw") { check_same([](auto p) { return adamw<T>({p}, {0.01}); }); }

  SECTION("load_state rejects bad input") {
    auto p = make_param<T>(init);
    adam<T> opt({p}, {0.01});
    set_grad(p, grad_at(0));
    opt.step();
    const auto good = opt.state();
    auto bad = good;
    bad.tensors["exp_avg.3"] = good.tensors.at("exp_avg.0");
    CHECK_THROWS_WITH(opt.load_state(bad), Catch::Contains("parameter 3"));
    bad = good;
    bad.tensors["exp_avg.0"] = tensor<T>::zeros({3});
    CHECK_THROWS_AS(opt.load_state(bad), shape_error);
    bad = good;
    bad.tensors["momentum_buffer.0"] = good.tensors.at("exp_avg.0");
    CHECK_THROWS_WITH(opt.load_state(bad), Catch::Contains("unknown tensor 'momentum_buffer.0'"));
    bad = good;
    bad.tensors.erase("exp_avg_sq.0");
    CHECK_THROWS_WITH(opt.load_state(bad), Catch::Contains("exp_avg_sq"));
    bad = good;
    bad.counters.erase("step");
    CHECK_THROWS_WITH(opt.load_state(bad), Catch::Contains("'step'"));
    sgd<T> s({p}, {0.1, 0.9});
    CHECK_THROWS_WITH(s.load_state(good), Catch::Contains("unknown tensor"));
  }
}

TEST_CASE("optimizer options are validated", "[optim]") {
  auto p = make_param<float>({1, 2});
  CHECK_THROWS_AS(sgd<float>({p}, {-0.1}), value_error);
  CHECK_THROWS_AS(sgd<float>({p}, {0.1, -0.5}), value_error);
  sgd_options nest;
  nest.nesterov = true;  // momentum 0
  CHECK_THROWS_WITH(sgd<float>({p}, nest), Catch::Contains("nesterov"));
  nest.momentum = 0.9;
  nest.dampening = 0.1;
  CHECK_THROWS_AS(sgd<float>({p}, nest), value_error);
  CHECK_THROWS_WITH(sgd<float>({p, p}, {}), Catch::Contains("more than once"));
  CHECK_THROWS_AS(sgd<float>({autograd::var<float>()}, {}), value_error);
  adam_options a;
  a.beta1 = 1.0;
  CHECK_THROWS_WITH(adam<float>({p}, a), Catch::Contains("beta1"));
  a = {};
  a.beta2 = -0.1;
  CHECK_THROWS_AS(adam<float>({p}, a), value_error);
  a = {};
  a.eps = std::nan("");
  CHECK_THROWS_AS(adam<float>({p}, a), value_error);
  adamw_options w;
  w.weight_decay = -1;
  CHECK_THROWS_AS(adamw<float>({p}, w), value_error);
  sgd<float> ok({p}, {});
  CHECK_THROWS_AS(ok.set_lr(-1.0), value_error);
  ok.set_lr(0.25);
  CHECK(ok.lr() == 0.25);
  CHECK(ok.params().size() == 1);
}

TEMPLATE_TEST_CASE("set_lr changes the next step", "[optim]", float, double) {
  using T = TestType;
  auto p = make_param<T>({1});
  sgd<T> opt({p}, {0.1});
  set_grad(p, {T(1)});
  opt.step();
  opt.set_lr(0.5);
  opt.step();
  check_values(p, {1 - 0.1 - 0.5});
}

TEMPLATE_TEST_CASE("clip_grad_norm", "[optim][clip]", float, double) {
  using T = TestType;
  auto a = make_param<T>({0, 0});
  auto b = make_param<T>({0});
  auto c = make_param<T>({0, 0, 0});  // no gradient buffer: ignored
  const std::vector<autograd::var<T>> ps = {a, b, c};

  SECTION("scales by max_norm / (norm + 1e-6) above the limit") {
    set_grad(a, {T(3), T(4)});
    set_grad(b, {T(12)});
    const double n = train::clip_grad_norm(ps, 6.5);
    CHECK(n == Approx(13.0).epsilon(1e-12));
    const double coef = 6.5 / (13.0 + 1e-6);
    CHECK(static_cast<double>(a.grad().flat(0)) == Approx(3 * coef).epsilon(1e-6));
    CHECK(static_cast<double>(a.grad().flat(1)) == Approx(4 * coef).epsilon(1e-6));
    CHECK(static_cast<double>(b.grad().flat(0)) == Approx(12 * coef).epsilon(1e-6));
    CHECK(train::grad_norm(ps) == Approx(6.5).epsilon(1e-6));
    CHECK_FALSE(c.has_grad());
  }
  SECTION("no-op under the limit") {
    set_grad(a, {T(3), T(4)});
    set_grad(b, {T(12)});
    CHECK(train::clip_grad_norm(ps, 13.5) == Approx(13.0));
    CHECK(a.grad().flat(0) == T(3));
    CHECK(a.grad().flat(1) == T(4));
    CHECK(b.grad().flat(0) == T(12));
  }
  SECTION("bad max_norm") {
    CHECK_THROWS_AS(train::clip_grad_norm(ps, 0.0), value_error);
    CHECK_THROWS_AS(train::clip_grad_norm(ps, -1.0), value_error);
  }
  SECTION("large gradients: naive reference and thread-count independence") {
    const std::int64_t n = 300001;
    auto big = autograd::parameter(tensor<T>::zeros({n}));
    ghnq::rng g(9);
    double ref = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      big.grad().flat(i) = static_cast<T>(g.normal());
      ref += static_cast<double>(big.grad().flat(i)) * static_cast<double>(big.grad().flat(i));
    }
    const std::vector<autograd::var<T>> v = {big};
    const double multi = train::grad_norm(v);
    double single;
    {
      thread_limit one(1);
      single = train::grad_norm(v);
    }
    CHECK(multi == single);
    CHECK(multi == Approx(std::sqrt(ref)).epsilon(1e-12));
  }
}

TEST_CASE("multi_step_lr", "[schedule]") {
  train::multi_step_lr s(0.1, {30, 60, 90}, 0.1);
  CHECK(s.lr_at(0) == Approx(0.1));
  CHECK(s.lr_at(29) == Approx(0.1));
  CHECK(s.lr_at(30) == Approx(0.01));
  CHECK(s.lr_at(59) == Approx(0.01));
  CHECK(s.lr_at(60) == Approx(0.001));
  CHECK(s.lr_at(90) == Approx(0.0001));
  CHECK(s.lr_at(100000) == Approx(0.0001));
  train::multi_step_lr none(0.5, {}, 0.1);
  CHECK(none.lr_at(1000) == 0.5);
  CHECK_THROWS_AS(train::multi_step_lr(0.1, {30, 30}, 0.1), value_error);
  CHECK_THROWS_AS(train::multi_step_lr(0.1, {60, 30}, 0.1), value_error);
  CHECK_THROWS_AS(train::multi_step_lr(0.1, {0}, 0.1), value_error);
  CHECK_THROWS_AS(train::multi_step_lr(0.1, {10}, 0.0), value_error);
  CHECK_THROWS_AS(train::multi_step_lr(-0.1, {10}, 0.1), value_error);
  CHECK_THROWS_AS(s.lr_at(-1), value_error);
}

TEST_CASE("cosine_lr", "[schedule]") {
  train::cosine_lr s(0.1, 100, 0.001);
  CHECK(s.lr_at(0) == Approx(0.1));
  CHECK(s.lr_at(50) == Approx((0.1 + 0.001) / 2));
  CHECK(s.lr_at(25) == Approx(0.001 + 0.099 * (1 + std::cos(M_PI / 4)) / 2));
  CHECK(s.lr_at(100) == Approx(0.001));
  CHECK(s.lr_at(1000) == Approx(0.001));
  for (int t = 1; t <= 100; ++t) CHECK(s.lr_at(t) < s.lr_at(t - 1));
  train::cosine_lr z(1.0, 10);
  CHECK(z.lr_at(10) == 0.0);
  CHECK_THROWS_AS(train::cosine_lr(0.1, 0), value_error);
  CHECK_THROWS_AS(train::cosine_lr(0.1, 10, 0.2), value_error);
  CHECK_THROWS_AS(train::cosine_lr(0.1, 10, -0.1), value_error);
  CHECK_THROWS_AS(s.lr_at(-5), value_error);
}

TEST_CASE("warmup_cosine_lr", "[schedule]") {
  train::warmup_cosine_lr s(0.2, 10, 110, 0.02);
  CHECK(s.lr_at(0) == 0.0);
  CHECK(s.lr_at(1) == Approx(0.02));
  CHECK(s.lr_at(5) == Approx(0.1));
  CHECK(s.lr_at(9) == Approx(0.18));
  CHECK(s.lr_at(10) == Approx(0.2));
  CHECK(s.lr_at(60) == Approx((0.2 + 0.02) / 2));
  CHECK(s.lr_at(110) == Approx(0.02));
  CHECK(s.lr_at(500) == Approx(0.02));
  train::warmup_cosine_lr nowarm(0.1, 0, 100);
  train::cosine_lr cos(0.1, 100);
  for (int t : {0, 1, 37, 99, 100}) CHECK(nowarm.lr_at(t) == Approx(cos.lr_at(t)));
  CHECK_THROWS_AS(train::warmup_cosine_lr(0.1, 10, 10), value_error);
  CHECK_THROWS_AS(train::warmup_cosine_lr(0.1, -1, 10), value_error);
  CHECK_THROWS_AS(train::warmup_cosine_lr(0.1, 1, 10, 0.5), value_error);
  CHECK_THROWS_AS(s.lr_at(-1), value_error);
  train::constant_lr c(0.3);
  CHECK(c.lr_at(12345) == 0.3);
  CHECK_THROWS_AS(train::constant_lr(-1), value_error);
}
