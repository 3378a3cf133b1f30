// End-to-end: the real pal-analyze binary on a tiny model folder (Whisper + AST encoders,
// a 4-layer decoder with the Llama 3 test tokenizer) whose decoder is arranged so that
// only layer 2 reads the audio (analyze_test_util.h) and whose projector turns any clip
// into class-1 audio tokens: the reports must point at layer 2.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../infer/infer_test_util.h"
#include "analyze_test_util.h"
#include "pal/core/atomic_file.h"
#include "pal/text/tokenizer.h"

namespace pal {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::string kPalAnalyze = PAL_ANALYZE_EXE;

std::string quote(const fs::path& p) {
  return "'" + p.string() + "'";
}

struct ArrangedModel {
  fs::path folder;
  std::string answer;  // what the model answers when it reads the audio
};

// Writes the arranged model folder into `dir`.
ArrangedModel write_arranged_model(const fs::path& dir) {
  const fs::path llm = dir / "llm";
  fs::create_directories(llm);
  const fs::path chat = test::fixtures() / "llm" / "tiny_chat";
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(chat / f, llm / f);
  test::write_bytes(llm / "config.json", R"({"model_type": "llama", "vocab_size": 1500, "hidden_size": 64,
    "intermediate_size": 16, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "max_position_embeddings": 1024, "rms_norm_eps": 1e-05, "tie_word_embeddings": false,
    "bos_token_id": 0, "eos_token_id": 6})");
  const auto f = test::fixtures();
  const std::string yaml = "llm: llm\nllm_weights: random\nencoders:\n  - {type: whisper, checkpoint: " +
                           (f / "encoders" / "tiny_whisper").string() +
                           "}\n  - {type: ast, checkpoint: " + (f / "encoders" / "tiny_ast").string() +
                           "}\nensemble: {width: 32, frames_per_second: 10}\nprojector: {type: mlp}\n"
                           "fusion: {mode: probe, start_layer: 1}\n";
  torch::manual_seed(0);
  models::PalModel model(config::parse<models::PalModelConfig>(yaml, "model.yaml"), dir);
  // Two answer words of one token each; the higher id is class 1, which every clip reads as.
  std::vector<std::pair<int64_t, std::string>> words;
  for (const char* w : {"dog", "cat", "yes", "no", "bird", "car", "a", "b"}) {
    const auto ids = model->tokenizer()->encode(w, false);
    if (ids.size() == 1 && (words.empty() || words.back().first != ids[0])) words.emplace_back(ids[0], w);
    if (words.size() == 2) break;
  }
  EXPECT_EQ(words.size(), 2u);
  std::sort(words.begin(), words.end());
  test::Arrangement a{2, {words[0].first, words[1].first}, model->prompts()->stop_ids().front()};
  test::arrange(*model->decoder->llm, a);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters()) {
      if (p.key() == "projector.fc2.weight") p.value().zero_();
      if (p.key() == "projector.fc2.bias") {
        p.value().zero_();
        p.value()[test::kAudioFlag] = 1.0;
        p.value()[test::kClassDim + 1] = 1.0;
      }
    }
  }
  models::save_pal_model(*model, dir / "model", /*trainable_only=*/false);
  return {dir / "model", words[1].second};
}

const ArrangedModel& arranged_model() {
  static test::TempDir dir;
  static const ArrangedModel model = write_arranged_model(dir.path());
  return model;
}

// A manifest of `n` clips whose reference answer is `answer`.
fs::path write_manifest(const fs::path& dir, const std::string& answer, int n) {
  std::string lines;
  for (int i = 0; i < n; ++i) {
    const std::string clip = "clip" + std::to_string(i) + ".wav";
    test::write_clip(dir / clip, 0.6 + 0.3 * i, 300 + 150 * i);
    lines +=
        json({{"audio", clip}, {"instruction", "What is it?"}, {"output", answer}, {"task", "cla"}}).dump() +
        "\n";
  }
  test::write_bytes(dir / "test.jsonl", lines);
  return dir / "test.jsonl";
}

std::string analyze(const std::string& args) {
  return kPalAnalyze + " " + args + " --threads 2";
}

