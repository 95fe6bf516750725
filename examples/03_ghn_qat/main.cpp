// 03_ghn_qat: GHN-QAT with the library API. A quantization-aware GHN (ghn2q_config) is trained in
// float (or loaded), then fine-tuned with W b / A b fake quantization in the loop; both GHNs
// predict the parameters of unseen architectures, which are evaluated in float and quantized.
// The `ghnq experiment qat` command runs the full study (more rows, both BN modes, CSV / SVG).
//
// Usage: 03_ghn_qat [--steps N] [--ft-steps N] [--bits B] [--meta-batch M] [--eval-archs N]
//                   [--test-limit N] [--init FP_GHN.safetensors] [--threads T] [--seed S] [--data DIR]
#include <ghnq/ghn.hpp>

#include "../common/cli_args.hpp"

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

using config = ghnq::ghn2q_config<>;  // GHN-2 + bit-width embedding + quant head

struct options {
  std::int64_t steps = 200, ft_steps = 100, test_limit = 1000;
  int bits = 4, meta_batch = 8, eval_archs = 20, threads = 0;
  std::string init, data;
  std::uint64_t seed = 1111;
};

options parse(int argc, char** argv) {
  const cli::args a(argc - 1, argv + 1, {},
                    "usage: 03_ghn_qat [--steps N] [--ft-steps N] [--bits B] [--meta-batch M] [--eval-archs N]\n"
                    "                  [--test-limit N] [--init FP_GHN.safetensors] [--threads T] [--seed S] [--data DIR]\n");
  a.allow({"--steps", "--ft-steps", "--bits", "--meta-batch", "--eval-archs", "--test-limit", "--init", "--threads",
           "--seed", "--data"});
  options o;
  o.steps = a.integer("--steps", o.steps);
  o.ft_steps = a.integer("--ft-steps", o.ft_steps);
  o.bits = static_cast<int>(a.integer("--bits", o.bits));
  o.meta_batch = static_cast<int>(a.integer("--meta-batch", o.meta_batch));
  o.eval_archs = static_cast<int>(a.integer("--eval-archs", o.eval_archs));
  o.test_limit = a.integer("--test-limit", o.test_limit);
  o.init = a.str("--init");
  o.threads = static_cast<int>(a.integer("--threads", o.threads));
  o.seed = static_cast<std::uint64_t>(a.integer("--seed", static_cast<long long>(o.seed)));
  o.data = a.str("--data");
  if (o.bits < 2 || o.bits > 8) throw ghnq::value_error("--bits must be in [2, 8], got " + std::to_string(o.bits));
  return o;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) try {
  const options opt = parse(argc, argv);
  std::unique_ptr<ghnq::thread_limit> limit;
  if (opt.threads > 0) limit = std::make_unique<ghnq::thread_limit>(opt.threads);
  const auto train = ghnq::data::load_fashion_mnist(ghnq::data::split::train, opt.data);
  const auto test = ghnq::data::load_fashion_mnist(ghnq::data::split::test, opt.data).head(opt.test_limit);
  const auto norm = ghnq::data::fashion_mnist_normalization();

  // 1. The float GHN: loaded, or trained here (the GHN-Q baseline: quantized only at test time).
  ghnq::rng g(opt.seed);
  ghnq::hypernet<config> fp(g);
  ghnq::ghn::train_options to;
  to.steps = opt.steps;
  to.meta_batch = opt.meta_batch;
  to.schedule = ghnq::ghn::schedule_kind::cosine;
  to.sample_widths = false;
  to.seed = opt.seed;
  to.norm = norm;
  auto t0 = std::chrono::steady_clock::now();
  if (!opt.init.empty()) {
    ghnq::ghn::load_checkpoint(opt.init, fp);
    std::printf("FP GHN: %s\n", opt.init.c_str());
  } else {
    ghnq::ghn::trainer<config> tr(fp, train, to);
    ghnq::ghn::fit(tr, {});
    std::printf("FP GHN: %lld steps in %.0f s\n", static_cast<long long>(opt.steps), seconds_since(t0));
  }

  // 2. GHN-QAT: a copy of the float GHN fine-tuned with W b / A b fake quantization in the loop
  //    (straight-through gradients through the quantizers into the GHN), lr halved.
  ghnq::hypernet<config> qat(g);
  {
    const auto src = fp.parameters();
    const auto dst = qat.parameters();
    for (std::size_t i = 0; i < src.size(); ++i) dst[i].value().copy_from(src[i].value());
  }
  ghnq::ghn::train_options qo = to;
  qo.steps = opt.ft_steps;
  qo.lr = to.lr * 0.5;
  qo.strat = ghnq::ghn::strategy::qat;
  qo.quant.w_bits = qo.quant.a_bits = opt.bits;
  t0 = std::chrono::steady_clock::now();
  {
    ghnq::ghn::trainer<config> tr(qat, train, qo);
    ghnq::ghn::fit(tr, {});
  }
  std::printf("QAT-%d GHN: %lld fine-tuning steps in %.0f s\n", opt.bits, static_cast<long long>(opt.ft_steps),
              seconds_since(t0));

  // 3. Unseen architectures of the test split, float and quantized (BN: test-batch statistics).
  const auto archs = ghnq::ghn::held_out_architectures(ghnq::arch::variant::in_distribution, opt.eval_archs, 0,
                                                       train.channels(), train.height(), train.width(), 10);
  const std::vector<std::string> columns{"FP32", "W8A8", "W" + std::to_string(opt.bits) + "A" + std::to_string(opt.bits)};
  std::printf("\nmean top-1 %% ± SE over %zu unseen architectures (%lld test images)\n%-10s", archs.size(),
              static_cast<long long>(test.size()), "GHN");
  for (const auto& c : columns) std::printf(" %16s", c.c_str());
  std::printf("\n");
  for (const auto* which : {&fp, &qat}) {
    std::printf("%-10s", which == &fp ? "FP" : ("QAT-" + std::to_string(opt.bits)).c_str());
    for (const auto& c : columns) {
      ghnq::ghn::eval_options eo;
      eo.norm = norm;
      eo.quant = ghnq::exec::parse_quant_name(c, {});
      const auto s = ghnq::ghn::summarize(ghnq::ghn::evaluate(*which, archs, test, eo), "test");
      std::printf(" %9.2f ± %4.2f", s.mean, s.se);
      std::fflush(stdout);
    }
    std::printf("\n");
  }
  return 0;
} catch (const ghnq::error& e) {
  std::fprintf(stderr, "03_ghn_qat: %s\n", e.what());
  return 1;
}
