// DeepNets-1M: net_args / JSON, the network constructor (parity with the reference's parameter
// names and shapes), the seeded sampler, its rules and variants, the width rule and the splits.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "ghnq/arch/deepnets.hpp"
#include "ghnq/arch/hash.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/arch/sampler.hpp"

using namespace ghnq;
using namespace ghnq::arch;

namespace {

const char* kBenchFile = GHNQ_SOURCE_DIR "/../shared/bench/deepnets_conv.json";

bool load_bench(nlohmann::json& j) {
  std::ifstream f(kBenchFile);
  if (!f) return false;
  j = nlohmann::json::parse(f);
  return true;
}

/// Ops that reach the output (the part of the IR the reference's forward runs).
std::vector<char> reaches_output(const network& net) {
  std::vector<char> r(net.ops.size(), 0);
  r[static_cast<std::size_t>(net.output)] = 1;
  for (int i = static_cast<int>(net.ops.size()) - 1; i >= 0; --i)
    if (r[static_cast<std::size_t>(i)])
      for (int k : net.ops[static_cast<std::size_t>(i)].inputs) r[static_cast<std::size_t>(k)] = 1;
  return r;
}

const op* find_op(const network& net, const std::string& name) {
  for (const auto& o : net.ops)
    if (o.name == name) return &o;
  return nullptr;
}

int count_type(const network& net, op_type t) {
  return static_cast<int>(std::count_if(net.ops.begin(), net.ops.end(), [t](const op& o) { return o.type == t; }));
}

net_args make_args(std::vector<std::pair<std::string, int>> normal, std::vector<std::pair<std::string, int>> reduce,
                   std::vector<int> concat, int n_cells = 5) {
  net_args a;
  a.geno.normal = std::move(normal);
  a.geno.reduce = std::move(reduce);
  a.geno.normal_concat = concat;
  a.geno.reduce_concat = concat;
  a.n_cells = n_cells;
  a.C = 16;
  a.C_mult = 1;
  a.ks = 3;
  a.stem_type = 0;
  a.stem_pool = false;
  a.norm = "bnorm";
  a.preproc = true;
  a.fc_layers = 1;
  a.fc_dim = 32;
  a.glob_avg = true;
  return a;
}

bool has_op(const net_args& a, const char* name) {
  for (const auto* cell : {&a.geno.normal, &a.geno.reduce})
    for (const auto& p : *cell)
      if (p.first == name) return true;
  return false;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Parity with the reference
// ------------------------------------------------------------------------------------------------

TEST_CASE("deepnets: parameter names, shapes and counts match the reference", "[deepnets][parity]") {
  nlohmann::json j;
  if (!load_bench(j)) {
    WARN(std::string(kBenchFile) + " not found: skipping the DeepNets-1M parity test");
    return;
  }
  const auto& nets = j.at("nets");
  REQUIRE(nets.size() == 24);
  for (const auto& n : nets) {
    INFO("net " << n.at("index").get<int>());
    net_args a = net_args_from_json(n.at("net_args"));
    a.C = n.at("eval").at("C").get<int>();
    a.fc_dim = n.at("eval").at("fc_dim").get<int>();
    const network net = deepnets_network(a, 3, 32, 32, 10);
    const auto ps = parameters(net);
    const auto& ref = n.at("eval").at("param_shapes");
    REQUIRE(num_params(net) == n.at("eval").at("num_params").get<std::int64_t>());
    REQUIRE(deepnets_num_params(a) == n.at("eval").at("num_params").get<std::int64_t>());
    REQUIRE(ps.size() == ref.size());
    for (std::size_t i = 0; i < ps.size(); ++i) {
      INFO("parameter " << i);
      REQUIRE(ps[i].name == ref[i].at(0).get<std::string>());
      REQUIRE(ps[i].shape.to_vector() == ref[i].at(1).get<std::vector<std::int64_t>>());
    }
    // the training width drawn by the reference's loader
    a.C = n.at("train").at("C").get<int>();
    a.fc_dim = n.at("train").at("fc_dim").get<int>();
    REQUIRE(num_params(deepnets_network(a)) == n.at("train").at("num_params").get<std::int64_t>());
    REQUIRE(deepnets_num_params(a) == n.at("train").at("num_params").get<std::int64_t>());
  }
}

TEST_CASE("deepnets: the reference's training widths are outcomes of sample_width", "[deepnets][width]") {
  nlohmann::json j;
  if (!load_bench(j)) {
    WARN(std::string(kBenchFile) + " not found: skipping");
    return;
  }
  for (const auto& n : j.at("nets")) {
    INFO("net " << n.at("index").get<int>());
    const net_args a = net_args_from_json(n.at("net_args"));
    const std::int64_t p = n.at("eval").at("num_params").get<std::int64_t>();
    std::set<std::pair<int, int>> outcomes;
    rng g(11);
    for (int t = 0; t < 3000; ++t) {
      const net_args w = sample_width(a, p, g);
      outcomes.insert({w.C, w.fc_dim});
    }
    CHECK(outcomes.count({n.at("train").at("C").get<int>(), n.at("train").at("fc_dim").get<int>()}) == 1);
  }
}

// ------------------------------------------------------------------------------------------------
// JSON
// ------------------------------------------------------------------------------------------------

TEST_CASE("deepnets: net_args JSON round trip and errors naming the field", "[deepnets][json]") {
  const std::string text = R"({"stem_type": 1, "stem_pool": false, "norm": null, "preproc": true, "fc_layers": 2,
    "glob_avg": false, "genotype": {"normal": [["sep_conv_3x3", 1], ["cse", 0], ["conv_5x5", 2], ["none", 0]],
    "normal_concat": [2, 3], "reduce": [["skip_connect", 0], ["max_pool_3x3", 1], ["avg_pool_3x3", 2],
    ["dil_conv_5x5", 1]], "reduce_concat": [2, 3]}, "n_cells": 7, "ks": 7, "C_mult": 2, "fc_dim": 128,
    "num_params": {"cifar10": 1, "imagenet": 2}, "num_nodes": 3})";
  const auto j = nlohmann::json::parse(text);
  const net_args a = net_args_from_json(j);
  CHECK(a.stem_type == 1);
  CHECK(a.norm.empty());
  CHECK(a.fc_layers == 2);
  CHECK(a.fc_dim == 128);
  CHECK(a.C == 32);  // default
  CHECK_FALSE(a.glob_avg);
  CHECK(a.geno.normal.size() == 4);
  CHECK(a.geno.normal[1] == std::make_pair(std::string("cse"), 0));
  CHECK(a.geno.reduce_concat == std::vector<int>{2, 3});
  const nlohmann::json out = to_json(a);
  CHECK(out.at("norm").is_null());
  CHECK(net_args_from_json(out) == a);
  net_args b = a;
  b.norm = "bnorm";
  b.C = 48;
  CHECK(net_args_from_json(to_json(b)) == b);
  CHECK(nlohmann::json(b).get<net_args>() == b);  // ADL hooks

