// GHN training and evaluation: the multi-tape gradient path, determinism, resume, learning on an
// easy synthetic task, evaluation numbers against direct computation, summaries and CSV output.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "ghnq/ghn/checkpoint.hpp"
#include "ghnq/ghn/evaluate.hpp"
#include "ghnq/ghn/trainer.hpp"
#include "support/temp_dir.hpp"

using namespace ghnq;

namespace {

using cfg_d = ghn2_config<backend::cpu_t, double, 8, 10>;
using cfg_f = ghn2_config<backend::cpu_t, float, 8, 10>;

/// n random 1 x s x s images; with `easy`, the label is 1 when the left half is brighter.
data::dataset synthetic(std::int64_t n, std::int64_t s, bool easy, std::uint64_t seed) {
  data::dataset d;
  d.name = "synthetic";
  d.num_classes = easy ? 2 : 10;
  d.images = tensor<std::uint8_t>({n, 1, s, s});
  rng g(seed);
  for (std::int64_t i = 0; i < n; ++i) {
    const int label = static_cast<int>(g.below(static_cast<std::uint64_t>(d.num_classes)));
    for (std::int64_t y = 0; y < s; ++y)
      for (std::int64_t x = 0; x < s; ++x) {
        int v = static_cast<int>(g.below(128));
        if (easy && ((x < s / 2) == (label == 1))) v += 120;
        d.images.data()[(i * s + y) * s + x] = static_cast<std::uint8_t>(v);
      }
    d.labels.push_back(label);
  }
  return d;
}

ghn::train_options small_options() {
  ghn::train_options o;
  o.steps = 10;
  o.meta_batch = 2;
  o.batch_size = 8;
  o.sample_widths = false;
  o.space.max_params = 60000;
  o.seed = 7;
  o.schedule = ghn::schedule_kind::constant;
  return o;
}

template <class C>
std::vector<std::vector<double>> values(const hypernet<C>& h) {
  std::vector<std::vector<double>> out;
  for (const auto& p : h.parameters()) {
    const auto v = p.value().to_vector();
    out.emplace_back(v.begin(), v.end());
  }
  return out;
}

}  // namespace

TEST_CASE("ghn training: per-network tapes + backward_accumulated equal one tape over the mean loss", "[ghn][train]") {
  rng g(3);
  hypernet<cfg_d> ghn(g);
  auto opt = small_options();
  opt.meta_batch = 3;
  const auto nets = ghn::training_architectures(opt, 0, 1, 12, 12, 10);
  REQUIRE(nets.size() == 3);
  tensor<double> xt({4, 1, 12, 12});
  for (std::int64_t i = 0; i < xt.numel(); ++i) xt.data()[i] = g.uniform(-1, 1);
  const autograd::var<double> x(xt);
  const std::vector<std::int32_t> labels = {1, 4, 7, 2};

  std::vector<std::unique_ptr<exec::executor<backend::cpu_t, double>>> ex;
  std::vector<exec::executor<backend::cpu_t, double>*> exp;
  std::vector<const arch::network*> np;
  graph::graph_batch gb;
  for (const auto& n : nets) {
    ex.push_back(std::make_unique<exec::executor<backend::cpu_t, double>>(n));
    exp.push_back(ex.back().get());
    np.push_back(&ex.back()->network());
    gb.add(hypernet<cfg_d>::graph_of(n));
  }
  const auto params = ghn.parameters();
  auto grads = [&]() {
    std::vector<std::vector<double>> out;
    for (const auto& p : params) {
      if (!p.has_grad()) {
        out.emplace_back();
        continue;
      }
      const auto v = p.grad().to_vector();
      out.emplace_back(v.begin(), v.end());
      p.zero_grad();
    }
    return out;
  };
  // (a) the trainer's path: parallel per-network tapes, then the GHN tape.
  {
    autograd::tape<double> tp;
    auto preds = ghn.predict(tp, np, gb);
    exec::run_options ro;
    exec::forward_backward(exp, preds, x, labels, ro, 0.0, true);
    for (auto& ps : preds)
      for (auto& p : ps)
        if (p.requires_grad() && p.has_grad())
          for (std::int64_t i = 0; i < p.grad().numel(); ++i) p.grad().data()[i] /= 3.0;
    tp.backward_accumulated();
    REQUIRE(tp.size() == 0);
  }
  const auto ga = grads();
  // (b) one tape, mean of the three losses.
  {
    autograd::tape<double> tp;
    auto preds = ghn.predict(tp, np, gb);
    autograd::var<double> total;
    for (std::size_t k = 0; k < nets.size(); ++k) {
      auto l = nn::cross_entropy(tp, ex[k]->forward(tp, x, preds[k]), labels);
      total = total.defined() ? nn::add(tp, total, l) : l;
    }
    tp.backward(total, tensor<double>::full(total.shape(), 1.0 / 3.0));
  }
  const auto gb2 = grads();
  REQUIRE(ga.size() == gb2.size());
  std::size_t nonzero = 0;
  for (std::size_t i = 0; i < ga.size(); ++i) {
    REQUIRE(ga[i].size() == gb2[i].size());
    for (std::size_t j = 0; j < ga[i].size(); ++j) {
      INFO("parameter " << params[i].name() << " element " << j);
      REQUIRE(ga[i][j] == Approx(gb2[i][j]).margin(1e-12).epsilon(1e-9));
      nonzero += ga[i][j] != 0.0;
    }
  }
  CHECK(nonzero > 1000);
}

