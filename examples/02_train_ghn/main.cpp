// 02_train_ghn: train a GHN-2 on Fashion-MNIST with meta-batches of DeepNets-1M architectures,
// then evaluate the parameters it predicts for unseen architectures against the same GHN
// untrained.
//
// Usage: 02_train_ghn [--steps N] [--meta-batch M] [--batch B] [--lr LR] [--schedule S]
//                     [--fixed-width] [--eval-archs N] [--test-limit N] [--families]
//                     [--threads T] [--seed S] [--data DIR] [--log FILE.jsonl] [--csv FILE]
//                     [--checkpoint FILE]
#include <ghnq/ghn.hpp>

#include "../common/cli_args.hpp"

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

namespace {

using config = ghnq::ghn2_config<>;

struct options {
  std::int64_t steps = 300, batch = 64, test_limit = 0;
  int meta_batch = 8, eval_archs = 100, threads = 0;
  double lr = 1e-3;
  std::string schedule = "cosine", data, log, csv, checkpoint;
  bool fixed_width = false, families = false;
  std::uint64_t seed = 1111;
};

options parse(int argc, char** argv) {
  const cli::args a(argc - 1, argv + 1, {"--fixed-width", "--families"},
                    "usage: 02_train_ghn [--steps N] [--meta-batch M] [--batch B] [--lr LR] [--schedule S]\n"
                    "                    [--fixed-width] [--eval-archs N] [--test-limit N] [--families]\n"
                    "                    [--threads T] [--seed S] [--data DIR] [--log FILE.jsonl] [--csv FILE]\n"
                    "                    [--checkpoint FILE]\n");
  a.allow({"--steps", "--meta-batch", "--batch", "--lr", "--schedule", "--fixed-width", "--eval-archs", "--test-limit",
           "--families", "--threads", "--seed", "--data", "--log", "--csv", "--checkpoint"});
  options o;
  o.steps = a.integer("--steps", o.steps);
  o.meta_batch = static_cast<int>(a.integer("--meta-batch", o.meta_batch));
  o.batch = a.integer("--batch", o.batch);
  o.lr = a.real("--lr", o.lr);
  o.schedule = a.str("--schedule", o.schedule);
  o.fixed_width = a.has("--fixed-width");
  o.eval_archs = static_cast<int>(a.integer("--eval-archs", o.eval_archs));
  o.test_limit = a.integer("--test-limit", o.test_limit);
  o.families = a.has("--families");
  o.threads = static_cast<int>(a.integer("--threads", o.threads));
  o.seed = static_cast<std::uint64_t>(a.integer("--seed", static_cast<long long>(o.seed)));
  o.data = a.str("--data");
  o.log = a.str("--log");
  o.csv = a.str("--csv");
  o.checkpoint = a.str("--checkpoint");
  return o;
}

void print_table(const char* title, const std::vector<ghnq::ghn::arch_eval>& rows) {
  std::printf("%s\n  %-10s %5s %16s %8s %8s\n", title, "group", "n", "top-1 mean±SE", "max", "min");
  for (const auto& g : ghnq::ghn::groups_of(rows)) {
    const auto s = ghnq::ghn::summarize(rows, g);
    std::printf("  %-10s %5zu %9.2f ± %4.2f %8.2f %8.2f\n", g.c_str(), s.n, s.mean, s.se, s.max, s.min);
  }
}

}  // namespace

int main(int argc, char** argv) try {
  const options opt = parse(argc, argv);
  std::unique_ptr<ghnq::thread_limit> limit;
  if (opt.threads > 0) limit = std::make_unique<ghnq::thread_limit>(opt.threads);
  const auto train = ghnq::data::load_fashion_mnist(ghnq::data::split::train, opt.data);
  const auto test = ghnq::data::load_fashion_mnist(ghnq::data::split::test, opt.data).head(opt.test_limit);

  ghnq::rng g(opt.seed);
  ghnq::hypernet<config> ghn(g);
  std::printf("ghnq %s | GHN-2 H=%d, %lld parameters | Fashion-MNIST %lld/%lld | %d threads\n",
              ghnq::version_string, config::kHidden, static_cast<long long>(ghn.num_params()),
              static_cast<long long>(train.size()), static_cast<long long>(test.size()), ghnq::max_threads());

  auto archs = ghnq::ghn::held_out_architectures(ghnq::arch::variant::in_distribution, opt.eval_archs, opt.seed, 1,
                                                 28, 28, 10);
  if (opt.families) {
    auto f = ghnq::ghn::family_architectures(1, 28, 28, 10);
    archs.insert(archs.end(), f.begin(), f.end());
  }
  ghnq::ghn::eval_options eo;
  eo.norm = ghnq::data::fashion_mnist_normalization();
  auto t0 = std::chrono::steady_clock::now();
  const auto before = ghnq::ghn::evaluate(ghn, archs, test, eo);
  print_table("untrained GHN:", before);
  std::printf("  (%.1f s)\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

  ghnq::ghn::train_options to;
  to.steps = opt.steps;
  to.meta_batch = opt.meta_batch;
  to.batch_size = opt.batch;
  to.lr = opt.lr;
  to.schedule = ghnq::ghn::parse_schedule(opt.schedule);
  to.sample_widths = !opt.fixed_width;
  to.seed = opt.seed;
  to.norm = ghnq::data::fashion_mnist_normalization();
  ghnq::ghn::trainer<config> tr(ghn, train, to);
  ghnq::ghn::fit_options fo;
  fo.log_path = opt.log;
  fo.checkpoint_path = opt.checkpoint;
  t0 = std::chrono::steady_clock::now();
  const auto steps = ghnq::ghn::fit(tr, fo);
  const double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double last_loss = 0, last_acc = 0;
  const std::size_t tail = std::min<std::size_t>(20, steps.size());
  for (std::size_t i = steps.size() - tail; i < steps.size(); ++i) {
    last_loss += steps[i].loss / static_cast<double>(tail);
    last_acc += steps[i].accuracy / static_cast<double>(tail);
  }
  std::printf("trained %lld steps in %.1f s (%.2f s/step); last %zu steps: loss %.3f, training accuracy %.1f%%\n",
              static_cast<long long>(opt.steps), train_s, train_s / static_cast<double>(opt.steps), tail, last_loss,
              100 * last_acc);
  const auto after = ghnq::ghn::evaluate(ghn, archs, test, eo);
  print_table("trained GHN:", after);
  if (!opt.csv.empty()) ghnq::ghn::write_csv(opt.csv, after);
  return 0;
} catch (const ghnq::error& e) {
  std::fprintf(stderr, "02_train_ghn: %s\n", e.what());
  return 1;
}
