/// \file
/// \brief Seeded sampler of the DeepNets-1M design space (the reference generator's draws and
/// rejection rules), its OOD variants, the training-time width rule and train / val / test splits.
///
/// Spaces: `space::conv` (default) never draws `msa`, so every sample can be built by
/// deepnets_network; `space::full` draws msa as the reference generator does (ViT-style nets are
/// then sampled and counted with the reference's rules, but deepnets_network rejects them with
/// ghnq::unsupported_error, so `full` is for statistics and the JSON of such nets only).
///
/// Per draw (the reference's `net_generator.py`, §7.1–7.2 of the spec):
///  - n_cells ~ U{min_layers..max_layers}, deep ~ U(deep_layers), steps ~ U{min_steps..(max_steps
///    if n_cells <= deep else medium_steps)};
///  - genotype (sample_genotype): only_pool ~ Bern(.5), drop_concat ~ Bern(.5) when steps > 1,
///    none allowed when steps > 1; ks ~ U{3, 5, 7};
///  - rejected: a cse without any conv op, more than one cse in a cell, more than one conv_5x5 /
///    conv_7x7 in a cell, no learnable op (no conv, cse or msa);
///  - C_mult ~ U{1, 2}; preproc = steps > 1 or C_mult > 1, else (not ViT or U > .8); glob_avg =
///    ViT or n_cells > deep or U > .1; norm: none for bn_free, else U{bnorm, none} when n_cells <=
///    min_layers + 1 and steps <= medium_steps, else bnorm; stem_type ~ U{0, 1}; stem_pool =
///    stem 0 and U > .5; fc_layers ~ U{1, 2}; fc_dim = 256; C = 32;
///  - rejected: more than max_params parameters at C = 32 for the CIFAR-10 (3x32x32) or the
///    ImageNet (3x224x224, ImageNet stem) version, or an output cut off by `none` ops (the
///    reference's "graph cannot be built").
///
/// | variant          | cells (min..max, deep) | steps (min / medium / max) | max_params | other      |
/// |------------------|------------------------|----------------------------|------------|------------|
/// | in_distribution  | 4..18, {7,8,9,10}      | 1 / 2 / 4                  | 10^7       |            |
/// | deep             | 10..36, {18}           | 1 / 2 / 4                  | 10^8       |            |
/// | dense            | 4..18, {7,8,9,10}      | 2 / 6 / 10                 | 10^8       |            |
/// | wide             | as in_distribution     |                            | 10^7       | C = 4 x 32 |
/// | bn_free          | as in_distribution     |                            | 10^7       | norm none  |
///
/// The genotype draw is the reference's in distribution, not in its random stream: the reference
/// ranks the candidate input states of a step by their largest softmax(1e-3 N(0,1)) op weight and
/// takes the arg-max op of the two best; with i.i.d. logits this is a uniformly random ordered pair
/// of distinct states and, independently, a uniformly random allowed op for each, which is what
/// sample_genotype draws directly. ghnq::rng makes every sequence reproducible across platforms.
///
/// Splits: split_key(args) is the canonical_hash of the network of `args` at the reference
/// configuration (C = 32, fc_dim = 256, 3x32x32 input, 10 classes), so it does not depend on the
/// width or the dataset; split_of(key) mixes the key (splitmix64 finalizer) and takes it mod 1000:
/// [0, 980) train, [980, 990) val, [990, 1000) test. sampler::next(split) draws until the sample
/// falls in the requested split, so the three sets are disjoint by construction, and the same
/// architecture always lands in the same split (a WIDE net in the split of its C = 32 version).
///
/// \code
/// ghnq::arch::sampler s({}, 1);                              // conv space, in-distribution
/// ghnq::arch::net_args a = s.next(ghnq::arch::split::train);
/// ghnq::rng g(7);
/// a = ghnq::arch::sample_width(a, s.last_num_params(), g);   // the loader's training width
/// ghnq::arch::network net = s.build(a);
/// \endcode
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ghnq/arch/deepnets.hpp"
#include "ghnq/arch/hash.hpp"
#include "ghnq/arch/network.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/core/rng.hpp"

