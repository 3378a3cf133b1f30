#include "pal/data/manifest.h"

#include <gtest/gtest.h>

#include "pal/core/config.h"
#include "pal/core/error.h"
#include "pal/data/loader.h"
#include "test_util.h"

namespace pal::data {
namespace {

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

std::string record_error(const std::string& line, bool require_audio = true) {
  return test::error_message<DataError>([&] { parse_record(line, "/data", "m.jsonl:1", require_audio); });
}

TEST(ManifestRecord, ReadsLtuFieldsAndResolvesAudioFromTheManifestFolder) {
  Example e = parse_record(
      R"({"audio": "clips/a.wav", "instruction": "What is it?", "output": "A dog.", "task": "cla", "start": 1.5, "end": 4})",
      "/data/set", "m.jsonl:7", true);
  EXPECT_EQ(e.audio, "/data/set/clips/a.wav");
  EXPECT_EQ(e.instruction, "What is it?");
  EXPECT_EQ(e.output, "A dog.");
  EXPECT_EQ(e.task, "cla");
  EXPECT_DOUBLE_EQ(e.start, 1.5);
  EXPECT_DOUBLE_EQ(e.end, 4.0);
  EXPECT_EQ(e.source, "m.jsonl:7");

  // audio_id is the OpenAQA spelling; absolute paths stay; no start/end: the whole file.
  e = parse_record(R"({"audio_id": "/abs/b.flac", "instruction": "", "output": "x"})", "/data", "s", true);
  EXPECT_EQ(e.audio, "/abs/b.flac");
  EXPECT_EQ(e.task, "");
  EXPECT_DOUBLE_EQ(e.start, 0);
  EXPECT_LT(e.end, 0);

  // Text-only records are allowed when audio is not required.
  e = parse_record(R"({"instruction": "Say hi.", "output": "hi"})", "/data", "s", false);
  EXPECT_TRUE(e.audio.empty());
}

TEST(ManifestRecord, BadRecordsSayWhy) {
  expect_contains(record_error(R"({"audio": "a.wav", "instruction": "q", "output": )"), "malformed JSON");
  expect_contains(record_error(R"(["a.wav"])"), "JSON object");
  expect_contains(record_error(R"({"audio": "a.wav", "output": "o"})"), "missing 'instruction'");
  expect_contains(record_error(R"({"audio": "a.wav", "instruction": "q"})"), "missing 'output'");
  expect_contains(record_error(R"({"audio": "a.wav", "instruction": "q", "output": "  "})"),
                  "empty 'output'");
  expect_contains(record_error(R"({"audio": 3, "instruction": "q", "output": "o"})"),
                  "'audio' must be a string");
  expect_contains(record_error(R"({"instruction": "q", "output": "o"})"), "require_audio");
  expect_contains(record_error(R"({"audio": "a.wav", "instruction": "q", "output": "o", "start": -1})"),
                  "'start' must be");
  expect_contains(
      record_error(R"({"audio": "a.wav", "instruction": "q", "output": "o", "start": 2, "end": 1})"),
      "'end'");
  expect_contains(record_error(R"({"audio": "a.wav", "instruction": "q", "output": "o", "end": "x"})"),
                  "number of seconds");
}

TEST(ManifestReader, StreamsLinesWithOffsetsAndSkipsBlankOnes) {
  test::TempDir dir;
  // CRLF, a blank line, and no line break at the end.
  const std::string text = "{\"a\":1}\r\n\n  \n{\"b\":2}\n{\"c\":3}";
  test::write_bytes(dir / "m.jsonl", text);
  ManifestReader reader(dir / "m.jsonl");
  ManifestReader::Line line;
  ASSERT_TRUE(reader.next(line));
  EXPECT_EQ(line.text, "{\"a\":1}");
  EXPECT_EQ(line.number, 1);
  EXPECT_EQ(line.offset, 0);
  ASSERT_TRUE(reader.next(line));
  EXPECT_EQ(line.text, "{\"b\":2}");
  EXPECT_EQ(line.number, 4);
  EXPECT_EQ(line.offset, static_cast<int64_t>(text.find("{\"b\"")));
  const int64_t c_offset = reader.offset();
  const int64_t c_line = reader.next_line_number();
  ASSERT_TRUE(reader.next(line));
  EXPECT_EQ(line.text, "{\"c\":3}");
  EXPECT_EQ(reader.offset(), static_cast<int64_t>(text.size()));
  EXPECT_FALSE(reader.next(line));

  // Seeking back to a remembered position reads the same line again.
  reader.seek(c_offset, c_line);
  ASSERT_TRUE(reader.next(line));
  EXPECT_EQ(line.text, "{\"c\":3}");
  EXPECT_EQ(line.number, 5);
  reader.rewind();
  ASSERT_TRUE(reader.next(line));
  EXPECT_EQ(line.number, 1);
  expect_contains(test::error_message<DataError>([&] { reader.seek(1000, 9); }),
                  "cannot continue at byte 1000");

  EXPECT_EQ(count_records(dir / "m.jsonl"), 3);
  expect_contains(test::error_message<DataError>([&] { count_records(dir / "missing.jsonl"); }),
                  "missing.jsonl' does not exist");
}

TEST(ManifestConfig, DataSectionReadsDefaultsAndRejectsUnknownKeysAndBadWeights) {
  auto config =
      config::parse<DataConfig>("train:\n  - {path: a.jsonl, weight: 2}\n  - path: b.jsonl\n", "stage.yaml");
  ASSERT_EQ(config.train.size(), 2u);
  EXPECT_EQ(config.train[0].path, "a.jsonl");
  EXPECT_DOUBLE_EQ(config.train[0].weight, 2.0);
  EXPECT_DOUBLE_EQ(config.train[1].weight, 1.0);
  EXPECT_TRUE(config.eval.empty());
  EXPECT_EQ(config.shuffle_buffer, 2048);
  EXPECT_EQ(config.bucket_batches, 8);
  EXPECT_TRUE(config.require_audio);
  // Round trip through YAML.
  auto again = config::parse<DataConfig>(config::to_yaml(config));
  EXPECT_EQ(again.train[1].path, "b.jsonl");

  expect_contains(test::error_message<ConfigError>([] {
                    config::parse<DataConfig>("train: [{path: a.jsonl}]\nshufle_buffer: 3\n", "stage.yaml");
                  }),
                  "shufle_buffer");
  expect_contains(test::error_message<ConfigError>([] {
                    config::parse<DataConfig>("train: [{path: a.jsonl, weight: 0}]\n", "stage.yaml");
                  }),
                  "weight");
  expect_contains(test::error_message<ConfigError>([] {
                    config::parse<DataConfig>("train: [{path: a.jsonl, wieght: 2}]\n", "stage.yaml");
                  }),
                  "wieght");
  expect_contains(test::error_message<ConfigError>(
                      [] { config::parse<DataConfig>("eval: [{path: a.jsonl}]\n", "stage.yaml"); }),
                  "train");
}

}  // namespace
}  // namespace pal::data
