#include "pal/models/lora.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pal/core/error.h"
#include "pal/io/safetensors.h"
#include "pal/models/llama.h"
#include "test_util.h"

namespace pal::models {
namespace {

LlamaForCausalLM tiny() {
  return load_llama(test::fixtures() / "llm" / "tiny_llama");
}  // 3 layers

torch::Tensor logits(LlamaForCausalLM& m, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  return m->forward(ids).logits;
}

std::vector<std::string> lora_names(const torch::nn::Module& m) {
  std::vector<std::string> names;
  for (const auto& p : m.named_parameters())
    if (p.key().find(".lora_") != std::string::npos) names.push_back(p.key());
  return names;
}

void perturb_adapters(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.named_parameters())
    if (p.key().find(".lora_B.") != std::string::npos) p.value().normal_(0, 0.1);
}

TEST(Lora, NewAdaptersChangeNothingTrainedOnesMergeExactly) {
  LlamaForCausalLM m = tiny();
  torch::Tensor ids = torch::randint(0, 96, {2, 12}, torch::kInt64);
  torch::Tensor base = logits(m, ids);
  LoraConfig c;
  c.rank = 4;
  c.targets = {"q_proj", "v_proj", "down_proj"};
  EXPECT_EQ(add_lora(*m, c), 9);  // 3 targets x 3 layers
  EXPECT_EQ(lora_names(*m).size(), 18u);
  EXPECT_EQ(m->named_parameters()["model.layers.0.self_attn.q_proj.lora_A.weight"].sizes(),
            (std::vector<int64_t>{4, 64}));
  m->eval();  // no dropout
  EXPECT_TRUE(torch::allclose(logits(m, ids), base, 1e-6, 1e-6));
  perturb_adapters(*m);
  torch::Tensor adapted = logits(m, ids);
  EXPECT_FALSE(torch::allclose(adapted, base, 1e-3, 1e-3));
  EXPECT_EQ(merge_lora(*m), 9);
  EXPECT_TRUE(lora_names(*m).empty());
  EXPECT_TRUE(torch::allclose(logits(m, ids), adapted, 1e-4, 1e-4));
}

TEST(Lora, OnlyAdaptersTrainWhenTheBaseIsFrozen) {
  LlamaForCausalLM m = tiny();
  for (auto& p : m->parameters()) p.set_requires_grad(false);
  LoraConfig c;
  c.rank = 2;
  add_lora(*m, c);
  m->train();
  m->forward(torch::randint(0, 96, {1, 8}, torch::kInt64)).logits.sum().backward();
  for (const auto& p : m->named_parameters()) {
    const bool adapter = p.key().find(".lora_") != std::string::npos;
    // B starts at zero, so A's gradient is zero at first; B's is not.
    if (p.key().find(".lora_B.") != std::string::npos) {
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
    }
    if (!adapter) {
      EXPECT_FALSE(p.value().grad().defined()) << p.key();
    }
  }
}

TEST(Lora, SavedApartAndLoadedBack) {
  test::TempDir dir;
  LlamaForCausalLM m = tiny();
  LoraConfig c;
  c.rank = 3;
  c.alpha = 6;
  add_lora(*m, c);
  perturb_adapters(*m);
  m->eval();
  torch::Tensor ids = torch::randint(0, 96, {1, 10}, torch::kInt64);
  save_lora(*m, c, dir / "adapter.safetensors");
  // Only adapter tensors are in the file.
  auto file = io::SafetensorsFile::open(dir / "adapter.safetensors");
  EXPECT_EQ(file.tensors().size(), 24u);  // 4 targets x 3 layers x (A, B)
  LlamaForCausalLM fresh = tiny();
  LoraConfig read = load_lora(*fresh, dir / "adapter.safetensors");
  EXPECT_EQ(read.rank, 3);
  EXPECT_EQ(read.alpha, 6);
  fresh->eval();
  EXPECT_TRUE(torch::allclose(logits(fresh, ids), logits(m, ids), 1e-6, 1e-6));
}

TEST(Lora, ErrorsNameTheTargetOrTensor) {
  test::TempDir dir;
  LlamaForCausalLM m = tiny();
  LoraConfig c;
  c.rank = 2;
  c.targets = {"q_proj", "qkv"};
  std::string msg = test::error_message<ConfigError>([&] { add_lora(*m, c); });
  EXPECT_NE(msg.find("lora.targets: 'qkv' names no adaptable layer"), std::string::npos) << msg;
  msg = test::error_message<WeightsError>(
      [&] { load_lora(*m, test::fixtures() / "llm" / "tiny_llama" / "model.safetensors"); });
  EXPECT_NE(msg.find("not a PAL LoRA file"), std::string::npos) << msg;
  // An adapter of another rank.
  LlamaForCausalLM other = tiny();
  c.targets = {"q_proj"};
  add_lora(*other, c);
  save_lora(*other, c, dir / "a.safetensors");
  io::NamedTensors tensors;
  auto file = io::SafetensorsFile::open(dir / "a.safetensors");
  for (const auto& info : file.tensors()) {
    torch::Tensor t = file.tensor(info.name);
    if (info.name == "model.layers.1.self_attn.q_proj.lora_A.weight") t = torch::zeros({5, 64});
    tensors.push_back({info.name, t});
  }
  io::save_safetensors(dir / "b.safetensors", tensors, file.metadata());
  LlamaForCausalLM target = tiny();
  msg = test::error_message<WeightsError>([&] { load_lora(*target, dir / "b.safetensors"); });
  EXPECT_NE(
      msg.find(
          "'model.layers.1.self_attn.q_proj.lora_A.weight' has shape [5, 64], the model expects [2, 64]"),
      std::string::npos)
      << msg;
}

}  // namespace
}  // namespace pal::models
