/// \file
/// \brief `canonical_hash`: a platform-stable 64-bit hash of a network's structure (used to keep
/// train / val / test architecture splits disjoint).
///
/// The hash is FNV-1a 64 over a canonical byte serialization (all integers as 8-byte
/// little-endian two's complement, strings as length + bytes):
///   "ghnq.arch/1", in_channels, in_h, in_w, num_classes, number of ops, then for each op:
///   its type name, the number of inputs and their indices, and the attributes relevant to its
///   type (conv: out_channels, kh, kw, stride, pad_h, pad_w, dilation, groups, then bias as 0 / 1,
///   or bias + 2 * stride_width() when the horizontal stride differs from `stride` — so convs
///   with equal strides hash exactly as before per-axis strides existed; linear:
///   out_channels, bias; batch_norm: affine; pools: kernel, stride, padding; zero / subsample:
///   stride; dropout: the IEEE-754 bits of p, -0 as +0); finally the output index.
/// Not hashed: op names, the network name, param_order (registration order is not structure) and
/// inferred shapes (they follow from the hashed fields). The op order is part of the structure:
/// the same DAG listed in another topological order hashes differently (constructors are
/// deterministic, so a given architecture always gets the same order).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#include "ghnq/arch/network.hpp"

namespace ghnq::arch {

namespace detail {
/// Incremental FNV-1a 64.
struct fnv1a64 {
  std::uint64_t h = 14695981039346656037ull;
  void byte(unsigned char b) {
    h ^= b;
    h *= 1099511628211ull;
  }
  void i64(std::int64_t v) {
    const auto u = static_cast<std::uint64_t>(v);
    for (int k = 0; k < 8; ++k) byte(static_cast<unsigned char>((u >> (8 * k)) & 0xffu));
  }
  void str(const std::string& s) {
    i64(static_cast<std::int64_t>(s.size()));
    for (char c : s) byte(static_cast<unsigned char>(c));
  }
  void f64(double v) {
    if (v == 0.0) v = 0.0;  // -0 == +0
    std::uint64_t u = 0;
    static_assert(sizeof(double) == sizeof(u), "ghnq: double must be 64-bit");
    std::memcpy(&u, &v, sizeof u);
    i64(static_cast<std::int64_t>(u));
  }
};
}  // namespace detail

/// Hash of the structure of `net` (see the file comment): equal for networks that differ only in
/// names or param_order, different (up to 2^-64 collisions) for any change of op types, wiring,
/// attributes, input shape or class count. Stable across platforms and runs.
/// \code
/// if (train_hashes.count(ghnq::arch::canonical_hash(net))) continue;   // keep splits disjoint
/// \endcode
inline std::uint64_t canonical_hash(const network& net) {
  detail::fnv1a64 f;
  f.str("ghnq.arch/1");
  f.i64(net.in_channels);
  f.i64(net.in_h);
  f.i64(net.in_w);
  f.i64(net.num_classes);
  f.i64(static_cast<std::int64_t>(net.ops.size()));
  for (const op& o : net.ops) {
    f.str(to_string(o.type));
    f.i64(static_cast<std::int64_t>(o.inputs.size()));
    for (int j : o.inputs) f.i64(j);
    switch (o.type) {
      case op_type::conv:
        for (int v : {o.out_channels, o.kh, o.kw, o.stride, o.pad_h, o.pad_w, o.dilation, o.groups}) f.i64(v);
        // bias in {0, 1}; a distinct horizontal stride (>= 1) is folded in as 2 * sw (>= 2),
        // so the encoding stays injective and unchanged for equal strides.
        f.i64((o.bias ? 1 : 0) + (o.stride_width() != o.stride ? 2 * std::int64_t{o.stride_width()} : 0));
        break;
      case op_type::linear:
        f.i64(o.out_channels);
        f.i64(o.bias ? 1 : 0);
        break;
      case op_type::batch_norm: f.i64(o.bias ? 1 : 0); break;
      case op_type::max_pool:
      case op_type::avg_pool:
        for (int v : {o.kh, o.kw, o.stride, o.pad_h, o.pad_w}) f.i64(v);
        break;
      case op_type::zero:
      case op_type::subsample: f.i64(o.stride); break;
      case op_type::dropout: f.f64(o.p); break;
      default: break;
    }
  }
  f.i64(net.output);
  return f.h;
}

}  // namespace ghnq::arch
