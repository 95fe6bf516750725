// Tests of the CUDA backend (built only with -DGHNQ_WITH_CUDA=ON, as the executable ghnq_cuda_tests).
// Device results are compared with the CPU backend. Where no CUDA device can be used, every test
// that needs one WARNs "no CUDA device: skipping ..." and returns (Catch2 v2 has no SKIP).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ghnq/backend/cpu/gemm.hpp"
#include "ghnq/backend/cuda.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/tensor/tensor.hpp"

#if !GHNQ_HAS_CUDA
#error "tests/cuda needs GHNQ_HAS_CUDA=1 (configure with -DGHNQ_WITH_CUDA=ON)"
#endif

using ghnq::backend::cpu_t;
using ghnq::backend::cuda_t;

#define GHNQ_REQUIRE_DEVICE(what)                                                          \
  do {                                                                                     \
    if (!ghnq::cuda::available()) {                                                        \
      WARN("no CUDA device: skipping " << what << " [" << ghnq::cuda::device_summary() << "]"); \
      return;                                                                              \
    }                                                                                      \
  } while (0)

namespace {

template <class T>
std::vector<T> random_values(std::size_t n, std::uint64_t seed) {
  ghnq::rng g(seed);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(g.uniform(-1.0, 1.0));
  return v;
}

template <class T>
ghnq::tensor<T> random_host(const ghnq::shape& s, std::uint64_t seed) {
  return ghnq::tensor<T>::from(s, random_values<T>(static_cast<std::size_t>(s.numel()), seed));
}

}  // namespace

TEST_CASE("cuda: device query never throws", "[cuda]") {
  int n = -1;
  REQUIRE_NOTHROW(n = ghnq::cuda::device_count());
  CHECK(n >= 0);
  CHECK(ghnq::cuda::available() == (n > 0));
  const std::string summary = ghnq::cuda::device_summary();
  CHECK_FALSE(summary.empty());
  INFO(summary);
  if (n == 0) {
    // Without a device, memory operations fail with a backend_error naming CUDA and the call site.
    using mem = ghnq::backend::impl<cuda_t, ghnq::backend::op::memory>;
    try {
      void* p = mem::allocate(64);
      mem::deallocate(p);
      FAIL("cudaMalloc succeeded although device_count() == 0");
    } catch (const ghnq::backend_error& e) {
      const std::string what = e.what();
      CHECK_THAT(what, Catch::Contains("CUDA error") && Catch::Contains("cudaMalloc") &&
                           Catch::Contains("memory.hpp:"));
    }
    float host[4] = {};
    CHECK_THROWS_AS(mem::copy_to_host(host, host, sizeof host), ghnq::backend_error);
    CHECK_THROWS_WITH(mem::zero(host, sizeof host), Catch::Contains("cudaMemset") && Catch::Contains("memory.hpp:"));
    mem::deallocate(nullptr);  // noexcept, no-op
    CHECK(ghnq::cuda::available() == false);  // the failures above left no sticky state
    WARN("no CUDA device: only the error paths were tested here [" << summary << "]");
  }
}

TEMPLATE_TEST_CASE("cuda: host -> device -> host round trip", "[cuda][memory]", float, double) {
  GHNQ_REQUIRE_DEVICE("host/device round trip");
  using T = TestType;
  for (const auto& s : {ghnq::shape({3, 5, 7}), ghnq::shape({1}), ghnq::shape({1000, 33}), ghnq::shape({0, 4})}) {
    auto h = random_host<T>(s, 11);
    auto d = ghnq::to_backend<cuda_t>(h);
    static_assert(std::is_same_v<decltype(d), ghnq::tensor<T, cuda_t>>);
    CHECK(d.shape() == s);
    CHECK(d.defined());
    auto back = ghnq::to_backend<cpu_t>(d);
    REQUIRE(back.shape() == s);
    CHECK(back.to_vector() == h.to_vector());
    CHECK(d.to_vector() == h.to_vector());
  }
  // from() uploads, and a strided host view is packed before the upload.
  auto d = ghnq::tensor<T, cuda_t>::from({2, 3}, {T(1), T(2), T(3), T(4), T(5), T(6)});
  CHECK(d.to_vector() == std::vector<T>{1, 2, 3, 4, 5, 6});
  auto h = random_host<T>({4, 6}, 12);
  auto ht = h.transpose(0, 1);
  CHECK(ghnq::to_backend<cuda_t>(ht).to_vector() == ht.contiguous().to_vector());
}

TEMPLATE_TEST_CASE("cuda: zero, clone and copy on the device", "[cuda][memory]", float, double) {
  GHNQ_REQUIRE_DEVICE("zero/clone");
  using T = TestType;
  const ghnq::shape s({17, 9});
  auto h = random_host<T>(s, 21);
  auto d = ghnq::to_backend<cuda_t>(h);

  auto c = d.clone();  // device-to-device copy into a new buffer
  CHECK_FALSE(c.same_data(d));
  d.set_zero();
  CHECK(d.to_vector() == std::vector<T>(static_cast<std::size_t>(s.numel()), T(0)));
  CHECK(c.to_vector() == h.to_vector());  // the clone kept its values

  d.copy_from(c);
  CHECK(d.to_vector() == h.to_vector());
  CHECK(ghnq::tensor<T, cuda_t>::zeros(s).to_vector() == std::vector<T>(static_cast<std::size_t>(s.numel()), T(0)));

  // Views share device memory: a row slice of a clone is read back correctly.
  auto row = c.select(3);
  const auto hv = h.to_vector();
  CHECK(row.to_vector() == std::vector<T>(hv.begin() + 3 * 9, hv.begin() + 4 * 9));
  CHECK_THROWS_AS(c.transpose(0, 1).clone(), ghnq::unsupported_error);
}

