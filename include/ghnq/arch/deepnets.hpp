/// \file
/// \brief DeepNets-1M networks: cell genotypes, `net_args` (with JSON), and the network
/// constructor that reproduces the reference's modules, parameter names, shapes and order.
///
/// A DeepNets-1M network is a stem, `n_cells` DARTS-style cells (normal cells, and reduction
/// cells at indices n/3 and 2n/3) and a classifier. Each cell turns its two inputs (the outputs
/// of the two previous cells) into `steps` new states; step i sums two ops, each applied to an
/// earlier state; the cell output concatenates the states listed in `*_concat`. The op vocabulary
/// is the 15-entry PRIMITIVES_DARTS_EXT list (`cell_op`). Everything but `msa` can be built.
///
/// Construction follows the reference (ppuda `deepnets1m/net.py`, `ops.py`) module by module:
///  - stem 0: conv(in -> C_stem, ks, pad ks/2) [stem.0], BN [stem.1], optional max_pool(3, 2, 1)
///    [stem.2]; C_stem = 3C when `preproc` (CIFAR-style input), else C. Stem 1: stem0 = conv(in
///    -> C/2, ks), BN, ReLU, conv(C/2 -> C, 3), BN; stem1 = ReLU, conv(C -> C, 3, stride 2), BN.
///    With `deepnets_input::imagenet` the strides are those of the reference's ImageNet version
///    (4 for stem 0; 2 and 2 for stem 0 of type 1) and C_stem = C.
///  - cell k: preprocess0 = FactorizedReduce (after a reduction, or after stem 1) or ReLU-conv1x1-
///    BN; preprocess1 = ReLU-conv1x1-BN; without `preproc`: Stride(2) / identity. In a reduction
///    cell, C *= C_mult and ops reading states 0 and 1 have stride 2.
///  - ops (names relative to "cells.k._ops.j"): conv_KxK = ReLU [op.0], conv [op.1], BN [op.2];
///    conv_7x1_1x7 = ReLU, conv 1x7 stride (1, s) pad (0, 3) [op.1], conv 7x1 stride (s, 1) pad
///    (3, 0) [op.2], BN [op.3] (per-axis strides: op::stride_w); sep_conv_K = ReLU,
///    depthwise K [op.1], 1x1 [op.2], BN [op.3], ReLU, depthwise K [op.5], 1x1 [op.6], BN [op.7];
///    dil_conv_K = ReLU, depthwise K dilation 2 [op.1], 1x1 [op.2], BN [op.3]; pools 3x3 pad 1;
///    skip_connect = identity, or FactorizedReduce [relu, conv_1, conv_2, bn] at stride 2;
///    cse = mean, Linear(C, C/2) [fc1], ReLU, Linear(C/2, C) [fc2], Hardswish, channel scale,
///    then subsample at stride 2; none = the reference's Zero.
///  - head: global average pooling (`glob_avg`) or flatten, then Linear [classifier.0], or with
///    `fc_layers` = 2: Linear(-> fc_dim), ReLU, Dropout(0.5), Linear [classifier.3].
///  - norm "" (bn-free) replaces every BN by nothing; names of the other modules do not change.
///
/// Parameter order is the reference's registration order (named_parameters()), which here equals
/// the order in which the ops are emitted; `network::param_order` is set explicitly.
///
/// Choices where the IR differs from a literal transcription (all exact where the reference runs):
///  - `none` and None states follow the reference's forward: a `none` op contributes nothing to
///    its sum (no op is emitted), a state whose two contributions are both absent is None, ops
///    reading a None state do not run, and None states in the concat are replaced by zeros shaped
///    like the first present state there (one `zero` op of that state). Modules that the
///    reference builds but never runs (an op, or a preprocess, reading a None state) still own
///    parameters (they are in named_parameters()): they are emitted fed by `zero` placeholders and
///    do not reach `network::output`. Graph construction and execution look only at ops that
///    reach the output. A network whose output is None throws value_error.
///  - FactorizedReduce: conv_1 on x, conv_2 on x[:, :, 1:, 1:] (a `shift` op), both 1x1 stride 2.
///    The reference needs an even height and width there; for odd sizes (e.g. a 7x7 map of a
///    1x28x28 input) conv_2 is computed as conv(x, stride 2, pad 1) followed by `shift`, which
///    equals zero-padding x at the bottom/right before the shift (as NAS-Bench-201 does), so that
///    both halves have ceil(H/2) rows. For even sizes the literal form is emitted.
///  - The flatten head (`glob_avg` false) flattens the final map as it is. The reference sizes its
///    Linear for an s x s map, s = 8 (4 with stem 1 or stem_pool) on 32x32 inputs and 14 (7) on
///    ImageNet inputs, which is the actual final size whenever n_cells >= 3; for other inputs
///    (1x28x28: 7x7 or 4x4) the actual size is used.
///
/// \code
/// auto args = ghnq::arch::net_args_from_json(j["net_args"]);
/// args.C = 32; args.fc_dim = 256;
/// ghnq::arch::network net = ghnq::arch::deepnets_network(args);          // 3x32x32, 10 classes
/// auto n = ghnq::arch::deepnets_num_params(args);                        // no IR built
/// \endcode
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ghnq/arch/builder.hpp"
#include "ghnq/arch/network.hpp"
#include "ghnq/core/error.hpp"

