// A 20-line user program: one gradient step of a linear layer through the public API.
#include <ghnq/ghn.hpp>

#include <cstdio>

int main() {
  ghnq::rng g(1);
  auto x = ghnq::autograd::var<float>(ghnq::tensor<float>::from({2, 3}, {1, 2, 3, 4, 5, 6}));
  auto w = ghnq::autograd::parameter(ghnq::tensor<float>::zeros({2, 3}));
  for (std::int64_t i = 0; i < w.value().numel(); ++i) w.value().flat(i) = static_cast<float>(g.normal());
  ghnq::autograd::tape<float> tp;
  auto y = ghnq::nn::linear(tp, x, w);
  tp.backward(y, ghnq::tensor<float>::from({2, 2}, {1, 1, 1, 1}));
  const float expect = 1 + 4;  // d(sum y)/d w[0][0] = x[0][0] + x[1][0]
  std::printf("ghnq %s: dw00 = %g\n", ghnq::version_string, w.grad()(0, 0));
  return w.grad()(0, 0) == expect ? 0 : 1;
}
