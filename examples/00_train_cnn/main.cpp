// 00_train_cnn: train a small fixed CNN with SGD on Fashion-MNIST and report test accuracy.
//
//   conv3x3(1->32)-BN-ReLU-maxpool/2 -> conv3x3(32->64)-BN-ReLU-maxpool/2 -> fc(3136->128)-ReLU -> fc(128->10)
//
// Usage: 00_train_cnn [--epochs E] [--batch B] [--lr LR] [--threads T] [--seed S] [--data DIR]
//                     [--train-limit N] [--test-limit N]
#include <ghnq/ghn.hpp>

#include "../common/cli_args.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

using T = float;
using var = ghnq::autograd::var<T>;
using tape = ghnq::autograd::tape<T>;

struct options {
  int epochs = 1;
  std::int64_t batch = 64;
  double lr = 0.05;
  int threads = 0;
  std::uint64_t seed = 1;
  std::string data;
  std::int64_t train_limit = 0, test_limit = 0;
};

options parse(int argc, char** argv) {
  const cli::args a(argc - 1, argv + 1, {},
                    "usage: 00_train_cnn [--epochs E] [--batch B] [--lr LR] [--threads T] [--seed S] [--data DIR]\n"
                    "                    [--train-limit N] [--test-limit N]\n");
  a.allow({"--epochs", "--batch", "--lr", "--threads", "--seed", "--data", "--train-limit", "--test-limit"});
  options o;
  o.epochs = static_cast<int>(a.integer("--epochs", o.epochs));
  o.batch = a.integer("--batch", o.batch);
  o.lr = a.real("--lr", o.lr);
  o.threads = static_cast<int>(a.integer("--threads", o.threads));
  o.seed = static_cast<std::uint64_t>(a.integer("--seed", static_cast<long long>(o.seed)));
  o.data = a.str("--data");
  o.train_limit = a.integer("--train-limit", o.train_limit);
  o.test_limit = a.integer("--test-limit", o.test_limit);
  if (o.epochs < 1 || o.batch < 1 || !(o.lr > 0)) throw ghnq::value_error("epochs, batch and lr must be positive");
  return o;
}


struct cnn {
  var w1, g1, b1, w2, g2, b2, fc1, fc1b, fc2, fc2b;
  ghnq::nn::batch_norm_state<T> bn1 = ghnq::nn::batch_norm_state<T>::init(32);
  ghnq::nn::batch_norm_state<T> bn2 = ghnq::nn::batch_norm_state<T>::init(64);

  explicit cnn(ghnq::rng& g) {
    namespace init = ghnq::nn::init;
    auto make = [&](ghnq::shape s, std::int64_t fan, bool kaiming, const char* name) {
      auto t = ghnq::tensor<T>(s);
      if (kaiming) init::kaiming_normal(t, g, fan);
      else init::uniform_fan_in(t, g, fan);
      return ghnq::autograd::parameter(t, name);
    };
    auto constant = [](ghnq::shape s, T v, const char* name) {
      return ghnq::autograd::parameter(ghnq::tensor<T>::full(s, v), name);
    };
    w1 = make({32, 1, 3, 3}, 9, true, "conv1.weight");
    g1 = constant({32}, 1, "bn1.weight");
    b1 = constant({32}, 0, "bn1.bias");
    w2 = make({64, 32, 3, 3}, 288, true, "conv2.weight");
    g2 = constant({64}, 1, "bn2.weight");
    b2 = constant({64}, 0, "bn2.bias");
    fc1 = make({128, 3136}, 3136, true, "fc1.weight");
    fc1b = make({128}, 3136, false, "fc1.bias");
    fc2 = make({10, 128}, 128, false, "fc2.weight");
    fc2b = make({10}, 128, false, "fc2.bias");
  }
  std::vector<var> parameters() const { return {w1, g1, b1, w2, g2, b2, fc1, fc1b, fc2, fc2b}; }

  var forward(tape& tp, const var& x, bool training) {
    using namespace ghnq::nn;
    const auto c3 = conv2d_params::square(1, 1);
    const pool2d_params down{3, 2, 1};
    batch_norm_options bo;
    bo.training = training;
    auto h = relu(tp, batch_norm2d(tp, conv2d(tp, x, w1, var{}, c3), g1, b1, &bn1, bo));
    h = max_pool2d(tp, h, down);
    h = relu(tp, batch_norm2d(tp, conv2d(tp, h, w2, var{}, c3), g2, b2, &bn2, bo));
    h = max_pool2d(tp, h, down);
    h = relu(tp, linear(tp, flatten(tp, h), fc1, fc1b));
    return linear(tp, h, fc2, fc2b);
  }
};