namespace ghnq::arch {

// ------------------------------------------------------------------------------------------------
// Op vocabulary and genotypes
// ------------------------------------------------------------------------------------------------

/// The cell ops of DeepNets-1M, in the reference's PRIMITIVES_DARTS_EXT order.
enum class cell_op : std::uint8_t {
  none,
  max_pool_3x3,
  avg_pool_3x3,
  skip_connect,
  sep_conv_3x3,
  sep_conv_5x5,
  dil_conv_3x3,
  dil_conv_5x5,
  conv_1x1,
  conv_7x1_1x7,
  conv_3x3,
  conv_5x5,
  conv_7x7,
  msa,
  cse,
};

/// Number of cell ops (15).
inline constexpr int kNumCellOps = 15;

/// Names of the cell ops, indexed by `cell_op`.
inline constexpr std::array<std::string_view, kNumCellOps> kCellOpNames = {
    "none",    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
    "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "conv_1x1", "conv_7x1_1x7",
    "conv_3x3", "conv_5x5",     "conv_7x7",     "msa",          "cse"};

/// "sep_conv_3x3", ...
inline std::string to_string(cell_op o) { return std::string(kCellOpNames[static_cast<std::size_t>(o)]); }

/// The op called `name`; false (and `out` untouched) when the name is not a DeepNets-1M op.
inline bool parse_cell_op(std::string_view name, cell_op& out) {
  for (int i = 0; i < kNumCellOps; ++i)
    if (kCellOpNames[static_cast<std::size_t>(i)] == name) {
      out = static_cast<cell_op>(i);
      return true;
    }
  return false;
}

/// True for the ops that the reference counts as convolutions ("conv" in the name).
inline bool is_conv_op(cell_op o) {
  return o == cell_op::sep_conv_3x3 || o == cell_op::sep_conv_5x5 || o == cell_op::dil_conv_3x3 ||
         o == cell_op::dil_conv_5x5 || o == cell_op::conv_1x1 || o == cell_op::conv_7x1_1x7 ||
         o == cell_op::conv_3x3 || o == cell_op::conv_5x5 || o == cell_op::conv_7x7;
}

/// A DARTS-style cell pair. `normal[2 i]` and `normal[2 i + 1]` are the two ops of step i, each
/// with the index of the state it reads (0, 1: the cell inputs; 2 + t: step t's output, t < i).
/// `*_concat` lists the states concatenated into the cell output.
struct genotype {
  std::vector<std::pair<std::string, int>> normal, reduce;
  std::vector<int> normal_concat, reduce_concat;

  friend bool operator==(const genotype& a, const genotype& b) {
    return a.normal == b.normal && a.reduce == b.reduce && a.normal_concat == b.normal_concat &&
           a.reduce_concat == b.reduce_concat;
  }
  friend bool operator!=(const genotype& a, const genotype& b) { return !(a == b); }
};

/// The arguments of the reference's `Network` (DeepNets-1M's `net_args`) plus C and fc_dim.
struct net_args {
  genotype geno;
  int n_cells = 1;        ///< number of cells
  int C = 32;             ///< base width (32 in the released counts; the loader samples it)
  int C_mult = 1;         ///< width multiplier at each reduction cell (1 or 2)
  int ks = 3;             ///< kernel of the first stem conv (3, 5, 7)
  int stem_type = 0;      ///< 0: simple stem; 1: ImageNet-style two-part stem
  bool stem_pool = false; ///< stem 0 only: max_pool(3, 2, 1) after the stem
  std::string norm = "bnorm";  ///< "bnorm" (BatchNorm) or "" (none: bn-free)
  bool preproc = true;    ///< 1x1 preprocessing convs at each cell input
  int fc_layers = 1;      ///< Linear layers in the classifier (>= 1)
  int fc_dim = 256;       ///< hidden width of the classifier when fc_layers > 1
  bool glob_avg = true;   ///< global average pooling (else flatten) before the classifier

