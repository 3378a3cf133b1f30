// Activation functions with the autograd fixes PAL needs across LibTorch versions.
#pragma once

#include <ATen/core/Tensor.h>

namespace pal::nn {

// GELU (exact, erf form), as torch::gelu. LibTorch 1.13 (Debian 12's libtorch-dev)
// computes GELU's gradient wrongly on the CPU when the gradient arriving from above is not
// contiguous (e.g. gelu(x).transpose(1, 2), as in Whisper's convolution stem): values of
// 1e20 or NaN instead of the gradient. There the backward pass gets a contiguous copy of
// the incoming gradient; LibTorch 2.x needs no fix and calls torch::gelu directly.
at::Tensor gelu(const at::Tensor& x);

}  // namespace pal::nn