namespace ghnq::arch {

/// The op vocabulary a sampler draws from.
enum class space : std::uint8_t {
  conv,  ///< msa excluded (default): every sample can be built
  full,  ///< the reference's vocabulary including msa (such nets cannot be built by ghnq)
};

/// The reference's generator settings: in-distribution (train / val / test) and the OOD sets.
enum class variant : std::uint8_t { in_distribution, deep, dense, wide, bn_free };

/// Architecture splits (see the file comment).
enum class split : std::uint8_t { train, val, test };

/// "conv", "full" / "in_distribution", "deep", ... / "train", "val", "test".
inline const char* to_string(space s) { return s == space::conv ? "conv" : "full"; }
inline const char* to_string(variant v) {
  switch (v) {
    case variant::in_distribution: return "in_distribution";
    case variant::deep: return "deep";
    case variant::dense: return "dense";
    case variant::wide: return "wide";
    case variant::bn_free: return "bn_free";
  }
  return "?";
}
inline const char* to_string(split s) {
  return s == split::train ? "train" : (s == split::val ? "val" : "test");
}

/// Sampler settings.
struct sampler_options {
  space sp = space::conv;
  variant v = variant::in_distribution;
  /// Rejection threshold on the parameter count at C = 32 (CIFAR and ImageNet versions);
  /// 0 means the reference's value for the variant: 10^7, or 10^8 for deep and dense.
  std::int64_t max_params = 0;
  /// Input of the networks `build` returns (the sampled distribution does not depend on it).
  int in_channels = 3, in_h = 32, in_w = 32, num_classes = 10;
};

/// The generator limits of a variant (see the table in the file comment).
struct variant_limits {
  int min_steps = 1, medium_steps = 2, max_steps = 4;
  int min_layers = 4, max_layers = 18;
  std::vector<int> deep_layers{7, 8, 9, 10};
  std::int64_t max_params = 10'000'000;
};

/// The reference's limits for variant `v`.
inline variant_limits limits_of(variant v) {
  variant_limits l;
  if (v == variant::deep) {
    l.min_layers = 10;
    l.deep_layers = {18};
    l.max_layers = 36;
    l.max_params = 100'000'000;
  } else if (v == variant::dense) {
    l.min_steps = 2;
    l.medium_steps = 6;
    l.max_steps = 10;
    l.max_params = 100'000'000;
  }
  return l;
}

/// Draws a genotype with `steps` steps per cell (the reference's sample_genotype, see the file
/// comment): for each step an ordered pair of distinct input states and for each a uniform op
/// among the allowed ones (msa only with `allow_msa`, none only with `allow_none`; the reduce cell
/// only none / max_pool / avg_pool / skip_connect with `only_pool`). Concat: states 2..steps+1,
/// each but the last dropped with probability 1/2 when `drop_concat`; shared by both cells.
/// \code ghnq::rng g(0); auto geno = ghnq::arch::sample_genotype(2, false, true, true, false, g); \endcode
inline genotype sample_genotype(int steps, bool only_pool, bool allow_none, bool drop_concat, bool allow_msa, rng& g) {
  GHNQ_CHECK(steps >= 1, value_error, "sample_genotype: steps must be >= 1, got ", steps);
  std::array<cell_op, kNumCellOps> all{}, pools{};
  int n_all = 0, n_pools = 0;
  for (int i = 0; i < kNumCellOps; ++i) {
    const auto o = static_cast<cell_op>(i);
    if ((o == cell_op::none && !allow_none) || (o == cell_op::msa && !allow_msa)) continue;
    all[static_cast<std::size_t>(n_all++)] = o;
    if (i < static_cast<int>(cell_op::sep_conv_3x3)) pools[static_cast<std::size_t>(n_pools++)] = o;
  }
  genotype geno;
  auto draw_cell = [&](std::vector<std::pair<std::string, int>>& cell, const cell_op* ops, int n_ops) {
    cell.reserve(static_cast<std::size_t>(2 * steps));
    for (int i = 0; i < steps; ++i) {
      const auto n = static_cast<std::uint64_t>(i + 2);
      const int a = static_cast<int>(g.below(n));
      int b = static_cast<int>(g.below(n - 1));
      if (b >= a) ++b;
      cell.emplace_back(to_string(ops[g.below(static_cast<std::uint64_t>(n_ops))]), a);
      cell.emplace_back(to_string(ops[g.below(static_cast<std::uint64_t>(n_ops))]), b);
    }
  };
  draw_cell(geno.normal, all.data(), n_all);
  if (only_pool) draw_cell(geno.reduce, pools.data(), n_pools);
  else draw_cell(geno.reduce, all.data(), n_all);
  for (int i = 2; i < steps + 2; ++i)
    if (!drop_concat || i == steps + 1 || g.uniform() > 0.5) geno.normal_concat.push_back(i);
  geno.reduce_concat = geno.normal_concat;
  return geno;
}

// ------------------------------------------------------------------------------------------------
// Splits
// ------------------------------------------------------------------------------------------------

namespace detail {
/// Emitter that records the op structure (no names, no builder) for fast hashing; shapes and
/// checks come from dn_counter, so the ops equal those deepnets_network emits.
class dn_hasher {
 public:
  static constexpr bool kEmit = false;
  network net;

