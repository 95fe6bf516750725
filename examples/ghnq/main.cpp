// ghnq: the command-line driver.
//
//   ghnq arch inspect FILE [--index i] [--input CxHxW] [--classes K] [--s-max S] [--dot OUT.dot]
//   ghnq ghn info | train-ghn | eval-ghn | predict      (see ghn_commands.hpp)
//
// FILE is a ghnq architecture JSON ({"format": "ghnq.arch", ...}) or a file of DeepNets-1M
// net_args ({"nets": [{"net_args": {...}, "eval": {"C": .., "fc_dim": ..}}]}, or one net_args
// object). Prints one JSON object: parameter count, parameter shapes in order, node count,
// node-type sequence, 1-hop and virtual edge counts.
#include <ghnq/ghn.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

namespace {

const char* kUsage =
    "usage: ghnq arch inspect FILE [--index i] [--input CxHxW] [--classes K] [--s-max S] [--dot OUT.dot]\n"
    "       ghnq ghn info [--config ghn2-cifar10 | ghn2q-cifar10 | cli | --checkpoint FILE]\n"
    "       ghnq ghn stats (--checkpoint FILE | --untrained) [--groups G] [--archs N]  (predicted-weight gains)\n"
    "       ghnq train-ghn --out DIR [options]      (ghnq train-ghn --help)\n"
    "       ghnq eval-ghn (--checkpoint FILE | --untrained) [options]\n"
    "       ghnq predict --checkpoint FILE --arch FILE --out PARAMS.safetensors\n"
    "       ghnq experiment qat --out DIR [options]  (the 32/8/4/2-bit GHN-QAT study)\n"
    "       ghnq export-int --checkpoint GHN (--arch FILE | --test-index i) --quant W8A8 --out MODEL.safetensors [options]\n"
    "       ghnq eval-int --model MODEL.safetensors [--test-limit N]  (integer-only executor vs fake-quant)\n"
    "       ghnq experiment mixed --checkpoint GHN [--checkpoint GHN ...] --out DIR [options]  (mixed precision)\n"
    "       ghnq finetune (--arch FILE | --test-index i) --init ghn:CKPT|random --quant W4A4 --out DIR [options]\n"
    "       ghnq --version\n";

struct input_spec {
  int c = 3, h = 32, w = 32;
  bool given = false;
};

input_spec parse_input(const std::string& s) {
  input_spec in;
  int n = 0;
  if (std::sscanf(s.c_str(), "%dx%dx%d%n", &in.c, &in.h, &in.w, &n) != 3 || n != static_cast<int>(s.size()) ||
      in.c < 1 || in.h < 1 || in.w < 1) {
    throw ghnq::value_error("--input: expected CxHxW with positive integers (e.g. 3x32x32), got '" + s + "'");
  }
  in.given = true;
  return in;
}

/// A ghnq architecture JSON file, or DeepNets-1M net_args (one object, or entry `index` of a
/// {"nets": [...]} file) built for input `in` and `classes` classes.
ghnq::arch::network load_architecture(const std::string& file, long index, const input_spec& in, int classes) {
  std::ifstream f(file);
  if (!f) throw ghnq::io_error(file, "cannot open file");
  nlohmann::json j;
  try {
    f >> j;
  } catch (const nlohmann::json::exception& e) {
    throw ghnq::io_error(file, std::string("not valid JSON: ") + e.what());
  }
  ghnq::arch::network net;
  if (j.is_object() && j.contains("format")) {
    net = ghnq::arch::load_json(file);
    GHNQ_CHECK(!in.given, ghnq::value_error, "--input applies to DeepNets-1M net_args only; ", file,
               " is a ghnq architecture with its own input");
  } else {
    const nlohmann::json* entry = &j;
    if (j.is_object() && j.contains("nets")) {
      const auto& nets = j.at("nets");
      if (!nets.is_array()) throw ghnq::io_error(file, "field 'nets' is not an array");
      GHNQ_CHECK(index >= 0 && index < static_cast<long>(nets.size()), ghnq::value_error, "--index ", index,
                 " out of range: ", file, " holds ", nets.size(), " networks");
      entry = &nets[static_cast<std::size_t>(index)];
    }
    const nlohmann::json& args_json = entry->contains("net_args") ? entry->at("net_args") : *entry;
    ghnq::arch::net_args args;
    try {
      args = ghnq::arch::net_args_from_json(args_json);
    } catch (const ghnq::error& e) {
      throw ghnq::io_error(file, e.what());
    }
    if (entry->contains("eval")) {  // C and fc_dim of the evaluated network unless net_args gives them
      const auto& ev = entry->at("eval");
      if (!args_json.contains("C") && ev.contains("C")) args.C = ev.at("C").get<int>();
      if (!args_json.contains("fc_dim") && ev.contains("fc_dim")) args.fc_dim = ev.at("fc_dim").get<int>();
    }
    net = ghnq::arch::deepnets_network(args, in.c, in.h, in.w, classes);
  }
  return net;
}

int arch_inspect(int argc, char** argv) {
  if (argc < 1) throw ghnq::value_error(std::string("missing FILE\n") + kUsage);
  const std::string file = argv[0];
  long index = 0;
  input_spec in;
  int classes = 10, s_max = 50;
  std::string dot;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw ghnq::value_error("missing value after " + a);
      return argv[++i];
    };
    if (a == "--index") index = std::stol(next());
    else if (a == "--input") in = parse_input(next());
    else if (a == "--classes") classes = std::stoi(next());
    else if (a == "--s-max") s_max = std::stoi(next());
    else if (a == "--dot") dot = next();
    else throw ghnq::value_error("unknown option " + a + "\n" + kUsage);
  }
  const auto net = load_architecture(file, index, in, classes);
  const auto g = ghnq::graph::build(net, s_max);
  nlohmann::json out;
  out["num_params"] = ghnq::arch::num_params(net);
  auto shapes = nlohmann::json::array();
  for (const auto& p : ghnq::arch::parameters(net)) shapes.push_back({p.name, p.shape.to_vector()});
  out["param_shapes"] = shapes;
  out["n_nodes"] = g.nodes.size();
  out["node_types"] = g.node_type_names();
  out["edges_1hop"] = g.num_edges(1);
  out["edges_ve" + std::to_string(s_max)] = g.num_edges(s_max);
  std::cout << out.dump() << "\n";
  if (!dot.empty()) {
    std::ofstream d(dot);
    if (!d) throw ghnq::io_error(dot, "cannot write file");
    d << ghnq::graph::to_dot(g);
  }
  return 0;
}

}  // namespace

