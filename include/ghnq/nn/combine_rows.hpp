/// \file
/// \brief Differentiable sparse weighted combination of rows taken from a list of matrices:
/// row gathers, row scatters into a bigger matrix and weighted neighbour sums (GatedGNN messages).
#pragma once
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "ghnq/backend/cpu/combine_rows.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// The entries of a `combine_rows` call: entry e adds `weight[e] * srcs[src[e]][src_row[e], :]` to
/// output row `out_row[e]`. The four arrays have the same length.
template <class T>
struct row_map {
  std::vector<std::int64_t> out_row;
  std::vector<std::int32_t> src;
  std::vector<std::int64_t> src_row;
  std::vector<T> weight;

  /// Appends one entry.
  void add(std::int64_t out_r, std::int32_t s, std::int64_t s_row, T w = T(1)) {
    out_row.push_back(out_r);
    src.push_back(s);
    src_row.push_back(s_row);
    weight.push_back(w);
  }
  void reserve(std::size_t n) {
    out_row.reserve(n);
    src.reserve(n);
    src_row.reserve(n);
    weight.reserve(n);
  }
  std::int64_t size() const noexcept { return static_cast<std::int64_t>(out_row.size()); }
  bool empty() const noexcept { return out_row.empty(); }
  void clear() {
    out_row.clear();
    src.clear();
    src_row.clear();
    weight.clear();
  }
};

/// out [n_out, d] with out[r, :] = sum over entries e with out_row[e] == r of
/// weight[e] * srcs[src[e]][src_row[e], :]. Every source is a rank-2 matrix [n_s, d] of the same
/// width d (at least one source); rows without entries are zero. Backward:
/// dsrcs[src[e]][src_row[e], :] += weight[e] * dout[out_row[e], :] (weights are constants).
/// Throws shape_error / value_error naming the entry on a bad width, source or row.
/// \code
/// ghnq::nn::row_map<float> m;
/// m.add(0, 0, 2);            // out[0] = a[2]
/// m.add(0, 1, 0, 0.5f);      //        + 0.5 b[0]
/// m.add(1, 1, 1);            // out[1] = b[1]
/// auto y = ghnq::nn::combine_rows(tp, {a, b}, 2, m);   // [2, d]
/// \endcode
/// The overload taking a shared map avoids copying the entries into the backward closure
/// (useful when the same map is reused, e.g. a cached GNN schedule). `checked = false` skips the
/// per-entry range checks and the sources' contiguity checks (ranks, widths and map lengths are
/// still checked): pass it only for maps valid by construction for these sources and sources
/// that are op outputs (contiguous), as in the GatedGNN hot loop.
template <class T, class B>
var<T, B> combine_rows(tape<T, B>& tp, const std::vector<var<T, B>>& srcs, std::int64_t n_out,
                       std::shared_ptr<const row_map<T>> map_ptr, bool checked = true) {
  GHNQ_CHECK(map_ptr != nullptr, value_error, "combine_rows: null row_map");
  const row_map<T>& map = *map_ptr;
  constexpr const char* kOp = "combine_rows";
  GHNQ_CHECK(!srcs.empty(), value_error, kOp, ": needs at least one source");
  GHNQ_CHECK(n_out >= 0, value_error, kOp, ": n_out must be >= 0, got ", n_out);
  const auto ns = static_cast<std::int64_t>(srcs.size());
  GHNQ_CHECK(ns <= std::numeric_limits<std::int32_t>::max(), value_error, kOp, ": too many sources (", ns, ")");
  for (const auto& s : srcs) {
    if (checked) {
      detail::require_rank(s, 2, kOp, "srcs[i]");
    } else {
      GHNQ_CHECK(s.defined() && s.value().rank() == 2, shape_error, kOp, ": every source must be a defined rank-2 var");
    }
  }
  const std::int64_t d = srcs[0].shape()[1];
  for (std::int64_t s = 0; s < ns; ++s)
    GHNQ_CHECK(srcs[static_cast<std::size_t>(s)].shape()[1] == d, shape_error, kOp, ": source ", s, " of shape ",
               srcs[static_cast<std::size_t>(s)].shape(), " differs in width from source 0 of shape ",
               srcs[0].shape());
  const std::int64_t n = map.size();
  GHNQ_CHECK(static_cast<std::int64_t>(map.src.size()) == n && static_cast<std::int64_t>(map.src_row.size()) == n &&
                 static_cast<std::int64_t>(map.weight.size()) == n,
             value_error, kOp, ": row_map arrays differ in length");
  std::vector<std::int64_t> src_rows(srcs.size());
  for (std::size_t s = 0; s < srcs.size(); ++s) src_rows[s] = srcs[s].shape()[0];
  for (std::int64_t e = 0; checked && e < n; ++e) {
    const auto i = static_cast<std::size_t>(e);
    const auto s = map.src[i];
    GHNQ_CHECK(s >= 0 && s < ns, value_error, kOp, ": entry ", e, " names source ", s, " of ", ns);
    GHNQ_CHECK(map.src_row[i] >= 0 && map.src_row[i] < src_rows[static_cast<std::size_t>(s)], value_error, kOp,
               ": entry ", e, " reads row ", map.src_row[i], " of source ", s, " with shape ",
               srcs[static_cast<std::size_t>(s)].shape());
    GHNQ_CHECK(map.out_row[i] >= 0 && map.out_row[i] < n_out, value_error, kOp, ": entry ", e, " writes row ",
               map.out_row[i], " of an output with ", n_out, " rows");
  }
  using K = backend::impl<B, backend::op::combine_rows>;
  auto y = tensor<T, B>::zeros({n_out, d});
  std::vector<const T*> ptrs(srcs.size());
  for (std::size_t s = 0; s < srcs.size(); ++s) ptrs[s] = srcs[s].value().data();
  K::forward(ptrs.data(), d, map.out_row.data(), map.src.data(), map.src_row.data(), map.weight.data(), n, y.data());
  bool tracked = false;
  for (const auto& s : srcs) tracked = tracked || tp.needs(s);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([srcs, map_ptr, out, d, n]() {
      const row_map<T>& map = *map_ptr;
      if (!out.has_grad()) return;
      std::vector<T*> dptrs(srcs.size(), nullptr);
      for (std::size_t s = 0; s < srcs.size(); ++s)
        if (srcs[s].requires_grad()) dptrs[s] = srcs[s].grad().data();
      K::backward(out.grad().data(), d, map.out_row.data(), map.src.data(), map.src_row.data(), map.weight.data(), n,
                  dptrs.data());
    });
  }
  return out;
}

template <class T, class B>
var<T, B> combine_rows(tape<T, B>& tp, const std::vector<var<T, B>>& srcs, std::int64_t n_out,
                       const row_map<T>& map) {
  return combine_rows(tp, srcs, n_out, std::make_shared<const row_map<T>>(map));
}

}  // namespace ghnq::nn