TEST_CASE("ghn training: deterministic, parallel == sequential, and the architectures come from the train split",
          "[ghn][train]") {
  const auto ds = synthetic(64, 12, false, 1);
  auto run = [&](bool parallel) {
    rng g(5);
    hypernet<cfg_f> ghn(g);
    auto o = small_options();
    o.parallel = parallel;
    ghn::trainer<cfg_f> tr(ghn, ds, o);
    std::vector<double> losses;
    for (int i = 0; i < 3; ++i) {
      const auto r = tr.step();
      CHECK(r.step == i);
      CHECK(!r.skipped);
      CHECK(std::isfinite(r.loss));
      CHECK(r.grad_norm > 0);
      losses.push_back(r.loss);
    }
    CHECK(tr.step_count() == 3);
    return std::make_pair(losses, values(ghn));
  };
  const auto a = run(true), b = run(true), c = run(false);
  CHECK(a.first == b.first);
  CHECK(a.second == b.second);
  CHECK(a.first == c.first);
  CHECK(a.second == c.second);

  const auto o = small_options();
  const auto n0 = ghn::training_architectures(o, 0, 1, 12, 12, 10), n0b = ghn::training_architectures(o, 0, 1, 12, 12, 10);
  const auto n1 = ghn::training_architectures(o, 1, 1, 12, 12, 10);
  REQUIRE(n0.size() == 2);
  CHECK(arch::canonical_hash(n0[0]) == arch::canonical_hash(n0b[0]));
  CHECK(arch::canonical_hash(n0[0]) != arch::canonical_hash(n1[0]));
}

TEST_CASE("ghn training: the meta-batch node filter redraws oversized draws, deterministically", "[ghn][train]") {
  auto o = small_options();
  o.meta_batch = 3;
  auto nodes = [](const std::vector<arch::network>& nets) {
    int n = 0;
    for (const auto& net : nets) n += graph::build(net, 1).n_nodes();
    return n;
  };
  o.max_nodes_batch = 0;  // off: the sampler's first draw of each step
  std::vector<int> unfiltered;
  for (int step = 0; step < 12; ++step) unfiltered.push_back(nodes(ghn::training_architectures(o, step, 1, 12, 12, 10)));
  std::vector<int> sorted = unfiltered;
  std::sort(sorted.begin(), sorted.end());
  o.max_nodes_batch = sorted[sorted.size() / 2];  // about half of the first draws exceed it
  int redrawn = 0;
  for (int step = 0; step < 12; ++step) {
    const auto nets = ghn::training_architectures(o, step, 1, 12, 12, 10);
    const int n = nodes(nets);
    CHECK(n <= o.max_nodes_batch);
    if (unfiltered[static_cast<std::size_t>(step)] > o.max_nodes_batch) {
      ++redrawn;
    } else {  // a draw within the limit is kept as it is
      CHECK(n == unfiltered[static_cast<std::size_t>(step)]);
    }
    const auto again = ghn::training_architectures(o, step, 1, 12, 12, 10);
    for (std::size_t k = 0; k < nets.size(); ++k) CHECK(arch::canonical_hash(nets[k]) == arch::canonical_hash(again[k]));
  }
  CHECK(redrawn > 0);
  // At Fashion-MNIST's 1x28x28 with the default m = 8 the filter never triggers (docs/training.md).
  auto fm = small_options();
  fm.meta_batch = 8;
  fm.sample_widths = false;
  fm.max_nodes_batch = 0;
  for (int step = 0; step < 100; ++step) CHECK(nodes(ghn::training_architectures(fm, step, 1, 28, 28, 10)) <= graph::kMaxNodesBatch);
  o.max_nodes_batch = 5;  // no network has so few nodes
  CHECK_THROWS_AS(ghn::training_architectures(o, 0, 1, 12, 12, 10), value_error);
}

