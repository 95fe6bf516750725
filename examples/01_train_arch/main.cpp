// 01_train_arch: train one architecture from scratch on Fashion-MNIST through the executor.
//
// The architecture is a ready-made family, a ghnq JSON file, or a sample of the DeepNets-1M
// conv space. Prints progress, test accuracy and training throughput (images/s).
//
// Usage: 01_train_arch [--family resnet20|resnet18|vgg11|mobilenet_v2] [--json FILE]
//                      [--sample SEED [--width C]] [--epochs E] [--batch B] [--lr LR]
//                      [--threads T] [--seed S] [--data DIR] [--train-limit N] [--test-limit N]
//                      [--save-arch FILE]
#include <ghnq/ghn.hpp>

#include "../common/cli_args.hpp"

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

namespace {

using T = float;
using var = ghnq::autograd::var<T>;
using tape = ghnq::autograd::tape<T>;

struct options {
  std::string family = "resnet20", json, save_arch, data;
  long long sample = -1;
  int width = 32, epochs = 1, threads = 0;
  std::int64_t batch = 64, train_limit = 0, test_limit = 0;
  double lr = 0.05;
  std::uint64_t seed = 1;
};

options parse(int argc, char** argv) {
  const cli::args a(argc - 1, argv + 1, {},
                    "usage: 01_train_arch [--family NAME | --json FILE | --sample SEED [--width C]] [--epochs E]\n"
                    "                     [--batch B] [--lr LR] [--threads T] [--seed S] [--data DIR]\n"
                    "                     [--train-limit N] [--test-limit N] [--save-arch FILE]\n");
  a.allow({"--family", "--json", "--sample", "--width", "--epochs", "--batch", "--lr", "--threads", "--seed", "--data",
           "--train-limit", "--test-limit", "--save-arch"});
  options o;
  o.family = a.str("--family", o.family);
  o.json = a.str("--json");
  o.sample = a.integer("--sample", o.sample);
  o.width = static_cast<int>(a.integer("--width", o.width));
  o.epochs = static_cast<int>(a.integer("--epochs", o.epochs));
  o.batch = a.integer("--batch", o.batch);
  o.lr = a.real("--lr", o.lr);
  o.threads = static_cast<int>(a.integer("--threads", o.threads));
  o.seed = static_cast<std::uint64_t>(a.integer("--seed", static_cast<long long>(o.seed)));
  o.data = a.str("--data");
  o.train_limit = a.integer("--train-limit", o.train_limit);
  o.test_limit = a.integer("--test-limit", o.test_limit);
  o.save_arch = a.str("--save-arch");
  if (o.epochs < 1 || o.batch < 1 || !(o.lr > 0)) throw ghnq::value_error("epochs, batch and lr must be positive");
  return o;
}


ghnq::arch::network make_arch(const options& o) {
  if (!o.json.empty()) return ghnq::arch::load_json(o.json);
  if (o.sample >= 0) {
    ghnq::arch::sampler s({}, static_cast<std::uint64_t>(o.sample));
    auto a = s.next(ghnq::arch::split::test);
    a.C = o.width;
    auto net = ghnq::arch::deepnets_network(a, 1, 28, 28, 10);
    net.name = "deepnets-conv#" + std::to_string(o.sample);
    return net;
  }
  auto net = ghnq::arch::family(o.family, 1, 28, 28, 10);
  net.name = o.family;
  return net;
}

}  // namespace

