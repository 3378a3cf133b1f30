#include "pal/text/tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "pal/core/error.h"
#include "test_util.h"

namespace pal::text {
namespace {

using nlohmann::json;

std::filesystem::path tokenizer_fixture(const std::string& name) {
  return test::fixtures() / "tokenizer" / name;
}

// tests/fixtures/tokenizer/expected.json, written by scripts/make_parity_fixtures.py.
const json& expected() {
  static const json j = [] {
    std::ifstream in(tokenizer_fixture("expected.json"));
    return json::parse(in);
  }();
  return j;
}

std::string read_text(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string show(const std::vector<int64_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

bool is_valid_utf8(const std::string& s) {
  return utf8_lossy(s) == s;
}

// libsentencepiece is loaded with RTLD_DEEPBIND (src/text/sentencepiece_module.cpp), which
// AddressSanitizer does not support: without it, it cannot run in a process with LibTorch.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSentencepiece = false;
#define SKIP_WITHOUT_SENTENCEPIECE() GTEST_SKIP() << "sentencepiece needs RTLD_DEEPBIND, which ASan lacks"
const std::vector<std::string> kTokenizers = {"llama3", "qwen2", "gpt2"};
#else
constexpr bool kSentencepiece = true;
#define SKIP_WITHOUT_SENTENCEPIECE()
const std::vector<std::string> kTokenizers = {"llama3", "qwen2", "gpt2", "sentencepiece"};
#endif

// Every corpus line, with and without the post-processor's special tokens; reports the
// first mismatch only (the rest usually follow from it).
void expect_ids_match(const std::string& name) {
  SCOPED_TRACE(name);
  auto tok = load_tokenizer(tokenizer_fixture(name));
  const json& e = expected()["tokenizers"][name];
  const json& lines = expected()["lines"];
  EXPECT_EQ(tok->vocab_size(), e["vocab_size"].get<int64_t>());
  for (bool add_special : {true, false}) {
    const json& ids = e[add_special ? "ids" : "ids_no_special"];
    for (size_t i = 0; i < lines.size(); ++i) {
      const std::string line = lines[i].get<std::string>();
      std::vector<int64_t> want = ids[i].get<std::vector<int64_t>>();
      std::vector<int64_t> got = tok->encode(line, add_special);
      if (got != want) {
        ADD_FAILURE() << "line " << i << " (add_special " << add_special << "): " << json(line).dump()
                      << "\n  expected " << show(want) << "\n  actual   " << show(got);
        break;
      }
    }
  }
}

TEST(ParityTokenizer, Llama3IdsMatchHfTokenizers) {
  expect_ids_match("llama3");
}
TEST(ParityTokenizer, Qwen2IdsMatchHfTokenizers) {
  expect_ids_match("qwen2");
}
TEST(ParityTokenizer, Gpt2IdsMatchHfTokenizers) {
  expect_ids_match("gpt2");
}
TEST(ParityTokenizer, SentencepieceIdsMatchSentencepiece) {
  expect_ids_match("sentencepiece");
}

TEST(ParityTokenizer, DecodeMatchesReference) {
  const json& lines = expected()["lines"];
  for (const std::string& name : kTokenizers) {
    SCOPED_TRACE(name);
    auto tok = load_tokenizer(tokenizer_fixture(name));
    const json& e = expected()["tokenizers"][name];
    size_t round_trips = 0;
    for (size_t i = 0; i < lines.size(); ++i) {
      std::vector<int64_t> ids = e["ids"][i].get<std::vector<int64_t>>();
      if (name == "sentencepiece") ids = e["ids_no_special"][i].get<std::vector<int64_t>>();
      for (bool skip : {false, true}) {
        const json& want = e[skip ? "decode_skip_special" : "decode"][i];
        if (want.is_null()) continue;
        std::string got = tok->decode(ids, skip);
        ASSERT_EQ(got, want.get<std::string>()) << "line " << i << ", skip_special " << skip;
      }
      // Where the reference round-trips, so do we.
      if (e["decode_skip_special"][i] == lines[i]) {
        EXPECT_EQ(tok->decode(tok->encode(lines[i].get<std::string>(), false), true),
                  lines[i].get<std::string>());
        ++round_trips;
      }
    }
    EXPECT_GT(round_trips, lines.size() / 2);
  }
}

TEST(ParityTokenizer, AudioPlaceholderIsAddedAsTheNextFreeId) {
  const json& lines = expected()["lines"];
  for (std::string name : {"llama3", "qwen2", "gpt2"}) {
    SCOPED_TRACE(name);
    auto tok = load_tokenizer(tokenizer_fixture(name));
    const json& e = expected()["tokenizers"][name];
    int64_t size = tok->vocab_size();
    EXPECT_FALSE(tok->token_id("<|audio|>"));
    EXPECT_GT(tok->encode("<|audio|>", false).size(), 1u);  // plain text before it is added
    int64_t id = tok->add_special_token("<|audio|>");
    EXPECT_EQ(id, size);
    EXPECT_EQ(id, e["audio_id"].get<int64_t>());
    EXPECT_EQ(tok->add_special_token("<|audio|>"), id);  // adding again keeps the id
    EXPECT_EQ(tok->vocab_size(), size + 1);
    EXPECT_TRUE(tok->is_special(id));
    EXPECT_EQ(tok->token(id), "<|audio|>");
    EXPECT_EQ(tok->decode({id}), "<|audio|>");
    EXPECT_EQ(tok->decode({id}, true), "");
    for (const auto& [index, ids] : e["ids_with_audio"].items()) {
      const std::string line = lines[std::stoul(index)].get<std::string>();
      EXPECT_EQ(tok->encode(line), ids.get<std::vector<int64_t>>())
          << "line " << index << ": " << json(line).dump();
    }
  }
  if (!kSentencepiece) return;
  // sentencepiece: appended after the model's pieces as well.
  auto sp = load_tokenizer(tokenizer_fixture("sentencepiece"));
  int64_t id = sp->add_special_token("<|audio|>");
  EXPECT_EQ(id, 1000);
  EXPECT_EQ(sp->encode("a<|audio|>b", false),
            (std::vector<int64_t>{sp->encode("a", false)[0], 1000, sp->encode("b", false)[0]}));
}

// Generation streams ids one at a time: the pieces are always whole UTF-8 characters and
// add up to the full decode.
TEST(ParityTokenizer, StreamingDecodeEqualsFullDecode) {
  const json& lines = expected()["lines"];
  for (const std::string& name : kTokenizers) {
    SCOPED_TRACE(name);
    auto tok = load_tokenizer(tokenizer_fixture(name));
    for (bool skip : {true, false}) {
      for (size_t i = 0; i < lines.size(); ++i) {
        std::vector<int64_t> ids = tok->encode(lines[i].get<std::string>(), true);
        TokenStreamDecoder stream(*tok, skip);
        std::string text;
        for (int64_t id : ids) {
          std::string piece = stream.push(id);
          ASSERT_TRUE(is_valid_utf8(piece)) << "line " << i << ": partial UTF-8 " << json(piece).dump();
          text += piece;
        }
        text += stream.finish();
        ASSERT_EQ(text, tok->decode(ids, skip)) << "line " << i << ", skip_special " << skip;
      }
    }
  }
}

TEST(Tokenizer, StreamHoldsBackSplitCharactersAndFlushesInvalidBytes) {
  auto tok = load_tokenizer(tokenizer_fixture("llama3"));
  // Byte tokens of "é" (C3 A9) arrive one at a time.
  int64_t c3 = *tok->token_id("Ã"), a9 = *tok->token_id("©"), e2 = *tok->token_id("â");
  TokenStreamDecoder stream(*tok);
  EXPECT_EQ(stream.push(c3), "");
  EXPECT_EQ(stream.push(a9), "\xC3\xA9");
  EXPECT_EQ(stream.push(e2), "");
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");  // a truncated sequence becomes U+FFFD
  EXPECT_EQ(tok->decode({e2, c3, a9}), "\xEF\xBF\xBD\xC3\xA9");
}

TEST(Tokenizer, Utf8LossyReplacesMaximalInvalidSubparts) {
  EXPECT_EQ(utf8_lossy("abc"), "abc");
  EXPECT_EQ(utf8_lossy("a\xE2\x82"
                       "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(utf8_lossy("\xF0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");
}

TEST(Tokenizer, SpecialTokensAndLookups) {
  auto llama = load_tokenizer(tokenizer_fixture("llama3"));
  ASSERT_TRUE(llama->bos_id() && llama->eos_id());
  EXPECT_EQ(*llama->bos_id(), *llama->token_id("<|begin_of_text|>"));
  EXPECT_EQ(*llama->eos_id(), *llama->token_id("<|eot_id|>"));
  EXPECT_TRUE(llama->is_special(*llama->bos_id()));
  EXPECT_FALSE(llama->is_special(*llama->token_id("a")));
  EXPECT_EQ(llama->encode("Hi").front(), *llama->bos_id());
  EXPECT_EQ(llama->encode("<|eot_id|>", false), std::vector<int64_t>{*llama->eos_id()});
  EXPECT_EQ(llama->token(*llama->token_id("Ġthe")), "Ġthe");
  EXPECT_THROW(llama->token(llama->vocab_size()), TokenizerError);
  EXPECT_EQ(llama->decode({-1, llama->vocab_size() + 5}), "");  // unknown ids are skipped
  EXPECT_NE(llama->describe().find("tokenizer.json"), std::string::npos);

  auto qwen = load_tokenizer(tokenizer_fixture("qwen2"));
  EXPECT_FALSE(qwen->bos_id());
  EXPECT_EQ(*qwen->eos_id(), *qwen->token_id("<|im_end|>"));
  EXPECT_EQ(qwen->encode("x", true), qwen->encode("x", false));

  if (!kSentencepiece) return;
  auto sp = load_tokenizer(tokenizer_fixture("sentencepiece") / "tokenizer.model");
  EXPECT_EQ(sp->bos_id(), 1);
  EXPECT_EQ(sp->eos_id(), 2);
  EXPECT_TRUE(sp->is_special(1));
  EXPECT_EQ(sp->encode("<s>", false), std::vector<int64_t>{1});
  EXPECT_EQ(sp->decode({1, 2}, false), "<s></s>");
  EXPECT_FALSE(sp->token_id("no such piece"));
}

TEST(Tokenizer, RejectsTextThatIsNotUtf8) {
  auto tok = load_tokenizer(tokenizer_fixture("qwen2"));
  std::string msg = test::error_message<TokenizerError>([&] { tok->encode("ab\xFF"); });
  EXPECT_NE(msg.find("UTF-8"), std::string::npos) << msg;
}

// A copy of a fixture's tokenizer.json with one change.
std::filesystem::path write_variant(const test::TempDir& dir, const std::function<void(json&)>& change) {
  json j = json::parse(read_text(tokenizer_fixture("llama3") / "tokenizer.json"));
  change(j);
  std::filesystem::path file = dir / "tokenizer.json";
  test::write_bytes(file, j.dump());
  return file;
}

TEST(Tokenizer, TruncatedJsonNamesTheFile) {
  test::TempDir dir;
  std::string text = read_text(tokenizer_fixture("llama3") / "tokenizer.json");
  test::write_bytes(dir / "tokenizer.json", text.substr(0, text.size() / 2));
  std::string msg = test::error_message<TokenizerError>([&] { load_tokenizer(dir.path()); });
  EXPECT_NE(msg.find((dir / "tokenizer.json").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("JSON"), std::string::npos) << msg;
}

TEST(Tokenizer, UnknownModelTypeNamesTheFileAndKey) {
  test::TempDir dir;
  auto file = write_variant(dir, [](json& j) { j["model"]["type"] = "WordPiece"; });
  std::string msg = test::error_message<TokenizerError>([&] { load_tokenizer(file); });
  EXPECT_NE(msg.find(file.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.type"), std::string::npos) << msg;
  EXPECT_NE(msg.find("WordPiece"), std::string::npos) << msg;
}

TEST(Tokenizer, MissingModelNamesTheFile) {
  test::TempDir dir;
  auto file = write_variant(dir, [](json& j) { j.erase("model"); });
  std::string msg = test::error_message<TokenizerError>([&] { load_tokenizer(file); });
  EXPECT_NE(msg.find(file.string() + ": model"), std::string::npos) << msg;
}

TEST(Tokenizer, UnknownPreTokenizerPatternNamesTheFileAndPattern) {
  test::TempDir dir;
  auto file = write_variant(
      dir, [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = R"(\p{L}+|\s+)"; });
  std::string msg = test::error_message<TokenizerError>([&] { load_tokenizer(file); });
  EXPECT_NE(msg.find(file.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find(R"(\p{L}+|\s+)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("pre_tokenizer.pretokenizers[0].pattern"), std::string::npos) << msg;
}

TEST(Tokenizer, UnsupportedComponentsNameTheKey) {
  test::TempDir dir;
  auto file = write_variant(dir, [](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; });
  std::string msg = test::error_message<TokenizerError>([&] { load_tokenizer(file); });
  EXPECT_NE(msg.find(file.string() + ": normalizer.type"), std::string::npos) << msg;
  file = write_variant(dir, [](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; });
  msg = test::error_message<TokenizerError>([&] { load_tokenizer(file); });
  EXPECT_NE(msg.find("pre_tokenizer.type"), std::string::npos) << msg;
}

TEST(Tokenizer, MergeOfUnknownTokensNamesTheMerge) {
  test::TempDir dir;
  auto file = write_variant(dir, [](json& j) {
    j["model"]["merges"][3] = json::array({"nosuchtoken", "x"});
  });
  std::string msg = test::error_message<TokenizerError>([&] { load_tokenizer(file); });
  EXPECT_NE(msg.find(file.string() + ": model.merges[3]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nosuchtoken"), std::string::npos) << msg;
}

TEST(Tokenizer, MissingFilesNameThePath) {
  test::TempDir dir;
  std::string msg = test::error_message<TokenizerError>([&] { load_tokenizer(dir / "nope.json"); });
  EXPECT_NE(msg.find((dir / "nope.json").string()), std::string::npos) << msg;
  msg = test::error_message<TokenizerError>([&] { load_tokenizer(dir.path()); });
  EXPECT_NE(msg.find(dir.path().string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokenizer.model"), std::string::npos) << msg;
}

TEST(Tokenizer, CorruptSentencepieceModelNamesTheFile) {
  SKIP_WITHOUT_SENTENCEPIECE();
  test::TempDir dir;
  std::string model = read_text(tokenizer_fixture("sentencepiece") / "tokenizer.model");
  for (const std::string& bytes :
       {model.substr(0, model.size() / 3), std::string("not a model \x01\x02\xff", 16), std::string()}) {
    test::write_bytes(dir / "tokenizer.model", bytes);
    std::string msg = test::error_message<TokenizerError>([&] { load_tokenizer(dir.path()); });
    EXPECT_NE(msg.find((dir / "tokenizer.model").string()), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace pal::text
