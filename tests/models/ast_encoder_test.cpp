#include "pal/models/ast_encoder.h"

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
  io::SafetensorsFile expected = io::SafetensorsFile::open(encoder_fixture("tiny_ast_expected.safetensors"));
  torch::Tensor waveform =
      io::SafetensorsFile::open(test::fixtures() / "audio" / "speech_48k_stereo_24bit.safetensors")
          .tensor("waveform_16k");
  AstEncoder load(const std::string& frequency = "pooled") {
    AstEncoderOptions options;
    options.frequency = frequency;
    return load_ast_encoder(encoder_fixture("tiny_ast"), options);
  }
};

// The reference's patch grid [B, n_freq, n_time, hidden] from its last_hidden_state.
torch::Tensor reference_grid(const torch::Tensor& last, int64_t n_freq, int64_t n_time) {
  return last.narrow(1, 2, n_freq * n_time).view({last.size(0), n_freq, n_time, last.size(2)});
}

TEST(ParityAstEncoder, MatchesTransformersLayerByLayer) {
  Fixture f;
  AstEncoder model = f.load();
  torch::NoGradGuard no_grad;
  torch::Tensor fbank = f.expected.tensor("input_values").unsqueeze(0);  // [1, 64, 128]
  AstEncoderTaps taps = model->forward_features(fbank, f.expected.tensor("frames"));
  ASSERT_EQ(taps.hidden_states.size(), 3u);
  for (size_t i = 0; i < taps.hidden_states.size(); ++i) {
    SCOPED_TRACE("hidden_states." + std::to_string(i));
    EXPECT_LE(relative_error(taps.hidden_states[i], f.expected.tensor("hidden_states." + std::to_string(i))),
              1e-4);
  }
  torch::Tensor last = f.expected.tensor("last_hidden_state");
  EXPECT_LE(relative_error(taps.last_hidden_state, last), 1e-4);
  EXPECT_LE(relative_error(taps.output.cls, f.expected.tensor("pooler_output")), 1e-4);
  // 12 frequency x 5 time patches; the clip's 33 frames cover time patches 0..2.
  ASSERT_EQ(taps.output.hidden.sizes(), (std::vector<int64_t>{1, 5, 64}));
  EXPECT_LE(relative_error(taps.output.hidden, reference_grid(last, 12, 5).mean(1)), 1e-4);
  EXPECT_TRUE(torch::equal(taps.output.mask, torch::tensor({true, true, true, false, false}).unsqueeze(0)));
}

TEST(ParityAstEncoder, EncodeFromWaveformStackedMatchesTransformers) {
  Fixture f;
  AstEncoder model = f.load("stacked");
  EXPECT_EQ(model->width(), 64 * 12);
  EXPECT_EQ(model->cls_width(), 64);
  EXPECT_EQ(model->frames_per_second(), 10.0);
  EXPECT_EQ(model->type(), "ast");
  torch::NoGradGuard no_grad;
  EncoderOutput out = model->encode(f.waveform.unsqueeze(0), lengths_of({f.waveform.size(0)}));
  ASSERT_EQ(out.hidden.sizes(), (std::vector<int64_t>{1, 5, 64 * 12}));
  // Time step t: the frequency patches of column t, low to high, concatenated.
  torch::Tensor grid = reference_grid(f.expected.tensor("last_hidden_state"), 12, 5);
  EXPECT_LE(relative_error(out.hidden, grid.permute({0, 2, 1, 3}).reshape({1, 5, 12 * 64})), 1e-4);
  EXPECT_LE(relative_error(out.cls, f.expected.tensor("pooler_output")), 1e-4);
  EXPECT_EQ(out.mask.sum().item<int64_t>(), 3);
}