  friend bool operator==(const net_args& a, const net_args& b) {
    return a.geno == b.geno && a.n_cells == b.n_cells && a.C == b.C && a.C_mult == b.C_mult && a.ks == b.ks &&
           a.stem_type == b.stem_type && a.stem_pool == b.stem_pool && a.norm == b.norm && a.preproc == b.preproc &&
           a.fc_layers == b.fc_layers && a.fc_dim == b.fc_dim && a.glob_avg == b.glob_avg;
  }
  friend bool operator!=(const net_args& a, const net_args& b) { return !(a == b); }
};

/// Input description of a DeepNets-1M network.
struct deepnets_input {
  int in_channels = 3, in_h = 32, in_w = 32;
  int num_classes = 10;
  /// The reference's ImageNet version (`is_imagenet_input`): stem strides 4 (stem 0) or 2, 2
  /// (stem 1), C_stem = C; the released ImageNet counts use 3x224x224.
  bool imagenet = false;
};

namespace detail {
inline std::string dn_field(const char* cell, std::size_t j) {
  return std::string("genotype.") + cell + "[" + std::to_string(j) + "]";
}

/// Number of steps of a cell (ops / 2).
inline int dn_steps(const std::vector<std::pair<std::string, int>>& ops) { return static_cast<int>(ops.size() / 2); }

inline void dn_check_cell(const std::vector<std::pair<std::string, int>>& ops, const std::vector<int>& concat,
                          const char* cell, const char* concat_name) {
  GHNQ_CHECK(!ops.empty() && ops.size() % 2 == 0, value_error, "net_args: genotype.", cell,
             " must list 2 ops per step (a non-empty even count), got ", ops.size());
  for (std::size_t j = 0; j < ops.size(); ++j) {
    cell_op o{};
    GHNQ_CHECK(parse_cell_op(ops[j].first, o), value_error, "net_args: ", dn_field(cell, j), ": unknown op '",
               ops[j].first, "' (known: none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5, ",
               "dil_conv_3x3, dil_conv_5x5, conv_1x1, conv_7x1_1x7, conv_3x3, conv_5x5, conv_7x7, msa, cse)");
    const int step = static_cast<int>(j / 2);
    GHNQ_CHECK(ops[j].second >= 0 && ops[j].second <= step + 1, value_error, "net_args: ", dn_field(cell, j), " ('",
               ops[j].first, "') reads state ", ops[j].second, "; step ", step, " may read states 0..", step + 1);
  }
  const int steps = dn_steps(ops);
  GHNQ_CHECK(!concat.empty(), value_error, "net_args: genotype.", concat_name, " is empty");
  for (std::size_t j = 0; j < concat.size(); ++j)
    GHNQ_CHECK(concat[j] >= 0 && concat[j] <= steps + 1, value_error, "net_args: genotype.", concat_name, "[", j,
               "] = ", concat[j], " is not a state of the cell (0..", steps + 1, ")");
}
}  // namespace detail

/// Validates `a` (everything except the `msa` restriction, see deepnets_network). Throws
/// value_error naming the field: unknown op names, state indices out of range, empty or odd op
/// lists, concat entries out of range, n_cells / C / C_mult / ks / fc_layers < 1, fc_dim < 1 with
/// fc_layers > 1, stem_type not 0 / 1, norm not "bnorm" / "", and `preproc` false while the cell
/// has more than one concatenated state or C_mult > 1 (the reference asserts this too).
inline void check_net_args(const net_args& a) {
  detail::dn_check_cell(a.geno.normal, a.geno.normal_concat, "normal", "normal_concat");
  detail::dn_check_cell(a.geno.reduce, a.geno.reduce_concat, "reduce", "reduce_concat");
  GHNQ_CHECK(a.n_cells >= 1, value_error, "net_args: n_cells must be >= 1, got ", a.n_cells);
  GHNQ_CHECK(a.C >= 1, value_error, "net_args: C must be >= 1, got ", a.C);
  GHNQ_CHECK(a.C_mult >= 1, value_error, "net_args: C_mult must be >= 1, got ", a.C_mult);
  GHNQ_CHECK(a.ks >= 1, value_error, "net_args: ks must be >= 1, got ", a.ks);
  GHNQ_CHECK(a.stem_type == 0 || a.stem_type == 1, value_error, "net_args: stem_type must be 0 or 1, got ",
             a.stem_type);
  GHNQ_CHECK(a.norm == "bnorm" || a.norm.empty(), value_error, "net_args: norm must be \"bnorm\" or \"\" (none), got \"",
             a.norm, "\"");
  GHNQ_CHECK(a.fc_layers >= 1, value_error, "net_args: fc_layers must be >= 1, got ", a.fc_layers);
  GHNQ_CHECK(a.fc_layers == 1 || a.fc_dim >= 1, value_error, "net_args: fc_dim must be >= 1 with fc_layers ",
             a.fc_layers, ", got ", a.fc_dim);
  GHNQ_CHECK(a.preproc || (a.geno.normal_concat.size() <= 1 && a.C_mult <= 1), value_error,
             "net_args: preproc must be true when normal_concat has more than one state (", a.geno.normal_concat.size(),
             ") or C_mult > 1 (", a.C_mult, "), as in the reference");
}

// ------------------------------------------------------------------------------------------------
// JSON
// ------------------------------------------------------------------------------------------------

namespace detail {
inline const nlohmann::json& dn_get(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  GHNQ_CHECK(it != j.end(), value_error, "net_args: field '", key, "' is missing");
  return *it;
}
inline int dn_int(const nlohmann::json& v, const std::string& field) {
  GHNQ_CHECK(v.is_number_integer() || (v.is_number_float() && v.get<double>() == static_cast<double>(
                                                                   static_cast<long long>(v.get<double>()))),
             value_error, "net_args: field '", field, "' must be an integer, got ", v.dump());
  const long long x = v.is_number_integer() ? v.get<long long>() : static_cast<long long>(v.get<double>());
  GHNQ_CHECK(x >= -(1LL << 30) && x <= (1LL << 30), value_error, "net_args: field '", field, "' is out of range: ", x);
  return static_cast<int>(x);
}
inline bool dn_bool(const nlohmann::json& v, const std::string& field) {
  if (v.is_boolean()) return v.get<bool>();
  GHNQ_CHECK(v.is_number_integer() && (v.get<long long>() == 0 || v.get<long long>() == 1), value_error,
             "net_args: field '", field, "' must be a boolean, got ", v.dump());
  return v.get<long long>() == 1;
}
inline std::vector<std::pair<std::string, int>> dn_ops(const nlohmann::json& g, const char* cell) {
  const nlohmann::json& v = dn_get(g, cell);
  GHNQ_CHECK(v.is_array(), value_error, "net_args: field 'genotype.", cell, "' must be a list of [op, state] pairs, got ",
             v.dump());
  std::vector<std::pair<std::string, int>> out;
  out.reserve(v.size());
  for (std::size_t j = 0; j < v.size(); ++j) {
    const auto& e = v[j];
    const std::string f = dn_field(cell, j);
    GHNQ_CHECK(e.is_array() && e.size() == 2 && e[0].is_string(), value_error, "net_args: field '", f,
               "' must be [op name, state index], got ", e.dump());
    out.emplace_back(e[0].get<std::string>(), dn_int(e[1], f + "[1]"));
  }
  return out;
}
inline std::vector<int> dn_concat(const nlohmann::json& g, const char* key) {
  const nlohmann::json& v = dn_get(g, key);
  GHNQ_CHECK(v.is_array(), value_error, "net_args: field 'genotype.", key, "' must be a list of state indices, got ",
             v.dump());
  std::vector<int> out;
  for (std::size_t j = 0; j < v.size(); ++j)
    out.push_back(dn_int(v[j], std::string("genotype.") + key + "[" + std::to_string(j) + "]"));
  return out;
}
}  // namespace detail

/// Reads a DeepNets-1M `net_args` object (the format of the reference's meta JSON and of
/// bench/deepnets_conv.json): {"genotype": {"normal": [[op, state], ...], "normal_concat": [...],
/// "reduce": ..., "reduce_concat": ...}, "n_cells", "ks", "C_mult", "stem_type", "stem_pool",
/// "norm" ("bnorm" / "bn..." or null / "" / "none"), "preproc", "fc_layers", "glob_avg", and
/// optionally "C" (default 32) and "fc_dim" (default 256). Other keys ("num_params", ...) are
/// ignored. Booleans may also be 0 / 1. Throws value_error naming the field on a missing field,
/// a wrong type or an invalid value (check_net_args).
/// \code auto a = ghnq::arch::net_args_from_json(nlohmann::json::parse(text)); \endcode
inline net_args net_args_from_json(const nlohmann::json& j) {
  GHNQ_CHECK(j.is_object(), value_error, "net_args: expected a JSON object, got ", j.dump());
  net_args a;
  const nlohmann::json& g = detail::dn_get(j, "genotype");
  GHNQ_CHECK(g.is_object(), value_error, "net_args: field 'genotype' must be an object, got ", g.dump());
  a.geno.normal = detail::dn_ops(g, "normal");
  a.geno.reduce = detail::dn_ops(g, "reduce");
  a.geno.normal_concat = detail::dn_concat(g, "normal_concat");
  a.geno.reduce_concat = detail::dn_concat(g, "reduce_concat");
  a.n_cells = detail::dn_int(detail::dn_get(j, "n_cells"), "n_cells");
  a.ks = detail::dn_int(detail::dn_get(j, "ks"), "ks");
  a.C_mult = detail::dn_int(detail::dn_get(j, "C_mult"), "C_mult");
  a.stem_type = detail::dn_int(detail::dn_get(j, "stem_type"), "stem_type");
  a.stem_pool = detail::dn_bool(detail::dn_get(j, "stem_pool"), "stem_pool");
  a.preproc = detail::dn_bool(detail::dn_get(j, "preproc"), "preproc");
  a.fc_layers = detail::dn_int(detail::dn_get(j, "fc_layers"), "fc_layers");
  a.glob_avg = detail::dn_bool(detail::dn_get(j, "glob_avg"), "glob_avg");
  if (j.contains("C")) a.C = detail::dn_int(j["C"], "C");
  if (j.contains("fc_dim")) a.fc_dim = detail::dn_int(j["fc_dim"], "fc_dim");
  const nlohmann::json& norm = detail::dn_get(j, "norm");
  if (norm.is_null()) {
    a.norm.clear();
  } else {
    GHNQ_CHECK(norm.is_string(), value_error, "net_args: field 'norm' must be a string or null, got ", norm.dump());
    const std::string s = norm.get<std::string>();
    if (s.empty() || s == "none") a.norm.clear();
    else if (s.rfind("bn", 0) == 0) a.norm = "bnorm";
    else GHNQ_CHECK(false, value_error, "net_args: field 'norm' must be \"bnorm\" (or \"bn...\") or null, got \"", s, "\"");
  }
  check_net_args(a);
  return a;
}

/// Writes `a` in the reference's format (norm "" is written as null); net_args_from_json reads it
/// back unchanged.
inline nlohmann::json to_json(const net_args& a) {
  auto ops = [](const std::vector<std::pair<std::string, int>>& v) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& e : v) arr.push_back(nlohmann::json::array({e.first, e.second}));
    return arr;
  };
  nlohmann::json g;
  g["normal"] = ops(a.geno.normal);
  g["normal_concat"] = a.geno.normal_concat;
  g["reduce"] = ops(a.geno.reduce);
  g["reduce_concat"] = a.geno.reduce_concat;
  nlohmann::json j;
  j["genotype"] = std::move(g);
  j["n_cells"] = a.n_cells;
  j["C"] = a.C;
  j["C_mult"] = a.C_mult;
  j["ks"] = a.ks;
  j["stem_type"] = a.stem_type;
  j["stem_pool"] = a.stem_pool;
  j["norm"] = a.norm.empty() ? nlohmann::json(nullptr) : nlohmann::json(a.norm);
  j["preproc"] = a.preproc;
  j["fc_layers"] = a.fc_layers;
  j["fc_dim"] = a.fc_dim;
  j["glob_avg"] = a.glob_avg;
  return j;
}

