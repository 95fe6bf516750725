/// \file
/// \brief Reading and writing the network IR as JSON (schema "ghnq.arch", version 1; documented in
/// docs/arch_schema.md).
///
/// Writing is canonical: fixed key set per op type (plus a conv's "stride_w", written only when
/// it differs from "stride"), so `to_json(from_json(j)) == j` for any `j` produced by
/// `to_json`. Reading validates every field (type, range, unknown keys) and then runs
/// `infer_shapes` and the parameter-order check.
/// \code
/// auto net = ghnq::arch::resnet20(3, 32, 32, 10);
/// ghnq::arch::save_json(net, "resnet20.json");
/// auto back = ghnq::arch::load_json("resnet20.json");
/// \endcode
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "ghnq/arch/network.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/arch/shape_inference.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/io/atomic_file.hpp"

namespace ghnq::arch {

/// The "format" string and the schema version written and accepted.
inline constexpr const char* kArchJsonFormat = "ghnq.arch";
inline constexpr int kArchJsonVersion = 1;

/// All op types, in enum order (for name lookups).
inline const std::vector<op_type>& all_op_types() {
  static const std::vector<op_type> v = {
      op_type::input,   op_type::conv,     op_type::linear,    op_type::batch_norm,      op_type::relu,
      op_type::hardswish, op_type::sigmoid, op_type::max_pool, op_type::avg_pool,       op_type::global_avg_pool,
      op_type::flatten, op_type::sum,      op_type::concat,    op_type::zero,            op_type::identity,
      op_type::subsample, op_type::dropout, op_type::channel_scale, op_type::shift};
  return v;
}

/// Parses an op type name ("conv", "max_pool", ...); returns false when unknown.
inline bool parse_op_type(const std::string& s, op_type& out) {
  for (op_type t : all_op_types())
    if (s == to_string(t)) {
      out = t;
      return true;
    }
  return false;
}

/// The canonical JSON object of op `o` (type, inputs, name, attributes of its type only).
inline nlohmann::json op_to_json(const op& o) {
  nlohmann::json j;
  j["type"] = to_string(o.type);
  j["inputs"] = o.inputs;
  j["name"] = o.name;
  switch (o.type) {
    case op_type::conv:
      j["out_channels"] = o.out_channels;
      j["kernel"] = {o.kh, o.kw};
      j["stride"] = o.stride;
      if (o.stride_width() != o.stride) j["stride_w"] = o.stride_width();  // per-axis strides only
      j["padding"] = {o.pad_h, o.pad_w};
      j["dilation"] = o.dilation;
      j["groups"] = o.groups;
      j["bias"] = o.bias;
      break;
    case op_type::linear:
      j["out_channels"] = o.out_channels;
      j["bias"] = o.bias;
      break;
    case op_type::batch_norm: j["affine"] = o.bias; break;
    case op_type::max_pool:
    case op_type::avg_pool:
      j["kernel"] = o.kh;
      j["stride"] = o.stride;
      j["padding"] = o.pad_h;
      break;
    case op_type::zero:
    case op_type::subsample: j["stride"] = o.stride; break;
    case op_type::dropout: j["p"] = o.p; break;
    default: break;
  }
  return j;
}

/// The JSON document of `net` (schema in docs/arch_schema.md). `param_order` is written only
/// when the network has an explicit one.
inline nlohmann::json to_json(const network& net) {
  nlohmann::json j;
  j["format"] = kArchJsonFormat;
  j["version"] = kArchJsonVersion;
  j["name"] = net.name;
  j["input"] = {{"channels", net.in_channels}, {"height", net.in_h}, {"width", net.in_w}};
  j["num_classes"] = net.num_classes;
  nlohmann::json ops = nlohmann::json::array();
  for (const op& o : net.ops) ops.push_back(op_to_json(o));
  j["ops"] = std::move(ops);
  j["output"] = net.output;
  if (!net.param_order.empty()) {
    nlohmann::json po = nlohmann::json::array();
    for (const param_ref& r : net.param_order) po.push_back({r.op, to_string(r.role)});
    j["param_order"] = std::move(po);
  }
  return j;
}

namespace detail {

/// Field-level validation with messages "arch json: <where>: field '<key>': <problem>".
struct json_reader {
  std::string where;  // "" (top level), "op 5 'name'", "input", ...

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    std::ostringstream os;
    os << "arch json: " << (where.empty() ? "" : where + ": ") << "field '" << key << "': " << what;
    throw value_error(os.str());
  }
  const nlohmann::json* find(const nlohmann::json& obj, const char* key) const {
    auto it = obj.find(key);
    return it == obj.end() ? nullptr : &*it;
  }
  const nlohmann::json& need(const nlohmann::json& obj, const char* key) const {
    const nlohmann::json* v = find(obj, key);
    if (!v) fail(key, "missing");
    return *v;
  }
  int as_int(const nlohmann::json& v, const std::string& key, int lo = std::numeric_limits<int>::min()) const {
    if (!v.is_number_integer()) fail(key, "expected an integer, got " + v.dump());
    const bool fits = v.is_number_unsigned()
                          ? v.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<int>::max())
                          : (v.get<std::int64_t>() >= std::numeric_limits<int>::min() &&
                             v.get<std::int64_t>() <= std::numeric_limits<int>::max());
    if (!fits) fail(key, "integer " + v.dump() + " out of range");
    const int x = static_cast<int>(v.get<std::int64_t>());
    if (x < lo) fail(key, "must be >= " + std::to_string(lo) + ", got " + std::to_string(x));
    return x;
  }
  int get_int(const nlohmann::json& obj, const char* key, int lo = std::numeric_limits<int>::min()) const {
    return as_int(need(obj, key), key, lo);
  }
  int opt_int(const nlohmann::json& obj, const char* key, int def, int lo = std::numeric_limits<int>::min()) const {
    const nlohmann::json* v = find(obj, key);
    return v ? as_int(*v, key, lo) : def;
  }
  bool opt_bool(const nlohmann::json& obj, const char* key, bool def) const {
    const nlohmann::json* v = find(obj, key);
    if (!v) return def;
    if (!v->is_boolean()) fail(key, "expected true or false, got " + v->dump());
    return v->get<bool>();
  }
  std::string opt_string(const nlohmann::json& obj, const char* key, const std::string& def) const {
    const nlohmann::json* v = find(obj, key);
    if (!v) return def;
    if (!v->is_string()) fail(key, "expected a string, got " + v->dump());
    return v->get<std::string>();
  }
  /// An int or a pair [a, b] (for kernel / padding); `a == b` for an int.
  void opt_pair(const nlohmann::json& obj, const char* key, int& a, int& b, int lo) const {
    const nlohmann::json* v = find(obj, key);
    if (!v) return;
    if (v->is_array()) {
      if (v->size() != 2) fail(key, "expected an integer or a pair [h, w], got " + v->dump());
      a = as_int((*v)[0], std::string(key) + "[0]", lo);
      b = as_int((*v)[1], std::string(key) + "[1]", lo);
    } else {
      a = b = as_int(*v, key, lo);
    }
  }
  void need_object(const nlohmann::json& v, const std::string& what) const {
    if (!v.is_object()) {
      std::ostringstream os;
      os << "arch json: " << (where.empty() ? "" : where + ": ") << what << " must be an object, got " << v.dump();
      throw value_error(os.str());
    }
  }
  void no_unknown_keys(const nlohmann::json& obj, const std::set<std::string>& allowed) const {
    for (auto it = obj.begin(); it != obj.end(); ++it)
      if (!allowed.count(it.key())) {
        std::string list;
        for (const auto& k : allowed) list += (list.empty() ? "" : ", ") + k;
        fail(it.key(), "unknown field (allowed here: " + list + ")");
      }
  }
};

