#include <catch2/catch.hpp>

#include "ghnq/nn/spatial.hpp"
#include "support/gradcheck.hpp"

using namespace ghnq;

TEMPLATE_TEST_CASE("subsample and channel_scale match naive loops", "[nn][spatial]", float, double) {
  rng g(21);
  autograd::tape<TestType> tp;
  auto x = autograd::var<TestType>(test::random_tensor<TestType>({2, 3, 5, 6}, g));
  auto y = nn::subsample(tp, x, 2);
  REQUIRE(y.shape() == shape({2, 3, 3, 3}));
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) REQUIRE(y.value()(n, c, i, j) == x.value()(n, c, 2 * i, 2 * j));
  auto s = autograd::var<TestType>(test::random_tensor<TestType>({2, 3}, g));
  auto z = nn::channel_scale(tp, x, s);
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 5; ++i)
        for (int j = 0; j < 6; ++j) REQUIRE(z.value()(n, c, i, j) == x.value()(n, c, i, j) * s.value()(n, c));
  CHECK_THROWS_AS(nn::channel_scale(tp, x, autograd::var<TestType>(tensor<TestType>::zeros({2, 4}))), shape_error);
  CHECK_THROWS_AS(nn::subsample(tp, x, 0), value_error);
  auto c = nn::crop(tp, x, 1, 2);
  REQUIRE(c.shape() == shape({2, 3, 4, 4}));
  CHECK(c.value()(1, 2, 3, 3) == x.value()(1, 2, 4, 5));
  CHECK_THROWS_AS(nn::crop(tp, x, 5, 0), shape_error);
}

TEST_CASE("subsample, channel_scale and sum: gradient check", "[nn][spatial][gradcheck]") {
  rng g(5);
  auto x = autograd::parameter(test::random_tensor<double>({2, 3, 5, 4}, g), "x");
  auto s = autograd::parameter(test::random_tensor<double>({2, 3}, g), "s");
  auto u = autograd::parameter(test::random_tensor<double>({2, 3, 3, 2}, g), "u");
  test::check_gradients(
      [](test::dtape& tp, std::vector<test::dvar>& in) {
        auto a = nn::subsample(tp, nn::channel_scale(tp, in[0], in[1]), 2);
        auto c = nn::crop(tp, in[0], 2, 2);  // [2, 3, 3, 2]
        return nn::sum(tp, {a, in[2], a, c});
      },
      {x, s, u});
}