TEST_CASE("cuda: device_buffer is an owning move-only array", "[cuda][memory]") {
  static_assert(!std::is_copy_constructible_v<ghnq::cuda::device_buffer<float>>);
  static_assert(std::is_nothrow_move_constructible_v<ghnq::cuda::device_buffer<float>>);
  GHNQ_REQUIRE_DEVICE("device_buffer");
  const auto v = random_values<float>(100, 31);
  ghnq::cuda::device_buffer<float> a(v.size());
  a.upload(v.data(), v.size());
  ghnq::cuda::device_buffer<float> b(std::move(a));
  CHECK(a.data() == nullptr);
  CHECK(a.size() == 0);
  CHECK(b.size() == 100);
  CHECK(b.to_vector() == v);
  a = std::move(b);
  CHECK(a.to_vector() == v);
  a.zero();
  CHECK(a.to_vector() == std::vector<float>(100, 0.f));
  CHECK_THROWS_AS(a.upload(v.data(), 101), ghnq::value_error);
  CHECK(ghnq::backend::impl<cuda_t, ghnq::backend::op::memory>::last_deallocate_error() == cudaSuccess);
}

TEMPLATE_TEST_CASE("cuda: GEMM matches the CPU backend for all transpositions", "[cuda][gemm]", float, double) {
  GHNQ_REQUIRE_DEVICE("cuBLAS GEMM");
  using T = TestType;
  using cpu_gemm = ghnq::backend::impl<cpu_t, ghnq::backend::op::gemm>;
  using gpu_gemm = ghnq::backend::impl<cuda_t, ghnq::backend::op::gemm>;
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;  // relative to max |C|
  std::uint64_t seed = 100;
  // (m, n, k, pad): pad > 0 makes every leading dimension larger than its row.
  for (auto [m, n, k, pad] : {std::tuple<long, long, long, long>{1, 1, 1, 0}, {7, 5, 3, 0}, {33, 17, 65, 3},
                              {128, 96, 64, 0}, {64, 130, 257, 5}, {6, 4, 0, 1}}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        for (T beta : {T(0), T(0.5)}) {
          const T alpha = T(1.5);
          const long ar = ta ? k : m, ac = ta ? m : k;  // stored A: ar x ac
          const long br = tb ? n : k, bc = tb ? k : n;  // stored B: br x bc
          const long lda = ac + pad, ldb = bc + pad, ldc = n + pad;
          auto a = random_values<T>(static_cast<std::size_t>(std::max(ar * lda, 1L)), ++seed);
          auto b = random_values<T>(static_cast<std::size_t>(std::max(br * ldb, 1L)), ++seed);
          auto c = random_values<T>(static_cast<std::size_t>(m * ldc), ++seed);
          // beta == 0: C must not be read (NaN stays out of the result).
          if (beta == T(0)) std::fill(c.begin(), c.end(), std::numeric_limits<T>::quiet_NaN());
          auto ref = c;
          cpu_gemm::run(ta, tb, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, ref.data(), ldc);

          auto da = ghnq::tensor<T, cuda_t>::from({static_cast<std::int64_t>(a.size())}, a);
          auto db = ghnq::tensor<T, cuda_t>::from({static_cast<std::int64_t>(b.size())}, b);
          auto dc = ghnq::tensor<T, cuda_t>::from({static_cast<std::int64_t>(c.size())}, c);
          gpu_gemm::run(ta, tb, m, n, k, alpha, da.data(), lda, db.data(), ldb, beta, dc.data(), ldc);
          const auto got = dc.to_vector();

          INFO("m=" << m << " n=" << n << " k=" << k << " pad=" << pad << " trans_a=" << ta << " trans_b=" << tb
                    << " beta=" << beta);
          double max_ref = 0, max_err = 0;
          bool finite = true;
          for (long i = 0; i < m; ++i) {
            for (long j = 0; j < n; ++j) {
              const auto idx = static_cast<std::size_t>(i * ldc + j);
              finite = finite && std::isfinite(static_cast<double>(got[idx]));
              max_ref = std::max(max_ref, std::abs(static_cast<double>(ref[idx])));
              max_err = std::max(max_err, std::abs(static_cast<double>(got[idx]) - static_cast<double>(ref[idx])));
            }
            // The padding between rows is left untouched.
            for (long j = n; j < ldc; ++j) {
              const auto idx = static_cast<std::size_t>(i * ldc + j);
              CHECK((got[idx] == c[idx] || (std::isnan(got[idx]) && std::isnan(c[idx]))));
            }
          }
          CHECK(finite);
          CHECK(max_err <= tol * std::max(max_ref, 1.0));
        }
      }
    }
  }
}

TEST_CASE("cuda: GEMM reports cuBLAS and size errors", "[cuda][gemm]") {
  GHNQ_REQUIRE_DEVICE("cuBLAS error reporting");
  using gpu_gemm = ghnq::backend::impl<cuda_t, ghnq::backend::op::gemm>;
  auto d = ghnq::tensor<float, cuda_t>::zeros({64});
  // lda = 1 is smaller than a row of A (k = 4): cuBLAS rejects it.
  CHECK_THROWS_WITH(gpu_gemm::run(false, false, 4L, 4L, 4L, 1.f, d.data(), 1L, d.data(), 4L, 0.f, d.data(), 4L),
                    Catch::Contains("CUBLAS_STATUS_INVALID_VALUE") && Catch::Contains("gemm.hpp:"));
  CHECK_THROWS_AS(gpu_gemm::run(false, false, 1L << 40, 1L, 1L, 1.f, d.data(), 1L, d.data(), 1L, 0.f, d.data(), 1L),
                  ghnq::value_error);
}