inline std::set<std::string> allowed_op_keys(op_type t) {
  std::set<std::string> k = {"type", "inputs", "name"};
  switch (t) {
    case op_type::conv:
      k.insert({"out_channels", "kernel", "stride", "stride_w", "padding", "dilation", "groups", "bias"});
      break;
    case op_type::linear: k.insert({"out_channels", "bias"}); break;
    case op_type::batch_norm: k.insert("affine"); break;
    case op_type::max_pool:
    case op_type::avg_pool: k.insert({"kernel", "stride", "padding"}); break;
    case op_type::zero:
    case op_type::subsample: k.insert("stride"); break;
    case op_type::dropout: k.insert("p"); break;
    default: break;
  }
  return k;
}

inline op op_from_json(const nlohmann::json& j, int i) {
  json_reader r;
  r.where = "op " + std::to_string(i);
  r.need_object(j, "the op");
  // The name first, so that later messages can show it.
  op o;
  o.name = r.opt_string(j, "name", "op" + std::to_string(i));
  r.where += " '" + o.name + "'";
  const nlohmann::json& tj = r.need(j, "type");
  if (!tj.is_string()) r.fail("type", "expected a string, got " + tj.dump());
  if (!parse_op_type(tj.get<std::string>(), o.type)) {
    std::string list;
    for (op_type t : all_op_types()) list += (list.empty() ? "" : ", ") + std::string(to_string(t));
    r.fail("type", "unknown op type \"" + tj.get<std::string>() + "\" (known: " + list + ")");
  }
  r.where += std::string(" (") + to_string(o.type) + ")";
  r.no_unknown_keys(j, allowed_op_keys(o.type));
  if (const nlohmann::json* in = r.find(j, "inputs")) {
    if (!in->is_array()) r.fail("inputs", "expected an array of op indices, got " + in->dump());
    for (std::size_t k = 0; k < in->size(); ++k) o.inputs.push_back(r.as_int((*in)[k], "inputs[" + std::to_string(k) + "]"));
  } else if (o.type != op_type::input) {
    r.fail("inputs", "missing");
  }
  switch (o.type) {
    case op_type::conv:
      o.out_channels = r.get_int(j, "out_channels", 1);
      r.need(j, "kernel");
      r.opt_pair(j, "kernel", o.kh, o.kw, 1);
      o.stride = r.opt_int(j, "stride", 1, 1);
      o.stride_w = r.opt_int(j, "stride_w", 0, 1);  // absent: same as stride
      r.opt_pair(j, "padding", o.pad_h, o.pad_w, 0);
      o.dilation = r.opt_int(j, "dilation", 1, 1);
      o.groups = r.opt_int(j, "groups", 1, 1);
      o.bias = r.opt_bool(j, "bias", false);
      break;
    case op_type::linear:
      o.out_channels = r.get_int(j, "out_channels", 1);
      o.bias = r.opt_bool(j, "bias", true);
      break;
    case op_type::batch_norm: o.bias = r.opt_bool(j, "affine", true); break;
    case op_type::max_pool:
    case op_type::avg_pool:
      r.need(j, "kernel");
      r.opt_pair(j, "kernel", o.kh, o.kw, 1);
      o.stride = r.opt_int(j, "stride", o.kh, 1);
      r.opt_pair(j, "padding", o.pad_h, o.pad_w, 0);
      break;
    case op_type::zero:
    case op_type::subsample: o.stride = r.opt_int(j, "stride", 1, 1); break;
    case op_type::dropout: {
      const nlohmann::json& p = r.need(j, "p");
      if (!p.is_number()) r.fail("p", "expected a number, got " + p.dump());
      o.p = p.get<double>();
      if (!(o.p >= 0.0 && o.p < 1.0)) r.fail("p", "must be in [0, 1), got " + p.dump());
      break;
    }
    default: break;
  }
  return o;
}

}  // namespace detail

