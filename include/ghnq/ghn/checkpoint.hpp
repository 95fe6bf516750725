/// \file
/// \brief GHN checkpoints as safetensors files: the GHN's parameters ("ghn.<name>"), optionally
/// the optimizer's buffers ("optim.<buffer>.<index>"), and in `__metadata__` the format tag,
/// the GHN configuration, the training options, the step counters and the optimizer counters,
/// each as JSON text. Writes are atomic (temporary file + rename, io/safetensors.hpp).
///
/// Loading checks everything against the receiving objects and throws a ghnq::error naming the
/// file and the field at fault: not a ghnq checkpoint, a different configuration (hidden size,
/// classes, max shape, s_max, scalar type, GNN layer ...), a missing / extra / reshaped tensor,
/// or training options that differ from the resuming trainer's.
/// \code
/// ghnq::ghn::save_checkpoint("run/ghn.safetensors", ghn, &trainer);   // resumable
/// ghnq::ghn::load_checkpoint("run/ghn.safetensors", ghn2, &trainer2); // trainer2 continues exactly
/// \endcode
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "ghnq/core/config.hpp"
#include "ghnq/ghn/hypernet.hpp"
#include "ghnq/ghn/trainer.hpp"
#include "ghnq/io/safetensors.hpp"

namespace ghnq::ghn {

inline constexpr const char* kCheckpointFormat = "ghnq-ghn/1";

namespace detail {
template <class G, class = void>
struct has_gnn_name : std::false_type {};
template <class G>
struct has_gnn_name<G, std::void_t<decltype(G::kName)>> : std::true_type {};
/// The GNN layer's name in a checkpoint's configuration: its `kName` when it has one,
/// "gated_gnn" for ghn::gated_gnn, "custom" otherwise.
template <class G>
struct gnn_name_of {
  static std::string get() {
    if constexpr (has_gnn_name<G>::value) return G::kName;
    else return "custom";
  }
};
template <class T, class B>
struct gnn_name_of<gated_gnn<T, B>> {
  static std::string get() { return "gated_gnn"; }
};
template <class G>
std::string gnn_name() {
  return gnn_name_of<G>::get();
}
}  // namespace detail

/// The configuration of a hypernet type as JSON (what a checkpoint must match).
template <class Config>
nlohmann::json config_json() {
  using T = typename Config::scalar;
  nlohmann::json j;
  j["model"] = ghn::is_quant_aware<Config>::value ? "ghn2q" : "ghn2";
  j["hidden"] = Config::kHidden;
  j["num_classes"] = Config::kClasses;
  j["max_shape"] = {Config::kMaxOut, Config::kMaxIn, Config::kMaxSpatial, Config::kMaxSpatial};
  j["s_max"] = Config::kSMax;
  j["layernorm"] = Config::kLayerNorm;
  j["weight_norm"] = Config::kWeightNorm;
  j["gnn"] = detail::gnn_name<typename Config::template gnn<T, typename Config::backend>>();
  j["scalar"] = std::is_same_v<T, float> ? "float32" : "float64";
  j["quant_aware"] = ghn::is_quant_aware<Config>::value;
  return j;
}

/// Training options as JSON (and back): what a resumed run must share with the original.
inline nlohmann::json to_json(const train_options& o) {
  nlohmann::json j;
  j["steps"] = o.steps;
  j["meta_batch"] = o.meta_batch;
  j["batch_size"] = o.batch_size;
  j["optimizer"] = o.adamw ? "adamw" : "adam";
  j["lr"] = o.lr;
  j["weight_decay"] = o.weight_decay;
  j["grad_clip"] = o.grad_clip;
  j["net_grad_clip"] = o.net_grad_clip;
  j["schedule"] = to_string(o.schedule);
  j["milestones"] = o.milestones;
  j["gamma"] = o.gamma;
  j["warmup"] = o.warmup;
  j["label_smoothing"] = o.label_smoothing;
  j["seed"] = o.seed;
  j["space"] = {{"space", arch::to_string(o.space.sp)},
                {"variant", arch::to_string(o.space.v)},
                {"max_params", o.space.max_params}};
  j["sample_widths"] = o.sample_widths;
  j["norm"] = {{"mean", o.norm.mean}, {"std", o.norm.std}};
  j["aug"] = {{"crop_padding", o.aug.crop_padding}, {"hflip", o.aug.hflip}};
  j["strategy"] = to_string(o.strat);
  j["quant"] = {{"w_bits", o.quant.w_bits},
                {"a_bits", o.quant.a_bits},
                {"first_last_bits", o.quant.first_last_bits},
                {"wq", exec::to_string(o.quant.wq)},
                {"aq", exec::to_string(o.quant.aq)}};
  j["mixed_bits"] = o.mixed_bits;
  return j;
}

namespace detail {
template <class V>
V ck_get(const nlohmann::json& j, const char* key, const std::string& file) {
  try {
    return j.at(key).get<V>();
  } catch (const nlohmann::json::exception& e) {
    throw io_error(file, std::string("training options: field '") + key + "': " + e.what());
  }
}
inline nlohmann::json ck_parse(const io::safetensors_file& f, const char* key) {
  if (!f.has_metadata(key)) throw io_error(f.path(), std::string("not a ghnq GHN checkpoint: no metadata '") + key + "'");
  try {
    return nlohmann::json::parse(f.metadata(key));
  } catch (const nlohmann::json::exception& e) {
    throw io_error(f.path(), std::string("metadata '") + key + "' is not valid JSON: " + e.what());
  }
}
/// First key whose value differs between two JSON objects ("" when equal).
inline std::string first_difference(const nlohmann::json& a, const nlohmann::json& b) {
  for (auto it = a.begin(); it != a.end(); ++it)
    if (!b.contains(it.key()) || b.at(it.key()) != it.value()) return it.key();
  for (auto it = b.begin(); it != b.end(); ++it)
    if (!a.contains(it.key())) return it.key();
  return {};
}
}  // namespace detail

/// Parse training options written by to_json (io_error naming the file and field).
inline train_options train_options_from_json(const nlohmann::json& j, const std::string& file = "<json>") {
  using detail::ck_get;
  train_options o;
  o.steps = ck_get<std::int64_t>(j, "steps", file);
  o.meta_batch = ck_get<int>(j, "meta_batch", file);
  o.batch_size = ck_get<std::int64_t>(j, "batch_size", file);
  const auto opt = ck_get<std::string>(j, "optimizer", file);
  if (opt != "adam" && opt != "adamw") throw io_error(file, "training options: field 'optimizer': unknown '" + opt + "'");
  o.adamw = opt == "adamw";
  o.lr = ck_get<double>(j, "lr", file);
  o.weight_decay = ck_get<double>(j, "weight_decay", file);
  o.grad_clip = ck_get<double>(j, "grad_clip", file);
  o.net_grad_clip = j.contains("net_grad_clip") ? ck_get<double>(j, "net_grad_clip", file) : 0.0;  // absent in older checkpoints
  try {
    o.schedule = parse_schedule(ck_get<std::string>(j, "schedule", file));
  } catch (const value_error& e) {
    throw io_error(file, std::string("training options: field 'schedule': ") + e.what());
  }
  o.milestones = ck_get<std::vector<double>>(j, "milestones", file);
  o.gamma = ck_get<double>(j, "gamma", file);
  o.warmup = ck_get<std::int64_t>(j, "warmup", file);
  o.label_smoothing = ck_get<double>(j, "label_smoothing", file);
  o.seed = ck_get<std::uint64_t>(j, "seed", file);
  const auto sp = ck_get<nlohmann::json>(j, "space", file);
  const auto spn = ck_get<std::string>(sp, "space", file), vn = ck_get<std::string>(sp, "variant", file);
  if (spn != "conv" && spn != "full") throw io_error(file, "training options: field 'space.space': unknown '" + spn + "'");
  o.space.sp = spn == "conv" ? arch::space::conv : arch::space::full;
  bool found = false;
  for (auto v : {arch::variant::in_distribution, arch::variant::deep, arch::variant::dense, arch::variant::wide,
                 arch::variant::bn_free})
    if (vn == arch::to_string(v)) {
      o.space.v = v;
      found = true;
    }
  if (!found) throw io_error(file, "training options: field 'space.variant': unknown '" + vn + "'");
  o.space.max_params = ck_get<std::int64_t>(sp, "max_params", file);
  o.sample_widths = ck_get<bool>(j, "sample_widths", file);
  const auto nm = ck_get<nlohmann::json>(j, "norm", file);
  o.norm.mean = ck_get<std::vector<float>>(nm, "mean", file);
  o.norm.std = ck_get<std::vector<float>>(nm, "std", file);
  const auto ag = ck_get<nlohmann::json>(j, "aug", file);
  o.aug.crop_padding = ck_get<int>(ag, "crop_padding", file);
  o.aug.hflip = ck_get<bool>(ag, "hflip", file);
  try {
    o.strat = parse_strategy(ck_get<std::string>(j, "strategy", file));
    const auto q = ck_get<nlohmann::json>(j, "quant", file);
    o.quant.w_bits = ck_get<int>(q, "w_bits", file);
    o.quant.a_bits = ck_get<int>(q, "a_bits", file);
    o.quant.first_last_bits = ck_get<int>(q, "first_last_bits", file);
    o.quant.wq = exec::parse_weight_quantizer(ck_get<std::string>(q, "wq", file));
    o.quant.aq = exec::parse_act_quantizer(ck_get<std::string>(q, "aq", file));
  } catch (const value_error& e) {
    throw io_error(file, std::string("training options: ") + e.what());
  }
  o.mixed_bits = ck_get<std::vector<int>>(j, "mixed_bits", file);
  return o;
}

/// Save the GHN (and, with a trainer, everything needed to resume it) to `path`, atomically.
/// `extra` entries are added to the metadata as given (keys must not clash with ours).
template <class Config>
void save_checkpoint(const std::string& path, const hypernet<Config>& ghn, const trainer<Config>* tr = nullptr,
                     const std::map<std::string, std::string>& extra = {}) {
  io::safetensors_writer w;
  w.set_metadata("format", kCheckpointFormat);
  w.set_metadata("ghnq_version", version_string);
  w.set_metadata("config", config_json<Config>().dump());
  const auto ps = ghn.parameters();
  nlohmann::json names = nlohmann::json::array();
  for (const auto& p : ps) {
    const auto host = to_backend<backend::cpu_t>(p.value());
    w.add("ghn." + p.name(), host);
    names.push_back(p.name());
  }
  w.set_metadata("parameters", names.dump());
  if (tr != nullptr) {
    const auto st = tr->optimizer_state();
    for (const auto& [k, t] : st.tensors) w.add("optim." + k, to_backend<backend::cpu_t>(t));
    nlohmann::json c(st.counters);
    w.set_metadata("optimizer", c.dump());
    w.set_metadata("training", to_json(tr->options()).dump());
    w.set_metadata("step", std::to_string(tr->step_count()));
    w.set_metadata("skipped", std::to_string(tr->skipped()));
  }
  for (const auto& [k, v] : extra) {
    GHNQ_CHECK(!w.metadata().count(k), value_error, "save_checkpoint: extra metadata key '", k,
               "' clashes with a checkpoint field");
    w.set_metadata(k, v);
  }
  w.save(path);
}

/// What a checkpoint holds besides the tensors.
struct checkpoint_info {
  nlohmann::json config;                  ///< config_json of the GHN that wrote it
  bool resumable = false;                 ///< optimizer state and training options present
  std::int64_t step = 0, skipped = 0;     ///< trainer counters (resumable checkpoints)
  train_options options;                  ///< training options (resumable checkpoints)
  std::map<std::string, std::string> metadata;  ///< everything in __metadata__
};

/// Read a checkpoint's metadata without loading a GHN (io_error when it is not a checkpoint).
inline checkpoint_info read_checkpoint_info(const std::string& path) {
  const auto f = io::safetensors_file::load(path);
  checkpoint_info info;
  info.metadata = f.metadata();
  if (!f.has_metadata("format") || f.metadata("format") != kCheckpointFormat)
    throw io_error(path, std::string("not a ghnq GHN checkpoint: metadata 'format' must be '") + kCheckpointFormat +
                             "'");
  info.config = detail::ck_parse(f, "config");
  info.resumable = f.has_metadata("training");
  if (info.resumable) {
    info.options = train_options_from_json(detail::ck_parse(f, "training"), path);
    try {
      info.step = std::stoll(f.metadata("step"));
      info.skipped = std::stoll(f.metadata("skipped"));
    } catch (const std::exception&) {
      throw io_error(path, "metadata 'step' / 'skipped' must be integers");
    }
  }
  return info;
}

/// Load a checkpoint into `ghn` (its configuration must match) and, when `tr` is given, restore
/// the optimizer state and step counters (the checkpoint must be resumable and its training
/// options must equal tr's). Nothing is modified unless every check passes.
template <class Config>
checkpoint_info load_checkpoint(const std::string& path, hypernet<Config>& ghn, trainer<Config>* tr = nullptr) {
  using T = typename Config::scalar;
  using B = typename Config::backend;
  const auto f = io::safetensors_file::load(path);
  auto info = read_checkpoint_info(path);
  const auto want = config_json<Config>();
  const auto diff = detail::first_difference(want, info.config);
  if (!diff.empty())
    throw io_error(path, "GHN configuration mismatch in field '" + diff + "': checkpoint has " +
                             (info.config.contains(diff) ? info.config.at(diff).dump() : std::string("nothing")) +
                             ", this GHN has " + (want.contains(diff) ? want.at(diff).dump() : std::string("nothing")));
  const auto ps = ghn.parameters();
  std::vector<tensor<T, B>> values;
  std::size_t n_ghn = 0;
  for (const auto& name : f.names()) n_ghn += name.rfind("ghn.", 0) == 0;
  for (const auto& p : ps) {
    const std::string key = "ghn." + p.name();
    if (!f.contains(key)) throw io_error(path, "missing tensor '" + key + "'");
    values.push_back(to_backend<B>(f.template get<T>(key, p.shape())));
  }
  if (n_ghn != ps.size())
    throw io_error(path, "holds " + std::to_string(n_ghn) + " GHN tensors but this GHN has " +
                             std::to_string(ps.size()));
  train::optimizer_state<T, B> st;
  if (tr != nullptr) {
    if (!info.resumable) throw io_error(path, "has no training state (saved without a trainer): cannot resume");
    const auto d = detail::first_difference(to_json(tr->options()), to_json(info.options));
    if (!d.empty())
      throw value_error("load_checkpoint: " + path + ": training option '" + d + "' differs: checkpoint has " +
                        to_json(info.options).at(d).dump() + ", the trainer has " + to_json(tr->options()).at(d).dump());
    const auto counters = detail::ck_parse(f, "optimizer");
    try {
      st.counters = counters.get<std::map<std::string, std::int64_t>>();
    } catch (const nlohmann::json::exception& e) {
      throw io_error(path, std::string("metadata 'optimizer' must map names to integers: ") + e.what());
    }
    for (const auto& name : f.names())
      if (name.rfind("optim.", 0) == 0) st.tensors[name.substr(6)] = to_backend<B>(f.template get<T>(name));
  }
  if (tr != nullptr) {
    try {
      tr->restore(info.step, info.skipped, st);
    } catch (const error& e) {
      throw io_error(path, std::string("optimizer state does not fit this GHN: ") + e.what());
    }
  }
  for (std::size_t i = 0; i < ps.size(); ++i) ps[i].value() = std::move(values[i]);
  return info;
}

}  // namespace ghnq::ghn
