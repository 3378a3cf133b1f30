#include "pal/audio/frontend.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pal/core/error.h"
#include "test_util.h"

namespace pal::audio {
namespace {

// A batch of clips of different lengths, zero-padded, as a data loader makes it.
struct PaddedBatch {
  std::vector<at::Tensor> clips;
  at::Tensor waveforms, lengths;
};

PaddedBatch padded_batch(const std::vector<int64_t>& lengths) {
  torch::manual_seed(1);
  PaddedBatch b;
  int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  b.waveforms = torch::zeros({static_cast<int64_t>(lengths.size()), longest});
  for (size_t i = 0; i < lengths.size(); ++i) {
    at::Tensor clip = torch::randn({lengths[i]}) * (0.1 * static_cast<double>(i + 1));
    b.waveforms[i].narrow(0, 0, lengths[i]).copy_(clip);
    b.clips.push_back(clip);
  }
  b.lengths = torch::tensor(lengths, torch::kLong);
  return b;
}

template <class Frontend>
void expect_batch_matches_single(const Frontend& frontend, const std::vector<int64_t>& lengths) {
  PaddedBatch b = padded_batch(lengths);
  Features batched = frontend(b.waveforms, b.lengths);
  for (size_t i = 0; i < lengths.size(); ++i) {
    SCOPED_TRACE(i);
    Features alone = frontend(b.clips[i]);
    const int64_t valid = alone.lengths[0].item<int64_t>();
    EXPECT_EQ(batched.lengths[i].item<int64_t>(), valid);
    EXPECT_EQ(valid, frontend.frames(lengths[i]));
    at::Tensor a = batched.values[i].narrow(0, 0, valid), s = alone.values[0].narrow(0, 0, valid);
    EXPECT_LE((a - s).abs().max().item<double>(), 1e-5);
    if (batched.values.size(1) > valid) {  // frames past the example's end are zero
      EXPECT_EQ(batched.values[i].narrow(0, valid, batched.values.size(1) - valid).abs().max().item<double>(),
                0.0);
    }
  }
}

TEST(WhisperMel, PaddedBatchEqualsEachClipAlone) {
  WhisperMelFrontend frontend;
  expect_batch_matches_single(frontend, {16000, 5000, 12345});
  Features f = frontend(padded_batch({16000, 5000}).waveforms, torch::tensor({16000, 5000}, torch::kLong));
  EXPECT_EQ(f.values.sizes(), (std::vector<int64_t>{2, 100, 80}));
}

TEST(WhisperMel, ShapesFor128BinsAnd30Seconds) {
  WhisperMelOptions o;
  o.n_mels = 128;
  o.pad_to_30s = true;
  WhisperMelFrontend frontend(o);
  PaddedBatch b = padded_batch({16000, 3200});
  Features f = frontend(b.waveforms, b.lengths);
  EXPECT_EQ(f.values.sizes(), (std::vector<int64_t>{2, 3000, 128}));
  EXPECT_EQ(f.lengths[1].item<int64_t>(), 3000);
  // The padding of a 30 s input is silence floored at max - 8, not zeros.
  double tail = f.values[1][2999][0].item<double>();
  EXPECT_LT(tail, f.values[1].max().item<double>() - 1.0);
}

TEST(WhisperMel, SilenceIsFiniteAndFlat) {
  WhisperMelFrontend frontend;
  Features f = frontend(torch::zeros({8000}));
  EXPECT_TRUE(torch::isfinite(f.values).all().item<bool>());
  EXPECT_NEAR(f.values.min().item<double>(), -1.5, 1e-6);  // (log10(1e-10) + 4) / 4
  EXPECT_NEAR(f.values.max().item<double>(), -1.5, 1e-6);
}

TEST(WhisperMel, FiltersFollowSlaneyNormalisation) {
  WhisperMelFrontend frontend;
  at::Tensor filters = frontend.mel_filters();
  EXPECT_EQ(filters.sizes(), (std::vector<int64_t>{80, 201}));
  EXPECT_TRUE((filters >= 0).all().item<bool>());
  // Each Slaney-normalised triangle has area ~1 on the Hz axis (bin width 40 Hz).
  at::Tensor area = filters.sum(1) * 40.0;
  EXPECT_NEAR(area.narrow(0, 10, 60).mean().item<double>(), 1.0, 0.05);
}

TEST(WhisperMel, RejectsBadShapes) {
  WhisperMelFrontend frontend;
  EXPECT_THROW(frontend(torch::zeros({2, 3, 4}), torch::tensor({1, 1}, torch::kLong)), ModelError);
  EXPECT_THROW(frontend(torch::zeros({2, 1000}), torch::tensor({1000}, torch::kLong)), ModelError);
  EXPECT_THROW(frontend(torch::zeros({1, 1000}), torch::tensor({2000}, torch::kLong)), ModelError);
  std::string msg = test::error_message<ModelError>([&] { frontend(torch::zeros({150})); });
  EXPECT_NE(msg.find("at least 201"), std::string::npos) << msg;
}

TEST(KaldiFbank, PaddedBatchEqualsEachClipAlone) {
  KaldiFbankFrontend frontend;
  expect_batch_matches_single(frontend, {16000, 4000, 9999});
  KaldiFbankOptions eat = KaldiFbankOptions::eat();
  eat.target_frames = 0;
  eat.norm_mean.reset();
  eat.norm_std.reset();
  expect_batch_matches_single(KaldiFbankFrontend(eat), {16000, 4000});
  KaldiFbankOptions povey;
  povey.window = "povey";
  povey.n_mels = 80;
  expect_batch_matches_single(KaldiFbankFrontend(povey), {8000, 3000});
}

TEST(KaldiFbank, PadCropAndNormalise) {
  KaldiFbankOptions o = KaldiFbankOptions::ast();
  o.target_frames = 50;
  KaldiFbankFrontend frontend(o);
  PaddedBatch b = padded_batch({16000, 4000});  // 98 and 23 frames
  Features f = frontend(b.waveforms, b.lengths);
  EXPECT_EQ(f.values.sizes(), (std::vector<int64_t>{2, 50, 128}));
  EXPECT_EQ(f.lengths[0].item<int64_t>(), 50);  // cropped
  EXPECT_EQ(f.lengths[1].item<int64_t>(), 23);  // padded
  // Padding frames are zeros normalised: (0 - mean) / (2 std).
  EXPECT_NEAR(f.values[1][40][5].item<double>(), 4.2677393 / (2 * 4.5689974), 1e-6);
  KaldiFbankOptions raw;
  Features r = KaldiFbankFrontend(raw)(b.clips[0]);
  at::Tensor expected = (r.values[0].narrow(0, 0, 50) + 4.2677393) / (2 * 4.5689974);
  EXPECT_LE((f.values[0] - expected).abs().max().item<double>(), 1e-5);
}

TEST(KaldiFbank, SilenceAndShortClips) {
  KaldiFbankFrontend frontend;
  Features f = frontend(torch::zeros({4000}));
  EXPECT_TRUE(torch::isfinite(f.values).all().item<bool>());
  EXPECT_NEAR(f.values.max().item<double>(), std::log(std::numeric_limits<float>::epsilon()), 1e-5);
  std::string msg = test::error_message<ModelError>([&] { frontend(torch::zeros({399})); });
  EXPECT_NE(msg.find("a frame needs 400"), std::string::npos) << msg;
  KaldiFbankOptions o;
  o.target_frames = 10;  // with a fixed frame count, a too-short clip is all padding
  Features padded = KaldiFbankFrontend(o)(torch::zeros({100}));
  EXPECT_EQ(padded.values.size(1), 10);
  EXPECT_EQ(padded.lengths[0].item<int64_t>(), 0);
}

TEST(KaldiFbank, RejectsBadOptions) {
  KaldiFbankOptions o;
  o.window = "blackman";
  EXPECT_THROW(KaldiFbankFrontend{o}, ConfigError);
  o = KaldiFbankOptions();
  o.low_freq = 9000;
  EXPECT_THROW(KaldiFbankFrontend{o}, ConfigError);
  o = KaldiFbankOptions();
  o.norm_mean = 1.0;
  EXPECT_THROW(KaldiFbankFrontend{o}, ConfigError);
}

TEST(FrontendConfig, OptionsLoadFromYaml) {
  auto o = config::parse<KaldiFbankOptions>(
      "window: povey\nn_mels: 80\nnormalize: true\nnorm_mean: -4\nnorm_std: 4\n", "fbank.yaml");
  EXPECT_EQ(o.window, "povey");
  EXPECT_EQ(o.n_mels, 80);
  ASSERT_TRUE(o.norm_mean.has_value());
  EXPECT_EQ(*o.norm_std, 4.0);
  auto back = config::parse<KaldiFbankOptions>(config::to_yaml(o), "resolved.yaml");
  EXPECT_EQ(back.norm_mean, o.norm_mean);
  std::string msg = test::error_message<ConfigError>(
      [] { config::parse<KaldiFbankOptions>("window: hann\n", "fbank.yaml"); });
  EXPECT_NE(msg.find("window: 'hann' is not one of: hanning, povey, hamming, rectangular"), std::string::npos)
      << msg;
  msg = test::error_message<ConfigError>(
      [] { config::parse<KaldiFbankOptions>("normalize: true\nnorm_std: 0\n", "fbank.yaml"); });
  EXPECT_NE(msg.find("norm_std: must be > 0 when normalize is true"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal::audio

namespace pal::audio {
namespace {

// The CPU path (chunked loops) and the generic path (whole-batch tensor ops, used on CUDA)
// compute the same features.
TEST(FrontendPaths, CpuAndGenericAgree) {
  PaddedBatch b = padded_batch({16000, 5000, 12345});
  for (bool pad : {false, true}) {
    WhisperMelOptions o;
    o.pad_to_30s = pad;
    WhisperMelFrontend whisper(o);
    Features cpu = whisper(b.waveforms, b.lengths), generic = whisper.forward_generic(b.waveforms, b.lengths);
    EXPECT_TRUE(torch::equal(cpu.lengths, generic.lengths));
    EXPECT_LE((cpu.values - generic.values).abs().max().item<double>(), 1e-5);
  }
  for (KaldiFbankOptions o : {KaldiFbankOptions(), KaldiFbankOptions::ast(), KaldiFbankOptions::eat()}) {
    o.target_frames = o.target_frames ? 120 : 0;
    KaldiFbankFrontend fbank(o);
    Features cpu = fbank(b.waveforms, b.lengths), generic = fbank.forward_generic(b.waveforms, b.lengths);
    EXPECT_TRUE(torch::equal(cpu.lengths, generic.lengths));
    // Relative to the features' range (as the parity tests): the paths sum in different orders.
    EXPECT_LE(
        (cpu.values - generic.values).abs().max().item<double>() / generic.values.abs().max().item<double>(),
        1e-4);
  }
}

}  // namespace
}  // namespace pal::audio