TEST_CASE("ghn training: the networks of a meta-batch draw independent dropout masks", "[ghn][train]") {
  arch::builder b(1, 8, 8, 10);
  const int f = b.flatten(b.relu(b.conv(b.input(), 4, 3, 1, 1, 1, 1, true, "c")), "flat");
  const auto net = b.finish(b.linear(b.dropout(b.relu(b.linear(f, 32, true, "fc1")), 0.5, "drop"), 10, true, "fc2"), "drop_net");
  rng g(2);
  exec::executor<backend::cpu_t, float> e0(net), e1(net);
  const auto ps = e0.init_parameters(g);
  std::vector<std::vector<autograd::var<float>>> params(2);
  for (auto& set : params)
    for (const auto& p : ps) set.emplace_back(p.value().clone(), true);
  tensor<float> xt({16, 1, 8, 8});
  for (std::int64_t i = 0; i < xt.numel(); ++i) xt.data()[i] = static_cast<float>(g.normal());
  const autograd::var<float> x(xt, false);
  std::vector<std::int32_t> y(16);
  for (std::size_t i = 0; i < y.size(); ++i) y[i] = static_cast<std::int32_t>(i % 10);
  exec::run_options ro;
  ro.dropout = true;
  ro.dropout_seed = 77;
  const auto res = exec::forward_backward<backend::cpu_t, float>({&e0, &e1}, params, x, y, ro, 0.0, false);
  CHECK(res[0].loss != res[1].loss);  // the same network and parameters, different masks
  // network 0 uses the given seed itself
  autograd::tape<float> tp;
  const auto l0 = nn::cross_entropy(tp, e0.forward(tp, x, params[0], ro), y);
  CHECK(static_cast<double>(l0.value().to_vector()[0]) == res[0].loss);
  ro.dropout = false;
  const auto off = exec::forward_backward<backend::cpu_t, float>({&e0, &e1}, params, x, y, ro, 0.0, false);
  CHECK(off[0].loss == off[1].loss);
}

TEST_CASE("ghn training: the step's loss is the mean CE of the predicted networks on the step's batch",
          "[ghn][train]") {
  const auto ds = synthetic(40, 12, false, 2);
  rng g(9);
  hypernet<cfg_d> ghn(g);
  auto o = small_options();
  o.batch_size = 16;
  // Expected loss of step 3 computed from the parts (batch 3 of an epoch of 2 batches = epoch 1, batch 1).
  ghn::trainer<cfg_d> tr(ghn, ds, o);
  tr.restore(3, 0, tr.optimizer_state());
  data::loader_options lo;
  lo.batch_size = 16;
  lo.drop_last = true;
  lo.seed = o.seed;
  data::loader ld(ds, lo);
  ld.start_epoch(1);
  data::batch b;
  REQUIRE(ld.next(b));
  REQUIRE(ld.next(b));
  const auto nets = ghn::training_architectures(o, 3, 1, 12, 12, 10);
  double expect = 0;
  {
    autograd::tape<double> tp;
    autograd::no_grad<autograd::tape<double>> ng(tp);
    const auto x = ghn::detail::images_as<double, backend::cpu_t>(b.images);
    for (const auto& n : nets) {
      exec::executor<backend::cpu_t, double> ex(n);
      exec::run_options ro;
      ro.dropout = true;
      ro.dropout_seed = ghn::step_seed(o.seed, 2, 3);
      expect += nn::cross_entropy(tp, ex.forward(tp, x, ghn.predict(tp, n), ro), b.labels).value().flat(0) / 2.0;
    }
  }
  const auto r = tr.step();
  CHECK(r.step == 3);
  CHECK(r.loss == Approx(expect).epsilon(1e-12));
}

