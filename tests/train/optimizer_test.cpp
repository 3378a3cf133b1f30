#include "pal/train/optimizer.h"

#include "pal/core/error.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "test_util.h"

namespace pal::train {
namespace {

TEST(AdamW, FollowsTorchAdamWUpdateRule) {
  // Two steps on one weight matrix and one bias, computed by hand in double precision
  // from torch.optim.AdamW's definition.
  torch::Tensor w = torch::tensor({{0.5, -1.0}, {2.0, 0.25}}, torch::kFloat32).set_requires_grad(true);
  torch::Tensor b = torch::tensor({0.1, -0.2}, torch::kFloat32).set_requires_grad(true);
  AdamW::Options o;
  o.weight_decay = 0.1;
  o.beta1 = 0.8;
  o.beta2 = 0.9;
  o.eps = 1e-3;
  AdamW opt({{"layer.weight", w}, {"layer.bias", b}}, o);
  EXPECT_EQ(opt.decayed_count(), 1);  // the bias is not decayed

  const std::vector<std::vector<double>> grads = {{0.3, -0.6, 1.2, 0.05}, {-0.1, 0.4, 0.2, -0.3}};
  const std::vector<double> lrs = {0.01, 0.02};
  std::vector<double> p = {0.5, -1.0, 2.0, 0.25}, m(4, 0), v(4, 0);
  for (int step = 0; step < 2; ++step) {
    w.mutable_grad() = torch::tensor(grads[step], torch::kFloat32).reshape({2, 2});
    b.mutable_grad() = torch::tensor({1.0, -1.0}, torch::kFloat32);
    opt.step(lrs[step]);
    for (int i = 0; i < 4; ++i) {
      const double g = grads[step][i];
      p[i] *= 1 - lrs[step] * o.weight_decay;
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      const double mhat_scale = lrs[step] / (1 - std::pow(o.beta1, step + 1));
      const double denom = std::sqrt(v[i]) / std::sqrt(1 - std::pow(o.beta2, step + 1)) + o.eps;
      p[i] -= mhat_scale * m[i] / denom;
    }
    auto got = w.flatten();
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(got[i].item<double>(), p[i], 1e-6) << "step " << step << " i " << i;
  }
  // The bias: no decay; with a constant gradient of +-1 each step moves by lr (m/sqrt(v) = 1).
  EXPECT_NEAR(b[0].item<double>(), 0.1 - 0.01 / (1 + 1e-3) - 0.02 / (1 + 1e-3), 1e-6);
}

TEST(AdamW, StateRoundTripsThroughSafetensors) {
  test::TempDir dir;
  torch::Tensor w = torch::randn({3, 4}).set_requires_grad(true);
  AdamW a({{"w", w}}, {});
  w.mutable_grad() = torch::randn({3, 4});
  a.step(0.1);
  io::save_safetensors(dir / "opt.safetensors", a.state());

  torch::Tensor w2 = w.detach().clone().set_requires_grad(true);
  AdamW b({{"w", w2}}, {});
  b.load_state(io::SafetensorsFile::open(dir / "opt.safetensors"));
  torch::Tensor g = torch::randn({3, 4});
  w.mutable_grad() = g.clone();
  w2.mutable_grad() = g.clone();
  a.step(0.1);
  b.step(0.1);
  EXPECT_TRUE(torch::equal(w, w2));

  // State of a parameter this optimizer does not train is an error that names it.
  AdamW c({{"other", torch::zeros({3, 4}).set_requires_grad(true)}}, {});
  const std::string msg =
      test::error_message<TrainError>([&] { c.load_state(io::SafetensorsFile::open(dir / "opt.safetensors")); });
  EXPECT_NE(msg.find("'w'"), std::string::npos) << msg;
}

TEST(AdamW, ClipsTheGlobalNorm) {
  torch::Tensor a = torch::zeros({2}).set_requires_grad(true);
  torch::Tensor b = torch::zeros({1}).set_requires_grad(true);
  AdamW opt({{"a", a}, {"b", b}}, {});
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  EXPECT_NEAR(opt.clip_grad_norm(1.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-5);
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-5);
}

TEST(LearningRate, WarmsUpThenFollowsACosine) {
  EXPECT_DOUBLE_EQ(learning_rate(0, 100, 1.0, 10, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(9, 100, 1.0, 10, 0.1), 1.0);
  EXPECT_NEAR(learning_rate(10, 100, 1.0, 10, 0.1), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate(99, 100, 1.0, 10, 0.1), 0.1, 1e-12);
  const double mid = learning_rate(10 + 89 / 2, 100, 1.0, 10, 0.0);
  EXPECT_GT(mid, 0.45);
  EXPECT_LT(mid, 0.55);
  for (int64_t s = 11; s < 100; ++s)
    EXPECT_LE(learning_rate(s, 100, 1.0, 10, 0.1), learning_rate(s - 1, 100, 1.0, 10, 0.1));
}

TEST(DynamicLossScaler, SkipsOverflowStepsAndAdaptsTheScale) {
  torch::Tensor w = torch::zeros({3}).set_requires_grad(true);
  std::vector<NamedParameter> params = {{"w", w}};
  DynamicLossScaler scaler(1024.0, /*growth_interval=*/2);
  w.mutable_grad() = torch::tensor({1024.0f, 2048.0f, -512.0f});
  EXPECT_TRUE(scaler.unscale(params));
  EXPECT_TRUE(torch::allclose(w.grad(), torch::tensor({1.0f, 2.0f, -0.5f})));
  scaler.update(true);
  EXPECT_EQ(scaler.scale(), 1024.0);

  // An injected overflow: the step is reported non-finite, the scale halves, it counts.
  w.mutable_grad() = torch::tensor({1.0f, std::numeric_limits<float>::infinity(), 0.0f});
  EXPECT_FALSE(scaler.unscale(params));
  scaler.update(false);
  EXPECT_EQ(scaler.scale(), 512.0);
  EXPECT_EQ(scaler.skipped_steps(), 1);
  w.mutable_grad() = torch::tensor({std::nanf(""), 0.0f, 0.0f});
  EXPECT_FALSE(scaler.unscale(params));
  scaler.update(false);
  EXPECT_EQ(scaler.skipped_steps(), 2);
  EXPECT_EQ(scaler.scale(), 256.0);

  // growth_interval good steps in a row double it.
  scaler.update(true);
  scaler.update(true);
  EXPECT_EQ(scaler.scale(), 512.0);
}

}  // namespace
}  // namespace pal::train
