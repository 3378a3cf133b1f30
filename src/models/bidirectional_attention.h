// Scaled dot-product attention without causality, for the audio encoders. Internal to
// src/models.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace pal::models::detail {

// q, k, v [B, heads, T, head_dim]; key_valid [B, T] bool (false: a padded key that no
// query may see) or undefined (every key valid). Softmax(q k^T / sqrt(head_dim)) v,
// returned with the heads merged: [B, T, heads * head_dim].
inline torch::Tensor bidirectional_attention(const torch::Tensor& q, const torch::Tensor& k,
                                             const torch::Tensor& v, const torch::Tensor& key_valid) {
  const int64_t batch = q.size(0), heads = q.size(1), length = q.size(2), head_dim = q.size(3);
  torch::Tensor out;
#if TORCH_VERSION_MAJOR >= 2
  // An undefined tensor is not "no mask" here: pass none (the fused kernels' fast path).
  out = key_valid.defined()
            ? at::scaled_dot_product_attention(q, k, v, key_valid.view({batch, 1, 1, k.size(2)}))
            : at::scaled_dot_product_attention(q, k, v);
#else
  // LibTorch 1.13 has no fused attention: softmax(q k^T * scale) v over chunks of
  // (example, head) pairs whose scores take about 96 MB (AST-base at batch 8: 17 of its 96
  // pairs; all of them would be 566 MB). Without gradients the scores and probabilities
  // live in two buffers reused by every chunk (out= kernels): fresh 96 MB tensors cost a
  // page fault per page, and this path ran 2x faster than allocating here.
  const int64_t keys = k.size(2), pairs = batch * heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const int64_t chunk = std::clamp<int64_t>((24 << 20) / std::max<int64_t>(1, length * keys), 1, pairs);
  torch::Tensor qs = q.reshape({pairs, length, head_dim}),
                ks = k.reshape({pairs, keys, head_dim}).transpose(1, 2),
                vs = v.reshape({pairs, keys, head_dim});
  torch::Tensor hidden;  // [pairs, 1, S]: true at padded keys
  if (key_valid.defined()) hidden = key_valid.logical_not().repeat_interleave(heads, 0).unsqueeze(1);
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  const bool differentiable =
      torch::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  if (!differentiable && q.scalar_type() == torch::kFloat32) {
    torch::Tensor scores = torch::empty({chunk, length, keys}, q.options()),
                  probs = torch::empty_like(scores);
    out = torch::empty({pairs, length, head_dim}, q.options());
    for (int64_t begin = 0; begin < pairs; begin += chunk) {
      const int64_t n = std::min(chunk, pairs - begin);
      torch::Tensor s = scores.narrow(0, 0, n), p = probs.narrow(0, 0, n), o = out.narrow(0, begin, n);
      at::baddbmm_out(s, s, qs.narrow(0, begin, n), ks.narrow(0, begin, n), /*beta=*/0, /*alpha=*/scale);
      if (hidden.defined()) s.masked_fill_(hidden.narrow(0, begin, n), minus_infinity);
      at::_softmax_out(p, s, -1, /*half_to_float=*/false);
      at::bmm_out(o, p, vs.narrow(0, begin, n));
    }
  } else {
    std::vector<torch::Tensor> parts;
    const torch::Tensor unused = torch::empty({1, 1, 1}, q.options());
    for (int64_t begin = 0; begin < pairs; begin += chunk) {
      const int64_t n = std::min(chunk, pairs - begin);
      torch::Tensor s = torch::baddbmm(unused, qs.narrow(0, begin, n), ks.narrow(0, begin, n), /*beta=*/0,
                                       /*alpha=*/scale);
      if (hidden.defined()) s = s.masked_fill(hidden.narrow(0, begin, n), minus_infinity);
      torch::Tensor p = torch::softmax(s, -1, torch::kFloat32).to(q.scalar_type());
      parts.push_back(torch::bmm(p, vs.narrow(0, begin, n)));
    }
    out = parts.size() == 1 ? parts[0] : torch::cat(parts, 0);
  }
  out = out.view({batch, heads, length, head_dim});
#endif
  return out.transpose(1, 2).reshape({batch, length, heads * head_dim});
}

}  // namespace pal::models::detail