TEST(E2EPalAnalyze, ReportsPointAtTheLayerThatReadsAudio) {
  const ArrangedModel& model = arranged_model();
  test::TempDir dir;
  const fs::path manifest = write_manifest(dir.path(), model.answer, 3);
  const fs::path out = dir / "report";
  auto r =
      test::run_command(analyze("all --model " + quote(model.folder) + " --manifest " + quote(manifest) +
                                " --output " + quote(out) + " --batch-size 2 --ranges 2 --max-new-tokens 4"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("3 examples (0 skipped)"), std::string::npos) << r.output;
  const json j = json::parse(read_file(out / "analysis.json"));
  EXPECT_EQ(j["examples"], 3);
  EXPECT_EQ(j["layers"], 4);
  EXPECT_EQ(j["heads"], 4);
  EXPECT_EQ(j["fusion"]["mode"], "probe");
  EXPECT_EQ(j["encoders"], json({"whisper", "ast"}));

  // Attention: heads 0 and 1 of layer 2 read the audio, nothing else does.
  for (const char* group : {"question", "answer"}) {
    const json& share = j["attention"][group]["share"];
    ASSERT_EQ(share.size(), 4u);
    for (int l = 0; l < 4; ++l)
      for (int h = 0; h < 4; ++h) {
        const double s = share[l][h].get<double>();
        if (l == 2 && h < 2)
          EXPECT_GT(s, 0.99) << group << " layer " << l << " head " << h;
        else
          EXPECT_LT(s, 0.01) << group << " layer " << l << " head " << h;
      }
  }
  // Logit lens: the answer word becomes the top token at layer 2's output; before it the
  // two answer words tie and the lower id wins.
  const json& first = j["logit_lens"]["first_token"];
  ASSERT_EQ(first.size(), 5u);
  EXPECT_EQ(first[0]["tap"], "embeddings");
  for (int i = 0; i <= 2; ++i) EXPECT_EQ(first[i]["rank"].get<double>(), 2.0) << first[i];
  for (int i = 3; i <= 4; ++i) EXPECT_EQ(first[i]["rank"].get<double>(), 1.0) << first[i];
  EXPECT_GT(first[4]["probability"].get<double>(), 0.5);
  // Ablations: withholding audio from layer 2 (alone or in a range) loses every answer;
  // other layers and either encoder alone do not matter.
  const json& ablation = j["ablation"];
  EXPECT_EQ(ablation["baseline"].get<double>(), 1.0);
  int encoders = 0;
  for (const json& c : ablation["conditions"]) {
    SCOPED_TRACE(c.dump());
    EXPECT_EQ(c["examples"], 3);
    if (c["kind"] == "encoder") {
      ++encoders;
      EXPECT_EQ(c["accuracy"].get<double>(), 1.0);
    } else if (c["kind"] == "layers") {
      const bool hits = c["range"][0].get<int>() <= 2 && c["range"][1].get<int>() >= 2;
      EXPECT_EQ(c["accuracy"].get<double>(), hits ? 0.0 : 1.0);
    }
  }
  EXPECT_EQ(encoders, 2);

  const std::string md = read_file(out / "analysis.md");
  for (const char* heading :
       {"## Attention to audio", "## Logit lens", "## Ablations",
        "Most audio-reading head (question + answer): layer 2, head 0",
        "The first answer token becomes the top prediction for most examples after layer 2",
        "| without encoder 1 (ast) | 1.000 | 3/3 | +0.000 |"})
    EXPECT_NE(md.find(heading), std::string::npos) << heading << "\n" << md;
  // Plots when this machine's Python has matplotlib; the Markdown says which.
  if (test::run_command("/usr/bin/python3 -c 'import matplotlib'").exit_code == 0) {
    for (const char* png :
         {"analysis_attention_question.png", "analysis_logit_lens.png", "analysis_ablation.png"}) {
      EXPECT_TRUE(fs::is_regular_file(out / png)) << png << "\n" << r.output;
      EXPECT_NE(md.find(std::string("](") + png + ")"), std::string::npos) << png;
    }
  } else {
    EXPECT_NE(md.find("No plots: matplotlib is not installed"), std::string::npos) << md;
  }
}

TEST(E2EPalAnalyze, EachSubcommandWritesItsOwnReport) {
  const ArrangedModel& model = arranged_model();
  test::TempDir dir;
  const fs::path manifest = write_manifest(dir.path(), model.answer, 2);
  const std::string common = " --model " + quote(model.folder) + " --manifest " + quote(manifest) +
                             " --output " + quote(dir / "out") + " --no-plots";
  for (const auto& [command, name, section] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"attention", "attention", "attention"},
           {"logit-lens", "logit_lens", "logit_lens"},
           {"ablate", "ablation", "ablation"}}) {
    auto r = test::run_command(analyze(command + common));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const json j = json::parse(read_file(dir / "out" / (name + ".json")));
    EXPECT_TRUE(j.contains(section)) << command;
    for (const char* other : {"attention", "logit_lens", "ablation"}) {
      if (other != section) {
        EXPECT_FALSE(j.contains(other)) << command << " " << other;
      }
    }
    EXPECT_NE(read_file(dir / "out" / (name + ".md")).find("No plots: plotting was turned off"),
              std::string::npos);
  }
  // --tasks: only the lines of those tasks (these are all "cla").
  auto none = test::run_command(analyze("attention" + common + " --tasks voice,caption"));
  EXPECT_EQ(none.exit_code, 1) << none.output;
  EXPECT_NE(none.output.find("no example could be analysed"), std::string::npos) << none.output;
  // --limit: the first example only.
  auto r = test::run_command(analyze("attention" + common + " --limit 1 --tasks cla"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json::parse(read_file(dir / "out" / "attention.json"))["examples"], 1);
}