TEST_CASE("ghn training: resuming from the GHN and optimizer state gives the uninterrupted run's next step",
          "[ghn][train]") {
  const auto ds = synthetic(48, 12, false, 3);
  auto o = small_options();
  o.schedule = ghn::schedule_kind::cosine;
  o.steps = 5;
  rng g1(11);
  hypernet<cfg_f> full(g1);
  ghn::trainer<cfg_f> t1(full, ds, o);
  for (int i = 0; i < 3; ++i) t1.step();

  rng g2(11);
  hypernet<cfg_f> part(g2);
  ghn::trainer<cfg_f> t2(part, ds, o);
  for (int i = 0; i < 2; ++i) t2.step();
  // A fresh GHN (different init) receives the saved values and optimizer state.
  rng g3(999);
  hypernet<cfg_f> resumed(g3);
  const auto src = part.parameters(), dst = resumed.parameters();
  for (std::size_t i = 0; i < src.size(); ++i) dst[i].value() = src[i].value().clone();
  ghn::trainer<cfg_f> t3(resumed, ds, o);
  t3.restore(t2.step_count(), t2.skipped(), t2.optimizer_state());
  const auto r = t3.step();
  CHECK(r.step == 2);
  CHECK(values(resumed) == values(full));
}

TEST_CASE("ghn training: the GHN learns an easy synthetic task", "[ghn][train]") {
  const auto ds = synthetic(512, 12, true, 4);
  rng g(21);
  hypernet<cfg_f> ghn(g);
  auto o = small_options();
  o.steps = 40;
  o.batch_size = 32;
  o.lr = 3e-3;
  ghn::trainer<cfg_f> tr(ghn, ds, o);
  double first = 0, last = 0;
  for (int i = 0; i < 40; ++i) {
    const auto r = tr.step();
    if (i < 5) first += r.loss / 5;
    if (i >= 35) last += r.loss / 5;
  }
  INFO("mean loss of the first 5 steps " << first << ", of the last 5 " << last);
  CHECK(first > 1.5);           // 10 output classes at the start: about ln 10
  CHECK(last < 0.6 * first);
}

TEST_CASE("ghn training: invalid options are clear errors", "[ghn][train]") {
  const auto ds = synthetic(16, 12, false, 5);
  rng g(1);
  hypernet<cfg_f> ghn(g);
  auto o = small_options();
  o.batch_size = 17;
  CHECK_THROWS_AS(ghn::trainer<cfg_f>(ghn, ds, o), value_error);
  o = small_options();
  o.meta_batch = 0;
  CHECK_THROWS_AS(ghn::trainer<cfg_f>(ghn, ds, o), value_error);
  o = small_options();
  o.lr = -1;
  CHECK_THROWS_AS(ghn::trainer<cfg_f>(ghn, ds, o), value_error);
  CHECK_THROWS_AS(ghn::parse_schedule("linear"), value_error);
  CHECK(ghn::parse_schedule("cosine") == ghn::schedule_kind::cosine);
}

TEST_CASE("ghn evaluation: top-1 per architecture equals a direct run of the predicted network", "[ghn][eval]") {
  const auto ds = synthetic(70, 12, false, 6);
  rng g(2);
  hypernet<cfg_f> ghn(g);
  auto archs = ghn::held_out_architectures(arch::variant::in_distribution, 2, 3, 1, 12, 12, 10);
  REQUIRE(archs.size() == 2);
  for (const auto& a : archs) {
    REQUIRE(a.args.has_value());
    CHECK(arch::split_of(arch::split_key(*a.args)) == arch::split::test);
  }
  ghn::eval_options eo;
  eo.batch_size = 32;  // batches of 32, 32, 6
  const auto rows = ghn::evaluate(ghn, archs, ds, eo);
  REQUIRE(rows.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    autograd::tape<float> tp;
    autograd::no_grad<autograd::tape<float>> ng(tp);
    const auto ps = ghn.predict(tp, archs[i].net);
    exec::executor<> ex(archs[i].net);
    data::loader_options lo;
    lo.batch_size = 32;
    lo.shuffle = false;
    data::loader ld(ds, lo);
    data::batch b;
    std::int64_t correct = 0;
    while (ld.next(b)) correct += nn::count_correct(ex.forward(tp, autograd::var<float>(b.images), ps).value(), b.labels);
    CHECK(rows[i].top1 == Approx(100.0 * static_cast<double>(correct) / 70.0));
    CHECK(rows[i].group == "test");
    CHECK(rows[i].num_params == arch::num_params(archs[i].net));
    CHECK(std::isfinite(rows[i].loss));
  }
  eo.parallel = false;
  const auto seq = ghn::evaluate(ghn, archs, ds, eo);
  CHECK(seq[0].top1 == rows[0].top1);
  CHECK(seq[1].loss == rows[1].loss);
}