#include "ghn_commands.hpp"
#include "experiment.hpp"
#include "finetune.hpp"
#include "mixed.hpp"
#include "int_commands.hpp"

int main(int argc, char** argv) try {
  const std::string a = argc > 1 ? argv[1] : "", b = argc > 2 ? argv[2] : "";
  if (a == "arch" && b == "inspect") return arch_inspect(argc - 3, argv + 3);
  if (a == "ghn" && b == "info") return cli::ghn_info(argc - 3, argv + 3);
  if (a == "ghn" && b == "stats") return cli::ghn_stats(argc - 3, argv + 3);
  if (a == "train-ghn") return cli::train_ghn(argc - 2, argv + 2);
  if (a == "eval-ghn") return cli::eval_ghn(argc - 2, argv + 2);
  if (a == "predict") return cli::predict(argc - 2, argv + 2);
  if (a == "export-int") return cli::export_int(argc - 2, argv + 2);
  if (a == "eval-int") return cli::eval_int(argc - 2, argv + 2);
  if (a == "finetune") return cli::finetune_command(argc - 2, argv + 2);
  if (a == "experiment" && b == "mixed") return cli::experiment_mixed(argc - 3, argv + 3);
  if (a == "experiment" && b == "qat") return cli::experiment_qat(argc - 3, argv + 3);
  if (a == "--version") {
    std::printf("ghnq %s\n", ghnq::version_string);
    return 0;
  }
  std::fputs(kUsage, a == "--help" || a == "-h" ? stdout : stderr);
  return a == "--help" || a == "-h" ? 0 : 2;
} catch (const ghnq::error& e) {
  std::fprintf(stderr, "ghnq: %s\n", e.what());
  return 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "ghnq: %s\n", e.what());
  return 1;
}
