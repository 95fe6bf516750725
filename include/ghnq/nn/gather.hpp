/// \file
/// \brief Differentiable flat gather through an index map: y[j] = x[idx[j]] (backward: scatter-add).
///
/// One op expresses every rearrangement the GHN decoders need: permutations (channel-major to
/// row-major), windows and slices, and periodic tiling (repeated offsets). An `index_map` validates
/// the offsets once and records whether any offset repeats, so it can be built once and reused.
#pragma once
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

}  // namespace ghnq::nn