/// nlohmann::json conversion hooks: `json j = args;` and `j.get<net_args>()`.
inline void to_json(nlohmann::json& j, const net_args& a) { j = to_json(a); }
inline void from_json(const nlohmann::json& j, net_args& a) { a = net_args_from_json(j); }

// ------------------------------------------------------------------------------------------------
// Construction (shared by the IR emitter and the fast parameter counter)
// ------------------------------------------------------------------------------------------------

namespace detail {

/// A value during construction: op index (IR mode), channels and spatial size (h == w == 0: flat).
struct dn_val {
  int id = -1;
  int c = 0, h = 0, w = 0;
  bool flat() const noexcept { return h == 0 && w == 0; }
};

inline std::string dn_join(const std::string& prefix, const char* leaf) {
  return leaf[0] ? prefix + "." + leaf : prefix;
}

inline std::string dn_shape(const dn_val& v) {
  return v.flat() ? "[" + std::to_string(v.c) + "]"
                  : "[" + std::to_string(v.c) + ", " + std::to_string(v.h) + ", " + std::to_string(v.w) + "]";
}

/// Counting emitter: tracks shapes and adds up parameters; builds no IR and no names.
class dn_counter {
 public:
  static constexpr bool kEmit = false;
  std::int64_t params = 0;

  dn_val input(int c, int h, int w, int /*classes*/) { return {-1, c, h, w}; }
  /// `stride` is the vertical stride; `stride_w` the horizontal one (0: same as `stride`).
  dn_val conv(const dn_val& x, int out, int kh, int kw, int stride, int ph, int pw, int dil, int groups,
              const std::string&, const char*, int stride_w = 0) {
    GHNQ_CHECK(!x.flat() && x.c % groups == 0 && out % groups == 0, shape_error, "deepnets: conv ", kh, "x", kw,
               " (groups ", groups, ", out ", out, ") cannot take an input of shape ", dn_shape(x));
    params += std::int64_t{out} * (x.c / groups) * kh * kw;
    return {-1, out, extent(x.h, kh, stride, ph, dil), extent(x.w, kw, stride_w > 0 ? stride_w : stride, pw, dil)};
  }
  dn_val linear(const dn_val& x, int out, const std::string&, const char*) {
    GHNQ_CHECK(x.flat(), shape_error, "deepnets: linear needs a flat input, got ", dn_shape(x));
    params += std::int64_t{out} * x.c + out;
    return {-1, out, 0, 0};
  }
  dn_val batch_norm(const dn_val& x, const std::string&, const char*) {
    params += 2 * std::int64_t{x.c};
    return x;
  }
  dn_val relu(const dn_val& x, const std::string&, const char*) { return x; }
  dn_val hardswish(const dn_val& x, const std::string&, const char*) { return x; }
  dn_val dropout(const dn_val& x, double, const std::string&, const char*) { return x; }
  dn_val pool(bool, const dn_val& x, int k, int stride, int pad, const std::string&, const char*) {
    return {-1, x.c, extent(x.h, k, stride, pad, 1), extent(x.w, k, stride, pad, 1)};
  }
  dn_val global_avg_pool(const dn_val& x, const std::string&, const char*) { return {-1, x.c, 0, 0}; }
  dn_val flatten(const dn_val& x, const std::string&, const char*) {
    const std::int64_t n = std::int64_t{x.c} * (x.flat() ? 1 : std::int64_t{x.h} * x.w);
    GHNQ_CHECK(n <= (std::int64_t{1} << 31) - 1, shape_error, "deepnets: flatten of ", dn_shape(x), " is too large");
    return {-1, static_cast<int>(n), 0, 0};
  }
  dn_val sum(const dn_val& a, const dn_val& b, const std::string&, const char*) {
    GHNQ_CHECK(a.c == b.c && a.h == b.h && a.w == b.w, shape_error, "deepnets: sum of different shapes ", dn_shape(a),
               " and ", dn_shape(b));
    return a;
  }
  dn_val concat(const std::vector<dn_val>& xs, const std::string&, const char*) {
    dn_val r = xs[0];
    for (std::size_t k = 1; k < xs.size(); ++k) {
      GHNQ_CHECK(xs[k].h == r.h && xs[k].w == r.w, shape_error, "deepnets: concat of different spatial sizes ",
                 dn_shape(xs[0]), " and ", dn_shape(xs[k]));
      r.c += xs[k].c;
    }
    return r;
  }
  dn_val zero(const dn_val& x, int stride, const std::string&, const char*) { return strided(x, stride); }
  dn_val subsample(const dn_val& x, int stride, const std::string&, const char*) { return strided(x, stride); }
  dn_val shift(const dn_val& x, const std::string&, const char*) {
    GHNQ_CHECK(x.h >= 2 && x.w >= 2, shape_error, "deepnets: shift (x[:, :, 1:, 1:]) of ", dn_shape(x));
    return {-1, x.c, x.h - 1, x.w - 1};
  }
  dn_val channel_scale(const dn_val& x, const dn_val&, const std::string&, const char*) { return x; }
  void extra_params(std::int64_t n) { params += n; }

