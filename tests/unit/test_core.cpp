#include <catch2/catch.hpp>

#include <atomic>

#include "ghnq/ghn.hpp"
#include "support/gradcheck.hpp"

using namespace ghnq;

TEST_CASE("shape and tensor views", "[tensor]") {
  auto t = tensor<float>::zeros({2, 3, 4});
  CHECK(t.numel() == 24);
  CHECK(t.is_contiguous());
  for (int i = 0; i < 24; ++i) t.flat(i) = static_cast<float>(i);
  auto s = t.select(1);
  CHECK(s.shape() == shape({3, 4}));
  CHECK(s(2, 3) == 23.f);
  auto r = t.reshape({6, -1});
  CHECK(r.shape() == shape({6, 4}));
  CHECK(r(5, 0) == 20.f);
  auto tr = t.transpose(1, 2);
  CHECK_FALSE(tr.is_contiguous());
  CHECK(tr(1, 3, 2) == t(1, 2, 3));
  auto c = tr.contiguous();
  CHECK(c.is_contiguous());
  CHECK(c(1, 3, 2) == t(1, 2, 3));
  auto sl = t.slice(2, 1, 3);
  CHECK(sl.shape() == shape({2, 3, 2}));
  CHECK(sl(1, 2, 1) == t(1, 2, 2));
  CHECK_THROWS_AS(t.reshape({5, -1}), shape_error);
  CHECK_THROWS_AS(tr.reshape({24}), shape_error);
  CHECK_THROWS_AS(t.at(0, 3, 0), shape_error);
  CHECK_THROWS_AS(t.slice(1, 2, 4), shape_error);
}

TEST_CASE("xtensor and Eigen adaptors share memory", "[tensor]") {
  auto t = tensor<double>::zeros({3, 4});
  auto x = as_xtensor(t);
  x(1, 2) = 5.0;
  CHECK(t(1, 2) == 5.0);
  auto m = as_matrix(t);
  m.row(0).setOnes();
  CHECK(t(0, 3) == 1.0);
  auto tt = t.transpose(0, 1);
  auto mt = as_matrix(tt);
  CHECK(mt(2, 1) == 5.0);
  auto xt = as_xtensor(tt);
  CHECK(xt(2, 1) == 5.0);
  CHECK(as_vector(t).sum() == 9.0);
}

TEST_CASE("rng is deterministic and well spread", "[core]") {
  rng a(5), b(5);
  for (int i = 0; i < 100; ++i) REQUIRE(a.next() == b.next());
  rng g(1);
  double s = 0, s2 = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const double z = g.normal();
    s += z;
    s2 += z * z;
  }
  CHECK(std::abs(s / n) < 0.03);
  CHECK(std::abs(s2 / n - 1.0) < 0.05);
  int counts[7] = {};
  for (int i = 0; i < 7000; ++i) ++counts[g.randint(0, 6)];
  for (int c : counts) CHECK(std::abs(c - 1000) < 150);
}

TEMPLATE_TEST_CASE("gemm matches a naive loop for all transpositions", "[backend][gemm]", float, double) {
  rng g(3);
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const long m = 7, n = 5, k = 9;
      auto A = test::random_tensor<TestType>(ta ? shape{k, m} : shape{m, k}, g);
      auto B = test::random_tensor<TestType>(tb ? shape{n, k} : shape{k, n}, g);
      auto C = test::random_tensor<TestType>({m, n}, g);
      auto ref = C.clone();
      for (long i = 0; i < m; ++i)
        for (long j = 0; j < n; ++j) {
          TestType acc = 0;
          for (long p = 0; p < k; ++p) acc += (ta ? A(p, i) : A(i, p)) * (tb ? B(j, p) : B(p, j));
          ref(i, j) = TestType(0.5) * acc + TestType(2) * ref(i, j);
        }
      backend::impl<backend::cpu_t, backend::op::gemm>::run<TestType>(ta, tb, m, n, k, 0.5, A.data(), ta ? m : k,
                                                                      B.data(), tb ? k : n, 2, C.data(), n);
      test::require_close(C, ref, 1e-5, 1e-5);
    }
}

