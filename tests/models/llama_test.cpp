#include "pal/models/llama.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/io/safetensors.h"
#include "test_util.h"

namespace pal::models {
namespace {

std::filesystem::path llm_fixture(const std::string& name) {
  return test::fixtures() / "llm" / name;
}

using test::relative_error;

// Logits and every hidden-state tap against transformers, fp32, max relative error 1e-4.
void expect_parity(const std::string& name) {
  SCOPED_TRACE(name);
  LlamaForCausalLM model = load_llama(llm_fixture(name));
  auto expected = io::SafetensorsFile::open(llm_fixture(name + "_expected.safetensors"));
  torch::NoGradGuard no_grad;
  LlamaOutput out = model->forward(expected.tensor("input_ids"));
  ASSERT_EQ(out.hidden_states.size(), static_cast<size_t>(model->config().num_hidden_layers + 1));
  for (size_t i = 0; i < out.hidden_states.size(); ++i) {
    SCOPED_TRACE("hidden_states." + std::to_string(i));
    EXPECT_LE(relative_error(out.hidden_states[i], expected.tensor("hidden_states." + std::to_string(i))),
              1e-4);
  }
  EXPECT_LE(relative_error(out.logits, expected.tensor("logits")), 1e-4);
  // The rotary tables for positions 0..255 (RoPE and llama3's frequency bands).
  RotaryTables rope = model->rotary(torch::arange(256, torch::kInt64).unsqueeze(0));
  EXPECT_LE((rope.cos[0] - expected.tensor("rope_cos")).abs().max().item<double>(), 1e-4);
  EXPECT_LE((rope.sin[0] - expected.tensor("rope_sin")).abs().max().item<double>(), 1e-4);
}

TEST(ParityLlama, LlamaWithLlama3RopeGqaAndTiedEmbeddingsMatchesTransformers) {
  expect_parity("tiny_llama");
}
TEST(ParityLlama, Qwen2WithBiasesAndUntiedHeadMatchesTransformers) {
  expect_parity("tiny_qwen2");
}

TEST(Llama, ReadsBothRopeConfigFormats) {
  LlamaConfig c = LlamaConfig::from_json_file(llm_fixture("tiny_llama") / "config.json");
  EXPECT_EQ(c.rope_type, "llama3");
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_original_max_positions, 128);
  EXPECT_EQ(c.num_key_value_heads, 2);
  test::TempDir dir;
  test::write_bytes(dir / "config.json", R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 1000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}})");
  c = LlamaConfig::from_json_file(dir / "config.json");
  EXPECT_EQ(c.rope_type, "llama3");
  EXPECT_EQ(c.rope_factor, 32.0);
  EXPECT_EQ(c.rope_theta, 1000.0);
  EXPECT_EQ(c.num_key_value_heads, 2);  // defaults to the attention heads
  EXPECT_EQ(c.head_dim, 4);
}

TEST(Llama, BadConfigsNameFileAndKey) {
  test::TempDir dir;
  auto error = [&](const std::string& json) {
    test::write_bytes(dir / "config.json", json);
    return test::error_message<ConfigError>([&] { LlamaConfig::from_json_file(dir / "config.json"); });
  };
  std::string base =
      R"("vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2)";
  std::string msg = error("{" + base + "}");
  EXPECT_NE(msg.find("config.json: num_hidden_layers: required key is missing"), std::string::npos) << msg;
  msg = error(R"({"model_type": "mistral", )" + base + R"(, "num_hidden_layers": 1})");
  EXPECT_NE(msg.find("model_type: 'mistral' is not supported"), std::string::npos) << msg;
  msg = error("{" + base + R"(, "num_hidden_layers": "two"})");
  EXPECT_NE(msg.find("num_hidden_layers: expected an integer, got \"two\""), std::string::npos) << msg;
  msg = error("{" + base + R"(, "num_hidden_layers": 1, "num_key_value_heads": 3})");
  EXPECT_NE(msg.find("must be a multiple of num_key_value_heads"), std::string::npos) << msg;
  msg = error("{" + base + R"(, "num_hidden_layers": 1, "rope_scaling": {"rope_type": "yarn"}})");
  EXPECT_NE(msg.find("rope_type: 'yarn' is not supported"), std::string::npos) << msg;
  msg = error("{not json");
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
}

// Copies the fixture's weights with `edit` applied, to a new folder.
std::filesystem::path edited_checkpoint(const test::TempDir& dir,
                                        const std::function<void(io::NamedTensors&)>& edit) {
  auto source = io::SafetensorsCheckpoint::open(llm_fixture("tiny_llama"));
  io::NamedTensors tensors;
  for (const auto& name : source.names()) tensors.push_back({name, source.tensor(name).clone()});
  edit(tensors);
  std::filesystem::copy_file(llm_fixture("tiny_llama") / "config.json", dir / "config.json");
  io::save_safetensors(dir / "model.safetensors", tensors);
  return dir.path();
}

TEST(Llama, LoadingErrorsNameTheTensor) {
  {
    test::TempDir dir;
    auto folder = edited_checkpoint(dir, [](io::NamedTensors& t) {
      t.erase(std::remove_if(t.begin(), t.end(),
                             [](auto& p) { return p.first == "model.layers.1.mlp.up_proj.weight"; }),
              t.end());
    });
    std::string msg = test::error_message<WeightsError>([&] { load_llama(folder); });
    EXPECT_NE(msg.find("tensor 'model.layers.1.mlp.up_proj.weight' is missing"), std::string::npos) << msg;
  }
  {
    test::TempDir dir;
    auto folder = edited_checkpoint(dir, [](io::NamedTensors& t) {
      for (auto& p : t)
        if (p.first == "model.norm.weight") p.second = torch::ones({65});
    });
    std::string msg = test::error_message<WeightsError>([&] { load_llama(folder); });
    EXPECT_NE(msg.find("tensor 'model.norm.weight' has shape [65], the model (config.json) expects [64]"),
              std::string::npos)
        << msg;
  }
  {
    test::TempDir dir;
    auto folder = edited_checkpoint(dir, [](io::NamedTensors& t) {
      t.push_back({"model.extra.bias", torch::ones({2})});
    });
    std::string msg = test::error_message<WeightsError>([&] { load_llama(folder); });
    EXPECT_NE(msg.find("unexpected tensor 'model.extra.bias'"), std::string::npos) << msg;
  }
}

TEST(Llama, CastsToBfloat16OnLoad) {
  LlamaForCausalLM model = load_llama(llm_fixture("tiny_llama"), torch::kBFloat16);
  EXPECT_EQ(model->model->embed_tokens->weight.scalar_type(), torch::kBFloat16);
  auto expected = io::SafetensorsFile::open(llm_fixture("tiny_llama_expected.safetensors"));
  torch::NoGradGuard no_grad;
  torch::Tensor logits = model->forward(expected.tensor("input_ids")).logits;
  EXPECT_LE(relative_error(logits.to(torch::kFloat), expected.tensor("logits")), 0.05);
}

}  // namespace
}  // namespace pal::models