 private:
  static int extent(int n, int k, int s, int p, int d) {
    const int e = (n + 2 * p - d * (k - 1) - 1) / s + 1;
    GHNQ_CHECK(n + 2 * p - d * (k - 1) - 1 >= 0 && e >= 1, shape_error, "deepnets: a spatial size of ", n,
               " is too small for a kernel ", k, " (dilation ", d, ", padding ", p, ")");
    return e;
  }
  static dn_val strided(const dn_val& x, int s) {
    return x.flat() ? x : dn_val{-1, x.c, (x.h + s - 1) / s, (x.w + s - 1) / s};
  }
};

/// IR emitter: adds ops through arch::builder (shapes validated as they are added) and records
/// the registration order of the parameters.
class dn_emitter {
 public:
  static constexpr bool kEmit = true;
  explicit dn_emitter(int in_c, int in_h, int in_w, int classes) : b_(in_c, in_h, in_w, classes) {}

  dn_val input(int, int, int, int) { return val(b_.input()); }
  dn_val conv(const dn_val& x, int out, int kh, int kw, int stride, int ph, int pw, int dil, int groups,
              const std::string& pre, const char* leaf, int stride_w = 0) {
    return params(b_.conv2(x.id, out, kh, kw, stride, stride_w > 0 ? stride_w : stride, ph, pw, dil, groups, false,
                           dn_join(pre, leaf)));
  }
  dn_val linear(const dn_val& x, int out, const std::string& pre, const char* leaf) {
    return params(b_.linear(x.id, out, true, dn_join(pre, leaf)));
  }
  dn_val batch_norm(const dn_val& x, const std::string& pre, const char* leaf) {
    return params(b_.batch_norm(x.id, true, dn_join(pre, leaf)));
  }
  dn_val relu(const dn_val& x, const std::string& pre, const char* leaf) { return val(b_.relu(x.id, dn_join(pre, leaf))); }
  dn_val hardswish(const dn_val& x, const std::string& pre, const char* leaf) {
    return val(b_.hardswish(x.id, dn_join(pre, leaf)));
  }
  dn_val dropout(const dn_val& x, double p, const std::string& pre, const char* leaf) {
    return val(b_.dropout(x.id, p, dn_join(pre, leaf)));
  }
  dn_val pool(bool is_max, const dn_val& x, int k, int stride, int pad, const std::string& pre, const char* leaf) {
    return val(is_max ? b_.max_pool(x.id, k, stride, pad, dn_join(pre, leaf))
                      : b_.avg_pool(x.id, k, stride, pad, dn_join(pre, leaf)));
  }
  dn_val global_avg_pool(const dn_val& x, const std::string& pre, const char* leaf) {
    return val(b_.global_avg_pool(x.id, dn_join(pre, leaf)));
  }
  dn_val flatten(const dn_val& x, const std::string& pre, const char* leaf) {
    return val(b_.flatten(x.id, dn_join(pre, leaf)));
  }
  dn_val sum(const dn_val& a, const dn_val& b, const std::string& pre, const char* leaf) {
    return val(b_.sum({a.id, b.id}, dn_join(pre, leaf)));
  }
  dn_val concat(const std::vector<dn_val>& xs, const std::string& pre, const char* leaf) {
    std::vector<int> ids;
    ids.reserve(xs.size());
    for (const auto& x : xs) ids.push_back(x.id);
    return val(b_.concat(std::move(ids), dn_join(pre, leaf)));
  }
  dn_val zero(const dn_val& x, int stride, const std::string& pre, const char* leaf) {
    return val(b_.zero(x.id, stride, dn_join(pre, leaf)));
  }
  dn_val subsample(const dn_val& x, int stride, const std::string& pre, const char* leaf) {
    return val(b_.subsample(x.id, stride, dn_join(pre, leaf)));
  }
  dn_val shift(const dn_val& x, const std::string& pre, const char* leaf) {
    return val(b_.shift(x.id, dn_join(pre, leaf)));
  }
  dn_val channel_scale(const dn_val& x, const dn_val& s, const std::string& pre, const char* leaf) {
    return val(b_.channel_scale(x.id, s.id, dn_join(pre, leaf)));
  }
  void extra_params(std::int64_t) {}

  network finish(const dn_val& out, std::string name) const { return b_.finish(out.id, std::move(name)); }

 private:
  dn_val val(int id) const { return {id, b_.channels(id), b_.height(id), b_.width(id)}; }
  dn_val params(int id) {
    b_.add_param_order(id);
    return val(id);
  }
  builder b_;
};

/// A cell state: present (`live`) or None. A None state carries a shape-correct placeholder:
/// either `v` itself, or (zstride > 0) zeros of `v` strided by zstride, not yet emitted.
struct dn_state {
  bool live = true;
  dn_val v;
  int zstride = 0;
};

template <class E>
std::string dn_name(const std::string& a, const char* b) {
  if constexpr (E::kEmit) return a + b;
  else return {};
}
template <class E>
std::string dn_name(const std::string& a, const char* b, int i) {
  if constexpr (E::kEmit) return a + b + std::to_string(i);
  else return {};
}

/// The reference's construction, written once for both emitters.
template <class E>
class dn_construct {
 public:
  dn_construct(E& e, const net_args& a, const deepnets_input& in) : e_(e), a_(a), in_(in) {
    bn_ = !a.norm.empty();
    for (const auto& g : {&a.geno.normal, &a.geno.reduce})
      for (const auto& op : *g) {
        cell_op o{};
        parse_cell_op(op.first, o);
        vit_ = vit_ || o == cell_op::msa;
      }
  }

