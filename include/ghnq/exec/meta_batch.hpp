/// \file
/// \brief Forward + backward of the m networks of a meta-batch on one shared image batch, as
/// parallel oneTBB tasks (one tape per network). Results equal running them one by one.
#pragma once
#include <cstdint>
#include <limits>
#include <vector>

#include <tbb/parallel_for.h>

#include "ghnq/core/error.hpp"
#include "ghnq/exec/executor.hpp"

namespace ghnq::exec {

/// What one network of a meta-batch produced.
struct network_result {
  double loss = 0.0;          ///< mean cross-entropy over the batch (NaN when the forward pass was not finite)
  std::int64_t correct = 0;   ///< top-1 hits in the batch
  bool finite = true;         ///< false: a quantizer met non-finite activations (numeric_error); no gradient
};

/// For every network k: logits = nets[k]->forward(x, params[k]); loss = CE(logits, labels);
/// backward into params[k] (their gradients accumulate), with the quantizer log-factors
/// (*factors)[k] when given (their gradients accumulate too). Network k draws its dropout masks from
/// opt.dropout_seed + k * 0x9E3779B97F4A7C15 (independent masks, as separate forward passes have).
/// `parallel` runs the networks as concurrent tasks; ops inside each network still split their own
/// work on the same pool.
/// \code
/// auto res = ghnq::exec::forward_backward(nets, params, x, labels, opt);
/// \endcode
template <class B, class T>
std::vector<network_result> forward_backward(const std::vector<executor<B, T>*>& nets,
                                             const std::vector<std::vector<autograd::var<T, B>>>& params,
                                             const autograd::var<T, B>& x, const std::vector<std::int32_t>& labels,
                                             const run_options& opt = {}, double label_smoothing = 0.0,
                                             bool parallel = true,
                                             const std::vector<quant_factors<T, B>>* factors = nullptr) {
  GHNQ_CHECK(factors == nullptr || factors->size() == nets.size(), value_error, "forward_backward: ",
             factors ? factors->size() : 0, " quant_factors for ", nets.size(), " networks");
  GHNQ_CHECK(nets.size() == params.size(), value_error, "forward_backward: ", nets.size(), " networks but ",
             params.size(), " parameter sets");
  std::vector<network_result> out(nets.size());
  auto one = [&](std::size_t k) {
    autograd::tape<T, B> tp;
    run_options ok = opt;  // network k's own dropout masks (network 0: opt.dropout_seed itself)
    ok.dropout_seed = opt.dropout_seed + 0x9E3779B97F4A7C15ULL * static_cast<std::uint64_t>(k);
    try {
      auto logits = nets[k]->forward(tp, x, params[k], ok, factors ? &(*factors)[k] : nullptr);
      auto loss = nn::cross_entropy(tp, logits, labels, label_smoothing);
      out[k].loss = static_cast<double>(loss.value().to_vector()[0]);
      out[k].correct = nn::count_correct(logits.value(), labels);
      if (loss.requires_grad()) tp.backward(loss);
    } catch (const numeric_error&) {  // the network's forward pass is not finite: a NaN loss, as in float
      out[k].loss = std::numeric_limits<double>::quiet_NaN();
      out[k].correct = 0;
      out[k].finite = false;
    }
  };
  if (parallel && nets.size() > 1) {
    tbb::parallel_for(std::size_t(0), nets.size(), [&](std::size_t k) { one(k); });
  } else {
    for (std::size_t k = 0; k < nets.size(); ++k) one(k);
  }
  return out;
}

}  // namespace ghnq::exec
