#include "pal/nn/functional.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

namespace pal::nn {
namespace {

// d/dx x * Phi(x) = Phi(x) + x * phi(x), in double.
torch::Tensor gelu_derivative(const torch::Tensor& x) {
  const torch::Tensor d = x.to(torch::kDouble);
  return 0.5 * (1 + torch::erf(d / std::sqrt(2.0))) + d * torch::exp(-0.5 * d * d) / std::sqrt(2 * M_PI);
}

TEST(Gelu, ForwardEqualsTorchGelu) {
  torch::manual_seed(1);
  const torch::Tensor x = torch::randn({3, 17, 5});
  EXPECT_TRUE(torch::equal(pal::nn::gelu(x), torch::gelu(x)));
}

// The case LibTorch 1.13's own GELU gets wrong on the CPU: a gradient arriving through a
// transpose (Whisper's convolution stem: gelu(conv(x)).transpose(1, 2)).
TEST(Gelu, GradientThroughATransposeIsTheDerivative) {
  torch::manual_seed(2);
  for (int64_t frames : {51, 77, 160}) {
    const torch::Tensor x = torch::randn({4, 128, frames}).requires_grad_(true);
    const torch::Tensor y = pal::nn::gelu(x).transpose(1, 2);
    const torch::Tensor g = torch::randn(y.sizes());
    const torch::Tensor grad = torch::autograd::grad({y}, {x}, {g})[0];
    const torch::Tensor expected = gelu_derivative(x.detach()) * g.transpose(1, 2).to(torch::kDouble);
    EXPECT_LT((grad.to(torch::kDouble) - expected).abs().max().item<double>(), 1e-5) << "frames " << frames;
  }
}

TEST(Gelu, SecondUseOfTheSameInputAccumulatesBothGradients) {
  const torch::Tensor x = torch::linspace(-3, 3, 13).requires_grad_(true);
  (pal::nn::gelu(x).sum() + pal::nn::gelu(x).sum() * 2).backward();
  const torch::Tensor expected = 3 * gelu_derivative(x.detach());
  EXPECT_LT((x.grad().to(torch::kDouble) - expected).abs().max().item<double>(), 1e-6);
}

}  // namespace
}  // namespace pal::nn