  /// Builds everything; returns the classifier output and whether the network output is defined.
  std::pair<dn_val, bool> run() {
    const dn_val x = e_.input(in_.in_channels, in_.in_h, in_.in_w, in_.num_classes);
    const int C = a_.C;
    const int steps = static_cast<int>(a_.geno.normal_concat.size());
    dn_state s0, s1;
    if (vit_) {
      const int k = in_.imagenet ? 16 : 3;
      s0.v = e_.conv(x, C, k, k, k, k < 4 ? 1 : 0, k < 4 ? 1 : 0, 1, 1, "stem0", "");
      const std::int64_t p = in_.imagenet ? 14 : 11;
      e_.extra_params(std::int64_t{C} * p * p);  // pos_enc.weight (1, C, p, p)
      s1 = s0;
    } else if (a_.stem_type == 0) {
      const int c_stem = C * (a_.preproc && !in_.imagenet ? 3 : 1);
      const int st = in_.imagenet ? 4 : 1;
      dn_val v = e_.conv(x, c_stem, a_.ks, a_.ks, st, a_.ks / 2, a_.ks / 2, 1, 1, "stem", "0");
      v = norm(v, "stem", "1");
      if (a_.stem_pool) v = e_.pool(true, v, 3, 2, 1, "stem", "2");
      s0.v = s1.v = v;
    } else {
      GHNQ_CHECK(C >= 2, value_error, "deepnets: stem_type 1 needs C >= 2 (its first conv has C/2 channels), got C = ",
                 C);
      const int st = in_.imagenet ? 2 : 1;
      dn_val v = e_.conv(x, C / 2, a_.ks, a_.ks, st, a_.ks / 2, a_.ks / 2, 1, 1, "stem0", "0");
      v = norm(v, "stem0", "1");
      v = e_.relu(v, "stem0", "2");
      v = e_.conv(v, C, 3, 3, st, 1, 1, 1, 1, "stem0", "3");
      s0.v = norm(v, "stem0", "4");
      v = e_.relu(s0.v, "stem1", "0");
      s0.v = v;  // the reference's ReLU(inplace=True) overwrites s0: cell 0 reads the activated value
      v = e_.conv(v, C, 3, 3, 2, 1, 1, 1, 1, "stem1", "1");
      s1.v = norm(v, "stem1", "2");
    }

    int c_prev = C, c_curr = C;
    if (!vit_ && a_.stem_type == 0) c_prev = s1.v.c;
    const int n = a_.n_cells;
    auto is_reduction = [n](int k) { return k > 0 && (k == n / 3 || k == 2 * n / 3); };
    bool reduction_prev = a_.stem_type == 1;
    for (int k = 0; k < n; ++k) {
      const bool reduction = is_reduction(k);
      if (reduction) c_curr *= a_.C_mult;
      const bool reduction_next = is_reduction(k + 1);
      const int c_in = a_.preproc ? c_curr : c_prev;
      const int c_out = c_curr * (reduction_next && steps == 1 && !a_.preproc ? a_.C_mult : 1);
      dn_state out = cell(k, s0, s1, c_in, c_out, reduction, reduction_prev);
      reduction_prev = reduction;
      c_prev = static_cast<int>((reduction ? a_.geno.reduce_concat : a_.geno.normal_concat).size()) * c_curr;
      s0 = s1;
      s1 = out;
    }

    const bool defined = s1.live;
    materialize(s1);
    dn_val h = a_.glob_avg ? e_.global_avg_pool(s1.v, "global_pooling", "") : e_.flatten(s1.v, "flatten", "");
    const int classes = in_.num_classes;
    h = e_.linear(h, a_.fc_layers > 1 ? a_.fc_dim : classes, "classifier", "0");
    for (int i = 0; i < a_.fc_layers - 1; ++i) {
      h = e_.relu(h, dn_name<E>("classifier.", "", 3 * i + 1), "");
      h = e_.dropout(h, 0.5, dn_name<E>("classifier.", "", 3 * i + 2), "");
      h = e_.linear(h, i < a_.fc_layers - 2 ? a_.fc_dim : classes, dn_name<E>("classifier.", "", 3 * i + 3), "");
    }
    return {h, defined};
  }

 private:
  dn_val norm(const dn_val& x, const std::string& pre, const char* leaf) {
    return bn_ ? e_.batch_norm(x, pre, leaf) : x;
  }

  /// Emits the placeholder of a None state that is about to be read.
  void materialize(dn_state& s) {
    if (!s.live && s.zstride > 0) {
      s.v = e_.zero(s.v, s.zstride, dn_name<E>(cell_pre_, ".none"), "");
      s.zstride = 0;
    }
  }

  dn_val relu_conv_bn(const dn_val& x, int c_out, int k, int stride, const std::string& pre) {
    dn_val v = e_.relu(x, pre, "op.0");
    v = e_.conv(v, c_out, k, k, stride, k / 2, k / 2, 1, 1, pre, "op.1");
    return norm(v, pre, "op.2");
  }

  dn_val factorized_reduce(const dn_val& x, int c_out, const std::string& pre) {
    GHNQ_CHECK(c_out % 2 == 0, value_error, "deepnets: FactorizedReduce (", pre.empty() ? "a reduction" : pre,
               ") needs an even number of output channels, got ", c_out, " (C = ", a_.C, ")");
    const dn_val r = e_.relu(x, pre, "relu");
    const dn_val c1 = e_.conv(r, c_out / 2, 1, 1, 2, 0, 0, 1, 1, pre, "conv_1");
    dn_val c2;
    if (r.h % 2 == 0 && r.w % 2 == 0) {
      c2 = e_.conv(e_.shift(r, pre, "shift"), c_out / 2, 1, 1, 2, 0, 0, 1, 1, pre, "conv_2");
    } else {  // odd size: zero-pad bottom/right, then shift (see the file comment)
      c2 = e_.shift(e_.conv(r, c_out / 2, 1, 1, 2, 1, 1, 1, 1, pre, "conv_2"), pre, "conv_2_shift");
    }
    return norm(e_.concat({c1, c2}, pre, "cat"), pre, "bn");
  }