/// Reads a network from its JSON document and validates it: every field (value_error naming the
/// op index, op name and field: missing, wrong type, out of range, unknown field, unknown op type
/// string), then infer_shapes (shape_error / value_error) and the param_order check.
/// Optional fields and their defaults are listed in docs/arch_schema.md.
/// \code auto net = ghnq::arch::from_json(nlohmann::json::parse(text)); \endcode
inline network from_json(const nlohmann::json& j) {
  detail::json_reader r;
  r.need_object(j, "the document");
  r.no_unknown_keys(j, {"format", "version", "name", "input", "num_classes", "ops", "output", "param_order"});
  const nlohmann::json& fmt = r.need(j, "format");
  if (!fmt.is_string() || fmt.get<std::string>() != kArchJsonFormat)
    r.fail("format", std::string("expected \"") + kArchJsonFormat + "\", got " + fmt.dump());
  const int version = r.get_int(j, "version");
  if (version != kArchJsonVersion)
    r.fail("version", "unsupported version " + std::to_string(version) + " (this reader supports " +
                          std::to_string(kArchJsonVersion) + ")");
  network net;
  net.name = r.opt_string(j, "name", "");
  {
    detail::json_reader ri{"input"};
    const nlohmann::json& in = r.need(j, "input");
    ri.need_object(in, "'input'");
    ri.no_unknown_keys(in, {"channels", "height", "width"});
    net.in_channels = ri.get_int(in, "channels", 1);
    net.in_h = ri.get_int(in, "height", 1);
    net.in_w = ri.get_int(in, "width", 1);
  }
  net.num_classes = r.get_int(j, "num_classes", 1);
  const nlohmann::json& ops = r.need(j, "ops");
  if (!ops.is_array() || ops.empty()) r.fail("ops", "expected a non-empty array of ops, got " + ops.dump().substr(0, 80));
  net.ops.reserve(ops.size());
  for (std::size_t i = 0; i < ops.size(); ++i) net.ops.push_back(detail::op_from_json(ops[i], static_cast<int>(i)));
  net.output = r.get_int(j, "output");
  if (const nlohmann::json* po = r.find(j, "param_order")) {
    if (!po->is_array()) r.fail("param_order", "expected an array of [op, \"weight\"|\"bias\"], got " + po->dump());
    for (std::size_t k = 0; k < po->size(); ++k) {
      const nlohmann::json& e = (*po)[k];
      const std::string key = "param_order[" + std::to_string(k) + "]";
      if (!e.is_array() || e.size() != 2 || !e[1].is_string())
        r.fail(key, "expected [op, \"weight\"|\"bias\"], got " + e.dump());
      param_ref ref;
      ref.op = r.as_int(e[0], key + "[0]");
      const std::string role = e[1].get<std::string>();
      if (role == "weight") ref.role = param_role::weight;
      else if (role == "bias") ref.role = param_role::bias;
      else r.fail(key + "[1]", "expected \"weight\" or \"bias\", got \"" + role + "\"");
      net.param_order.push_back(ref);
    }
  }
  infer_shapes(net);
  check_param_order(net);
  return net;
}

