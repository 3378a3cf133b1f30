#include "pal/nn/functional.h"

#include <torch/torch.h>
#include <torch/version.h>

namespace pal::nn {

#if TORCH_VERSION_MAJOR < 2
namespace {

struct GeluContiguousGrad : torch::autograd::Function<GeluContiguousGrad> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x) {
    ctx->save_for_backward({x});
    return at::gelu(x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    return {at::gelu_backward(grad[0].contiguous(), x)};
  }
};

}  // namespace

at::Tensor gelu(const at::Tensor& x) {
  if (!torch::GradMode::is_enabled() || !x.requires_grad() || !x.device().is_cpu()) return at::gelu(x);
  return GeluContiguousGrad::apply(x);
}
#else
at::Tensor gelu(const at::Tensor& x) { return at::gelu(x); }
#endif

}  // namespace pal::nn