  dn_val input(int c, int h, int w, int classes) {
    net.in_channels = c;
    net.in_h = h;
    net.in_w = w;
    net.num_classes = classes;
    return push(make(op_type::input, {}), cnt_.input(c, h, w, classes));
  }
  dn_val conv(const dn_val& x, int out, int kh, int kw, int stride, int ph, int pw, int dil, int groups,
              const std::string& p, const char* l, int stride_w = 0) {
    op o = make(op_type::conv, {x.id});
    o.out_channels = out;
    o.kh = kh;
    o.kw = kw;
    o.stride = stride;
    o.stride_w = stride_w == stride ? 0 : stride_w;  // as builder::conv2 stores it
    o.pad_h = ph;
    o.pad_w = pw;
    o.dilation = dil;
    o.groups = groups;
    return push(std::move(o), cnt_.conv(x, out, kh, kw, stride, ph, pw, dil, groups, p, l, stride_w));
  }
  dn_val linear(const dn_val& x, int out, const std::string& p, const char* l) {
    op o = make(op_type::linear, {x.id});
    o.out_channels = out;
    o.bias = true;
    return push(std::move(o), cnt_.linear(x, out, p, l));
  }
  dn_val batch_norm(const dn_val& x, const std::string& p, const char* l) {
    op o = make(op_type::batch_norm, {x.id});
    o.bias = true;
    return push(std::move(o), cnt_.batch_norm(x, p, l));
  }
  dn_val relu(const dn_val& x, const std::string&, const char*) { return push(make(op_type::relu, {x.id}), x); }
  dn_val hardswish(const dn_val& x, const std::string&, const char*) {
    return push(make(op_type::hardswish, {x.id}), x);
  }
  dn_val dropout(const dn_val& x, double pr, const std::string&, const char*) {
    op o = make(op_type::dropout, {x.id});
    o.p = pr;
    return push(std::move(o), x);
  }
  dn_val pool(bool is_max, const dn_val& x, int k, int stride, int pad, const std::string& p, const char* l) {
    op o = make(is_max ? op_type::max_pool : op_type::avg_pool, {x.id});
    o.kh = o.kw = k;
    o.stride = stride;
    o.pad_h = o.pad_w = pad;
    return push(std::move(o), cnt_.pool(is_max, x, k, stride, pad, p, l));
  }
  dn_val global_avg_pool(const dn_val& x, const std::string& p, const char* l) {
    return push(make(op_type::global_avg_pool, {x.id}), cnt_.global_avg_pool(x, p, l));
  }
  dn_val flatten(const dn_val& x, const std::string& p, const char* l) {
    return push(make(op_type::flatten, {x.id}), cnt_.flatten(x, p, l));
  }
  dn_val sum(const dn_val& a, const dn_val& b, const std::string& p, const char* l) {
    return push(make(op_type::sum, {a.id, b.id}), cnt_.sum(a, b, p, l));
  }
  dn_val concat(const std::vector<dn_val>& xs, const std::string& p, const char* l) {
    std::vector<int> ids;
    ids.reserve(xs.size());
    for (const auto& x : xs) ids.push_back(x.id);
    return push(make(op_type::concat, std::move(ids)), cnt_.concat(xs, p, l));
  }
  dn_val zero(const dn_val& x, int stride, const std::string& p, const char* l) {
    op o = make(op_type::zero, {x.id});
    o.stride = stride;
    return push(std::move(o), cnt_.zero(x, stride, p, l));
  }
  dn_val subsample(const dn_val& x, int stride, const std::string& p, const char* l) {
    op o = make(op_type::subsample, {x.id});
    o.stride = stride;
    return push(std::move(o), cnt_.subsample(x, stride, p, l));
  }
  dn_val shift(const dn_val& x, const std::string& p, const char* l) {
    return push(make(op_type::shift, {x.id}), cnt_.shift(x, p, l));
  }
  dn_val channel_scale(const dn_val& x, const dn_val& s, const std::string& p, const char* l) {
    return push(make(op_type::channel_scale, {x.id, s.id}), cnt_.channel_scale(x, s, p, l));
  }
  void extra_params(std::int64_t) {}

