#include "pal/infer/manifest.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "infer_test_util.h"
#include "pal/core/atomic_file.h"

namespace pal::infer {
namespace {

using nlohmann::json;

std::vector<json> read_lines(const std::filesystem::path& file) {
  std::vector<json> out;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

struct Fixture {
  test::TempDir dir;
  std::filesystem::path manifest = dir / "in.jsonl", output = dir / "out.jsonl";
  Fixture() {
    std::filesystem::create_directories(dir / "clips");
    test::write_clip(dir / "clips" / "a.wav", 1.0, 300);
    test::write_clip(dir / "clips" / "b.wav", 2.0, 700);
    test::write_bytes(manifest,
                      R"({"audio": "clips/a.wav", "question": "What is it?", "id": "a1", "output": "a tone"})"
                      "\n"
                      R"({"audio_id": "clips/b.wav", "instruction": "Describe it."})"
                      "\n\n"
                      R"({"audio": "clips/missing.wav", "question": "And this?"})"
                      "\n" +
                          std::string(R"({"audio": ")") + (dir / "clips" / "b.wav").string() +
                          R"(", "question": "The start?", "start": 0.5, "end": 1.0})"
                          "\n");
  }
};

ManifestOptions options(const Fixture& f, int64_t batch) {
  ManifestOptions o;
  o.manifest = f.manifest;
  o.output = f.output;
  o.batch_size = batch;
  o.generation.max_new_tokens = 4;
  return o;
}

TEST(AnswerManifest, AnswersInBatchesAndResumes) {
  Fixture f;
  PipelineOptions po;
  po.threads = 2;
  Pipeline pipeline = Pipeline::load(test::tiny_model(), po);
  std::vector<ManifestProgress> reports;
  ManifestProgress p =
      answer_manifest(pipeline, options(f, 2), [&](const ManifestProgress& r) { reports.push_back(r); });
  EXPECT_EQ(p.lines, 4);
  EXPECT_EQ(p.answered, 3);
  EXPECT_EQ(p.failed, 1);
  EXPECT_EQ(p.skipped, 0);
  EXPECT_EQ(reports.size(), 2u);  // one per batch
  std::vector<json> out = read_lines(f.output);
  ASSERT_EQ(out.size(), 4u);
  std::map<int64_t, json> by_line;
  for (const auto& r : out) by_line[r["line"].get<int64_t>()] = r;
  EXPECT_EQ(by_line[1]["id"], "a1");
  EXPECT_EQ(by_line[1]["output"], "a tone");  // input fields are kept (a reference answer, for pal-eval)
  EXPECT_TRUE(by_line[1]["answer"].is_string());
  EXPECT_TRUE(by_line[1].contains("finish_reason"));
  EXPECT_NEAR(by_line[2]["audio_seconds"].get<double>(), 2.0, 0.01);
  EXPECT_NE(by_line[4]["error"].get<std::string>().find("missing.wav"), std::string::npos);
  EXPECT_NEAR(by_line[5]["audio_seconds"].get<double>(), 0.5, 0.01);  // the start/end window
  // The answers equal ask()'s.
  GenerationOptions g;
  g.max_new_tokens = 4;
  EXPECT_EQ(by_line[1]["answer"], pipeline.ask(f.dir / "clips" / "a.wav", "What is it?", g).text);

  // A rerun skips what is answered and retries the failed line (still failing, and its
  // old error record is replaced, not duplicated).
  p = answer_manifest(pipeline, options(f, 2));
  EXPECT_EQ(p.skipped, 3);
  EXPECT_EQ(p.answered, 0);
  EXPECT_EQ(p.failed, 1);
  EXPECT_EQ(read_lines(f.output).size(), 4u);
  // Once the clip exists, the rerun answers it.
  test::write_clip(f.dir / "clips" / "missing.wav", 1.0);
  p = answer_manifest(pipeline, options(f, 2));
  EXPECT_EQ(p.answered, 1);
  EXPECT_EQ(p.failed, 0);
  out = read_lines(f.output);
  ASSERT_EQ(out.size(), 4u);
  for (const auto& r : out) EXPECT_FALSE(r.contains("error")) << r.dump();
}

TEST(AnswerManifest, ATornLastLineFromACrashIsRedone) {
  Fixture f;
  PipelineOptions po;
  po.threads = 2;
  Pipeline pipeline = Pipeline::load(test::tiny_model(), po);
  answer_manifest(pipeline, options(f, 8));
  const std::string full = read_file(f.output);
  // Keep the first record and half of the second, as a crash mid-write would.
  const size_t first = full.find('\n') + 1;
  write_file_atomic(f.output, full.substr(0, first + (full.find('\n', first) - first) / 2));
  ManifestProgress p = answer_manifest(pipeline, options(f, 8));
  EXPECT_EQ(p.skipped, 1);
  EXPECT_EQ(p.answered + p.failed, 3);
  EXPECT_EQ(read_lines(f.output).size(), 4u);
}

TEST(AnswerManifest, BadLinesAreErrorsNamingTheLine) {
  Fixture f;
  PipelineOptions po;
  po.threads = 2;
  Pipeline pipeline = Pipeline::load(test::tiny_model(), po);
  struct Case {
    std::string text, message;
  };
  for (const Case& c :
       std::vector<Case>{{"{\"audio\": \"a.wav\"", "in.jsonl:2: not valid JSON"},
                         {"[1]", "in.jsonl:2: expected a JSON object, got array"},
                         {R"({"question": "q"})", "in.jsonl:2: no \"audio\""},
                         {R"({"audio": "a.wav"})", "in.jsonl:2: no \"question\""},
                         {R"({"audio": "a.wav", "question": " "})", "in.jsonl:2: \"question\" is empty"},
                         {R"({"audio": 3, "question": "q"})", "in.jsonl:2: \"audio\" must be"},
                         {R"({"audio": "a.wav", "question": "q", "start": "1"})",
                          "in.jsonl:2: \"start\" must be a number"}}) {
    SCOPED_TRACE(c.text);
    test::write_bytes(f.manifest, R"({"audio": "clips/a.wav", "question": "q"})"
                                  "\n" +
                                      c.text + "\n");
    const std::string msg = test::error_message<DataError>([&] { answer_manifest(pipeline, options(f, 2)); });
    EXPECT_NE(msg.find(c.message), std::string::npos) << msg;
    EXPECT_FALSE(std::filesystem::exists(f.output));  // nothing answered before the check
  }
  std::string msg = test::error_message<IoError>([&] {
    ManifestOptions o = options(f, 2);
    o.manifest = f.dir / "nope.jsonl";
    answer_manifest(pipeline, o);
  });
  EXPECT_NE(msg.find("nope.jsonl: cannot read the manifest (no such file)"), std::string::npos) << msg;
  test::write_bytes(f.manifest, R"({"audio": "clips/a.wav", "question": "q"})"
                                "\n");
  test::write_bytes(f.output, "not json\n");
  msg = test::error_message<IoError>([&] { answer_manifest(pipeline, options(f, 2)); });
  EXPECT_NE(msg.find("out.jsonl: a line is not JSON"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal::infer