  auto expect_error = [&](nlohmann::json bad, const std::string& needle) {
    try {
      (void)net_args_from_json(bad);
      FAIL("no error for " << needle);
    } catch (const value_error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  {
    auto bad = j;
    bad.erase("n_cells");
    expect_error(bad, "n_cells");
  }
  {
    auto bad = j;
    bad["ks"] = "three";
    expect_error(bad, "ks");
  }
  {
    auto bad = j;
    bad["genotype"]["normal"][2][0] = "conv_9x9";
    expect_error(bad, "genotype.normal[2]");
  }
  {
    auto bad = j;
    bad["genotype"]["reduce"][3][1] = 4;  // step 1 reads states 0..2
    expect_error(bad, "genotype.reduce[3]");
  }
  {
    auto bad = j;
    bad["genotype"]["normal_concat"] = {2, 9};
    expect_error(bad, "normal_concat");
  }
  {
    auto bad = j;
    bad["norm"] = "layernorm";
    expect_error(bad, "norm");
  }
  {
    auto bad = j;
    bad["preproc"] = false;  // 2 concatenated states need preproc
    expect_error(bad, "preproc");
  }
  {
    auto bad = j;
    bad["stem_pool"] = 3;
    expect_error(bad, "stem_pool");
  }
  {
    auto bad = j;
    bad.erase("genotype");
    expect_error(bad, "genotype");
  }
}

// ------------------------------------------------------------------------------------------------
// Construction
// ------------------------------------------------------------------------------------------------

TEST_CASE("deepnets: msa is not supported, unknown ops are value errors", "[deepnets]") {
  net_args a = make_args({{"msa", 0}, {"conv_3x3", 1}}, {{"max_pool_3x3", 0}, {"conv_1x1", 1}}, {2});
  try {
    (void)deepnets_network(a);
    FAIL("msa accepted");
  } catch (const unsupported_error& e) {
    const std::string m = e.what();
    CHECK(m.find("msa") != std::string::npos);
    CHECK(m.find("not supported") != std::string::npos);
  }
  CHECK_THROWS_AS(split_key(a), unsupported_error);
  // the counter follows the reference's transformer block (full space statistics)
  CHECK(deepnets_num_params(a) > deepnets_num_params(make_args({{"skip_connect", 0}, {"conv_3x3", 1}},
                                                               {{"max_pool_3x3", 0}, {"conv_1x1", 1}}, {2})));

  a.geno.normal[0].first = "conv_11x11";
  CHECK_THROWS_AS(deepnets_network(a), value_error);
  CHECK_THROWS_AS(deepnets_num_params(a), value_error);
  a.geno.normal[0].first = "conv_3x3";
  a.geno.normal[1].second = 2;  // step 0 reads states 0..1
  CHECK_THROWS_AS(deepnets_network(a), value_error);
  a.geno.normal[1].second = 1;
  a.n_cells = 0;
  CHECK_THROWS_AS(deepnets_network(a), value_error);
  a.n_cells = 4;
  a.C = 15;  // FactorizedReduce halves C_out
  CHECK_THROWS_AS(deepnets_network(a), value_error);
  a.C = 16;
  CHECK_NOTHROW(deepnets_network(a));
}

TEST_CASE("deepnets: every op builds on 1x28x28 and 3x32x32 in every configuration", "[deepnets]") {
  const char* ops[] = {"none",         "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                       "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "conv_1x1",     "conv_7x1_1x7",
                       "conv_3x3",     "conv_5x5",     "conv_7x7",     "cse"};
  struct input_t {
    int c, h, w, classes;
  };
  const input_t inputs[] = {{1, 28, 28, 10}, {3, 32, 32, 10}, {3, 20, 24, 7}};
  int built = 0;
  for (const char* x : ops) {
    const std::string X = x;
    for (const auto& in : inputs)
      for (int stem = 0; stem < 3; ++stem)  // 0, 0 + pool, 1
        for (int cfg = 0; cfg < 8; ++cfg) {
          // two steps (preproc), the op on states 0, 1 (stride 2 in reductions) and 2
          net_args a = make_args({{X, 0}, {X, 1}, {X, 2}, {"skip_connect", 0}},
                                 {{X, 0}, {X, 1}, {X, 2}, {"conv_1x1", 0}}, {2, 3});
          a.stem_type = stem == 2 ? 1 : 0;
          a.stem_pool = stem == 1;
          a.norm = (cfg & 1) ? "" : "bnorm";
          a.fc_layers = (cfg & 2) ? 2 : 1;
          a.glob_avg = (cfg & 4) == 0;
          a.C_mult = (cfg % 3 == 0) ? 2 : 1;
          a.ks = 3 + 2 * (cfg % 3);
          INFO(X << " input " << in.c << "x" << in.h << "x" << in.w << " stem " << stem << " cfg " << cfg);
          network net;
          REQUIRE_NOTHROW(net = deepnets_network(a, in.c, in.h, in.w, in.classes));
          ++built;
          deepnets_input di;
          di.in_channels = in.c;
          di.in_h = in.h;
          di.in_w = in.w;
          di.num_classes = in.classes;
          CHECK(num_params(net) == deepnets_num_params(a, di));
          CHECK(net.ops[static_cast<std::size_t>(net.output)].c == in.classes);
          CHECK((count_type(net, op_type::batch_norm) == 0) == a.norm.empty());
          CHECK((count_type(net, op_type::dropout) == 1) == (a.fc_layers == 2));
          CHECK((count_type(net, op_type::flatten) == 1) == !a.glob_avg);
          // the op's signature
          const op* o1 = find_op(net, "cells.0._ops.0.op.1");
          if (X == "max_pool_3x3" || X == "avg_pool_3x3") {
            const op* p = find_op(net, "cells.0._ops.0");
            REQUIRE(p);
            CHECK(p->type == (X == "max_pool_3x3" ? op_type::max_pool : op_type::avg_pool));
            CHECK(p->kh == 3);
            CHECK(find_op(net, "cells.1._ops.0")->stride == 2);
          } else if (X == "skip_connect") {
            REQUIRE(find_op(net, "cells.1._ops.0.conv_2"));  // FactorizedReduce in the reduction cell
            CHECK(find_op(net, "cells.1._ops.0.conv_1")->stride == 2);
            CHECK(count_type(net, op_type::shift) >= 2);
          } else if (X.rfind("sep_conv", 0) == 0) {
            REQUIRE(o1);
            CHECK(o1->groups == o1->c);
            CHECK(o1->kh == (X == "sep_conv_3x3" ? 3 : 5));
            CHECK(find_op(net, "cells.0._ops.0.op.5")->groups == o1->c);
            CHECK(find_op(net, "cells.0._ops.0.op.6"));
          } else if (X.rfind("dil_conv", 0) == 0) {
            REQUIRE(o1);
            CHECK(o1->dilation == 2);
            CHECK(o1->groups == o1->c);
          } else if (X == "conv_7x1_1x7") {
            REQUIRE(o1);
            CHECK((o1->kh == 1 && o1->kw == 7));
            CHECK((find_op(net, "cells.0._ops.0.op.2")->kh == 7 && find_op(net, "cells.0._ops.0.op.2")->kw == 1));
          } else if (X.rfind("conv_", 0) == 0) {
            REQUIRE(o1);
            CHECK(o1->kh == X[5] - '0');
            CHECK(o1->groups == 1);
          } else if (X == "cse") {
            REQUIRE(find_op(net, "cells.0._ops.0.fc1"));
            CHECK(find_op(net, "cells.0._ops.0.fc1")->type == op_type::linear);
            CHECK(count_type(net, op_type::channel_scale) >= 1);
            CHECK(count_type(net, op_type::hardswish) >= 1);
          } else if (X == "none") {
            CHECK(count_type(net, op_type::zero) >= 1);
            CHECK_FALSE(o1);
          }
        }
    // without preprocessing: one step, C_mult 1
    for (const auto& in : inputs)
      for (int stem = 0; stem < 3; ++stem) {
        if (X == "none") continue;  // a lone none step cuts every path
        net_args a = make_args({{X, 0}, {X, 1}}, {{X, 0}, {"conv_3x3", 1}}, {2});
        a.preproc = false;
        a.stem_type = stem == 2 ? 1 : 0;
        a.stem_pool = stem == 1;
        INFO(X << " without preproc, input " << in.h << " stem " << stem);
        network net;
        REQUIRE_NOTHROW(net = deepnets_network(a, in.c, in.h, in.w, in.classes));
        CHECK(find_op(net, "cells.0.preprocess0.op.1") == nullptr);
        deepnets_input di;
        di.in_channels = in.c;
        di.in_h = in.h;
        di.in_w = in.w;
        di.num_classes = in.classes;
        CHECK(num_params(net) == deepnets_num_params(a, di));
        ++built;
      }
  }
  CHECK(built == 14 * 3 * 3 * 8 + 13 * 9);
}

TEST_CASE("deepnets: stems, reductions, widths and the flatten head", "[deepnets]") {
  net_args a = make_args({{"conv_3x3", 0}, {"skip_connect", 1}}, {{"max_pool_3x3", 0}, {"conv_1x1", 1}}, {2}, 9);
  a.C = 32;
  a.C_mult = 2;
  a.glob_avg = false;
  // stem 0 with preproc: C_stem = 3C; reductions at 3 and 6 double C; the 32x32 map ends at 8x8
  network net = deepnets_network(a);
  CHECK(find_op(net, "stem.0")->out_channels == 96);
  CHECK(find_op(net, "cells.2._ops.0.op.1")->out_channels == 32);
  CHECK(find_op(net, "cells.3._ops.1.op.1")->out_channels == 64);
  CHECK(find_op(net, "cells.3._ops.1.op.1")->stride == 2);
  CHECK(find_op(net, "cells.4.preprocess0.conv_1"));  // FactorizedReduce after a reduction
  CHECK(find_op(net, "cells.6._ops.1.op.1")->out_channels == 128);
  const auto ps = parameters(net);
  CHECK(ps[ps.size() - 2].name == "classifier.0.weight");
  CHECK(ps[ps.size() - 2].shape == shape({10, 128 * 8 * 8}));
  // stem_pool: the map ends at 4x4; on 1x28x28 at 7x7 (stem 0) and 4x4 (with the pool)
  a.stem_pool = true;
  CHECK(parameters(deepnets_network(a)).back().shape == shape({10}));
  CHECK(find_op(deepnets_network(a), "classifier.0")->type == op_type::linear);
  CHECK(parameters(deepnets_network(a)).end()[-2].shape == shape({10, 128 * 4 * 4}));
  CHECK(parameters(deepnets_network(a, 1, 28, 28, 10)).end()[-2].shape == shape({10, 128 * 4 * 4}));
  a.stem_pool = false;
  CHECK(parameters(deepnets_network(a, 1, 28, 28, 10)).end()[-2].shape == shape({10, 128 * 7 * 7}));
  // stem 1: stem0 (C/2, C), stem1 (stride 2); cell 0 reads stem0 through a FactorizedReduce
  a.stem_type = 1;
  a.fc_layers = 2;
  a.fc_dim = 100;
  net = deepnets_network(a);
  CHECK(find_op(net, "stem0.0")->out_channels == 16);
  CHECK(find_op(net, "stem0.3")->out_channels == 32);
  CHECK(find_op(net, "stem1.1")->stride == 2);
  CHECK(find_op(net, "cells.0.preprocess0.conv_1"));
  const auto ps1 = parameters(net);
  CHECK(ps1[ps1.size() - 4].name == "classifier.0.weight");
  CHECK(ps1[ps1.size() - 4].shape == shape({100, 128 * 4 * 4}));
  CHECK(ps1[ps1.size() - 2].name == "classifier.3.weight");
  CHECK(ps1[ps1.size() - 2].shape == shape({10, 100}));
  // the ImageNet version of the counter: stride-4 stem, C_stem = C, 7x7 / 14x14 flatten
  deepnets_input im;
  im.in_h = im.in_w = 224;
  im.imagenet = true;
  a.stem_type = 0;
  a.fc_layers = 1;
  const network nim = deepnets_network(a, im);
  CHECK(find_op(nim, "stem.0")->out_channels == 32);
  CHECK(find_op(nim, "stem.0")->stride == 4);
  CHECK(parameters(nim).end()[-2].shape == shape({10, 128 * 14 * 14}));
  CHECK(num_params(nim) == deepnets_num_params(a, im));
}

TEST_CASE("deepnets: conv_7x1_1x7 uses the reference's per-axis strides", "[deepnets]") {
  // Reductions at cells 1 and 3 (n_cells = 5). Reduce ops 0 and 1 read states 0 / 1 (stride 2);
  // op 2 reads state 2 (stride 1).
  net_args a = make_args({{"conv_7x1_1x7", 0}, {"skip_connect", 1}, {"conv_7x1_1x7", 2}, {"skip_connect", 1}},
                         {{"conv_7x1_1x7", 0}, {"conv_7x1_1x7", 1}, {"conv_7x1_1x7", 2}, {"skip_connect", 1}}, {2, 3});
  const network net = deepnets_network(a);
  for (const char* cell : {"cells.1", "cells.3"})
    for (int j : {0, 1}) {
      const std::string pre = std::string(cell) + "._ops." + std::to_string(j);
      INFO(pre);
      const op* c1 = find_op(net, pre + ".op.1");  // 1x7, stride (1, 2), padding (0, 3)
      const op* c2 = find_op(net, pre + ".op.2");  // 7x1, stride (2, 1), padding (3, 0)
      REQUIRE(c1);
      REQUIRE(c2);
      CHECK((c1->kh == 1 && c1->kw == 7 && c1->pad_h == 0 && c1->pad_w == 3));
      CHECK(c1->stride == 1);
      CHECK(c1->stride_w == 2);
      CHECK(c1->stride_width() == 2);
      CHECK((c2->kh == 7 && c2->kw == 1 && c2->pad_h == 3 && c2->pad_w == 0));
      CHECK(c2->stride == 2);
      CHECK(c2->stride_w == 1);
      CHECK(c2->stride_width() == 1);
      // the intermediate map is halved horizontally only, the output in both directions
      const op& in = net.ops[static_cast<std::size_t>(net.ops[static_cast<std::size_t>(c1->inputs[0])].inputs[0])];
      CHECK(c1->h == in.h);
      CHECK(c1->w == (in.w + 1) / 2);
      CHECK(c2->h == (in.h + 1) / 2);
      CHECK(c2->w == (in.w + 1) / 2);
    }
  // stride 1 (a normal cell, or a reduction op on state 2): a single stride of 1 both ways
  for (const char* name :
       {"cells.0._ops.0.op.1", "cells.0._ops.0.op.2", "cells.1._ops.2.op.1", "cells.1._ops.2.op.2"}) {
    INFO(name);
    const op* c = find_op(net, name);
    REQUIRE(c);
    CHECK(c->stride == 1);
    CHECK(c->stride_w == 0);
  }
  CHECK(find_op(net, "cells.1._ops.0.op.1")->w == 16);  // 32x32 -> 32x16 -> 16x16
  CHECK(find_op(net, "cells.1._ops.0.op.1")->h == 32);
  CHECK(find_op(net, "cells.1._ops.0.op.2")->h == 16);
  // counts, the fast counter, and the split key (built without the builder) agree with the IR
  CHECK(num_params(net) == deepnets_num_params(a));
  CHECK(deepnets_count(a).num_params == num_params(net));
  net_args a32 = a;
  a32.C = 32;
  a32.fc_dim = 256;
  CHECK(split_key(a) == canonical_hash(deepnets_network(a32)));
  // the flatten head (its size follows the final map) on 1x28x28 and on 3x30x30, where the
  // second reduction gets an odd 15x15 map: 30 -> 15 -> 8
  a.glob_avg = false;
  for (int hw : {28, 30}) {
    const int c = hw == 28 ? 1 : 3;
    const network n2 = deepnets_network(a, c, hw, hw, 10);
    CHECK(num_params(n2) == deepnets_num_params(a, deepnets_input{c, hw, hw, 10}));
    CHECK(find_op(n2, "cells.3._ops.0.op.1")->w == (hw / 2 + 1) / 2);
    CHECK(find_op(n2, "cells.3._ops.0.op.2")->h == (hw / 2 + 1) / 2);
  }
}

TEST_CASE("deepnets: none ops follow the reference's forward (absent states, dead modules)", "[deepnets]") {
  SECTION("an all-none step: its state is replaced by zeros, ops reading it do not run") {
    net_args a = make_args({{"none", 0}, {"none", 1}, {"conv_3x3", 2}, {"sep_conv_3x3", 1}},
                           {{"max_pool_3x3", 0}, {"conv_1x1", 1}, {"skip_connect", 2}, {"none", 0}}, {2, 3}, 4);
    const network net = deepnets_network(a);
    const auto live = reaches_output(net);
    const auto ps = parameters(net);
    CHECK(num_params(net) == deepnets_num_params(a));
    bool dead_conv = false, live_sep = false;
    for (const auto& p : ps) {
      const bool reach = live[static_cast<std::size_t>(p.op)] != 0;
      if (p.name == "cells.0._ops.2.op.1.weight") dead_conv = !reach;  // reads the None state 2
      if (p.name == "cells.0._ops.3.op.6.weight") live_sep = reach;
    }
    CHECK(dead_conv);
    CHECK(live_sep);
    // the None state in the concat: zeros shaped like the first present state, read by the concat
    const op* z = find_op(net, "cells.0.zeros");
    REQUIRE(z);
    CHECK(z->type == op_type::zero);
    const op* cat = find_op(net, "cells.0.concat");
    REQUIRE(cat);
    CHECK(cat->inputs.size() == 2);
    // the reduction cell: state 3 = skip(state 2) only (the none contribution is absent): no sum
    CHECK(find_op(net, "cells.1.sum.1") == nullptr);
    CHECK(find_op(net, "cells.1.sum.0") != nullptr);
  }
  SECTION("a cell whose output is None; the network still has an output") {
    net_args a = make_args({{"none", 0}, {"none", 1}}, {{"conv_3x3", 0}, {"conv_1x1", 1}}, {2}, 3);
    const network net = deepnets_network(a);  // reductions at 1 and 2
    const auto live = reaches_output(net);
    CHECK(num_params(net) == deepnets_num_params(a));
    for (const auto& p : parameters(net)) {
      INFO(p.name);
      const bool reach = live[static_cast<std::size_t>(p.op)] != 0;
      if (p.name.rfind("cells.0.", 0) == 0 || p.name.rfind("cells.1.preprocess1", 0) == 0 ||
          p.name.rfind("cells.1._ops.1", 0) == 0 || p.name.rfind("cells.2.preprocess0", 0) == 0 ||
          p.name.rfind("cells.2._ops.0", 0) == 0)
        CHECK_FALSE(reach);
      else
        CHECK(reach);
    }
    CHECK(find_op(net, "cells.2.preprocess0.conv_2"));  // a dead FactorizedReduce keeps its parameters
  }
  SECTION("an output cut by none ops is an error") {
    net_args a = make_args({{"none", 0}, {"none", 1}}, {{"none", 0}, {"none", 1}}, {2}, 4);
    CHECK_THROWS_AS(deepnets_network(a), value_error);
    CHECK_FALSE(deepnets_count(a).output_defined);
    CHECK(deepnets_count(a).num_params > 0);
  }
}

// ------------------------------------------------------------------------------------------------
// Sampler
// ------------------------------------------------------------------------------------------------

TEST_CASE("sampler: same seed, same sequence", "[deepnets][sampler]") {
  for (auto v : {variant::in_distribution, variant::dense, variant::bn_free}) {
    sampler_options o;
    o.v = v;
    sampler s1(o, 42), s2(o, 42), s3(o, 43);
    int differ = 0;
    for (int i = 0; i < 200; ++i) {
      const net_args a = s1.next(), b = s2.next(), c = s3.next();
      REQUIRE(a == b);
      REQUIRE(s1.last_num_params() == s2.last_num_params());
      differ += a != c;
    }
    CHECK(differ > 150);
    CHECK(s1.draws() == s2.draws());
  }
  rng g1(5), g2(5);
  for (int i = 0; i < 50; ++i) CHECK(sample_genotype(3, i % 2 == 0, true, true, false, g1) ==
                                     sample_genotype(3, i % 2 == 0, true, true, false, g2));
}

TEST_CASE("sampler: the reference's rules hold for every variant", "[deepnets][sampler]") {
  for (auto v : {variant::in_distribution, variant::deep, variant::dense, variant::wide, variant::bn_free}) {
    INFO("variant " << to_string(v));
    sampler_options o;
    o.v = v;
    sampler s(o, 7);
    const variant_limits L = limits_of(v);
    const int max_deep = *std::max_element(L.deep_layers.begin(), L.deep_layers.end());
    std::set<std::string> ops_seen;
    int n_stem1 = 0, n_pool = 0, n_nobn = 0, n_fc2 = 0, n_noglob = 0, n_cmult2 = 0, n_noprep = 0;
    const int N = 2000;
    for (int i = 0; i < N; ++i) {
      const net_args a = s.next();
      const int steps = static_cast<int>(a.geno.normal.size() / 2);
      REQUIRE(a.geno.reduce.size() == a.geno.normal.size());
      CHECK(a.n_cells >= L.min_layers);
      CHECK(a.n_cells <= L.max_layers);
      CHECK(steps >= L.min_steps);
      CHECK(steps <= (a.n_cells <= max_deep ? L.max_steps : L.medium_steps));
      CHECK(a.C == (v == variant::wide ? 128 : 32));
      CHECK(a.fc_dim == 256);
      CHECK((a.ks == 3 || a.ks == 5 || a.ks == 7));
      CHECK((a.C_mult == 1 || a.C_mult == 2));
      CHECK((a.fc_layers == 1 || a.fc_layers == 2));
      CHECK((!a.stem_pool || a.stem_type == 0));
      CHECK(a.preproc);  // conv space: no ViT, so always preprocessed
      if (a.n_cells > L.min_layers + 1 || steps > L.medium_steps)
        CHECK(a.norm == (v == variant::bn_free ? "" : "bnorm"));
      if (v == variant::bn_free) CHECK(a.norm.empty());
      if (a.n_cells > max_deep) CHECK(a.glob_avg);
      CHECK(a.geno.normal_concat == a.geno.reduce_concat);
      CHECK(a.geno.normal_concat.back() == steps + 1);
      bool conv = false, cse = false;
      for (const auto* cell : {&a.geno.normal, &a.geno.reduce}) {
        int n_cse = 0, n_large = 0, j = 0;
        for (const auto& p : *cell) {
          ops_seen.insert(p.first);
          CHECK(p.first != "msa");
          CHECK(p.second <= j / 2 + 1);
          if (steps == 1) CHECK(p.first != "none");
          n_cse += p.first == "cse";
          n_large += p.first == "conv_5x5" || p.first == "conv_7x7";
          conv = conv || p.first.find("conv") != std::string::npos;
          ++j;
        }
        CHECK(n_cse <= 1);
        CHECK(n_large <= 1);
        cse = cse || n_cse > 0;
      }
      CHECK(conv);  // a learnable op, and cse only with a conv
      (void)cse;
      net_args a32 = a;
      a32.C = 32;
      CHECK(s.last_num_params() == deepnets_num_params(a32));
      CHECK(s.last_num_params() <= L.max_params);
      deepnets_input im;
      im.in_h = im.in_w = 224;
      im.imagenet = true;
      CHECK(deepnets_num_params(a32, im) <= L.max_params);
      n_stem1 += a.stem_type == 1;
      n_pool += a.stem_pool;
      n_nobn += a.norm.empty();
      n_fc2 += a.fc_layers == 2;
      n_noglob += !a.glob_avg;
      n_cmult2 += a.C_mult == 2;
      n_noprep += !a.preproc;
    }
    CHECK(ops_seen.size() == 14);  // every op but msa
    CHECK(n_stem1 > N / 3);
    CHECK(n_pool > N / 8);
    CHECK(n_fc2 > N / 3);
    CHECK(n_cmult2 > N / 3);
    if (v == variant::in_distribution) {
      CHECK(n_noglob > 0);
      CHECK(n_nobn > 0);
    }
  }
}

TEST_CASE("sampler: counts equal the built networks, samples build on 1x28x28, bn_free has no BN",
          "[deepnets][sampler]") {
  for (auto v : {variant::in_distribution, variant::deep, variant::dense, variant::bn_free, variant::wide}) {
    INFO("variant " << to_string(v));
    sampler_options o;
    o.v = v;
    sampler s(o, 3);
    sampler_options o28 = o;
    o28.in_channels = 1;
    o28.in_h = o28.in_w = 28;
    sampler s28(o28, 3);
    const int n = v == variant::in_distribution ? 150 : 40;
    for (int i = 0; i < n; ++i) {
      net_args a = s.next();
      INFO(to_json(a).dump());
      const network net = s.build(a);
      net_args a32 = a;
      a32.C = 32;
      CHECK(num_params(v == variant::wide ? s.build(a32) : net) == s.last_num_params());
      CHECK(num_params(net) == deepnets_num_params(a));
      CHECK(split_key(a) == canonical_hash(deepnets_network(a32)));
      if (v == variant::bn_free) CHECK(count_type(net, op_type::batch_norm) == 0);
      const net_args b = s28.next();
      CHECK(b == a);  // the distribution does not depend on the input
      CHECK_NOTHROW(s28.build(b));
    }
  }
}

TEST_CASE("sampler: max_params override and the full space", "[deepnets][sampler]") {
  sampler_options o;
  o.max_params = 150'000;
  sampler s(o, 9);
  for (int i = 0; i < 200; ++i) {
    const net_args a = s.next();
    CHECK(s.last_num_params() <= 150'000);
    deepnets_input im;
    im.in_h = im.in_w = 224;
    im.imagenet = true;
    CHECK(deepnets_num_params(a, im) <= 150'000);
  }
  sampler_options f;
  f.sp = space::full;
  sampler sf(f, 9);
  int with_msa = 0, no_preproc = 0;
  for (int i = 0; i < 1000; ++i) {
    const net_args a = sf.next();
    if (has_op(a, "msa")) {
      ++with_msa;
      no_preproc += !a.preproc;
      CHECK(a.glob_avg);
      if (i < 20) CHECK_THROWS_AS(sf.build(a), unsupported_error);
    } else if (i < 20) {
      CHECK_NOTHROW(sf.build(a));
    }
  }
  CHECK(with_msa > 100);
  CHECK(no_preproc > 0);
}

TEST_CASE("sampler: splits are deterministic, disjoint and sized 98 / 1 / 1 percent", "[deepnets][sampler]") {
  // split_of itself
  int counts[3] = {0, 0, 0};
  for (std::uint64_t k = 0; k < 200000; ++k) ++counts[static_cast<int>(split_of(k * 0x9e3779b97f4a7c15ULL + 12345))];
  CHECK(counts[0] == Approx(196000).margin(1500));
  CHECK(counts[1] == Approx(2000).margin(300));
  CHECK(counts[2] == Approx(2000).margin(300));
  CHECK(split_of(123456789) == split_of(123456789));

  sampler s({}, 21);
  std::set<std::uint64_t> keys[3];
  const int n_per[3] = {300, 25, 25};
  for (int sp = 0; sp < 3; ++sp)
    for (int i = 0; i < n_per[sp]; ++i) {
      const net_args a = s.next(static_cast<split>(sp));
      const std::uint64_t k = split_key(a);
      CHECK(split_of(k) == static_cast<split>(sp));
      keys[sp].insert(k);
    }
  for (int x = 0; x < 3; ++x)
    for (int y = x + 1; y < 3; ++y)
      for (auto k : keys[x]) CHECK(keys[y].count(k) == 0);
  CHECK(keys[0].size() > 290);  // duplicates are rare

  // a wide net sits in the split of its C = 32 version; widths do not change the key
  net_args a = s.next(split::val);
  net_args w = a;
  w.C = 128;
  w.fc_dim = 64;
  CHECK(split_key(w) == split_key(a));
  CHECK(split_of(split_key(w)) == split::val);
}

TEST_CASE("sampler: the training width rule", "[deepnets][sampler][width]") {
  sampler s({}, 5);
  rng g(3);
  std::set<int> widths_small;
  for (int i = 0; i < 3000; ++i) {
    const net_args a = s.next();
    const std::int64_t p = s.last_num_params();
    const net_args w = sample_width(a, p, g);
    CHECK(w.geno == a.geno);
    CHECK(w.n_cells == a.n_cells);
    CHECK((w.C >= 32 && w.C <= 128 && w.C % 16 == 0));
    CHECK((w.fc_dim >= 64 && w.fc_dim <= 512 && w.fc_dim % 64 == 0));
    if (w.fc_dim > 256) CHECK(w.C <= 64);
    if (p > 800'000 || !a.glob_avg || a.n_cells > 12 || has_op(a, "conv_5x5") || has_op(a, "conv_7x7"))
      CHECK(w.C == 32);
    else if (p > 400'000 || a.n_cells > 10)
      CHECK(w.C <= 48);
    else if (p > 200'000 || a.n_cells > 8)
      CHECK(w.C <= 64);
    else
      widths_small.insert(w.C);
  }
  CHECK(widths_small.size() == 7);
}

TEST_CASE("sampler: 10,000 architectures (net_args + parameter count) are fast", "[deepnets][sampler][perf]") {
  sampler s({}, 1);
  const auto t0 = std::chrono::steady_clock::now();
  std::int64_t total = 0;
  for (int i = 0; i < 10000; ++i) {
    (void)s.next();
    total += s.last_num_params();
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO("10,000 samples took " << sec << " s");
  CHECK(total > 0);
  CHECK(sec < 20.0);  // the target is < 5 s in Release; about 0.1 s measured
}