TEST_CASE("ghn evaluation: summaries and CSV", "[ghn][eval]") {
  std::vector<ghn::arch_eval> rows(4);
  const double acc[4] = {10, 20, 30, 50};
  for (int i = 0; i < 4; ++i) {
    rows[static_cast<std::size_t>(i)].name = "a" + std::to_string(i);
    rows[static_cast<std::size_t>(i)].group = i < 3 ? "test" : "deep";
    rows[static_cast<std::size_t>(i)].top1 = acc[i];
  }
  const auto s = ghn::summarize(rows, "test");
  CHECK(s.n == 3);
  CHECK(s.mean == Approx(20));
  CHECK(s.se == Approx(10.0 / std::sqrt(3.0)));  // sd 10
  CHECK(s.max == 30);
  CHECK(s.min == 10);
  CHECK(s.best == "a2");
  const auto all = ghn::summarize(rows);
  CHECK(all.n == 4);
  CHECK(all.mean == Approx(27.5));
  CHECK(ghn::groups_of(rows) == std::vector<std::string>{"test", "deep"});

  const test::temp_dir tmp("ghnq_test_eval_csv");
  const auto& dir = tmp.path;
  const auto path = (dir / "rows.csv").string();
  ghn::write_csv(path, rows);
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  CHECK(ss.str().rfind("name,group,num_params,top1,loss,predict_ms,finite\na0,test,0,10.0000,", 0) == 0);
  CHECK(!std::filesystem::exists(path + ".tmp"));
  CHECK_THROWS_AS(ghn::write_csv((dir / "missing" / "rows.csv").string(), rows), io_error);
}

TEST_CASE("quantization-aware GHN: starts as its float twin, predicts factors, trains with QAT", "[ghn][train][quant]") {
  using cfg_q = ghn2q_config<backend::cpu_t, float, 8, 10>;
  rng g1(5), g2(5);
  hypernet<cfg_f> plain(g1);
  hypernet<cfg_q> qa(g2);
  CHECK(qa.num_params() == plain.num_params() + 8 * 8 + 2 * 8 + 2);
  auto o = small_options();
  const auto nets = ghn::training_architectures(o, 0, 1, 12, 12, 10);
  graph::graph_batch gb;
  std::vector<const arch::network*> np;
  for (const auto& n : nets) {
    gb.add(hypernet<cfg_q>::graph_of(n));
    np.push_back(&n);
  }
  exec::quant_config q;
  q.w_bits = q.a_bits = 4;
  q.wq = exec::weight_quantizer::lsq;
  q.aq = exec::act_quantizer::pact;
  std::vector<std::vector<exec::op_quant>> plans;
  for (const auto& n : nets) plans.push_back(exec::plan_quantization(n, q));
  autograd::tape<float> tp;
  const auto a = plain.predict(tp, np, gb);
  const auto b = qa.predict_quant(tp, np, gb, &plans);
  REQUIRE(b.factors.size() == nets.size());
  for (std::size_t k = 0; k < nets.size(); ++k) {
    for (std::size_t p = 0; p < a[k].size(); ++p) CHECK(a[k][p].value().to_vector() == b.params[k][p].value().to_vector());
    std::size_t defined = 0;
    for (std::size_t op = 0; op < nets[k].ops.size(); ++op)
      if (b.factors[k].weight[op].defined()) {
        ++defined;
        CHECK(b.factors[k].weight[op].value().to_vector()[0] == 0.0f);  // zero-initialized head: factor 1
        CHECK(plans[k][op].quantized());
      }
    CHECK(defined > 0);
  }
  tp.clear();
  // QAT steps: the loss is finite and the quant head and bit embedding receive gradients.
  const auto ds = synthetic(64, 12, false, 8);
  o.strat = ghn::strategy::qat;
  o.quant = q;
  ghn::trainer<cfg_q> tr(qa, ds, o);
  const auto r = tr.step();
  CHECK(std::isfinite(r.loss));
  CHECK(r.w_bits == 4);
  bool head = false, bits = false;
  for (const auto& p : qa.parameters()) {
    if (p.name() == "quant.head.weight" && p.has_grad())
      for (float v : p.grad().to_vector()) head = head || v != 0.0f;
    if (p.name() == "quant.bit_embedding" && p.has_grad())
      for (float v : p.grad().to_vector()) bits = bits || v != 0.0f;
  }
  CHECK(head);
  CHECK(bits);
  // Mixed: the bit-width is drawn per step from the list, deterministically.
  o.strat = ghn::strategy::qat_mixed;
  std::set<int> seen;
  for (int t = 0; t < 30; ++t) {
    const auto qt = ghn::quant_at(o, t);
    CHECK(qt.w_bits == qt.a_bits);
    CHECK(qt.w_bits == ghn::quant_at(o, t).w_bits);
    seen.insert(qt.w_bits);
  }
  CHECK(seen == std::set<int>{2, 4, 8});
  o.strat = ghn::strategy::fp;
  CHECK(!ghn::quant_at(o, 0).enabled());
  o.strat = ghn::strategy::noise;
  CHECK(ghn::quant_at(o, 0).noise);
}