TEST(E2EPalAnalyze, MissingMatplotlibStillWritesJsonAndMarkdown) {
  const ArrangedModel& model = arranged_model();
  test::TempDir dir;
  const fs::path manifest = write_manifest(dir.path(), model.answer, 1);
  // An interpreter without matplotlib: the script's exit code 3.
  test::write_bytes(dir / "python", "#!/bin/sh\necho \"No module named 'matplotlib'\" >&2\nexit 3\n");
  fs::permissions(dir / "python", fs::perms::owner_all);
  auto r = test::run_command(analyze("attention --model " + quote(model.folder) + " --manifest " +
                                     quote(manifest) + " --output " + quote(dir / "out") + " --python " +
                                     quote(dir / "python")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("no plots: matplotlib is not installed"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::is_regular_file(dir / "out" / "attention.json"));
  EXPECT_NE(read_file(dir / "out" / "attention.md").find("No plots: matplotlib is not installed"),
            std::string::npos);
}

TEST(E2EPalAnalyze, BadInputExitsWithOneOrTwoAndNamesIt) {
  const ArrangedModel& model = arranged_model();
  test::TempDir dir;
  const fs::path manifest = write_manifest(dir.path(), model.answer, 1);
  const std::string out = " --output " + quote(dir / "out");
  // No such model folder.
  auto r = test::run_command(
      analyze("attention --model " + quote(dir / "absent") + " --manifest " + quote(manifest) + out));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("absent: no such folder"), std::string::npos) << r.output;
  // A malformed manifest line, named by file and line.
  test::write_bytes(dir / "bad.jsonl",
                    read_file(manifest) + "{\"audio\": \"clip0.wav\", \"instruction\": 3}\n");
  r = test::run_command(
      analyze("logit-lens --model " + quote(model.folder) + " --manifest " + quote(dir / "bad.jsonl") + out));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("bad.jsonl:2"), std::string::npos) << r.output;
  // A missing manifest.
  r = test::run_command(
      analyze("attention --model " + quote(model.folder) + " --manifest " + quote(dir / "none.jsonl") + out));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("none.jsonl"), std::string::npos) << r.output;
  // A layer range past the decoder's 4 layers.
  r = test::run_command(analyze("ablate --model " + quote(model.folder) + " --manifest " + quote(manifest) +
                                out + " --ranges 1-9"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("layer range 1-9 is out of bounds: the decoder has 4 layers"), std::string::npos)
      << r.output;
  // Usage: an unknown subcommand, a malformed range, a missing option.
  r = test::run_command(analyze("heatmap --model " + quote(model.folder)));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = test::run_command(analyze("ablate --model " + quote(model.folder) + " --manifest " + quote(manifest) +
                                out + " --ranges 2-x"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("'2-x' is not a layer or a range"), std::string::npos) << r.output;
  r = test::run_command(analyze("attention --model " + quote(model.folder) + out));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--manifest"), std::string::npos) << r.output;
  // A clip that cannot be read is skipped and counted, the rest analysed.
  test::write_bytes(
      dir / "skip.jsonl",
      read_file(manifest) + R"({"audio": "gone.wav", "instruction": "What?", "output": "x"})" + "\n");
  r = test::run_command(analyze("attention --no-plots --model " + quote(model.folder) + " --manifest " +
                                quote(dir / "skip.jsonl") + out));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(read_file(dir / "out" / "attention.json"));
  EXPECT_EQ(j["skipped"], 1);
  EXPECT_NE(j["skip_reasons"][0].get<std::string>().find("skip.jsonl:2"), std::string::npos) << j.dump();
}

}  // namespace
}  // namespace pal
