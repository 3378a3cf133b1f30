#include "pal/core/config.h"

#include <gtest/gtest.h>

#include "example_config.h"
#include "pal/core/error.h"
#include "test_util.h"

namespace pal {
namespace {

using test::StageConfig;

const char* kValid = R"(
name: probe
steps: 1e4
batch_size: 16
grad_clip: 0.5
shuffle: no
amp: bf16
trainable: ["projector.*", "*.lora_*"]
layers: [4, 5, 6]
optim:
  lr: 2.0e-4
  warmup_steps: 100
  betas: [0.9, 0.95]
manifests:
  - path: train/cla.jsonl
    weight: 2
  - path: train/qa.jsonl
)";

std::string config_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return test::error_message<ConfigError>([&] { config::parse<StageConfig>(yaml, "stage.yaml", overrides); });
}

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

TEST(Config, ReadsEveryFieldKind) {
  auto c = config::parse<StageConfig>(kValid, "stage.yaml");
  EXPECT_EQ(c.name, "probe");
  EXPECT_EQ(c.steps, 10000);
  EXPECT_EQ(c.batch_size, 16);
  EXPECT_FLOAT_EQ(c.grad_clip, 0.5f);
  EXPECT_FALSE(c.shuffle);
  EXPECT_EQ(c.amp, test::Precision::bf16);
  EXPECT_EQ(c.trainable, (std::vector<std::string>{"projector.*", "*.lora_*"}));
  EXPECT_EQ(c.layers, (std::vector<int>{4, 5, 6}));
  EXPECT_DOUBLE_EQ(c.optim.lr, 2e-4);
  EXPECT_DOUBLE_EQ(c.optim.weight_decay, 0.0);  // default kept
  EXPECT_EQ(c.optim.warmup_steps, 100);
  EXPECT_EQ(c.optim.betas, (std::vector<double>{0.9, 0.95}));
  ASSERT_EQ(c.manifests.size(), 2u);
  EXPECT_EQ(c.manifests[0].path, "train/cla.jsonl");
  EXPECT_DOUBLE_EQ(c.manifests[0].weight, 2.0);
  EXPECT_DOUBLE_EQ(c.manifests[1].weight, 1.0);
}

TEST(Config, UnknownKeyNamesPathLineAndSuggestion) {
  std::string msg = config_error("manifests: [{path: a.jsonl}]\noptim:\n  lrr: 0.1\n");
  expect_contains(msg, "stage.yaml:3:3");
  expect_contains(msg, "optim.lrr: unknown key");
  expect_contains(msg, "did you mean 'lr'?");
  expect_contains(msg, "known: ");
}

TEST(Config, UnknownKeyInsideListElement) {
  std::string msg = config_error("manifests:\n  - path: a.jsonl\n  - path: b.jsonl\n    wieght: 2\n");
  expect_contains(msg, "manifests[1].wieght: unknown key");
  expect_contains(msg, "did you mean 'weight'?");
}

TEST(Config, WrongTypesNameTheValue) {
  std::string msg = config_error("manifests: [{path: a.jsonl}]\noptim: {lr: fast}\n");
  expect_contains(msg, "stage.yaml:2:13");
  expect_contains(msg, "optim.lr: expected a number, got 'fast'");
  msg = config_error("manifests: [{path: a.jsonl}]\nsteps: 1.5\n");
  expect_contains(msg, "steps: expected an integer, got '1.5'");
  msg = config_error("manifests: [{path: a.jsonl}]\nshuffle: maybe\n");
  expect_contains(msg, "shuffle: expected true or false, got 'maybe'");
  msg = config_error("manifests: [{path: a.jsonl}]\noptim: 3\n");
  expect_contains(msg, "optim: expected a mapping of keys to values, got '3'");
  msg = config_error("manifests: [{path: a.jsonl}]\ntrainable: projector\n");
  expect_contains(msg, "trainable: expected a list, got 'projector'");
  msg = config_error("manifests: [{path: a.jsonl}]\nname: {a: 1}\n");
  expect_contains(msg, "name: expected a string, got a mapping");
  msg = config_error("manifests: [{path: a.jsonl}]\nbatch_size: 5000000000\n");
  expect_contains(msg, "batch_size: value 5000000000 does not fit a 32-bit integer");
}

TEST(Config, OutOfRangeValues) {
  std::string msg = config_error("manifests: [{path: a.jsonl}]\noptim: {lr: -1}\n");
  expect_contains(msg, "optim.lr: value -1 is out of range: must be > 0 and <= 10");
  msg = config_error("manifests: [{path: a.jsonl}]\noptim: {betas: [0.9, 1.0]}\n");
  expect_contains(msg, "optim.betas[1]: value 1.0 is out of range: must be >= 0 and < 1");
  msg = config_error("manifests: [{path: a.jsonl}]\nname: algin\n");
  expect_contains(msg, "name: 'algin' is not one of: align, probe, instruct; did you mean 'align'?");
  msg = config_error("manifests: [{path: a.jsonl}]\namp: fp8\n");
  expect_contains(msg, "amp: 'fp8' is not one of: off, bf16, fp16");
  msg = config_error("manifests: []\n");
  expect_contains(msg, "manifests: must not be empty");
}

