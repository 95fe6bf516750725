/// \file
/// \brief Differentiable flat gather through an index map: y[j] = x[idx[j]] (backward: scatter-add).
///
/// One op expresses every rearrangement the GHN decoders need: permutations (channel-major to
/// row-major), windows and slices, and periodic tiling (repeated offsets). An `index_map` validates
/// the offsets once and records whether any offset repeats, so it can be built once and reused.
///
/// `gather_tiles` is the index-free special case for periodic strided reads (GHN parameter tiling):
/// many outputs from one source in one op, each element computed from its coordinates, with an
/// optional constant scale folded in.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "ghnq/backend/cpu/gather.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// Validated flat offsets into a source of `src_numel` elements.
struct index_map {
  std::shared_ptr<const std::vector<std::int64_t>> idx;  ///< offsets, one per output element
  std::int64_t src_numel = 0;                            ///< number of elements of the source
  bool injective = true;                                 ///< no offset appears twice

  std::int64_t size() const noexcept { return idx ? static_cast<std::int64_t>(idx->size()) : 0; }
};

/// Builds an index map over a source of `src_numel` elements; throws value_error naming the first
/// offset outside [0, src_numel).
/// \code auto m = ghnq::nn::make_index_map({2, 0, 1, 2}, 3);   // m.injective == false \endcode
inline index_map make_index_map(std::vector<std::int64_t> idx, std::int64_t src_numel) {
  GHNQ_CHECK(src_numel >= 0, value_error, "gather: negative source size ", src_numel);
  std::vector<char> seen(static_cast<std::size_t>(src_numel), 0);
  bool injective = true;
  for (std::size_t j = 0; j < idx.size(); ++j) {
    const auto k = idx[j];
    GHNQ_CHECK(k >= 0 && k < src_numel, value_error, "gather: index ", k, " at position ", j,
               " is outside a source of ", src_numel, " elements");
    auto& s = seen[static_cast<std::size_t>(k)];
    if (s) injective = false;
    s = 1;
  }
  index_map m;
  m.idx = std::make_shared<const std::vector<std::int64_t>>(std::move(idx));
  m.src_numel = src_numel;
  m.injective = injective;
  return m;
}

/// y = x.flat[idx] viewed with `out_shape` (numel(out_shape) == idx.size(), idx built for numel(x)).
/// Backward: dx[idx[j]] += dy[j] (repeated offsets accumulate).
/// \code
/// auto m = ghnq::nn::make_index_map({0, 1, 0, 1}, x.value().numel());  // x: [2] -> tiled twice
/// auto y = ghnq::nn::gather(tp, x, m, {2, 2});
/// \endcode
template <class T, class B>
var<T, B> gather(tape<T, B>& tp, const var<T, B>& x, const index_map& map, const ghnq::shape& out_shape) {
  detail::require_contiguous(x, "gather", "x");
  GHNQ_CHECK(map.idx, value_error, "gather: empty index map");
  GHNQ_CHECK(map.src_numel == x.value().numel(), shape_error, "gather: index map built for ", map.src_numel,
             " source elements, x has shape ", x.shape());
  GHNQ_CHECK(out_shape.numel() == map.size(), shape_error, "gather: output shape ", out_shape, " holds ",
             out_shape.numel(), " elements, the index map has ", map.size());
  using K = backend::impl<B, backend::op::gather_flat>;
  tensor<T, B> y(out_shape);
  K::forward(x.value().data(), map.idx->data(), map.size(), y.data());
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, map, out]() {
      if (!out.has_grad()) return;
      K::scatter_add(out.grad().data(), map.idx->data(), map.size(), x.grad().data(), map.injective);
    });
  }
  return out;
}

/// Convenience overload: validates `idx` against x and gathers.
template <class T, class B>
var<T, B> gather(tape<T, B>& tp, const var<T, B>& x, std::vector<std::int64_t> idx, const ghnq::shape& out_shape) {
  detail::require_contiguous(x, "gather", "x");
  return gather(tp, x, make_index_map(std::move(idx), x.value().numel()), out_shape);
}

/// A periodic strided read pattern for `gather_tiles`: output element e = (e0, e1, e2, e3) of a
/// target of shape `shape` (rank 1..4, padded with trailing 1s) is
///     scale * x.flat[base + sum_d (e_d mod period[d]) * stride[d]].
/// Periods are >= 1, strides >= 0; dims beyond the target's rank have extent 1, so their period and
/// stride do not matter.
struct tile_spec {
  ghnq::shape shape;                               ///< output shape (rank 1..4)
  std::int64_t base = 0;                           ///< offset of element (0, 0, 0, 0)
  std::array<std::int64_t, 4> period{{1, 1, 1, 1}};  ///< repeat length per dim
  std::array<std::int64_t, 4> stride{{0, 0, 0, 0}};  ///< source stride per dim
  double scale = 1.0;                              ///< constant factor
};