TEST_CASE("tape accumulates gradients and no_grad records nothing", "[autograd]") {
  autograd::tape<double> tp;
  auto x = autograd::parameter(tensor<double>::from({1, 3}, {1.0, -2.0, 3.0}));
  auto w = autograd::parameter(tensor<double>::from({1, 3}, {0.5, 0.25, -1.0}));
  auto y = nn::linear(tp, nn::relu(tp, x), w);
  CHECK(tp.size() == 2);
  tp.backward(y);
  CHECK(tp.size() == 0);
  CHECK(w.grad()(0, 1) == 0.0);
  CHECK(w.grad()(0, 2) == 3.0);
  CHECK(x.grad()(0, 0) == 0.5);
  CHECK(x.grad()(0, 1) == 0.0);  // relu blocked
  {
    autograd::no_grad<autograd::tape<double>> ng(tp);
    auto z = nn::relu(tp, x);
    CHECK_FALSE(z.requires_grad());
  }
  CHECK(tp.size() == 0);
  CHECK_THROWS_AS(tp.backward(x), shape_error);
}

TEST_CASE("activations and linear: gradient check", "[nn][gradcheck]") {
  rng g(11);
  auto x = autograd::parameter(test::random_tensor<double>({3, 5}, g, -4, 4), "x");
  // keep away from the kinks of relu / hardswish
  for (std::int64_t i = 0; i < x.value().numel(); ++i) {
    double& v = x.value().flat(i);
    if (std::abs(v) < 0.05 || std::abs(std::abs(v) - 3) < 0.05) v += 0.2;
  }
  auto w = autograd::parameter(test::random_tensor<double>({4, 5}, g), "w");
  auto b = autograd::parameter(test::random_tensor<double>({4}, g), "b");
  test::check_gradients(
      [](test::dtape& tp, std::vector<test::dvar>& in) {
        auto h = nn::add(tp, nn::relu(tp, in[0]), nn::hardswish(tp, in[0]));
        h = nn::add(tp, nn::sigmoid(tp, h), nn::tanh(tp, h));
        return nn::linear(tp, h, in[1], in[2]);
      },
      {x, w, b});
}

TEST_CASE("CPU allocator reuses freed blocks of the same size class", "[backend][memory]") {
  using pool = backend::detail::cpu_pool;
  CHECK(pool::size_class(100) == 128);
  CHECK(pool::size_class(64 * 1024) == 64 * 1024);
  CHECK(pool::size_class(64 * 1024 + 1) == 80 * 1024);
  CHECK(pool::size_class(1 << 20) == (1 << 20));
  CHECK(pool::size_class((1 << 20) + 5) == (1 << 20) + (1 << 18));
  release_cached_memory();
  { auto warm = tensor<float>::zeros({256, 1024}); }  // 1 MiB: cached on release
  const auto before = memory_stats();
  for (int i = 0; i < 10; ++i) {
    auto t = tensor<float>::zeros({256, 1024});
    t.flat(5) = 1.f;
    REQUIRE(reinterpret_cast<std::uintptr_t>(t.data()) % 64 == 0);
  }
  const auto after = memory_stats();
  CHECK(after.system_allocations == before.system_allocations);
  CHECK(after.reused_allocations == before.reused_allocations + 10);
  release_cached_memory();
  CHECK(memory_stats().bytes_cached == 0);
}

TEST_CASE("max_threads reports an active thread_limit", "[core]") {
  const int all = ghnq::max_threads();
  REQUIRE(all >= 1);
  {
    ghnq::thread_limit one(1);
    CHECK(ghnq::max_threads() == 1);
    std::atomic<int> seen{0};
    ghnq::parallel_for(0, 64, 1, [&](std::int64_t a, std::int64_t b) { seen += static_cast<int>(b - a); });
    CHECK(seen == 64);
  }
  CHECK(ghnq::max_threads() == all);
}

TEST_CASE("the header version matches the CMake project version", "[core]") {
  CHECK(std::string(ghnq::version_string) == GHNQ_PROJECT_VERSION);
  CHECK(std::to_string(GHNQ_VERSION_MAJOR) + "." + std::to_string(GHNQ_VERSION_MINOR) + "." +
            std::to_string(GHNQ_VERSION_PATCH) ==
        GHNQ_PROJECT_VERSION);
}

TEST_CASE("undefined and oversized tensors are errors, not crashes", "[tensor]") {
  tensor<float> u;
  CHECK(u.numel() == 0);
  CHECK(u.to_vector().empty());
  CHECK_THROWS_AS(u.clone(), value_error);
  CHECK_THROWS_AS(tensor<float>({std::int64_t(1) << 32, std::int64_t(1) << 32}), shape_error);
  autograd::tape<float> tp;
  auto x = autograd::var<float>(tensor<float>::from({1}, {1.f}));  // no gradient required
  CHECK_THROWS_AS(tp.backward(nn::relu(tp, x)), value_error);
}