TEST_CASE("ghn evaluation: per-architecture quantization equals one evaluation per architecture", "[ghn][eval][quant]") {
  using cfg_q = ghn2q_config<backend::cpu_t, float, 8, 10>;
  const auto ds = synthetic(70, 12, false, 7);
  rng g(3);
  hypernet<cfg_q> ghn(g);
  auto archs = ghn::held_out_architectures(arch::variant::in_distribution, 3, 4, 1, 12, 12, 10);
  REQUIRE(archs.size() == 3);
  exec::quant_config w4, w2, fp;
  w4.w_bits = w4.a_bits = 4;
  w4.aq = exec::act_quantizer::pact;
  w2.w_bits = 2;
  w2.a_bits = 8;
  w2.first_last_bits = 2;
  fp.w_bits = fp.a_bits = 32;
  ghn::eval_options eo;
  eo.batch_size = 32;
  eo.per_arch_quant = {w4, w2, fp};
  const auto rows = ghn::evaluate(ghn, archs, ds, eo);  // parallel tasks, one quantization each
  REQUIRE(rows.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    ghn::eval_options one;
    one.batch_size = 32;
    one.parallel = false;
    one.quant = eo.per_arch_quant[i];
    const auto r = ghn::evaluate(ghn, {archs[i]}, ds, one);
    CHECK(rows[i].top1 == r.at(0).top1);
    CHECK(rows[i].loss == r.at(0).loss);
  }
  // The quantization matters: W2 weights everywhere change the loss of architecture 1.
  ghn::eval_options flt;
  flt.batch_size = 32;
  const auto f = ghn::evaluate(ghn, {archs[1]}, ds, flt);
  CHECK(f.at(0).loss != rows[1].loss);
  eo.per_arch_quant.pop_back();
  CHECK_THROWS_AS(ghn::evaluate(ghn, archs, ds, eo), value_error);
}

TEST_CASE("ghn evaluation: evaluate_parameters of the predicted parameters equals evaluate", "[ghn][eval][quant]") {
  using cfg_q = ghn2q_config<backend::cpu_t, float, 8, 10>;
  const auto ds = synthetic(70, 12, false, 8);
  rng g(4);
  hypernet<cfg_q> ghn(g);
  auto archs = ghn::held_out_architectures(arch::variant::in_distribution, 2, 5, 1, 12, 12, 10);
  REQUIRE(archs.size() == 2);
  for (const bool quantized : {false, true}) {
    ghn::eval_options eo;
    eo.batch_size = 32;
    if (quantized) {
      eo.quant.w_bits = eo.quant.a_bits = 4;
      eo.quant.wq = exec::weight_quantizer::lsq;
      eo.quant.aq = exec::act_quantizer::pact;
    }
    std::vector<std::vector<autograd::var<float>>> params;
    std::vector<exec::quant_factors<float, backend::cpu_t>> factors;
    for (const auto& a : archs) {
      autograd::tape<float> tp;
      autograd::no_grad<autograd::tape<float>> ng(tp);
      graph::graph_batch gb;
      gb.add(hypernet<cfg_q>::graph_of(a.net));
      std::vector<std::vector<exec::op_quant>> plans;
      if (quantized) plans.push_back(exec::plan_quantization(a.net, eo.quant));
      auto pred = ghn.predict_quant(tp, {&a.net}, gb, quantized ? &plans : nullptr);
      params.push_back(pred.params[0]);
      factors.push_back(pred.factors[0]);
    }
    const auto want = ghn::evaluate(ghn, archs, ds, eo);
    const auto got = ghn::evaluate_parameters(archs, params, factors, ds, eo);
    REQUIRE(got.size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
      CHECK(got[i].top1 == want[i].top1);
      CHECK(got[i].loss == want[i].loss);
      CHECK(got[i].name == want[i].name);
      CHECK(got[i].predict_ms == 0.0);
    }
    // A parameter of the wrong shape is a shape_error naming it.
    auto bad = params;
    bad[1][0] = autograd::var<float>(tensor<float>::zeros({3}));
    CHECK_THROWS_AS(ghn::evaluate_parameters(archs, bad, factors, ds, eo), shape_error);
  }
}