TEST(AstEncoder, ClipShorterThanOnePatchGivesOneStepAndAClipWithoutAFrameIsAnError) {
  Fixture f;
  AstEncoder model = f.load();
  torch::NoGradGuard no_grad;
  // 1000 samples: 4 fbank frames, padded to 64 as AST runs it: the first patch holds them all.
  EncoderOutput out = model->encode(f.waveform.narrow(0, 0, 1000).unsqueeze(0), lengths_of({1000}));
  EXPECT_TRUE(torch::equal(out.mask, torch::tensor({true, false, false, false, false}).unsqueeze(0)));
  std::string msg = test::error_message<AudioError>([&] {
    model->encode(torch::zeros({2, 1000}), lengths_of({1000, 300}));
  });
  EXPECT_NE(
      msg.find("ast encoder: clip 1 has 300 samples (0 fbank frames); at least 400 samples (1 frames) are "
               "needed"),
      std::string::npos)
      << msg;
}

TEST(AstEncoder, CheckpointOfAnotherArchitectureNamesItsModelType) {
  const auto folder = encoder_fixture("tiny_whisper");
  std::string msg = test::error_message<ConfigError>([&] { load_ast_encoder(folder); });
  EXPECT_NE(msg.find((folder / "config.json").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("model_type: 'whisper' is not a AST / EAT checkpoint"), std::string::npos) << msg;
}

std::filesystem::path edited_checkpoint(const test::TempDir& dir,
                                        const std::function<void(io::NamedTensors&)>& edit) {
  auto checkpoint = io::SafetensorsCheckpoint::open(encoder_fixture("tiny_ast"));
  io::NamedTensors tensors;
  for (const auto& name : checkpoint.names()) tensors.emplace_back(name, checkpoint.tensor(name));
  edit(tensors);
  std::filesystem::copy_file(encoder_fixture("tiny_ast") / "config.json", dir / "config.json");
  io::save_safetensors(dir / "model.safetensors", tensors);
  return dir.path();
}

TEST(AstEncoder, MissingAndMisShapedTensorsAreNamed) {
  const std::string prefix = "audio_spectrogram_transformer.";
  {
    test::TempDir dir;
    auto folder = edited_checkpoint(dir, [&](io::NamedTensors& t) {
      t.erase(std::find_if(t.begin(), t.end(), [&](const auto& p) {
        return p.first == prefix + "encoder.layer.1.attention.attention.value.bias";
      }));
    });
    std::string msg = test::error_message<WeightsError>([&] { load_ast_encoder(folder); });
    EXPECT_NE(msg.find("tensor '" + prefix + "encoder.layer.1.attention.attention.value.bias' is missing"),
              std::string::npos)
        << msg;
  }
  {
    // A checkpoint trained for another max_length: its position table has another size.
    test::TempDir dir;
    auto folder = edited_checkpoint(dir, [&](io::NamedTensors& t) {
      for (auto& p : t)
        if (p.first == prefix + "embeddings.position_embeddings")
          p.second = torch::zeros({1, 2 + 12 * 6, 64});
    });
    std::string msg = test::error_message<WeightsError>([&] { load_ast_encoder(folder); });
    EXPECT_NE(msg.find("tensor '" + prefix +
                       "embeddings.position_embeddings' has shape [1, 74, 64], the ast "
                       "encoder (config.json) expects [1, 62, 64]"),
              std::string::npos)
        << msg;
  }
}

TEST(AstEncoder, TrainLastBlocks) {
  Fixture f;
  AstEncoder model = f.load();
  model->train_last_blocks(1);
  int64_t trainable = 0;
  for (const auto& p : model->named_parameters())
    if (p.value().requires_grad()) {
      ++trainable;
      EXPECT_TRUE(p.key().rfind("encoder.layer.1.", 0) == 0 || p.key().rfind("layernorm.", 0) == 0)
          << p.key();
    }
  EXPECT_EQ(trainable, 16 + 2);  // q/k/v/out, intermediate, output: 12; two norms: 4; final norm: 2
  std::string msg = test::error_message<ModelError>([&] { model->train_last_blocks(-1); });
  EXPECT_NE(msg.find("train_last_blocks(-1): the encoder has 2 layers"), std::string::npos) << msg;
}

// ---- EAT / SSLAM: the same code with stride 16, CLS only, variable length --------------------

AstEncoderConfig tiny_eat(int64_t target_length) {
  AstEncoderConfig c = AstEncoderConfig::eat();
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.intermediate_size = 64;
  c.max_length = 64;  // a 4-column position table (8 frequency patches)
  c.target_length = target_length;
  return c;
}

AstEncoder random_eat(int64_t target_length, const std::string& position_resize = "interpolate") {
  AstEncoderConfig c = tiny_eat(target_length);
  c.position_resize = position_resize;
  AstEncoder model(c);
  torch::manual_seed(5);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.normal_(0.0, 0.3);
  model->eval();
  return model;
}

TEST(EatEncoder, VariableLengthShapesRateAndCls) {
  AstEncoder model = random_eat(0);
  EXPECT_EQ(model->type(), "eat");
  EXPECT_EQ(model->frames_per_second(), 6.25);
  for (const auto& p : model->named_parameters()) EXPECT_EQ(p.key().find("distillation"), std::string::npos);
  EXPECT_EQ(model->embeddings->position_embeddings.sizes(), (std::vector<int64_t>{1, 1 + 8 * 4, 32}));
  torch::NoGradGuard no_grad;
  torch::manual_seed(1);
  // 1 s: 98 fbank frames -> 1 + ceil((98 - 16) / 16) = 7 time patches, longer than the table.
  EncoderOutput out = model->encode(torch::randn({1, 16000}) * 0.1, lengths_of({16000}));
  EXPECT_EQ(out.hidden.sizes(), (std::vector<int64_t>{1, 7, 32}));
  EXPECT_EQ(out.cls.sizes(), (std::vector<int64_t>{1, 32}));
  EXPECT_TRUE(out.mask.all().item<bool>());
  EXPECT_TRUE(torch::isfinite(out.hidden).all().item<bool>());
}

TEST(EatEncoder, PositionTableIsResizedLinearlyOverTime) {
  AstEncoder model = random_eat(0);
  torch::NoGradGuard no_grad;
  // Column t of the table holds the value t in every channel and frequency row.
  torch::Tensor columns = torch::arange(4, torch::kFloat).view({1, 4, 1}).expand({8, 4, 32});
  model->embeddings->position_embeddings[0].narrow(0, 1, 32).copy_(columns.reshape({32, 32}));
  EXPECT_TRUE(torch::equal(model->patch_positions(4), columns.reshape({32, 32})));
  // 4 -> 8 columns, linear with align_corners=False: source (j + 0.5) / 2 - 0.5, clamped.
  torch::Tensor wider = model->patch_positions(8).view({8, 8, 32});
  torch::Tensor expected = torch::tensor({0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0});
  for (int64_t f = 0; f < 8; ++f) EXPECT_TRUE(torch::allclose(wider[f].select(1, 0), expected)) << f;
  torch::Tensor narrower = model->patch_positions(2).view({8, 2, 32});
  EXPECT_TRUE(torch::allclose(narrower[0].select(1, 0), torch::tensor({0.5, 2.5})));
  AstEncoder truncating = random_eat(0, "truncate");
  truncating->embeddings->position_embeddings[0].narrow(0, 1, 32).copy_(columns.reshape({32, 32}));
  EXPECT_TRUE(torch::equal(truncating->patch_positions(2).view({8, 2, 32})[3].select(1, 0),
                           torch::tensor({0.0f, 1.0f})));
}

TEST(EatEncoder, ClipsInABatchEqualEachClipAlone) {
  for (const char* resize : {"interpolate", "truncate"}) {
    SCOPED_TRACE(resize);
    AstEncoder model = random_eat(0, resize);
    torch::NoGradGuard no_grad;
    torch::manual_seed(2);
    const std::vector<int64_t> samples = {16000, 6000, 2800};  // 98, 35 and 16 frames: 7, 3 and 1 patches
    torch::Tensor batch = torch::zeros({3, 16000});
    for (size_t i = 0; i < samples.size(); ++i)
      batch[i].narrow(0, 0, samples[i]).copy_(torch::randn({samples[i]}) * 0.1);
    EncoderOutput together = model->encode(batch, lengths_of(samples));
    ASSERT_EQ(together.hidden.size(1), 7);
    const std::vector<int64_t> patches = {7, 3, 1};
    for (size_t i = 0; i < samples.size(); ++i) {
      SCOPED_TRACE("clip " + std::to_string(i));
      EXPECT_EQ(together.mask[i].sum().item<int64_t>(), patches[i]);
      EncoderOutput alone =
          model->encode(batch[i].narrow(0, 0, samples[i]).unsqueeze(0), lengths_of({samples[i]}));
      ASSERT_EQ(alone.hidden.size(1), patches[i]);
      EXPECT_LE(relative_error(together.hidden[i].narrow(0, 0, patches[i]), alone.hidden[0]), 1e-5);
      EXPECT_LE(relative_error(together.cls[i], alone.cls[0]), 1e-5);
    }
  }
}

TEST(EatEncoder, ClipShorterThanOnePatchIsAnError) {
  AstEncoder model = random_eat(0);
  torch::NoGradGuard no_grad;
  // 2000 samples: 11 fbank frames, fewer than the 16 of one patch.
  std::string msg = test::error_message<AudioError>([&] {
    model->encode(torch::zeros({2, 3000}), lengths_of({3000, 2000}));
  });
  EXPECT_NE(
      msg.find("eat encoder: clip 1 has 2000 samples (11 fbank frames); at least 2800 samples (16 frames, "
               "one patch) are needed"),
      std::string::npos)
      << msg;
  msg = test::error_message<AudioError>([&] {
    model->forward_features(torch::zeros({1, 11, 128}), lengths_of({11}));
  });
  EXPECT_NE(msg.find("11 fbank frames is shorter than one patch: at least 16 frames"), std::string::npos)
      << msg;
}

TEST(EatEncoder, FixedLengthCropsAndPads) {
  AstEncoder model = random_eat(64);  // EAT's own 1024-frame pipeline, scaled down
  torch::NoGradGuard no_grad;
  torch::manual_seed(4);
  EncoderOutput out = model->encode(torch::randn({2, 16000}) * 0.1, lengths_of({16000, 3000}));
  ASSERT_EQ(out.hidden.sizes(), (std::vector<int64_t>{2, 4, 32}));  // cropped to 64 frames: 4 patches
  EXPECT_EQ(out.mask[0].sum().item<int64_t>(), 4);
  EXPECT_EQ(out.mask[1].sum().item<int64_t>(), 2);  // 16 frames + a partial patch
}

TEST(EatEncoder, LoadsItsConfigJsonAndCheckpoint) {
  AstEncoder model = random_eat(0);
  test::TempDir dir;
  test::write_bytes(dir / "config.json", R"({"model_type": "eat", "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 64, "num_mel_bins": 128, "max_length": 64, "target_length": 0})");
  io::NamedTensors tensors;
  for (const auto& p : model->named_parameters()) tensors.emplace_back(p.key(), p.value());
  io::save_safetensors(dir / "model.safetensors", tensors);
  AstEncoderConfig c = AstEncoderConfig::from_json_file(dir / "config.json");
  EXPECT_FALSE(c.distillation_token);
  EXPECT_EQ(c.time_stride, 16);
  EXPECT_EQ(c.frequency_stride, 16);
  EXPECT_EQ(c.layer_norm_eps, 1e-6);
  EXPECT_EQ(c.position_resize, "interpolate");
  AstEncoder loaded = load_ast_encoder(dir.path());
  torch::NoGradGuard no_grad;
  torch::Tensor wave = torch::randn({1, 8000}) * 0.1;
  EXPECT_TRUE(torch::equal(loaded->encode(wave, lengths_of({8000})).hidden,
                           model->encode(wave, lengths_of({8000})).hidden));

  test::write_bytes(dir / "config.json", R"({"model_type": "eat", "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 64, "position_resize": "bicubic"})");
  std::string msg = test::error_message<ConfigError>([&] { load_ast_encoder(dir.path()); });
  EXPECT_NE(msg.find("config.json: position_resize: 'bicubic' is not supported"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal::models