/// The text save_json writes: the document of to_json with its top-level fields in schema
/// order ("format", "version", "name", "input", "num_classes", "ops", "output", "param_order")
/// and one op per line. Parses back to to_json(net).
inline std::string to_json_text(const network& net) {
  const nlohmann::json j = to_json(net);
  std::string out = "{\n";
  bool first = true;
  for (const char* key : {"format", "version", "name", "input", "num_classes", "ops", "output", "param_order"}) {
    auto it = j.find(key);
    if (it == j.end()) continue;
    out += first ? " " : ",\n ";
    first = false;
    out += nlohmann::json(key).dump() + ": ";
    if (std::string(key) == "ops") {
      out += "[\n";
      for (std::size_t i = 0; i < it->size(); ++i) {
        // "type", "name", "inputs" first, then the attributes.
        const nlohmann::json& o = (*it)[i];
        std::string line;
        for (const char* k : {"type", "name", "inputs"})
          if (o.contains(k)) line += (line.empty() ? "" : ", ") + nlohmann::json(k).dump() + ": " + o.at(k).dump();
        for (auto a = o.begin(); a != o.end(); ++a)
          if (a.key() != "type" && a.key() != "name" && a.key() != "inputs")
            line += ", " + nlohmann::json(a.key()).dump() + ": " + a.value().dump();
        out += "  {" + line + (i + 1 < it->size() ? "},\n" : "}\n");
      }
      out += " ]";
    } else {
      out += it->dump();
    }
  }
  return out + "\n}\n";
}

/// Writes `net` (as to_json_text) to `path` atomically: a temporary file in the same directory,
/// then rename. Throws io_error naming the file on failure.
/// \code ghnq::arch::save_json(ghnq::arch::resnet20(3, 32, 32, 10), "resnet20.json"); \endcode
inline void save_json(const network& net, const std::string& path) { io::write_file_atomic(path, to_json_text(net)); }

/// Reads and validates a network file. Every problem — unreadable file, invalid JSON, schema or
/// shape errors (their messages as from_json gives them) — throws io_error naming `path`.
/// \code auto net = ghnq::arch::load_json("nets/resnet20.json"); \endcode
inline network load_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw io_error(path, "cannot open file");
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw io_error(path, "read failed");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw io_error(path, std::string("invalid JSON: ") + e.what());
  }
  try {
    return from_json(j);
  } catch (const io_error&) {
    throw;
  } catch (const error& e) {
    throw io_error(path, e.what());
  }
}

}  // namespace ghnq::arch