 private:
  static op make(op_type t, std::vector<int> inputs) {
    op o;
    o.type = t;
    o.inputs = std::move(inputs);
    return o;
  }
  dn_val push(op o, dn_val v) {
    v.id = static_cast<int>(net.ops.size());
    net.ops.push_back(std::move(o));
    return v;
  }
  dn_counter cnt_;
};

inline std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace detail

/// The split key of an architecture: canonical_hash of deepnets_network(a) with C = 32,
/// fc_dim = 256 on a 3x32x32 input with 10 classes (computed without the builder; equal to that
/// hash). Throws as deepnets_network does (msa: unsupported_error).
inline std::uint64_t split_key(const net_args& a) {
  net_args b = a;
  b.C = 32;
  b.fc_dim = 256;
  check_net_args(b);
  for (const auto* cell : {&b.geno.normal, &b.geno.reduce})
    for (const auto& op : *cell)
      GHNQ_CHECK(op.first != "msa", unsupported_error,
                 "split_key: msa (multi-head self-attention) is not supported: its network cannot be built");
  detail::dn_hasher e;
  detail::dn_construct<detail::dn_hasher> c(e, b, deepnets_input{});
  const auto [out, defined] = c.run();
  GHNQ_CHECK(defined, value_error, "split_key: the network output is None (every path is cut by 'none' ops)");
  e.net.output = out.id;
  return canonical_hash(e.net);
}

/// The split of a canonical hash: mix64(hash) mod 1000 in [0, 980) train, [980, 990) val,
/// [990, 1000) test.
/// \code auto s = ghnq::arch::split_of(ghnq::arch::split_key(args)); \endcode
inline split split_of(std::uint64_t canonical_hash) {
  const std::uint64_t b = detail::mix64(canonical_hash) % 1000;
  return b < 980 ? split::train : (b < 990 ? split::val : split::test);
}

// ------------------------------------------------------------------------------------------------
// Training-time width
// ------------------------------------------------------------------------------------------------

/// The loader's training-time width rule (§7.4): with p = num_params_at_C32 / 10^6 (the CIFAR
/// count at C = 32), fc_dim ~ U{64, 128, 192, 256}, and C = 32 if p > 0.8, no glob_avg, a conv_5x5
/// / conv_7x7 op, or n_cells > 12; else C ~ U{32, 48} if p > 0.4 or n_cells > 10; else
/// C ~ U{32, 48, 64} if p > 0.2 or n_cells > 8; else C ~ U{32, 48, ..., 128} and, when C <= 64,
/// fc_dim ~ U{64, 128, ..., 512}. Returns a copy of `a` with C and fc_dim set.
/// \code a = ghnq::arch::sample_width(a, sampler.last_num_params(), g); \endcode
inline net_args sample_width(const net_args& a, std::int64_t num_params_at_C32, rng& g) {
  static constexpr std::array<int, 7> kWidths = {32, 48, 64, 80, 96, 112, 128};
  static constexpr std::array<int, 8> kFc = {64, 128, 192, 256, 320, 384, 448, 512};
  bool dense = false;
  for (const auto* cell : {&a.geno.normal, &a.geno.reduce})
    for (const auto& op : *cell) dense = dense || op.first == "conv_5x5" || op.first == "conv_7x7";
  const double p = static_cast<double>(num_params_at_C32) / 1e6;
  net_args out = a;
  out.fc_dim = kFc[g.below(4)];
  if (p > 0.8 || !a.glob_avg || dense || a.n_cells > 12) {
    out.C = kWidths[0];
  } else if (p > 0.4 || a.n_cells > 10) {
    out.C = kWidths[g.below(2)];
  } else if (p > 0.2 || a.n_cells > 8) {
    out.C = kWidths[g.below(3)];
  } else {
    out.C = kWidths[g.below(kWidths.size())];
    if (out.C <= 64) out.fc_dim = kFc[g.below(kFc.size())];
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// The sampler
// ------------------------------------------------------------------------------------------------

/// Seeded DeepNets-1M sampler (see the file comment). The same options and seed give the same
/// sequence on every platform. Not thread-safe; use one sampler per thread.
class sampler {
 public:
  sampler(sampler_options opt, std::uint64_t seed) : opt_(opt), lim_(limits_of(opt.v)), g_(seed) {
    if (opt_.max_params > 0) lim_.max_params = opt_.max_params;
    GHNQ_CHECK(opt_.max_params >= 0, value_error, "sampler: max_params must be >= 0 (0: the variant's), got ",
               opt_.max_params);
    GHNQ_CHECK(opt_.in_channels >= 1 && opt_.in_h >= 1 && opt_.in_w >= 1 && opt_.num_classes >= 1, value_error,
               "sampler: input [", opt_.in_channels, ", ", opt_.in_h, ", ", opt_.in_w, "] and num_classes ",
               opt_.num_classes, " must be positive");
  }

  const sampler_options& options() const noexcept { return opt_; }
  const variant_limits& limits() const noexcept { return lim_; }

  /// The next architecture (C = 32, or 128 for `wide`; fc_dim = 256).
  net_args next() {
    for (;;) {
      ++draws_;
      net_args a;
      if (draw(a)) return a;
    }
  }

  /// The next architecture that belongs to split `s` (split_of(split_key(a)) == s).
  net_args next(split s) {
    for (;;) {
      net_args a = next();
      if (split_of(split_key(a)) == s) return a;
    }
  }

  /// The network of `a` for this sampler's input (deepnets_network).
  network build(const net_args& a) const {
    return deepnets_network(a, opt_.in_channels, opt_.in_h, opt_.in_w, opt_.num_classes);
  }

  /// CIFAR-10 parameter count at C = 32 of the last returned architecture (the input of
  /// sample_width).
  std::int64_t last_num_params() const noexcept { return last_params_; }
  /// Candidate draws so far, accepted or rejected.
  std::uint64_t draws() const noexcept { return draws_; }

 private:
  bool draw(net_args& a) {
    const auto& L = lim_;
    const int layers = static_cast<int>(g_.randint(L.min_layers, L.max_layers));
    const int deep = L.deep_layers[g_.below(L.deep_layers.size())];
    const int steps = static_cast<int>(g_.randint(L.min_steps, layers <= deep ? L.max_steps : L.medium_steps));
    const bool only_pool = g_.uniform() > 0.5;
    const bool drop_concat = steps > 1 ? g_.uniform() > 0.5 : false;
    a.geno = sample_genotype(steps, only_pool, steps > 1, drop_concat, opt_.sp == space::full, g_);
    static constexpr std::array<int, 3> kKs = {3, 5, 7};
    a.ks = kKs[g_.below(3)];

    bool vit = false, cse = false, conv = false;
    for (const auto* cell : {&a.geno.normal, &a.geno.reduce}) {
      int n_cse = 0, n_large = 0;
      for (const auto& op : *cell) {
        cell_op o{};
        parse_cell_op(op.first, o);
        vit = vit || o == cell_op::msa;
        conv = conv || is_conv_op(o);
        n_cse += o == cell_op::cse;
        n_large += o == cell_op::conv_5x5 || o == cell_op::conv_7x7;
      }
      if (n_cse > 1 || n_large > 1) return false;
      cse = cse || n_cse > 0;
    }
    if (cse && !conv) return false;
    if (!(cse || vit || conv)) return false;

    a.C_mult = static_cast<int>(g_.randint(1, 2));
    a.preproc = steps > 1 || a.C_mult > 1 ? true : (!vit || g_.uniform() > 0.8);
    a.glob_avg = vit || layers > deep || g_.uniform() > 0.1;
    if (opt_.v == variant::bn_free) a.norm.clear();
    else if (layers <= L.min_layers + 1 && steps <= L.medium_steps) a.norm = g_.below(2) == 0 ? "bnorm" : "";
    else a.norm = "bnorm";
    a.stem_type = static_cast<int>(g_.below(2));
    a.stem_pool = a.stem_type == 0 && g_.uniform() > 0.5;
    a.fc_layers = static_cast<int>(g_.randint(1, 2));
    a.n_cells = layers;
    a.C = 32;
    a.fc_dim = 256;

    deepnets_input cifar;
    const deepnets_summary sc = deepnets_count(a, cifar);
    if (sc.num_params > L.max_params || !sc.output_defined) return false;
    deepnets_input imagenet;
    imagenet.in_h = imagenet.in_w = 224;
    imagenet.imagenet = true;
    if (deepnets_count(a, imagenet).num_params > L.max_params) return false;

    last_params_ = sc.num_params;
    if (opt_.v == variant::wide) a.C = 4 * 32;
    return true;
  }

  sampler_options opt_;
  variant_limits lim_;
  rng g_;
  std::int64_t last_params_ = 0;
  std::uint64_t draws_ = 0;
};

}  // namespace ghnq::arch