TEST_CASE("ghn evaluation: a network whose forward pass is not finite is scored, flagged and counted",
          "[ghn][eval][quant]") {
  const auto ds = synthetic(70, 12, false, 8);
  auto archs = ghn::held_out_architectures(arch::variant::in_distribution, 2, 5, 1, 12, 12, 10);
  REQUIRE(archs.size() == 2);
  std::vector<std::vector<autograd::var<float>>> params;
  for (const auto& a : archs) {
    rng g(3);
    params.push_back(exec::executor<backend::cpu_t, float>(a.net).init_parameters(g));
  }
  // Architecture 1 made non-finite two ways: a NaN classifier bias (float logits are NaN), and an
  // infinite first weight, which a min-max quantizer meets as non-finite activations (numeric_error
  // inside the forward pass; ReLU would turn NaN activations into 0).
  auto nan_bias = params;
  {
    auto b = nan_bias[1].back().value().clone();
    b.fill(std::numeric_limits<float>::quiet_NaN());
    nan_bias[1].back() = autograd::var<float>(b);
  }
  auto w0 = params[1][0].value().clone();
  w0.data()[0] = std::numeric_limits<float>::infinity();
  params[1][0] = autograd::var<float>(w0);
  std::int64_t class0 = 0;
  for (std::int64_t i = 0; i < ds.size(); ++i) class0 += ds.labels[static_cast<std::size_t>(i)] == 0;
  // The min-max observers, the LSQ steps (mean |w| of an infinite channel) and the noise steps all
  // meet the infinite weight; each must be scored, not abort the evaluation.
  std::vector<std::pair<std::string, exec::quant_config>> configs;
  for (const char* q : {"FP32", "W8A8", "W4A4"}) configs.emplace_back(q, exec::parse_quant_name(q, {}));
  {
    exec::quant_config lsq;
    lsq.wq = exec::weight_quantizer::lsq;
    lsq.aq = exec::act_quantizer::lsq;
    configs.emplace_back("W4A4 lsq", exec::parse_quant_name("W4A4", lsq));
    exec::quant_config pact;
    pact.aq = exec::act_quantizer::pact;
    configs.emplace_back("W2A8 pact", exec::parse_quant_name("W2A8", pact));
    lsq.noise = true;
    configs.emplace_back("W4A4 lsq noise", exec::parse_quant_name("W4A4", lsq));
  }
  for (const auto& [label, qc] : configs) {
    INFO(label);
    ghn::eval_options eo;
    eo.batch_size = 32;
    eo.quant = qc;
    if (eo.quant.enabled()) {  // the quantized forward pass itself throws numeric_error
      data::loader ld(ds, {});
      data::batch b;
      REQUIRE(ld.next(b));
      autograd::tape<float> tp;
      exec::run_options ro;
      ro.quant = &eo.quant;
      exec::executor<backend::cpu_t, float> ex(archs[1].net);
      CHECK_THROWS_AS(ex.forward(tp, autograd::var<float>(b.images.clone(), false), params[1], ro), numeric_error);
    }
    const auto rows = ghn::evaluate_parameters(archs, eo.quant.enabled() ? params : nan_bias, {}, ds, eo);
    CHECK(rows[0].finite);
    CHECK(std::isfinite(rows[0].loss));
    CHECK_FALSE(rows[1].finite);
    CHECK(std::isnan(rows[1].loss));
    // NaN logit rows take count_correct's first-maximum rule: class 0.
    CHECK(rows[1].top1 == Approx(100.0 * static_cast<double>(class0) / static_cast<double>(ds.size())));
    const auto s = ghn::summarize(rows);
    CHECK(s.nonfinite == 1);
    CHECK(s.n == 2);
  }
  // forward_backward (the trainer's meta-batch): the non-finite network gets a NaN loss and no
  // gradient, the other network is unaffected.
  exec::quant_config qc = exec::parse_quant_name("W4A4", {});
  exec::run_options ro;
  ro.quant = &qc;
  std::vector<std::unique_ptr<exec::executor<backend::cpu_t, float>>> ex;
  std::vector<exec::executor<backend::cpu_t, float>*> exp;
  std::vector<std::vector<autograd::var<float>>> trainable;
  for (std::size_t k = 0; k < 2; ++k) {
    ex.push_back(std::make_unique<exec::executor<backend::cpu_t, float>>(archs[k].net));
    exp.push_back(ex.back().get());
    std::vector<autograd::var<float>> ps;
    for (const auto& p : params[k]) ps.emplace_back(p.value().clone(), true);
    trainable.push_back(ps);
  }
  data::loader_options lo;
  lo.batch_size = 16;
  lo.shuffle = false;
  data::loader ld(ds, lo);
  data::batch b;
  REQUIRE(ld.next(b));
  const autograd::var<float> x(b.images.clone(), false);
  const auto res = exec::forward_backward(exp, trainable, x, b.labels, ro, 0.0, false);
  REQUIRE(res.size() == 2);
  CHECK(res[0].finite);
  CHECK(std::isfinite(res[0].loss));
  CHECK(trainable[0][0].has_grad());
  CHECK_FALSE(res[1].finite);
  CHECK(std::isnan(res[1].loss));
  CHECK_FALSE(trainable[1][0].has_grad());
}

