/// \file
/// \brief GHN-2 parameter assignment: decoder keys (`min_sz`, spec §4.1), slicing + periodic tiling of a
/// decoded block onto a target shape (§4.6) and the fan-in normalization / squashing (§4.7).
///
/// Everything that touches values is differentiable (built from nn::gather, nn::affine, nn::sigmoid,
/// nn::tanh), so gradients flow from a target network's loss back into the GHN's decoders.
///
/// Tiling semantics (GHN-2 / [P], intended behaviour). A decoded block P (up to 4 trailing dims, padded
/// with trailing 1s to (P0, P1, P2, P3)) is mapped to a target shape T (rank 1..4, padded the same way):
///
///     W[t0, t1, t2, t3] = P[t0 mod P0', t1 mod P1', t2 mod P2', t3 mod P3'],   Pd' = min(Td, Pd)
///
/// which is exactly "slice P[:T0, :T1, :T2, :T3] (top-left spatial window), then repeat along each dim and
/// truncate". Consequences:
///  - 2-D targets (Linear, classifier) take spatial position (0,0); 1-D targets from a >= 2-D block take
///    P[:, 0, 0, 0]; 3-D targets tile along dim 2 as well ([P]'s missing-colon typo is not copied).
///  - Kernels larger than the decoded spatial size S are tiled spatially periodically, D[y mod S, x mod S]:
///    the behaviour of GHN-2's fast path (which repeats the grid 2x2, identical for kernels up to 2S).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/core/error.hpp"
#include "ghnq/nn/activation.hpp"
#include "ghnq/nn/affine.hpp"
#include "ghnq/nn/gather.hpp"
#include "ghnq/tensor/shape.hpp"