  /// One op of a cell (not `none`) applied to x.
  dn_val cell_op_value(cell_op o, const dn_val& x, int stride, int c_in, int c_out, const std::string& pre) {
    switch (o) {
      case cell_op::max_pool_3x3:
      case cell_op::avg_pool_3x3:
        return e_.pool(o == cell_op::max_pool_3x3, x, 3, stride, 1, pre, "");
      case cell_op::skip_connect:
        return stride == 1 ? x : factorized_reduce(x, c_out, pre);
      case cell_op::sep_conv_3x3:
      case cell_op::sep_conv_5x5: {
        const int k = o == cell_op::sep_conv_3x3 ? 3 : 5;
        dn_val v = e_.relu(x, pre, "op.0");
        v = e_.conv(v, c_in, k, k, stride, k / 2, k / 2, 1, c_in, pre, "op.1");
        v = e_.conv(v, c_in, 1, 1, 1, 0, 0, 1, 1, pre, "op.2");
        v = norm(v, pre, "op.3");
        v = e_.relu(v, pre, "op.4");
        v = e_.conv(v, c_in, k, k, 1, k / 2, k / 2, 1, c_in, pre, "op.5");
        v = e_.conv(v, c_out, 1, 1, 1, 0, 0, 1, 1, pre, "op.6");
        return norm(v, pre, "op.7");
      }
      case cell_op::dil_conv_3x3:
      case cell_op::dil_conv_5x5: {
        const int k = o == cell_op::dil_conv_3x3 ? 3 : 5;
        dn_val v = e_.relu(x, pre, "op.0");
        v = e_.conv(v, c_in, k, k, stride, k - k % 2, k - k % 2, 2, c_in, pre, "op.1");
        v = e_.conv(v, c_out, 1, 1, 1, 0, 0, 1, 1, pre, "op.2");
        return norm(v, pre, "op.3");
      }
      case cell_op::conv_1x1: return relu_conv_bn(x, c_out, 1, stride, pre);
      case cell_op::conv_3x3: return relu_conv_bn(x, c_out, 3, stride, pre);
      case cell_op::conv_5x5: return relu_conv_bn(x, c_out, 5, stride, pre);
      case cell_op::conv_7x7: return relu_conv_bn(x, c_out, 7, stride, pre);
      case cell_op::conv_7x1_1x7: {
        dn_val v = e_.relu(x, pre, "op.0");
        v = e_.conv(v, c_in, 1, 7, 1, 0, 3, 1, 1, pre, "op.1", stride);    // 1x7, stride (1, s)
        v = e_.conv(v, c_out, 7, 1, stride, 3, 0, 1, 1, pre, "op.2", 1);   // 7x1, stride (s, 1)
        return norm(v, pre, "op.3");
      }
      case cell_op::cse: {
        GHNQ_CHECK(c_in == c_out && c_in >= 2, value_error, "deepnets: cse (", pre.empty() ? "a cell op" : pre,
                   ") needs equal input and output channels >= 2, got ", c_in, " and ", c_out);
        GHNQ_CHECK(x.c == c_in, shape_error, "deepnets: cse (", pre, ") expects ", c_in, " channels, got ",
                   dn_shape(x));
        dn_val sq = e_.global_avg_pool(x, pre, "squeeze");
        sq = e_.linear(sq, c_in / 2, pre, "fc1");
        sq = e_.relu(sq, pre, "relu");
        sq = e_.linear(sq, c_in, pre, "fc2");
        sq = e_.hardswish(sq, pre, "sigmoid");
        dn_val v = e_.channel_scale(x, sq, pre, "mul");
        return stride > 1 ? e_.subsample(v, stride, pre, "stride") : v;
      }
      case cell_op::msa: {
        // Counting only (deepnets_network rejects msa): the reference's pre-LN transformer block.
        GHNQ_CHECK(!E::kEmit, unsupported_error, "deepnets: msa is not supported");
        GHNQ_CHECK(x.c == c_in && c_in == c_out, shape_error, "deepnets: msa expects ", c_in, " -> ", c_out,
                   " equal channels, got ", dn_shape(x));
        const std::int64_t d = c_in, inner = (d / 8) * 8, o2 = c_out;
        e_.extra_params(d * inner * 3 + inner * o2 + o2 + 4 * d + d * o2 + o2 + o2 * d + d);
        return x;
      }
      case cell_op::none: break;
    }
    GHNQ_CHECK(false, value_error, "deepnets: internal error: op ", to_string(o));
    return x;
  }

  /// Applies op o to state s (the reference's skipping rules for `none` and None states).
  dn_state apply(cell_op o, dn_state s, int stride, int c_in, int c_out, const std::string& pre) {
    if (o == cell_op::none) {
      materialize(s);
      return dn_state{false, s.v, stride};  // the reference skips Zero: this contribution is absent
    }
    materialize(s);
    dn_val v = cell_op_value(o, s.v, stride, c_in, c_out, pre);
    return dn_state{s.live, v, 0};
  }

  dn_state preprocess(dn_state s, bool factorized, int c_out, const std::string& pre) {
    materialize(s);
    dn_val v;
    if (a_.preproc) {
      if (factorized) {
        v = factorized_reduce(s.v, c_out, pre);
      } else {
        const std::string p = dn_name<E>(pre, ".op");
        v = e_.relu(s.v, p, "0");
        v = e_.conv(v, c_out, 1, 1, 1, 0, 0, 1, 1, p, "1");
        v = norm(v, p, "2");
      }
    } else {
      v = factorized ? e_.subsample(s.v, 2, pre, "") : s.v;
    }
    return dn_state{s.live, v, 0};
  }