TEST_CASE("ghn training: per-network gradient clipping", "[ghn][train]") {
  const auto ds = synthetic(64, 12, false, 9);
  auto o = small_options();
  o.grad_clip = 0;  // the reported norm is then the update's
  // Off, or a cap above every network's norm: the same step, bit for bit.
  rng g1(6), g2(6);
  hypernet<cfg_d> a(g1), b(g2);
  ghn::trainer<cfg_d> ta(a, ds, o);
  auto ob = o;
  ob.net_grad_clip = 1e30;
  ghn::trainer<cfg_d> tb(b, ds, ob);
  const auto ra = ta.step(), rb = tb.step();
  REQUIRE(ra.net_grad_max > 0);
  CHECK(rb.net_grad_max == ra.net_grad_max);
  CHECK(rb.grad_norm == ra.grad_norm);
  CHECK(rb.nets_clipped == 0);
  CHECK(values(a) == values(b));
  // One network per step: its gradient scaled to norm c scales the GHN gradient by c / norm.
  o.meta_batch = 1;
  rng g3(8), g4(8);
  hypernet<cfg_d> c(g3), d(g4);
  ghn::trainer<cfg_d> tc(c, ds, o);
  auto od = o;
  od.net_grad_clip = 1e-3;
  ghn::trainer<cfg_d> td(d, ds, od);
  const auto rc = tc.step(), rd = td.step();
  REQUIRE(rc.net_grad_max > 1e-3);
  CHECK(rd.nets_clipped == 1);
  CHECK(rd.net_grad_max == rc.net_grad_max);
  CHECK(rd.grad_norm == Approx(rc.grad_norm * 1e-3 / rc.net_grad_max).epsilon(1e-9));
  // Stored in checkpoints' training options; absent (older checkpoints): off.
  auto j = ghn::to_json(od);
  CHECK(ghn::train_options_from_json(j).net_grad_clip == 1e-3);
  j.erase("net_grad_clip");
  CHECK(ghn::train_options_from_json(j).net_grad_clip == 0.0);
}

TEST_CASE("ghn training: per-network clipping with several networks and learned quantizer factors", "[ghn][train][quant]") {
  using cfg_q = ghn2q_config<backend::cpu_t, double, 8, 10>;
  const auto ds = synthetic(64, 12, false, 10);
  auto o = small_options();
  o.grad_clip = 0;
  o.strat = ghn::strategy::qat;
  o.quant.w_bits = o.quant.a_bits = 4;
  o.quant.wq = exec::weight_quantizer::lsq;
  o.quant.aq = exec::act_quantizer::lsq;
  rng g1(12), g2(12);
  hypernet<cfg_q> a(g1), b(g2);
  ghn::trainer<cfg_q> ta(a, ds, o);
  const auto ra = ta.step();
  REQUIRE(ra.net_grad_max > 0);
  REQUIRE(std::isfinite(ra.grad_norm));
  auto ob = o;
  ob.net_grad_clip = ra.net_grad_max * 0.5;  // below the largest network's norm
  ghn::trainer<cfg_q> tb(b, ds, ob);
  const auto rb = tb.step();
  CHECK(rb.net_grad_max == ra.net_grad_max);  // measured before clipping
  CHECK(rb.nets_clipped >= 1);
  CHECK(rb.nets_clipped <= o.meta_batch);
  CHECK(rb.nets_dropped == 0);
  CHECK_FALSE(rb.skipped);
  CHECK(std::isfinite(rb.grad_norm));
  CHECK(rb.grad_norm != ra.grad_norm);
  CHECK(values(a) != values(b));
}