namespace ghnq::ghn {

/// The largest block a GHN-2 decoder produces: (out, in, spatial, spatial) = (M0, M1, S, S).
struct max_shape {
  std::int64_t out = 64;      ///< M0
  std::int64_t in = 64;       ///< M1
  std::int64_t spatial = 11;  ///< S (11 for CIFAR, 16 for ImageNet)
};

/// Decoder-key size of a dimension d against its limit M (spec §4.1):
/// n = min(d, M); if n % 3 == 0: n = n / 3 * 4; if n >= M / 2 (real division): n = M.
/// \code ghnq::ghn::min_sz(24, 64) == 64; ghnq::ghn::min_sz(3, 64) == 4; ghnq::ghn::min_sz(10, 64) == 10; \endcode
inline std::int64_t min_sz(std::int64_t d, std::int64_t M) {
  GHNQ_CHECK(d >= 1, value_error, "min_sz: dimension ", d, " must be >= 1");
  GHNQ_CHECK(M >= 1, value_error, "min_sz: limit ", M, " must be >= 1");
  std::int64_t n = std::min(d, M);
  if (n % 3 == 0) n = n / 3 * 4;
  if (2 * n >= M) n = M;  // n >= M / 2 with Python's true division
  return n;
}

/// Decoder key of a target parameter of shape `sz` (spec §4.1). Parameters with equal keys are decoded in
/// one batched call. `is_classifier` marks the last layer's weight / bias.
///  - 1-D: (min_sz(C, M0), -1) for the classifier bias, (min_sz(C, M0), 0) for any other;
///  - 2-D: classifier (min_sz(O, M0), min_sz(I, M1)); other Linear (min_sz(O, M0), min_sz(I, M1), 1, 1);
///  - 3-D: (1, L, D) with L, D > 1 -> (1, D, floor(sqrt L), floor(sqrt L)); other (a, b, c) ->
///    (min_sz(a, M0), min_sz(b, M1), min_sz(c, S));
///  - 4-D (O, I, kh, kw): (min_sz(O, M0), min_sz(I, M1), kh, kw).
inline std::vector<std::int64_t> param_key(const ghnq::shape& sz, bool is_classifier, const max_shape& ms = {}) {
  const int r = sz.rank();
  GHNQ_CHECK(r >= 1 && r <= 4, shape_error, "param_key: parameter shape ", sz, " must have rank 1..4");
  for (int d = 0; d < r; ++d)
    GHNQ_CHECK(sz[d] >= 1, shape_error, "param_key: parameter shape ", sz, " has an empty dimension");
  switch (r) {
    case 1:
      return {min_sz(sz[0], ms.out), is_classifier ? -1 : 0};
    case 2:
      if (is_classifier) return {min_sz(sz[0], ms.out), min_sz(sz[1], ms.in)};
      return {min_sz(sz[0], ms.out), min_sz(sz[1], ms.in), 1, 1};
    case 3:
      if (sz[0] == 1 && sz[1] > 1 && sz[2] > 1) {
        const auto s = static_cast<std::int64_t>(std::sqrt(static_cast<double>(sz[1])) + 1e-9);
        return {1, sz[2], s, s};
      }
      return {min_sz(sz[0], ms.out), min_sz(sz[1], ms.in), min_sz(sz[2], ms.spatial)};
    default:
      return {min_sz(sz[0], ms.out), min_sz(sz[1], ms.in), sz[2], sz[3]};
  }
}

/// Index map of `tile_to` (see the file comment): source of shape `p_shape`, block selected by the leading
/// indices `prefix` (p_shape.rank() - prefix.size() trailing dims, 1..4), output of shape `target` (rank 1..4).
inline nn::index_map tile_index_map(const ghnq::shape& p_shape, const std::vector<std::int64_t>& prefix,
                                    const ghnq::shape& target) {
  const int pr = p_shape.rank(), np = static_cast<int>(prefix.size()), k = pr - np;
  GHNQ_CHECK(k >= 1 && k <= 4, shape_error, "tile_to: predicted tensor ", p_shape, " with ", np,
             " leading indices leaves ", k, " block dims (need 1..4)");
  GHNQ_CHECK(target.rank() >= 1 && target.rank() <= 4, shape_error, "tile_to: target shape ", target,
             " must have rank 1..4");
  for (int d = 0; d < target.rank(); ++d)
    GHNQ_CHECK(target[d] >= 1, shape_error, "tile_to: target shape ", target, " has an empty dimension");
  // contiguous strides of P and the offset of the selected block
  std::vector<std::int64_t> stride(static_cast<std::size_t>(pr), 1);
  for (int d = pr - 2; d >= 0; --d) stride[static_cast<std::size_t>(d)] = stride[static_cast<std::size_t>(d + 1)] * p_shape[d + 1];
  std::int64_t base = 0;
  for (int d = 0; d < np; ++d) {
    GHNQ_CHECK(prefix[static_cast<std::size_t>(d)] >= 0 && prefix[static_cast<std::size_t>(d)] < p_shape[d],
               shape_error, "tile_to: leading index ", prefix[static_cast<std::size_t>(d)], " of dim ", d,
               " is outside predicted tensor ", p_shape);
    base += prefix[static_cast<std::size_t>(d)] * stride[static_cast<std::size_t>(d)];
  }
  std::int64_t Pd[4] = {1, 1, 1, 1}, Sd[4] = {0, 0, 0, 0}, Td[4] = {1, 1, 1, 1}, Pm[4];
  for (int d = 0; d < k; ++d) {
    Pd[d] = p_shape[np + d];
    Sd[d] = stride[static_cast<std::size_t>(np + d)];
  }
  GHNQ_CHECK(p_shape.numel() > 0, shape_error, "tile_to: predicted tensor ", p_shape, " is empty");
  for (int d = 0; d < target.rank(); ++d) Td[d] = target[d];
  for (int d = 0; d < 4; ++d) Pm[d] = std::min(Td[d], Pd[d]);
  std::vector<std::int64_t> idx(static_cast<std::size_t>(Td[0] * Td[1] * Td[2] * Td[3]));
  std::size_t j = 0;
  for (std::int64_t a = 0; a < Td[0]; ++a)
    for (std::int64_t b = 0; b < Td[1]; ++b)
      for (std::int64_t c = 0; c < Td[2]; ++c)
        for (std::int64_t e = 0; e < Td[3]; ++e)
          idx[j++] = base + (a % Pm[0]) * Sd[0] + (b % Pm[1]) * Sd[1] + (c % Pm[2]) * Sd[2] + (e % Pm[3]) * Sd[3];
  return nn::make_index_map(std::move(idx), p_shape.numel());
}

/// W = periodic tiling of the block P[prefix...] onto `target` (file comment; differentiable: the backward
/// pass scatter-adds dW into dP, summing over repeats).
/// \code
/// auto w   = ghnq::ghn::tile_to(tp, decoded, {16, 3, 3, 3}, {n});   // decoded: [N, 64, 64, h, w], node n
/// auto b   = ghnq::ghn::tile_to(tp, out1d, {16}, {n, 1});           // out1d: [N, 2, Mc], bias row
/// \endcode
template <class T, class B>
autograd::var<T, B> tile_to(autograd::tape<T, B>& tp, const autograd::var<T, B>& P, const ghnq::shape& target,
                            const std::vector<std::int64_t>& prefix = {}) {
  GHNQ_CHECK(P.defined(), value_error, "tile_to: predicted tensor is undefined");
  return nn::gather(tp, P, tile_index_map(P.shape(), prefix, target), target);
}

/// What a predicted tensor becomes in the target network (selects the §4.7 rule for 1-D tensors).
enum class param_role {
  weight,       ///< conv / linear / classifier weight (>= 2-D)
  norm_weight,  ///< BatchNorm / LayerNorm scale (1-D): 2 * sigmoid(p / 2)
  bias          ///< any bias (norm, conv, linear, classifier; 1-D): tanh(p / 5)
};

/// True for the positional-encoding exemption of §4.7: rank > 2, sz[2] >= 11 and sz[0] == 1.
inline bool fan_in_exempt(const ghnq::shape& sz) { return sz.rank() > 2 && sz[2] >= 11 && sz[0] == 1; }

/// beta of §4.7 for a >= 2-D tensor: 1 if rank > 2 and (sz[1] == 1 (depthwise) or sz[2] < sz[3] (1 x k half of a
/// factorized kernel)), else 2. A missing sz[3] (3-D tensors) counts as 1.
inline double fan_in_beta(const ghnq::shape& sz) {
  if (sz.rank() <= 2) return 2.0;
  const std::int64_t s3 = sz.rank() > 3 ? sz[3] : 1;
  return (sz[1] == 1 || sz[2] < s3) ? 1.0 : 2.0;
}

/// Multiplier sqrt(beta / fan_in) with fan_in = numel / sz[0] (= W[0].numel()); 1 when exempt.
inline double fan_in_scale(const ghnq::shape& sz) {
  GHNQ_CHECK(sz.rank() >= 2 && sz.numel() > 0, shape_error, "fan_in_scale: shape ", sz,
             " must be a non-empty tensor of rank >= 2");
  if (fan_in_exempt(sz)) return 1.0;
  return std::sqrt(fan_in_beta(sz) / static_cast<double>(sz.numel() / sz[0]));
}

/// Predicted-parameter normalization of §4.7, applied after tiling:
///  - rank >= 2: W * sqrt(beta / fan_in) (unchanged under the positional-encoding exemption; `role` ignored);
///  - rank 1, role norm_weight: 2 * sigmoid(0.5 * p), in (0, 2);
///  - rank 1, role bias: tanh(0.2 * p), in (-1, 1); role weight on a 1-D tensor throws value_error.
template <class T, class B>
autograd::var<T, B> normalize_fan_in(autograd::tape<T, B>& tp, const autograd::var<T, B>& W, param_role role) {
  GHNQ_CHECK(W.defined(), value_error, "normalize_fan_in: tensor is undefined");
  const auto& sz = W.shape();
  GHNQ_CHECK(sz.rank() >= 1, shape_error, "normalize_fan_in: rank-0 tensor");
  if (sz.rank() >= 2) {
    if (fan_in_exempt(sz)) return W;
    return nn::affine(tp, W, fan_in_scale(sz));
  }
  switch (role) {
    case param_role::norm_weight:
      return nn::affine(tp, nn::sigmoid(tp, nn::affine(tp, W, 0.5)), 2.0);
    case param_role::bias:
      return nn::tanh(tp, nn::affine(tp, W, 0.2));
    default:
      throw value_error(::ghnq::detail::concat("normalize_fan_in: 1-D tensor of shape ", sz,
                                       " needs role norm_weight or bias, got weight"));
  }
}

}  // namespace ghnq::ghn