TEST(Config, MissingRequiredKeys) {
  std::string msg = config_error("steps: 10\n");
  expect_contains(msg, "stage.yaml: manifests: required key is missing");
  msg = config_error("manifests:\n  - weight: 2\n");
  expect_contains(msg, "stage.yaml:2:5: manifests[0].path: required key is missing");
}

TEST(Config, CrossFieldCheck) {
  std::string msg = config_error("manifests: [{path: a.jsonl}]\nsteps: 10\noptim: {warmup_steps: 20}\n");
  expect_contains(msg, "optim: warmup_steps must not exceed steps");
}

TEST(Config, DuplicateKeysAndBadSyntax) {
  std::string msg = config_error("manifests: [{path: a.jsonl}]\nsteps: 1\nsteps: 2\n");
  expect_contains(msg, "steps: duplicate key");
  msg = config_error("manifests: [{path: a.jsonl}\nsteps: 1\n");
  expect_contains(msg, "stage.yaml:");
  expect_contains(msg, "not valid YAML");
  msg = config_error("- just\n- a list\n");
  expect_contains(msg, "expected a mapping of keys to values at the top");
}

TEST(Config, OverridesApplyAndAreNamedInErrors) {
  auto c = config::parse<StageConfig>(
      kValid, "stage.yaml",
      {"optim.lr=1e-5", "manifests.1.weight=3", "layers=[1, 2]", "optim.weight_decay=0.1"});
  EXPECT_DOUBLE_EQ(c.optim.lr, 1e-5);
  EXPECT_DOUBLE_EQ(c.manifests[1].weight, 3.0);
  EXPECT_EQ(c.layers, (std::vector<int>{1, 2}));
  EXPECT_DOUBLE_EQ(c.optim.weight_decay, 0.1);

  std::string msg = config_error(kValid, {"optim.lr=abc"});
  expect_contains(msg, "--set optim.lr=abc: optim.lr: expected a number, got 'abc'");
  msg = config_error(kValid, {"optim.lrr=0.1"});
  expect_contains(msg, "--set optim.lrr=0.1: optim.lrr: unknown key; did you mean 'lr'?");
  msg = config_error(kValid, {"manifests.1.weight=-2"});
  expect_contains(msg, "--set manifests.1.weight=-2: manifests[1].weight: value -2 is out of range");
  msg = config_error(kValid, {"manifests.7.weight=1"});
  expect_contains(msg, "index 7 is past the end of 'manifests'");
  msg = config_error(kValid, {"steps.x=1"});
  expect_contains(msg, "'steps' is '1e4', not a mapping");
  msg = config_error(kValid, {"novalue"});
  expect_contains(msg, "--set novalue: expected key.path=value");
  msg = config_error(kValid, {"optim..lr=1"});
  expect_contains(msg, "empty name in key path");
}

TEST(Config, OverrideCreatesMissingSections) {
  auto c = config::parse<StageConfig>("manifests: [{path: a.jsonl}]\n", "stage.yaml", {"optim.lr=0.5"});
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.5);
}

TEST(Config, ResolvedConfigRoundTrips) {
  auto c = config::parse<StageConfig>(kValid, "stage.yaml");
  c.name = "instruct";
  c.optim.lr = 0.1;  // not exactly representable: must survive text round trip
  c.optim.weight_decay = 1.0 / 3.0;
  c.trainable = {"true", "", "123", "a: b", "null"};
  c.grad_clip = 0.3f;
  std::string yaml = config::to_yaml(c);
  auto back = config::parse<StageConfig>(yaml, "resolved.yaml");
  EXPECT_EQ(back.name, c.name);
  EXPECT_EQ(back.steps, c.steps);
  EXPECT_EQ(back.optim.lr, c.optim.lr);
  EXPECT_EQ(back.optim.weight_decay, c.optim.weight_decay);
  EXPECT_EQ(back.grad_clip, c.grad_clip);
  EXPECT_EQ(back.trainable, c.trainable);
  EXPECT_EQ(back.amp, c.amp);
  EXPECT_EQ(back.layers, c.layers);
  ASSERT_EQ(back.manifests.size(), 2u);
  EXPECT_EQ(back.manifests[1].path, "train/qa.jsonl");
  EXPECT_EQ(config::to_yaml(back), yaml);
}

TEST(Config, FileLoadAndSave) {
  test::TempDir dir;
  auto file = dir / "stage.yaml";
  test::write_bytes(file, kValid);
  auto c = config::load<StageConfig>(file, {"steps=500"});
  EXPECT_EQ(c.steps, 500);
  config::save(c, dir / "resolved.yaml");
  EXPECT_EQ(config::load<StageConfig>(dir / "resolved.yaml").steps, 500);

  std::string msg =
      test::error_message<ConfigError>([&] { config::load<StageConfig>(dir / "missing.yaml"); });
  expect_contains(msg, "missing.yaml");
  test::write_bytes(file, "manifests: [{path: a.jsonl}]\nsteps: many\n");
  msg = test::error_message<ConfigError>([&] { config::load<StageConfig>(file); });
  expect_contains(msg, file.string() + ":2:8: steps: expected an integer, got 'many'");
}

TEST(Config, EmptyDocumentUsesDefaultsButEnforcesRequired) {
  std::string msg = config_error("");
  expect_contains(msg, "manifests: required key is missing");
}

}  // namespace
}  // namespace pal
