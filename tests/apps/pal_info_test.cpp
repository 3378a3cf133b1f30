// End-to-end: the real pal-info binary on files written by the library.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "pal/io/safetensors.h"
#include "test_util.h"

namespace pal {
namespace {

const std::string kPalInfo = PAL_INFO_EXE;

TEST(E2EPalInfo, PrintsRuntime) {
  auto r = test::run_command(kPalInfo + " --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("LibTorch   " TORCH_VERSION), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("threads    intra-op 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("BLAS"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("CUDA"), std::string::npos) << r.output;

  r = test::run_command(kPalInfo + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["torch_version"], TORCH_VERSION);
  EXPECT_GE(j["intra_op_threads"].get<int>(), 1);
}

TEST(E2EPalInfo, ListsCheckpointWrittenByTheWriter) {
  test::TempDir dir;
  io::NamedTensors tensors = {{"model.embed_tokens.weight", torch::zeros({100, 8}, torch::kBFloat16)},
                              {"model.norm.weight", torch::ones({8})},
                              {"lm_head.weight", torch::zeros({100, 8}, torch::kBFloat16)}};
  io::save_safetensors_sharded(dir.path(), tensors, /*max_shard_bytes=*/2000, {{"format", "pt"}});
  test::write_bytes(dir / "config.json", R"({"model_type": "llama"})");

  auto r = test::run_command(kPalInfo + " " + dir.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("model.embed_tokens.weight"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[100, 8]"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("3 tensors in 2 file(s)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("parameters  1608 (1.61 K)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("bytes       3232 (3.16 KiB)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("model_type  llama"), std::string::npos) << r.output;

  r = test::run_command(kPalInfo + " --json " + (dir / "model-00001-of-00002.safetensors").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["files"], 1);
  EXPECT_EQ(j["metadata"]["format"], "pt");
}

TEST(E2EPalInfo, BadInputExitsWithOneAndNamesTheFile) {
  test::TempDir dir;
  test::write_bytes(dir / "broken.safetensors", std::string("\x10\0\0\0\0\0\0\0{\"a\":", 13));
  auto r = test::run_command(kPalInfo + " " + (dir / "broken.safetensors").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("pal-info: error: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("broken.safetensors"), std::string::npos) << r.output;

  r = test::run_command(kPalInfo + " " + (dir / "absent").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("absent' does not exist"), std::string::npos) << r.output;

  r = test::run_command(kPalInfo + " --threads -3");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = test::run_command(kPalInfo + " --no-such-flag");
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

}  // namespace
}  // namespace pal
