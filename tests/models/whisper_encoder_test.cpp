#include "pal/models/whisper_encoder.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pal/core/error.h"
#include "pal/io/safetensors.h"
#include "test_util.h"

namespace pal::models {
namespace {

std::filesystem::path encoder_fixture(const std::string& name) {
  return test::fixtures() / "encoders" / name;
}

using test::relative_error;

torch::Tensor lengths_of(std::vector<int64_t> v) {
  return torch::tensor(v, torch::kLong);
}

struct Fixture {
  WhisperEncoder model = load_whisper_encoder(encoder_fixture("tiny_whisper"));
  io::SafetensorsFile expected =
      io::SafetensorsFile::open(encoder_fixture("tiny_whisper_expected.safetensors"));
  torch::Tensor waveform =
      io::SafetensorsFile::open(test::fixtures() / "audio" / "speech_8k_mono.safetensors")
          .tensor("waveform_16k");
};

// Layer by layer against transformers' sub-modules run on the unpadded 0.96 s clip (95 mel
// frames, an odd count: conv2's last window reads past the clip).
TEST(ParityWhisperEncoder, UnpaddedClipMatchesTransformersLayerByLayer) {
  Fixture f;
  torch::NoGradGuard no_grad;
  torch::Tensor features = f.expected.tensor("short.features").unsqueeze(0);
  ASSERT_EQ(features.size(1), 95);
  WhisperEncoderTaps taps = f.model->forward_features(features, lengths_of({95}));
  ASSERT_EQ(taps.hidden_states.size(), 3u);
  for (size_t i = 0; i < taps.hidden_states.size(); ++i) {
    SCOPED_TRACE("hidden_states." + std::to_string(i));
    EXPECT_LE(
        relative_error(taps.hidden_states[i], f.expected.tensor("short.hidden_states." + std::to_string(i))),
        1e-4);
  }
  EXPECT_LE(relative_error(taps.last_hidden_state, f.expected.tensor("short.last_hidden_state")), 1e-4);
  EXPECT_EQ(taps.mask.sizes(), (std::vector<int64_t>{1, 48}));
  EXPECT_TRUE(taps.mask.all().item<bool>());
}

// transformers' own WhisperEncoder.forward on the clip padded to the full context.
TEST(ParityWhisperEncoder, FullContextMatchesTransformersForward) {
  Fixture f;
  torch::NoGradGuard no_grad;
  const int64_t context = f.model->config().context_frames();
  ASSERT_EQ(context, 500);
  torch::Tensor head = f.expected.tensor("full.features_head");
  torch::Tensor features = f.expected.tensor("full.features_tail_value").expand({context, 80}).clone();
  features.narrow(0, 0, head.size(0)).copy_(head);
  WhisperEncoderTaps taps = f.model->forward_features(features.unsqueeze(0), lengths_of({context}));
  const int64_t keep = f.expected.tensor("full.last_hidden_state").size(1);
  for (size_t i = 0; i < taps.hidden_states.size(); ++i) {
    SCOPED_TRACE("hidden_states." + std::to_string(i));
    EXPECT_LE(relative_error(taps.hidden_states[i].narrow(1, 0, keep),
                             f.expected.tensor("full.hidden_states." + std::to_string(i))),
              1e-4);
  }
  EXPECT_LE(
      relative_error(taps.last_hidden_state.narrow(1, 0, keep), f.expected.tensor("full.last_hidden_state")),
      1e-4);
  EXPECT_LE(relative_error(taps.last_hidden_state.narrow(1, context / 2 - 4, 4),
                           f.expected.tensor("full.last_hidden_state_tail")),
            1e-4);
}

// encode() from the waveform: PAL's frontend + encoder, unpadded and padded to the context.
TEST(ParityWhisperEncoder, EncodeFromWaveformMatchesTransformers) {
  Fixture f;
  torch::NoGradGuard no_grad;
  const int64_t n = f.waveform.size(0);
  EncoderOutput out = f.model->encode(f.waveform.unsqueeze(0), lengths_of({n}));
  EXPECT_FALSE(out.cls.defined());
  EXPECT_LE(relative_error(out.hidden, f.expected.tensor("short.last_hidden_state")), 1e-4);

  WhisperEncoderOptions padded;
  padded.pad_to_30s = true;
  WhisperEncoder full = load_whisper_encoder(encoder_fixture("tiny_whisper"), padded);
  out = full->encode(f.waveform.unsqueeze(0), lengths_of({n}));
  ASSERT_EQ(out.hidden.size(1), 48);  // the frames that cover the clip
  EXPECT_LE(relative_error(out.hidden, f.expected.tensor("full.last_hidden_state").narrow(1, 0, 48)), 1e-4);
}

TEST(WhisperEncoder, ClipsInABatchEqualEachClipAlone) {
  Fixture f;
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  const std::vector<int64_t> samples = {16000, 9000, 3210, 480};  // 100, 56, 20 and 3 mel frames
  torch::Tensor batch = torch::zeros({4, 16000});
  for (size_t i = 0; i < samples.size(); ++i)
    batch[i].narrow(0, 0, samples[i]).copy_(torch::randn({samples[i]}) * 0.1);
  EncoderOutput together = f.model->encode(batch, lengths_of(samples));
  ASSERT_EQ(together.hidden.sizes(), (std::vector<int64_t>{4, 50, 64}));
  for (size_t i = 0; i < samples.size(); ++i) {
    SCOPED_TRACE("clip " + std::to_string(i));
    const int64_t valid = (samples[i] / 160 + 1) / 2;
    EXPECT_EQ(together.mask[i].sum().item<int64_t>(), valid);
    EXPECT_TRUE(together.mask[i].narrow(0, 0, valid).all().item<bool>());
    EncoderOutput alone =
        f.model->encode(batch[i].narrow(0, 0, samples[i]).unsqueeze(0), lengths_of({samples[i]}));
    ASSERT_EQ(alone.hidden.size(1), valid);
    EXPECT_LE(relative_error(together.hidden[i].narrow(0, 0, valid), alone.hidden[0]), 1e-5);
  }
  EXPECT_EQ(f.model->width(), 64);
  EXPECT_EQ(f.model->frames_per_second(), 50.0);
  EXPECT_EQ(f.model->type(), "whisper");
}

TEST(WhisperEncoder, ClipsOutsideTheContextAreErrors) {
  Fixture f;
  torch::NoGradGuard no_grad;
  std::string msg = test::error_message<AudioError>([&] {
    f.model->encode(torch::zeros({2, 1000}), lengths_of({1000, 150}));
  });
  EXPECT_NE(msg.find("clip 1 has 150 samples; at least 201 (one mel frame) are needed"), std::string::npos)
      << msg;
  msg = test::error_message<AudioError>([&] {
    f.model->encode(torch::zeros({1, 96000}), lengths_of({96000}));
  });
  EXPECT_NE(msg.find("clip 0 has 96000 samples (6"), std::string::npos) << msg;
  EXPECT_NE(msg.find("context is 80000 samples (5 s)"), std::string::npos) << msg;
}

TEST(WhisperEncoder, CheckpointOfAnotherArchitectureNamesItsModelType) {
  const auto folder = test::fixtures() / "llm" / "tiny_llama";
  std::string msg = test::error_message<ConfigError>([&] { load_whisper_encoder(folder); });
  EXPECT_NE(msg.find((folder / "config.json").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("model_type: 'llama' is not a Whisper checkpoint (expected 'whisper')"),
            std::string::npos)
      << msg;
}

// A copy of tiny_whisper whose tensors went through `edit`.
std::filesystem::path edited_checkpoint(const test::TempDir& dir,
                                        const std::function<void(io::NamedTensors&)>& edit) {
  auto checkpoint = io::SafetensorsCheckpoint::open(encoder_fixture("tiny_whisper"));
  io::NamedTensors tensors;
  for (const auto& name : checkpoint.names()) tensors.emplace_back(name, checkpoint.tensor(name));
  edit(tensors);
  std::filesystem::copy_file(encoder_fixture("tiny_whisper") / "config.json", dir / "config.json");
  io::save_safetensors(dir / "model.safetensors", tensors);
  return dir.path();
}

TEST(WhisperEncoder, MissingMisShapedAndUnexpectedTensorsAreNamed) {
  {
    test::TempDir dir;
    auto folder = edited_checkpoint(dir, [](io::NamedTensors& t) {
      t.erase(std::find_if(t.begin(), t.end(),
                           [](const auto& p) { return p.first == "model.encoder.layers.1.fc2.bias"; }));
    });
    std::string msg = test::error_message<WeightsError>([&] { load_whisper_encoder(folder); });
    EXPECT_NE(msg.find("tensor 'model.encoder.layers.1.fc2.bias' is missing"), std::string::npos) << msg;
  }
  {
    test::TempDir dir;
    auto folder = edited_checkpoint(dir, [](io::NamedTensors& t) {
      for (auto& p : t)
        if (p.first == "model.encoder.layers.0.self_attn.q_proj.weight") p.second = torch::zeros({64, 32});
    });
    std::string msg = test::error_message<WeightsError>([&] { load_whisper_encoder(folder); });
    EXPECT_NE(
        msg.find("tensor 'model.encoder.layers.0.self_attn.q_proj.weight' has shape [64, 32], the Whisper "
                 "encoder (config.json) expects [64, 64]"),
        std::string::npos)
        << msg;
  }
  {
    test::TempDir dir;
    auto folder = edited_checkpoint(dir, [](io::NamedTensors& t) {
      t.emplace_back("model.encoder.layers.0.self_attn.k_proj.bias", torch::zeros({64}));
    });
    std::string msg = test::error_message<WeightsError>([&] { load_whisper_encoder(folder); });
    EXPECT_NE(msg.find("unexpected tensor 'model.encoder.layers.0.self_attn.k_proj.bias'"), std::string::npos)
        << msg;
  }
}

TEST(WhisperEncoder, LoadsABareEncoderCheckpoint) {
  Fixture f;
  test::TempDir dir;
  auto folder = edited_checkpoint(dir, [](io::NamedTensors& t) {
    io::NamedTensors bare;
    const std::string prefix = "model.encoder.";
    for (auto& p : t)
      if (p.first.rfind(prefix, 0) == 0) bare.emplace_back(p.first.substr(prefix.size()), p.second);
    t = bare;
  });
  WhisperEncoder bare = load_whisper_encoder(folder);
  torch::NoGradGuard no_grad;
  torch::Tensor features = f.expected.tensor("short.features").unsqueeze(0);
  EXPECT_TRUE(torch::equal(bare->forward_features(features, lengths_of({95})).last_hidden_state,
                           f.model->forward_features(features, lengths_of({95})).last_hidden_state));
}

TEST(WhisperEncoder, TrainLastBlocksUnfreezesTheLastLayersAndTheFinalNorm) {
  Fixture f;
  auto trainable = [&] {
    std::vector<std::string> names;
    for (const auto& p : f.model->named_parameters())
      if (p.value().requires_grad()) names.push_back(p.key());
    return names;
  };
  EXPECT_TRUE(trainable().empty());  // loaded frozen
  f.model->train_last_blocks(1);
  std::vector<std::string> names = trainable();
  EXPECT_EQ(names.size(),
            17u);  // layers.1: 7 in self_attn (k_proj has no bias), 4 in fc1/fc2, 4 in norms; layer_norm: 2
  for (const auto& name : names)
    EXPECT_TRUE(name.rfind("layers.1.", 0) == 0 || name.rfind("layer_norm.", 0) == 0) << name;
  // Gradients reach the trainable layer through the (masked) attention, the frozen ones get none.
  torch::Tensor features = f.expected.tensor("short.features").unsqueeze(0).expand({2, 95, 80}).clone();
  features[1].narrow(0, 60, 35).zero_();
  f.model->forward_features(features, lengths_of({95, 60}), false).last_hidden_state.pow(2).sum().backward();
  EXPECT_TRUE(f.model->layers[1]->as<WhisperEncoderLayer>()->self_attn->q_proj->weight.grad().defined());
  EXPECT_GT(f.model->layers[1]
                ->as<WhisperEncoderLayer>()
                ->self_attn->q_proj->weight.grad()
                .abs()
                .sum()
                .item<double>(),
            0.0);
  EXPECT_FALSE(f.model->layers[0]->as<WhisperEncoderLayer>()->fc1->weight.grad().defined());
  f.model->train_last_blocks(0);
  EXPECT_TRUE(trainable().empty());
  std::string msg = test::error_message<ModelError>([&] { f.model->train_last_blocks(3); });
  EXPECT_NE(msg.find("train_last_blocks(3): the encoder has 2 layers"), std::string::npos) << msg;
}

TEST(WhisperEncoder, BadConfigsNameFileAndKey) {
  test::TempDir dir;
  auto error = [&](const std::string& json) {
    test::write_bytes(dir / "config.json", json);
    return test::error_message<ConfigError>(
        [&] { WhisperEncoderConfig::from_json_file(dir / "config.json"); });
  };
  std::string base =
      R"("model_type": "whisper", "d_model": 64, "encoder_attention_heads": 4, "encoder_ffn_dim": 128)";
  std::string msg = error("{" + base + "}");
  EXPECT_NE(msg.find("config.json: encoder_layers: required key is missing"), std::string::npos) << msg;
  msg = error("{" + base + R"(, "encoder_layers": 2, "activation_function": "relu"})");
  EXPECT_NE(msg.find("activation_function: 'relu' is not supported"), std::string::npos) << msg;
  msg = error("{" + base + R"(, "encoder_layers": "2"})");
  EXPECT_NE(msg.find("encoder_layers: expected an integer, got \"2\""), std::string::npos) << msg;
  msg = error(R"({"d_model": 64})");
  EXPECT_NE(msg.find("model_type: '(none)' is not a Whisper checkpoint"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal::models
