#include "pal/io/safetensors.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "test_util.h"

namespace pal::io {
namespace {

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

// A file image from a header (JSON text) and a data buffer, as a hostile or broken
// writer might produce it.
std::string raw_file(const std::string& header, const std::string& data, int64_t claimed_length = -1) {
  uint64_t len = claimed_length >= 0 ? static_cast<uint64_t>(claimed_length) : header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string open_error(const std::string& bytes) {
  test::TempDir dir;
  auto file = dir / "bad.safetensors";
  test::write_bytes(file, bytes);
  std::string msg = test::error_message<WeightsError>([&] { SafetensorsFile::open(file); });
  EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << "message does not name the file: " << msg;
  return msg;
}

NamedTensors sample_tensors() {
  torch::manual_seed(0);
  return {
      {"f32", torch::randn({3, 5})},
      {"f16", torch::randn({7}).to(torch::kHalf)},
      {"bf16", torch::randn({2, 3}).to(torch::kBFloat16)},
      {"f64", torch::randn({2}, torch::kDouble)},
      {"i64", torch::arange(-5, 5, torch::kLong)},
      {"i32", torch::arange(0, 9, torch::kInt).reshape({3, 3})},
      {"i16", torch::arange(-3, 3, torch::kShort)},
      {"i8", torch::arange(-4, 4, torch::kChar)},
      {"u8", torch::arange(250, 256, torch::kLong).to(torch::kByte)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5f)},
      {"empty", torch::zeros({0, 4})},
      {"strided", torch::arange(12, torch::kFloat).reshape({3, 4}).t()},  // non-contiguous input
  };
}

TEST(Safetensors, RoundTripsEveryDtypeBitExactly) {
  test::TempDir dir;
  auto file = dir / "model.safetensors";
  auto tensors = sample_tensors();
  save_safetensors(file, tensors, {{"format", "pt"}, {"note", "test"}});

  auto f = SafetensorsFile::open(file);
  EXPECT_EQ(f.metadata().at("note"), "test");
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    at::Tensor got = f.tensor(name);
    EXPECT_EQ(got.scalar_type(), expected.scalar_type());
    EXPECT_EQ(got.sizes(), expected.sizes());
    EXPECT_TRUE(torch::equal(got, expected));
    // Every tensor is aligned for its dtype, so reading is zero-copy.
    if (got.numel() > 0) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(got.data_ptr()) % got.element_size(), 0u);
    }
  }
}

TEST(Safetensors, ViewsOutliveTheFileObjectAndNeverWriteTheFile) {
  test::TempDir dir;
  auto file = dir / "w.safetensors";
  save_safetensors(file, {{"w", torch::ones({4, 4})}});
  at::Tensor view;
  {
    auto f = SafetensorsFile::open(file);
    view = f.tensor("w");
  }
  EXPECT_EQ(view.sum().item<float>(), 16.0f);  // mapping kept alive by the tensor
  view.mul_(2);                                // copy-on-write pages: file unchanged
  EXPECT_EQ(SafetensorsFile::open(file).tensor("w").sum().item<float>(), 16.0f);
}

TEST(Safetensors, ReadsUnalignedDataByCopying) {
  // A header of 3 bytes of padding short of alignment puts the F32 data at offset 8+13.
  std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_EQ((8 + header.size()) % 4 != 0, true);
  float values[2] = {1.25f, -7.5f};
  std::string data(reinterpret_cast<const char*>(values), sizeof values);
  test::TempDir dir;
  test::write_bytes(dir / "u.safetensors", raw_file(header, data));
  at::Tensor t = SafetensorsFile::open(dir / "u.safetensors").tensor("a");
  EXPECT_EQ(t[0].item<float>(), 1.25f);
  EXPECT_EQ(t[1].item<float>(), -7.5f);
}