/// Several periodic strided gathers from one source x (any contiguous shape), one output per spec:
///   y_t[e] = spec_t.scale * x.flat[spec_t.base + sum_d (e_d mod period_d) * stride_d].
/// Backward: dx[...] += scale * dy_t[e] over all tiles and elements (repeats accumulate). Tiles run in
/// parallel when their source footprints [base, last offset] do not overlap, otherwise serially in
/// order (deterministic either way). Throws shape_error on a bad shape, value_error on a period < 1, a
/// negative stride or base, or an offset outside x.
/// \code
/// // x: [2, 6]; tile 0 = rows of x[1, :3] repeated onto [2, 5], scaled by 0.5
/// ghnq::nn::tile_spec t{{2, 5}, 6, {1, 3, 1, 1}, {0, 1, 0, 0}, 0.5};
/// auto ys = ghnq::nn::gather_tiles(tp, x, {t});   // ys[0]: [2, 5]
/// \endcode
template <class T, class B>
std::vector<var<T, B>> gather_tiles(tape<T, B>& tp, const var<T, B>& x, const std::vector<tile_spec>& specs) {
  detail::require_contiguous(x, "gather_tiles", "x");
  const std::int64_t n = static_cast<std::int64_t>(specs.size()), numel = x.value().numel();
  auto meta = std::make_shared<std::vector<std::int64_t>>(static_cast<std::size_t>(13 * n));
  std::int64_t* dims = meta->data();
  std::int64_t* base = dims + 4 * n;
  std::int64_t* per = base + n;
  std::int64_t* str = per + 4 * n;
  std::vector<T> scale(static_cast<std::size_t>(n));
  std::vector<std::pair<std::int64_t, std::int64_t>> span(static_cast<std::size_t>(n));  // footprint [first, last]
  for (std::int64_t t = 0; t < n; ++t) {
    const tile_spec& sp = specs[static_cast<std::size_t>(t)];
    const int r = sp.shape.rank();
    GHNQ_CHECK(r >= 1 && r <= 4, shape_error, "gather_tiles: tile ", t, " has shape ", sp.shape, " (rank 1..4)");
    std::int64_t last = sp.base;
    GHNQ_CHECK(sp.base >= 0, value_error, "gather_tiles: tile ", t, " has a negative base ", sp.base);
    for (int d = 0; d < 4; ++d) {
      const std::int64_t ext = d < r ? sp.shape[d] : 1;
      GHNQ_CHECK(ext >= 1, shape_error, "gather_tiles: tile ", t, " has an empty shape ", sp.shape);
      GHNQ_CHECK(sp.period[static_cast<std::size_t>(d)] >= 1 && sp.stride[static_cast<std::size_t>(d)] >= 0,
                 value_error, "gather_tiles: tile ", t, " needs periods >= 1 and strides >= 0 (dim ", d, ")");
      dims[4 * t + d] = ext;
      per[4 * t + d] = sp.period[static_cast<std::size_t>(d)];
      str[4 * t + d] = sp.stride[static_cast<std::size_t>(d)];
      last += (std::min(ext, sp.period[static_cast<std::size_t>(d)]) - 1) * sp.stride[static_cast<std::size_t>(d)];
    }
    GHNQ_CHECK(last < numel, value_error, "gather_tiles: tile ", t, " of shape ", sp.shape, " reads offset ", last,
               " of a source of ", numel, " elements (shape ", x.shape(), ")");
    base[t] = sp.base;
    scale[static_cast<std::size_t>(t)] = static_cast<T>(sp.scale);
    span[static_cast<std::size_t>(t)] = {sp.base, last};
  }
  using K = backend::impl<B, backend::op::gather_tiles>;
  std::vector<var<T, B>> outs;
  outs.reserve(specs.size());
  std::vector<T*> ptrs(specs.size());
  const bool tracked = tp.needs(x);
  for (std::size_t t = 0; t < specs.size(); ++t) {
    tensor<T, B> y(specs[t].shape);
    ptrs[t] = y.data();
    outs.push_back(tp.make_output(std::move(y), tracked));
  }
  K::forward(x.value().data(), n, dims, base, per, str, scale.data(), ptrs.data());
  if (tracked) {
    std::sort(span.begin(), span.end());
    bool disjoint = true;
    for (std::size_t t = 1; t < span.size(); ++t) disjoint = disjoint && span[t].first > span[t - 1].second;
    tp.record([x, outs, meta, scale = std::move(scale), n, disjoint]() {
      std::vector<const T*> dys(outs.size(), nullptr);
      bool any = false;
      for (std::size_t t = 0; t < outs.size(); ++t)
        if (outs[t].has_grad()) {
          dys[t] = outs[t].grad().data();
          any = true;
        }
      if (!any) return;
      const std::int64_t* d = meta->data();
      K::scatter_add(dys.data(), n, d, d + 4 * n, d + 5 * n, d + 9 * n, scale.data(), x.grad().data(), disjoint);
    });
  }
  return outs;
}

}  // namespace ghnq::nn