double evaluate(cnn& net, const ghnq::data::dataset& test, const ghnq::data::normalization& norm) {
  ghnq::data::loader_options lo;
  lo.batch_size = 500;
  lo.shuffle = false;
  lo.norm = norm;
  ghnq::data::loader ld(test, lo);
  ld.start_epoch(0);
  ghnq::data::batch b;
  tape tp;
  ghnq::autograd::no_grad<tape> ng(tp);
  std::int64_t correct = 0, seen = 0;
  while (ld.next(b)) {
    auto logits = net.forward(tp, var(b.images), false);
    correct += ghnq::nn::count_correct(logits.value(), b.labels);
    seen += static_cast<std::int64_t>(b.labels.size());
  }
  return seen ? 100.0 * static_cast<double>(correct) / static_cast<double>(seen) : 0.0;
}

}  // namespace

int main(int argc, char** argv) try {
  const options opt = parse(argc, argv);
  std::unique_ptr<ghnq::thread_limit> limit;
  if (opt.threads > 0) limit = std::make_unique<ghnq::thread_limit>(opt.threads);
  const auto t0 = std::chrono::steady_clock::now();

  const auto train = ghnq::data::load_fashion_mnist(ghnq::data::split::train, opt.data).head(opt.train_limit);
  const auto test = ghnq::data::load_fashion_mnist(ghnq::data::split::test, opt.data).head(opt.test_limit);
  std::printf("ghnq %s | Fashion-MNIST: %lld train, %lld test images | %d threads\n", ghnq::version_string,
              static_cast<long long>(train.size()), static_cast<long long>(test.size()), ghnq::max_threads());

  ghnq::rng g(opt.seed);
  cnn net(g);
  const auto params = net.parameters();
  ghnq::train::sgd_options so;
  so.lr = opt.lr;
  so.momentum = 0.9;
  so.nesterov = true;
  so.weight_decay = 5e-4;
  ghnq::train::sgd<T> optim(params, so);

  ghnq::data::loader_options lo;
  lo.batch_size = opt.batch;
  lo.shuffle = true;
  lo.seed = opt.seed;
  lo.norm = ghnq::data::fashion_mnist_normalization();
  ghnq::data::loader ld(train, lo);
  const std::int64_t steps_per_epoch = ld.batches_per_epoch();
  const std::int64_t total_steps = steps_per_epoch * opt.epochs;
  const ghnq::train::warmup_cosine_lr sched(opt.lr, std::min<std::int64_t>(100, total_steps / 10), total_steps);

  std::int64_t step = 0;
  ghnq::data::batch b;
  tape tp;
  for (int epoch = 0; epoch < opt.epochs; ++epoch) {
    ld.start_epoch(epoch);
    ghnq::io::progress bar("epoch " + std::to_string(epoch + 1), steps_per_epoch, "img",
                           static_cast<double>(opt.batch));
    double loss_avg = 0;
    std::int64_t i = 0;
    while (ld.next(b)) {
      optim.set_lr(sched.lr_at(step));
      auto logits = net.forward(tp, var(b.images), true);
      auto loss = ghnq::nn::cross_entropy(tp, logits, b.labels);
      optim.zero_grad();
      tp.backward(loss);
      optim.step();
      const double l = loss.value().flat(0);
      loss_avg = i == 0 ? l : 0.98 * loss_avg + 0.02 * l;
      ++i;
      ++step;
      char extra[64];
      std::snprintf(extra, sizeof extra, "loss %.4f lr %.4f", loss_avg, optim.lr());
      bar.update(i, extra);
    }
    char extra[64];
    std::snprintf(extra, sizeof extra, "loss %.4f", loss_avg);
    bar.finish(extra);
  }
  const double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double acc = evaluate(net, test, lo.norm);
  const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("test accuracy: %.2f%% (%lld images) | train %.1f s | total %.1f s\n", acc,
              static_cast<long long>(test.size()), train_s, total_s);
  return 0;
} catch (const ghnq::error& e) {
  std::fprintf(stderr, "00_train_cnn: %s\n", e.what());
  return 1;
}