TEST(Safetensors, ShardedCheckpointRoundTrips) {
  test::TempDir dir;
  NamedTensors tensors;
  for (int i = 0; i < 6; ++i)
    tensors.push_back({"layers." + std::to_string(i) + ".weight", torch::randn({16, 16})});
  save_safetensors_sharded(dir.path(), tensors, /*max_shard_bytes=*/2 * 16 * 16 * 4, {{"format", "pt"}});
  EXPECT_TRUE(std::filesystem::exists(dir / "model.safetensors.index.json"));
  EXPECT_TRUE(std::filesystem::exists(dir / "model-00003-of-00003.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors"));
  auto index = nlohmann::json::parse(read_file(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 6u * 16 * 16 * 4);

  auto c = SafetensorsCheckpoint::open(dir.path());
  EXPECT_EQ(c.files().size(), 3u);
  EXPECT_EQ(c.names().size(), 6u);
  for (const auto& [name, expected] : tensors) EXPECT_TRUE(torch::equal(c.tensor(name), expected)) << name;

  // Rewriting small replaces the index with one file.
  save_safetensors_sharded(dir.path(), {tensors[0]}, 1 << 20);
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors.index.json"));
  EXPECT_EQ(SafetensorsCheckpoint::open(dir.path()).names().size(), 1u);
}

TEST(Safetensors, CheckpointErrorsNameWhatIsWrong) {
  test::TempDir dir;
  std::string msg = test::error_message<WeightsError>([&] { SafetensorsCheckpoint::open(dir.path()); });
  expect_contains(msg, "holds neither model.safetensors nor model.safetensors.index.json");
  test::write_bytes(dir / "pytorch_model.bin", "x");
  msg = test::error_message<WeightsError>([&] { SafetensorsCheckpoint::open(dir.path()); });
  expect_contains(msg, "pytorch_model.bin checkpoints are not read");

  save_safetensors(dir / "shard-a.safetensors", {{"a", torch::ones({2})}});
  auto index = [&](const std::string& map) {
    write_file_atomic(dir / "model.safetensors.index.json", R"({"weight_map": )" + map + "}");
  };
  index(R"({"a": "shard-a.safetensors", "b": "shard-b.safetensors"})");
  msg = test::error_message<WeightsError>([&] { SafetensorsCheckpoint::open(dir.path()); });
  expect_contains(msg, "shard 'shard-b.safetensors' (holding 'b') is missing");
  index(R"({"a": "shard-a.safetensors", "c": "shard-a.safetensors"})");
  msg = test::error_message<WeightsError>([&] { SafetensorsCheckpoint::open(dir.path()); });
  expect_contains(msg, "tensor 'c' should be in shard 'shard-a.safetensors' but is not there");
  index(R"({"a": "../outside.safetensors"})");
  msg = test::error_message<WeightsError>([&] { SafetensorsCheckpoint::open(dir.path()); });
  expect_contains(msg, "not a file name in the checkpoint folder");
  index(R"({"a": "shard-a.safetensors"})");
  EXPECT_TRUE(torch::equal(SafetensorsCheckpoint::open(dir.path()).tensor("a"), torch::ones({2})));
  msg = test::error_message<WeightsError>([&] { SafetensorsCheckpoint::open(dir.path()).tensor("zz"); });
  expect_contains(msg, "no tensor named 'zz'");
  EXPECT_THROW(SafetensorsCheckpoint::open(dir / "absent"), IoError);
}

TEST(Safetensors, WriterRejectsBadInput) {
  test::TempDir dir;
  auto file = dir / "w.safetensors";
  std::string msg = test::error_message<WeightsError>([&] {
    save_safetensors(file, {{"a", torch::ones({1})}, {"a", torch::ones({1})}});
  });
  expect_contains(msg, "tensor 'a' given twice");
  msg = test::error_message<WeightsError>([&] {
    save_safetensors(file, {{"c", torch::ones({1}, torch::kComplexFloat)}});
  });
  expect_contains(msg, "tensor 'c' has dtype ComplexFloat");
  EXPECT_FALSE(std::filesystem::exists(file));
}

// ---- malformed files: each names the problem, none crashes ---------------------------------

TEST(SafetensorsBadInput, Truncated) {
  test::TempDir dir;
  auto file = dir / "good.safetensors";
  save_safetensors(file, {{"w", torch::randn({32})}});
  std::string bytes = read_file(file);
  expect_contains(open_error(bytes.substr(0, 5)), "too short for a safetensors header");
  expect_contains(open_error(bytes.substr(0, 20)), "runs past the end of the file");
  expect_contains(open_error(bytes.substr(0, bytes.size() - 4)),
                  "tensor 'w': data_offsets [0, 128) run past the data buffer");
  expect_contains(open_error(""), "file is 0 bytes");
}

TEST(SafetensorsBadInput, OversizedHeader) {
  expect_contains(open_error(raw_file("{}", "", int64_t{1} << 40)), "exceeds the limit of 100000000 bytes");
}

TEST(SafetensorsBadInput, OverlappingOffsets) {
  std::string header =
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  std::string msg = open_error(raw_file(header, std::string(24, '\0')));
  expect_contains(msg, "tensor 'b': data [8, 24) overlaps tensor 'a' [0, 16)");
}

TEST(SafetensorsBadInput, GapsAndTrailingBytes) {
  std::string header = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})";
  expect_contains(open_error(raw_file(header, std::string(8, '\0'))), "gap in the data buffer");
  header = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  expect_contains(open_error(raw_file(header, std::string(9, '\0'))),
                  "5 bytes at the end of the data buffer belong to no tensor");
}