int main(int argc, char** argv) try {
  const options opt = parse(argc, argv);
  std::unique_ptr<ghnq::thread_limit> limit;
  if (opt.threads > 0) limit = std::make_unique<ghnq::thread_limit>(opt.threads);

  const auto net = make_arch(opt);
  if (!opt.save_arch.empty()) ghnq::arch::save_json(net, opt.save_arch);
  ghnq::exec::executor<ghnq::backend::cpu_t, T> ex(net);
  const auto train = ghnq::data::load_fashion_mnist(ghnq::data::split::train, opt.data).head(opt.train_limit);
  const auto test = ghnq::data::load_fashion_mnist(ghnq::data::split::test, opt.data).head(opt.test_limit);
  std::printf("ghnq %s | %s: %zu ops, %lld parameters | Fashion-MNIST %lld/%lld | %d threads\n",
              ghnq::version_string, net.name.c_str(), net.ops.size(),
              static_cast<long long>(ghnq::arch::num_params(net)), static_cast<long long>(train.size()),
              static_cast<long long>(test.size()), ghnq::max_threads());

  ghnq::rng g(opt.seed);
  auto params = ex.init_parameters(g);
  ghnq::train::sgd_options so;
  so.lr = opt.lr;
  so.momentum = 0.9;
  so.nesterov = true;
  so.weight_decay = 5e-4;
  ghnq::train::sgd<T> optim(params, so);

  ghnq::data::loader_options lo;
  lo.batch_size = opt.batch;
  lo.seed = opt.seed;
  lo.norm = ghnq::data::fashion_mnist_normalization();
  ghnq::data::loader ld(train, lo);
  const std::int64_t total = ld.batches_per_epoch() * opt.epochs;
  const ghnq::train::warmup_cosine_lr sched(opt.lr, std::min<std::int64_t>(100, total / 10), total);

  ghnq::exec::run_options ro;
  ro.bn = ghnq::exec::bn_mode::batch_stats;
  ro.update_running_stats = true;
  ro.dropout = true;
  std::int64_t step = 0, images = 0;
  double train_seconds = 0;
  ghnq::data::batch b;
  tape tp;
  for (int epoch = 0; epoch < opt.epochs; ++epoch) {
    ld.start_epoch(epoch);
    ghnq::io::progress bar("epoch " + std::to_string(epoch + 1), ld.batches_per_epoch(), "img",
                           static_cast<double>(opt.batch));
    const auto t0 = std::chrono::steady_clock::now();
    double loss_avg = 0;
    std::int64_t i = 0;
    while (ld.next(b)) {
      optim.set_lr(sched.lr_at(step));
      ro.dropout_seed = opt.seed * 1000003 + static_cast<std::uint64_t>(step);
      auto loss = ghnq::nn::cross_entropy(tp, ex.forward(tp, var(b.images), params, ro), b.labels);
      optim.zero_grad();
      tp.backward(loss);
      optim.step();
      const double l = loss.value().flat(0);
      loss_avg = i == 0 ? l : 0.98 * loss_avg + 0.02 * l;
      ++i;
      ++step;
      images += static_cast<std::int64_t>(b.labels.size());
      char extra[64];
      std::snprintf(extra, sizeof extra, "loss %.4f", loss_avg);
      bar.update(i, extra);
    }
    train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    char extra[64];
    std::snprintf(extra, sizeof extra, "loss %.4f", loss_avg);
    bar.finish(extra);
  }

  // Evaluation with the running statistics collected during training.
  ghnq::data::loader_options eo = lo;
  eo.batch_size = 500;
  eo.shuffle = false;
  ghnq::data::loader el(test, eo);
  el.start_epoch(0);
  ghnq::exec::run_options er;
  er.bn = ghnq::exec::bn_mode::running_stats;
  std::int64_t correct = 0, seen = 0;
  {
    ghnq::autograd::no_grad<tape> ng(tp);
    while (el.next(b)) {
      correct += ghnq::nn::count_correct(ex.forward(tp, var(b.images), params, er).value(), b.labels);
      seen += static_cast<std::int64_t>(b.labels.size());
    }
  }
  std::printf("test accuracy: %.2f%% | training %.1f images/s (%.1f s)\n",
              seen ? 100.0 * static_cast<double>(correct) / static_cast<double>(seen) : 0.0,
              static_cast<double>(images) / train_seconds, train_seconds);
  return 0;
} catch (const ghnq::error& e) {
  std::fprintf(stderr, "01_train_arch: %s\n", e.what());
  return 1;
}