  dn_state cell(int k, dn_state s0, dn_state s1, int c_in, int c_out, bool reduction, bool reduction_prev) {
    cell_pre_ = dn_name<E>("cells.", "", k);
    const auto& ops = reduction ? a_.geno.reduce : a_.geno.normal;
    const auto& concat = reduction ? a_.geno.reduce_concat : a_.geno.normal_concat;
    std::vector<dn_state> st;
    st.reserve(ops.size() / 2 + 2);
    st.push_back(preprocess(s0, reduction_prev && !vit_, c_out, dn_name<E>(cell_pre_, ".preprocess0")));
    st.push_back(preprocess(s1, false, c_out, dn_name<E>(cell_pre_, ".preprocess1")));
    const std::string ops_pre = dn_name<E>(cell_pre_, "._ops.");
    const int steps = static_cast<int>(ops.size() / 2);
    for (int i = 0; i < steps; ++i) {
      dn_state h[2];
      for (int t = 0; t < 2; ++t) {
        const int j = 2 * i + t;
        const int idx = ops[static_cast<std::size_t>(j)].second;
        cell_op o{};
        parse_cell_op(ops[static_cast<std::size_t>(j)].first, o);
        const int stride = reduction && idx < 2 && !vit_ ? 2 : 1;
        h[t] = apply(o, st[static_cast<std::size_t>(idx)], stride, idx <= 1 ? c_in : c_out, c_out,
                     dn_name<E>(ops_pre, "", j));
      }
      if (h[0].live && h[1].live) st.push_back({true, e_.sum(h[0].v, h[1].v, dn_name<E>(cell_pre_, ".sum.", i), ""), 0});
      else if (h[0].live) st.push_back(h[0]);
      else st.push_back(h[1].live ? h[1] : h[0]);
    }

    // The cell output: None states are replaced by zeros like the first present one.
    int first_live = -1;
    for (int idx : concat)
      if (st[static_cast<std::size_t>(idx)].live) {
        first_live = idx;
        break;
      }
    std::vector<dn_val> parts;
    parts.reserve(concat.size());
    if (first_live < 0) {
      for (int idx : concat) {
        materialize(st[static_cast<std::size_t>(idx)]);
        parts.push_back(st[static_cast<std::size_t>(idx)].v);
      }
    } else {
      dn_val dummy;
      bool have_dummy = false;
      for (int idx : concat) {
        if (st[static_cast<std::size_t>(idx)].live) {
          parts.push_back(st[static_cast<std::size_t>(idx)].v);
        } else {
          if (!have_dummy) {
            dummy = e_.zero(st[static_cast<std::size_t>(first_live)].v, 1, dn_name<E>(cell_pre_, ".zeros"), "");
            have_dummy = true;
          }
          parts.push_back(dummy);
        }
      }
    }
    dn_state out;
    out.live = first_live >= 0;
    // The reference always concatenates (a one-state torch.cat is still an op of its graph).
    out.v = e_.concat(parts, dn_name<E>(cell_pre_, ".concat"), "");
    return out;
  }

  E& e_;
  const net_args& a_;
  deepnets_input in_;
  bool bn_ = true, vit_ = false;
  std::string cell_pre_;
};

}  // namespace detail

// ------------------------------------------------------------------------------------------------
// Public constructors and counters
// ------------------------------------------------------------------------------------------------

/// Builds the network of `a` for inputs `in` (see the file comment for the construction rules).
/// Throws value_error on invalid arguments (check_net_args, odd channel counts where
/// FactorizedReduce halves them, cse with different in / out channels, an output that is None
/// because every path is cut by `none` ops), ghnq::unsupported_error when the genotype contains
/// `msa`, and shape_error when the input is too small for the network.
inline network deepnets_network(const net_args& a, const deepnets_input& in) {
  check_net_args(a);
  for (const auto* cell : {&a.geno.normal, &a.geno.reduce})
    for (std::size_t j = 0; j < cell->size(); ++j)
      GHNQ_CHECK((*cell)[j].first != "msa", unsupported_error, "deepnets_network: genotype.",
                 cell == &a.geno.normal ? "normal" : "reduce", "[", j,
                 "] is msa (multi-head self-attention), which is not supported: ghnq builds the conv space of "
                 "DeepNets-1M (sample with arch::space::conv)");
  detail::dn_emitter e(in.in_channels, in.in_h, in.in_w, in.num_classes);
  detail::dn_construct<detail::dn_emitter> c(e, a, in);
  const auto [out, defined] = c.run();
  GHNQ_CHECK(defined, value_error,
             "deepnets_network: the network output is None: every path to it is cut by 'none' ops (the reference "
             "rejects such genotypes)");
  return e.finish(out, "deepnets");
}

/// Builds the network of `a` for [N, in_channels, in_h, in_w] inputs and `num_classes` logits
/// (CIFAR-style stem rules). 1x28x28 and 3x32x32 both work.
/// \code auto net = ghnq::arch::deepnets_network(args, 1, 28, 28, 10); \endcode
inline network deepnets_network(const net_args& a, int in_channels = 3, int in_h = 32, int in_w = 32,
                                int num_classes = 10) {
  deepnets_input in;
  in.in_channels = in_channels;
  in.in_h = in_h;
  in.in_w = in_w;
  in.num_classes = num_classes;
  return deepnets_network(a, in);
}

/// Result of deepnets_count.
struct deepnets_summary {
  std::int64_t num_params = 0;  ///< parameters of every module the reference builds
  bool output_defined = true;   ///< false when `none` ops cut every path to the output
};

/// Counts the parameters of the network of `a` without building its IR (equal to
/// num_params(deepnets_network(a, in)) whenever that builds). Unlike deepnets_network it also
/// counts genotypes with `msa` (the reference's transformer block and ViT stem), as the sampler
/// of the full space needs, and does not throw when the output is None (output_defined = false).
/// Throws value_error on invalid arguments and shape_error when the input is too small.
inline deepnets_summary deepnets_count(const net_args& a, const deepnets_input& in = {}) {
  check_net_args(a);
  detail::dn_counter e;
  detail::dn_construct<detail::dn_counter> c(e, a, in);
  const auto r = c.run();
  return {e.params, r.second};
}

/// Number of parameters of the network of `a` (see deepnets_count).
/// \code auto n = ghnq::arch::deepnets_num_params(args);   // CIFAR-10 input at args.C \endcode
inline std::int64_t deepnets_num_params(const net_args& a, const deepnets_input& in = {}) {
  return deepnets_count(a, in).num_params;
}

}  // namespace ghnq::arch