TEST(SafetensorsBadInput, WrongDtypeAndSize) {
  std::string header = R"({"a":{"dtype":"F33","shape":[4],"data_offsets":[0,16]}})";
  expect_contains(open_error(raw_file(header, std::string(16, '\0'))), "tensor 'a': unknown dtype 'F33'");
  header = R"({"a":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}})";
  expect_contains(open_error(raw_file(header, std::string(16, '\0'))),
                  "tensor 'a': holds 16 bytes but dtype F16 x shape [4] needs 8");
  header = R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})";
  expect_contains(open_error(raw_file(header, std::string(16, '\0'))), "not a non-negative integer");
  header = R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})";
  expect_contains(open_error(raw_file(header, std::string(16, '\0'))), "overflows");
  header = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})";
  expect_contains(open_error(raw_file(header, std::string(16, '\0'))), "end before they begin");
  header = R"({"a":{"dtype":"F32","shape":[4]}})";
  expect_contains(open_error(raw_file(header, std::string(16, '\0'))),
                  "'data_offsets' must be two non-negative integers");
}

TEST(SafetensorsBadInput, MalformedJson) {
  expect_contains(open_error(raw_file(R"({"a": {"dtype": )", "")), "header is not valid JSON");
  expect_contains(open_error(raw_file("[1, 2]", "")), "header does not start with '{'");
  std::string header =
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  expect_contains(open_error(raw_file(header, std::string(2, '\0'))),
                  "tensor 'a': appears twice in the header");
  expect_contains(open_error(raw_file(R"({"__metadata__": {"k": 1}})", "")),
                  "__metadata__ entry 'k' is not a string");
}

TEST(SafetensorsBadInput, UnsupportedDtypeIsAnErrorOnRead) {
  std::string header = R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})";
  test::TempDir dir;
  test::write_bytes(dir / "f8.safetensors", raw_file(header, std::string(2, '\0')));
  auto f = SafetensorsFile::open(dir / "f8.safetensors");  // the header is valid
  std::string msg = test::error_message<WeightsError>([&] { f.tensor("a"); });
  expect_contains(msg, "dtype F8_E4M3 is not supported");
}

// The fuzzers' seed corpus doubles as a regression suite: every file either parses or
// fails with a WeightsError.
TEST(SafetensorsBadInput, FuzzCorpusNeverCrashes) {
  auto corpus = test::fixtures().parent_path() / "fuzz" / "corpus" / "safetensors";
  size_t n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(corpus)) {
    std::string bytes = read_file(entry.path());
    try {
      parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                               entry.path().string());
    } catch (const WeightsError&) {
    }
    ++n;
  }
  EXPECT_GE(n, 5u);
}

// Parity with the reference writer: a file produced by the `safetensors` Python package
// (scripts/make_parity_fixtures.py) reads back to the values the script wrote.
TEST(ParitySafetensors, ReadsFileWrittenByReferenceLibrary) {
  auto file = test::fixtures() / "safetensors" / "reference.safetensors";
  auto f = SafetensorsFile::open(file);
  EXPECT_EQ(f.metadata().at("producer"), "safetensors.torch.save_file");
  auto arange = [](int64_t n) { return torch::arange(n, torch::kDouble); };
  // Values are (arange(n) - n/2) / 4, exact in every float format used.
  auto expected = [&](int64_t n) { return (arange(n) - n / 2) / 4; };
  EXPECT_TRUE(torch::equal(f.tensor("f32").to(torch::kDouble), expected(24).reshape({2, 3, 4})));
  EXPECT_TRUE(torch::equal(f.tensor("f16").to(torch::kDouble), expected(10)));
  EXPECT_TRUE(torch::equal(f.tensor("bf16").to(torch::kDouble), expected(6).reshape({3, 2})));
  EXPECT_TRUE(torch::equal(f.tensor("f64"), expected(5)));
  EXPECT_TRUE(torch::equal(f.tensor("i64"), torch::arange(-3, 4, torch::kLong) * int64_t{1000000000000}));
  EXPECT_TRUE(torch::equal(f.tensor("i32"), torch::arange(-4, 4, torch::kInt)));
  EXPECT_TRUE(torch::equal(f.tensor("u8"), torch::arange(0, 256, 51, torch::kLong).to(torch::kByte)));
  EXPECT_TRUE(torch::equal(f.tensor("bool"), torch::tensor({true, false, false, true})));
  EXPECT_EQ(f.tensor("f16").scalar_type(), torch::kHalf);
  EXPECT_EQ(f.tensor("bf16").scalar_type(), torch::kBFloat16);
}

}  // namespace
}  // namespace pal::io
