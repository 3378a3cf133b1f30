// HF tokenizer.json with a byte-level BPE model: GPT-2, Llama 3, Qwen2.
//
// The pipeline of HF tokenizers' Tokenizer::encode, restricted to the components these
// models use (anything else is rejected with the JSON key that names it):
//   added tokens (split out first, matched leftmost-longest) -> normalizer (none, NFC)
//   -> pre-tokenizer (Split with a known regex, ByteLevel) -> BPE -> post-processor
//   (TemplateProcessing, ByteLevel, Roberta/Bert, Sequence).
// ref: tokenizers/src/tokenizer/added_vocabulary.rs, models/bpe/{model,word}.rs,
//      pre_tokenizers/byte_level.rs, processors/template.rs, decoders/byte_level.rs
#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "pal/core/error.h"
#include "pretokenizer.h"
#include "tokenizer_impl.h"
#include "unicode.h"

namespace pal::text {
namespace {

using nlohmann::json;

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to U+0100 on, so
// that every byte string is a printable string. ref: pre_tokenizers/byte_level.rs
std::array<char32_t, 256> bytes_to_unicode() {
  std::array<char32_t, 256> map{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    map[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return map;
}

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false, rstrip = false, single_word = false;
  bool normalized = false;  // matched in the normalized text (else in the raw text)
};

// A span of the input: either an added token's id or text still to tokenize.
struct Segment {
  size_t begin, end;
  int64_t added_id;  // -1: plain text
};

class JsonReader {
 public:
  explicit JsonReader(std::string file) : file_(std::move(file)) {}
  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw TokenizerError(file_ + ": " + key + ": " + why);
  }
  const json& object(const json& parent, const std::string& name, const std::string& key) const {
    if (!parent.contains(name)) fail(key, "required key is missing");
    const json& j = parent[name];
    if (!j.is_object()) fail(key, "expected an object, got " + j.dump().substr(0, 80));
    return j;
  }
  std::string string(const json& parent, const std::string& name, const std::string& key) const {
    if (!parent.contains(name) || !parent[name].is_string()) fail(key, "expected a string");
    return parent[name].get<std::string>();
  }
  bool boolean(const json& parent, const std::string& name, const std::string& key, bool fallback) const {
    if (!parent.contains(name) || parent[name].is_null()) return fallback;
    if (!parent[name].is_boolean()) fail(key, "expected true or false, got " + parent[name].dump());
    return parent[name].get<bool>();
  }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
};

class ByteLevelBpeTokenizer final : public Tokenizer {
 public:
  explicit ByteLevelBpeTokenizer(const std::filesystem::path& file);

  std::vector<int64_t> encode(std::string_view text, bool add_special) const override;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override;
  std::string token_bytes(int64_t id, bool first) const override {
    return id >= 0 && id < vocab_size() ? id_bytes_[static_cast<size_t>(id)] : std::string();
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::optional<int64_t> token_id(std::string_view token) const override {
    auto it = token_to_id_.find(std::string(token));
    return it == token_to_id_.end() ? std::nullopt : std::optional<int64_t>(it->second);
  }
  std::string token(int64_t id) const override {
    if (id < 0 || id >= vocab_size())
      throw TokenizerError(file_ + ": token id " + std::to_string(id) + " is outside the vocab of " +
                           std::to_string(vocab_size()));
    return id_to_token_[static_cast<size_t>(id)];
  }
  std::optional<int64_t> bos_id() const override { return bos_id_; }
  std::optional<int64_t> eos_id() const override { return eos_id_; }
  bool is_special(int64_t id) const override {
    return id >= 0 && id < vocab_size() && special_[static_cast<size_t>(id)];
  }
  int64_t add_special_token(const std::string& content) override;
  std::string describe() const override { return file_ + " (byte-level BPE)"; }

 private:
  void read_model(const json& model, const JsonReader& r);
  void read_added_tokens(const json& tokens, const JsonReader& r);
  void read_normalizer(const json& normalizer, const JsonReader& r);
  void read_pre_tokenizer(const json& pre, const std::string& key, const JsonReader& r);
  void read_post_processor(const json& post, const std::string& key, const JsonReader& r);
  void read_special_token_config(const std::filesystem::path& config);
  void set_token(int64_t id, const std::string& token);
  void finish_tables();

  // Splits [begin, end) of `text` on the added tokens whose `normalized` flag is given.
  void split_added(std::string_view text, size_t begin, size_t end, bool normalized,
                   std::vector<Segment>& out) const;
  void encode_text(std::string_view text, std::vector<int64_t>& ids) const;
  void bpe(std::string_view word, std::vector<int64_t>& ids) const;

  std::string file_;
  std::unordered_map<std::string, int64_t> token_to_id_;
  std::vector<std::string> id_to_token_;
  std::vector<std::string> id_bytes_;  // what each id decodes to
  std::vector<bool> special_;
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank, merged id
  std::array<int64_t, 256> byte_ids_{};         // id of each byte's single-character token
  std::array<std::string, 256> byte_chars_;     // each byte's character, UTF-8
  bool ignore_merges_ = false;

  bool nfc_ = false;
  std::vector<SplitPattern> splits_;
  bool byte_level_ = false;
  bool byte_level_regex_ = false;  // ByteLevel's use_regex: split with the GPT-2 pattern
  bool add_prefix_space_ = false;

  std::vector<int64_t> prefix_ids_, suffix_ids_;              // post-processor, single sequence
  std::vector<AddedToken> added_;                             // longest first
  std::array<std::vector<size_t>, 256> added_by_first_byte_;  // indices into added_
  std::optional<int64_t> bos_id_, eos_id_;
};

ByteLevelBpeTokenizer::ByteLevelBpeTokenizer(const std::filesystem::path& file) : file_(file.string()) {
  json j;
  try {
    j = json::parse(read_tokenizer_file(file));
  } catch (const json::exception& e) {
    throw TokenizerError(file_ + ": not valid JSON: " + e.what());
  }
  JsonReader r(file_);
  if (!j.is_object()) r.fail("(root)", "expected a JSON object");
  read_model(r.object(j, "model", "model"), r);
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) read_added_tokens(j["added_tokens"], r);
  if (j.contains("normalizer") && !j["normalizer"].is_null()) read_normalizer(j["normalizer"], r);
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null())
    read_pre_tokenizer(j["pre_tokenizer"], "pre_tokenizer", r);
  if (!byte_level_) r.fail("pre_tokenizer", "no ByteLevel pre-tokenizer: only byte-level BPE is supported");
  if (j.contains("post_processor") && !j["post_processor"].is_null())
    read_post_processor(j["post_processor"], "post_processor", r);
  if (j.contains("decoder") && !j["decoder"].is_null()) {
    std::string type = r.string(j["decoder"], "type", "decoder.type");
    if (type != "ByteLevel")
      r.fail("decoder.type", "unsupported decoder '" + type + "' (supported: ByteLevel)");
  }
  finish_tables();
  read_special_token_config(file.parent_path() / "tokenizer_config.json");
}

void ByteLevelBpeTokenizer::set_token(int64_t id, const std::string& token) {
  if (id >= vocab_size()) {
    id_to_token_.resize(static_cast<size_t>(id) + 1);
    special_.resize(static_cast<size_t>(id) + 1);
  }
  id_to_token_[static_cast<size_t>(id)] = token;
  token_to_id_[token] = id;
}

void ByteLevelBpeTokenizer::read_model(const json& model, const JsonReader& r) {
  std::string type = r.string(model, "type", "model.type");
  if (type != "BPE") r.fail("model.type", "unsupported model type '" + type + "' (supported: BPE)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && model[key] != "")
      r.fail(std::string("model.") + key, "not supported by byte-level BPE");
  }
  if (r.boolean(model, "byte_fallback", "model.byte_fallback", false))
    r.fail("model.byte_fallback", "byte fallback is not supported with a byte-level BPE");
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0)
    r.fail("model.dropout", "BPE dropout is not supported");
  ignore_merges_ = r.boolean(model, "ignore_merges", "model.ignore_merges", false);
  const json& vocab = r.object(model, "vocab", "model.vocab");
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0)
      r.fail("model.vocab." + token, "expected a non-negative integer id");
    set_token(id.get<int64_t>(), token);
  }
  if (!model.contains("merges") || !model["merges"].is_array()) r.fail("model.merges", "expected an array");
  const json& merges = model["merges"];
  merges_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string key = "model.merges[" + std::to_string(i) + "]";
    std::string left, right;
    // "a b" (tokenizers < 0.20) or ["a", "b"] (0.20 on).
    if (merges[i].is_string()) {
      std::string s = merges[i].get<std::string>();
      size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        r.fail(key, "expected two tokens separated by one space, got \"" + s + "\"");
      left = s.substr(0, space), right = s.substr(space + 1);
    } else if (merges[i].is_array() && merges[i].size() == 2 && merges[i][0].is_string() &&
               merges[i][1].is_string()) {
      left = merges[i][0].get<std::string>(), right = merges[i][1].get<std::string>();
    } else {
      r.fail(key, "expected \"a b\" or [\"a\", \"b\"], got " + merges[i].dump());
    }
    auto a = token_to_id_.find(left), b = token_to_id_.find(right), ab = token_to_id_.find(left + right);
    if (a == token_to_id_.end()) r.fail(key, "token '" + left + "' is not in the vocab");
    if (b == token_to_id_.end()) r.fail(key, "token '" + right + "' is not in the vocab");
    if (ab == token_to_id_.end()) r.fail(key, "merged token '" + left + right + "' is not in the vocab");
    uint64_t pair = static_cast<uint64_t>(a->second) << 32 | static_cast<uint64_t>(b->second);
    // A repeated pair takes its last rank, as HF's map building does.
    merges_[pair] = Merge{static_cast<int32_t>(i), static_cast<int32_t>(ab->second)};
  }
}

void ByteLevelBpeTokenizer::read_added_tokens(const json& tokens, const JsonReader& r) {
  if (!tokens.is_array()) r.fail("added_tokens", "expected an array");
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string key = "added_tokens[" + std::to_string(i) + "]";
    const json& t = tokens[i];
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || t["id"].get<int64_t>() < 0)
      r.fail(key + ".id", "expected a non-negative integer id");
    AddedToken a;
    a.id = t["id"].get<int64_t>();
    a.content = r.string(t, "content", key + ".content");
    if (a.content.empty()) r.fail(key + ".content", "an added token cannot be empty");
    a.special = r.boolean(t, "special", key + ".special", false);
    a.lstrip = r.boolean(t, "lstrip", key + ".lstrip", false);
    a.rstrip = r.boolean(t, "rstrip", key + ".rstrip", false);
    a.single_word = r.boolean(t, "single_word", key + ".single_word", false);
    a.normalized = r.boolean(t, "normalized", key + ".normalized", !a.special);
    set_token(a.id, a.content);
    added_.push_back(std::move(a));
  }
}

void ByteLevelBpeTokenizer::read_normalizer(const json& normalizer, const JsonReader& r) {
  std::string type = r.string(normalizer, "type", "normalizer.type");
  if (type == "NFC") {
    nfc_ = true;
  } else if (type == "Sequence" && normalizer.contains("normalizers") && normalizer["normalizers"].empty()) {
  } else if (type == "Sequence" && normalizer.contains("normalizers") &&
             normalizer["normalizers"].size() == 1) {
    read_normalizer(normalizer["normalizers"][0], r);
  } else {
    r.fail("normalizer.type", "unsupported normalizer '" + type + "' (supported: none, NFC)");
  }
}

void ByteLevelBpeTokenizer::read_pre_tokenizer(const json& pre, const std::string& key, const JsonReader& r) {
  std::string type = r.string(pre, "type", key + ".type");
  if (byte_level_) r.fail(key, "a pre-tokenizer after ByteLevel is not supported");
  if (type == "Sequence") {
    if (!pre.contains("pretokenizers") || !pre["pretokenizers"].is_array())
      r.fail(key + ".pretokenizers", "expected an array");
    for (size_t i = 0; i < pre["pretokenizers"].size(); ++i)
      read_pre_tokenizer(pre["pretokenizers"][i], key + ".pretokenizers[" + std::to_string(i) + "]", r);
  } else if (type == "Split") {
    const json& pattern = r.object(pre, "pattern", key + ".pattern");
    if (!pattern.contains("Regex")) r.fail(key + ".pattern", "only Regex split patterns are supported");
    std::string regex = r.string(pattern, "Regex", key + ".pattern.Regex");
    std::optional<SplitPattern> p = recognise_split_pattern(regex);
    if (!p)
      r.fail(key + ".pattern.Regex", "unsupported pre-tokenizer pattern \"" + regex +
                                         "\" (supported: the GPT-2, Llama 3 and Qwen2 patterns)");
    std::string behavior = r.string(pre, "behavior", key + ".behavior");
    if (behavior != "Isolated") r.fail(key + ".behavior", "unsupported split behavior '" + behavior + "'");
    if (r.boolean(pre, "invert", key + ".invert", false))
      r.fail(key + ".invert", "inverted splits are not supported");
    splits_.push_back(*p);
  } else if (type == "ByteLevel") {
    byte_level_ = true;
    add_prefix_space_ = r.boolean(pre, "add_prefix_space", key + ".add_prefix_space", false);
    byte_level_regex_ = r.boolean(pre, "use_regex", key + ".use_regex", true);
  } else {
    r.fail(key + ".type", "unsupported pre-tokenizer '" + type + "' (supported: Sequence, Split, ByteLevel)");
  }
}

void ByteLevelBpeTokenizer::read_post_processor(const json& post, const std::string& key,
                                                const JsonReader& r) {
  std::string type = r.string(post, "type", key + ".type");
  const auto id_of = [&](const json& pair, const std::string& k) {
    if (!pair.is_array() || pair.size() != 2 || !pair[1].is_number_integer())
      r.fail(k, "expected [token, id]");
    return pair[1].get<int64_t>();
  };
  if (type == "ByteLevel") {
    // Only adjusts offsets.
  } else if (type == "Sequence") {
    if (!post.contains("processors") || !post["processors"].is_array())
      r.fail(key + ".processors", "expected an array");
    for (size_t i = 0; i < post["processors"].size(); ++i)
      read_post_processor(post["processors"][i], key + ".processors[" + std::to_string(i) + "]", r);
  } else if (type == "TemplateProcessing") {
    // ref: processors/template.rs. "single": [{"SpecialToken": {"id": ..}}, {"Sequence": {"id": "A"}}, ..]
    if (!post.contains("single") || !post["single"].is_array()) r.fail(key + ".single", "expected an array");
    const json& specials = r.object(post, "special_tokens", key + ".special_tokens");
    bool after_sequence = false;
    for (const json& piece : post["single"]) {
      if (piece.contains("Sequence")) {
        after_sequence = true;
        continue;
      }
      if (!piece.contains("SpecialToken")) r.fail(key + ".single", "unexpected piece " + piece.dump());
      std::string name = r.string(piece["SpecialToken"], "id", key + ".single[].SpecialToken.id");
      if (!specials.contains(name) || !specials[name].contains("ids") || !specials[name]["ids"].is_array())
        r.fail(key + ".special_tokens." + name, "missing, or without \"ids\"");
      for (const json& id : specials[name]["ids"]) {
        if (!id.is_number_integer()) r.fail(key + ".special_tokens." + name + ".ids", "expected integers");
        (after_sequence ? suffix_ids_ : prefix_ids_).push_back(id.get<int64_t>());
      }
    }
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    prefix_ids_.push_back(id_of(post.value("cls", json()), key + ".cls"));
    suffix_ids_.push_back(id_of(post.value("sep", json()), key + ".sep"));
  } else {
    r.fail(key + ".type", "unsupported post-processor '" + type + "'");
  }
}

// bos_token / eos_token of tokenizer_config.json (a string or {"content": ...}); without the
// file, BOS is the token the post-processor prepends.
void ByteLevelBpeTokenizer::read_special_token_config(const std::filesystem::path& config) {
  if (!prefix_ids_.empty()) bos_id_ = prefix_ids_.front();
  if (!std::filesystem::exists(config)) return;
  json j;
  try {
    j = json::parse(read_tokenizer_file(config));
  } catch (const json::exception& e) {
    throw TokenizerError(config.string() + ": not valid JSON: " + e.what());
  }
  const auto lookup = [&](const char* key) -> std::optional<int64_t> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    const json& v = j[key];
    std::string content = v.is_string() ? v.get<std::string>() : v.value("content", std::string());
    std::optional<int64_t> id = token_id(content);
    if (!id) throw TokenizerError(config.string() + ": " + key + ": '" + content + "' is not in the vocab");
    return id;
  };
  if (j.contains("bos_token")) bos_id_ = lookup("bos_token");
  eos_id_ = lookup("eos_token");
}

void ByteLevelBpeTokenizer::finish_tables() {
  const std::array<char32_t, 256> map = bytes_to_unicode();
  std::unordered_map<char32_t, char> char_to_byte;
  for (int b = 0; b < 256; ++b) {
    byte_chars_[b].clear();
    unicode::append_utf8(byte_chars_[b], map[b]);
    auto it = token_to_id_.find(byte_chars_[b]);
    // Bytes missing from the vocab are dropped, as BPE without an unk token does.
    byte_ids_[b] = it == token_to_id_.end() ? -1 : it->second;
    char_to_byte[map[b]] = static_cast<char>(b);
  }
  // ref: decoders/byte_level.rs: a token whose characters all map back to bytes decodes to
  // those bytes; any other token (e.g. an added one with a space) to its own text.
  id_bytes_.assign(id_to_token_.size(), std::string());
  std::vector<char32_t> cps;
  std::vector<size_t> offsets;
  for (size_t id = 0; id < id_to_token_.size(); ++id) {
    const std::string& t = id_to_token_[id];
    unicode::decode_utf8(t, cps, offsets);
    std::string bytes;
    bool all_mapped = true;
    for (char32_t c : cps) {
      auto it = char_to_byte.find(c);
      if (it == char_to_byte.end()) {
        all_mapped = false;
        break;
      }
      bytes += it->second;
    }
    id_bytes_[id] = all_mapped ? bytes : t;
  }
  for (const AddedToken& a : added_) special_[static_cast<size_t>(a.id)] = a.special;
  // Longest first, so that the first match at a position is the longest (leftmost-longest).
  std::stable_sort(added_.begin(), added_.end(), [](const AddedToken& a, const AddedToken& b) {
    return a.content.size() > b.content.size();
  });
  for (auto& v : added_by_first_byte_) v.clear();
  for (size_t k = 0; k < added_.size(); ++k)
    added_by_first_byte_[static_cast<uint8_t>(added_[k].content[0])].push_back(k);
}

int64_t ByteLevelBpeTokenizer::add_special_token(const std::string& content) {
  if (content.empty()) throw TokenizerError(file_ + ": cannot add an empty special token");
  for (const AddedToken& a : added_) {
    if (a.content == content) {
      special_[static_cast<size_t>(a.id)] = true;
      return a.id;
    }
  }
  AddedToken a;
  a.content = content;
  a.special = true;
  std::optional<int64_t> existing = token_id(content);
  a.id = existing ? *existing : vocab_size();
  set_token(a.id, content);
  added_.push_back(a);
  finish_tables();
  return a.id;
}

bool is_word_char(char32_t c) {
  unicode::CharClass k = unicode::char_class(c);
  return k == unicode::CharClass::kLetter || k == unicode::CharClass::kNumber || c == '_';
}

// The code point that starts at byte i of valid UTF-8 `text`.
char32_t char_at(std::string_view text, size_t i) {
  std::vector<char32_t> cps;
  std::vector<size_t> offsets;
  unicode::decode_utf8(text.substr(i, std::min<size_t>(4, text.size() - i)), cps, offsets);
  return cps.empty() ? 0 : cps.front();
}
// The first byte of the code point that ends at byte i.
size_t char_start_before(std::string_view text, size_t i) {
  do --i;
  while (i > 0 && (static_cast<uint8_t>(text[i]) & 0xC0) == 0x80);
  return i;
}

// ref: added_vocabulary.rs, AddedVocabulary::find_matches (aho-corasick, leftmost-longest).
void ByteLevelBpeTokenizer::split_added(std::string_view text, size_t begin, size_t end, bool normalized,
                                        std::vector<Segment>& out) const {
  size_t start = begin;  // first byte not yet emitted
  for (size_t i = begin; i < end;) {
    const AddedToken* match = nullptr;
    for (size_t k : added_by_first_byte_[static_cast<uint8_t>(text[i])]) {
      const AddedToken& a = added_[k];
      if (a.normalized == normalized && a.content.size() <= end - i &&
          text.compare(i, a.content.size(), a.content) == 0) {
        match = &a;
        break;
      }
    }
    if (!match) {
      ++i;
      continue;
    }
    size_t m_begin = i, m_end = i + match->content.size();
    i = m_end;
    if (match->single_word) {
      bool space_before = m_begin == begin || !is_word_char(char_at(text, char_start_before(text, m_begin)));
      bool space_after = m_end == end || !is_word_char(char_at(text, m_end));
      if (!space_before || !space_after) continue;
    }
    if (match->lstrip) {
      while (m_begin > start && unicode::is_space(char_at(text, char_start_before(text, m_begin))))
        m_begin = char_start_before(text, m_begin);
    }
    if (match->rstrip) {
      while (m_end < end && unicode::is_space(char_at(text, m_end))) {
        std::string c;
        unicode::append_utf8(c, char_at(text, m_end));
        m_end += c.size();
      }
      i = m_end;
    }
    if (start < m_begin) out.push_back({start, m_begin, -1});
    out.push_back({m_begin, m_end, match->id});
    start = m_end;
  }
  if (start < end) out.push_back({start, end, -1});
}

std::vector<int64_t> ByteLevelBpeTokenizer::encode(std::string_view text, bool add_special) const {
  {
    std::vector<char32_t> cps;
    std::vector<size_t> offsets;
    size_t bad = unicode::decode_utf8(text, cps, offsets);
    if (bad != std::string_view::npos)
      throw TokenizerError(file_ + ": cannot encode text that is not valid UTF-8 (byte " +
                           std::to_string(bad) + ")");
  }
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + prefix_ids_.size() + suffix_ids_.size());
  if (add_special) ids = prefix_ids_;
  std::vector<Segment> raw;
  split_added(text, 0, text.size(), false, raw);
  for (const Segment& s : raw) {
    if (s.added_id >= 0) {
      ids.push_back(s.added_id);
      continue;
    }
    std::string_view piece = text.substr(s.begin, s.end - s.begin);
    std::string normalized = nfc_ ? unicode::nfc(piece) : std::string(piece);
    std::vector<Segment> inner;
    split_added(normalized, 0, normalized.size(), true, inner);
    for (const Segment& n : inner) {
      if (n.added_id >= 0) {
        ids.push_back(n.added_id);
      } else {
        encode_text(std::string_view(normalized).substr(n.begin, n.end - n.begin), ids);
      }
    }
  }
  if (add_special) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

// Pre-tokenizes plain (normalized) text and runs BPE on each piece. ref: byte_level.rs:
// ByteLevel adds its prefix space to each piece the splits before it made, then splits
// with the GPT-2 pattern (use_regex), then maps bytes.
void ByteLevelBpeTokenizer::encode_text(std::string_view text, std::vector<int64_t>& ids) const {
  std::vector<char32_t> cps;
  std::vector<size_t> offsets;
  std::vector<unicode::CharClass> classes;
  std::vector<std::pair<size_t, size_t>> pieces, next;
  const auto pre_tokenize = [&](std::string_view s, const std::vector<SplitPattern>& patterns) {
    unicode::decode_utf8(s, cps, offsets);
    classes.resize(cps.size());
    for (size_t k = 0; k < cps.size(); ++k) classes[k] = unicode::char_class(cps[k]);
    pieces.assign(1, {0, cps.size()});
    for (SplitPattern p : patterns) {
      next.clear();
      for (const auto& [b, e] : pieces) split(p, cps, classes, b, e, next);
      pieces.swap(next);
    }
  };
  std::vector<SplitPattern> patterns = splits_;
  if (byte_level_regex_) patterns.push_back(SplitPattern::kGpt2);
  if (!add_prefix_space_) {
    pre_tokenize(text, patterns);
    for (const auto& [b, e] : pieces) bpe(text.substr(offsets[b], offsets[e] - offsets[b]), ids);
    return;
  }
  pre_tokenize(text, splits_);
  std::vector<std::string> words;
  for (const auto& [b, e] : pieces) words.emplace_back(text.substr(offsets[b], offsets[e] - offsets[b]));
  std::vector<SplitPattern> regex;
  if (byte_level_regex_) regex.push_back(SplitPattern::kGpt2);
  for (std::string& w : words) {
    if (w.front() != ' ') w.insert(w.begin(), ' ');
    pre_tokenize(w, regex);
    for (const auto& [b, e] : pieces)
      bpe(std::string_view(w).substr(offsets[b], offsets[e] - offsets[b]), ids);
  }
}

// Byte-level BPE of one pre-tokenized word (raw bytes). ref: models/bpe/word.rs merge_all:
// the pair of lowest rank merges first, the leftmost among equal ranks.
void ByteLevelBpeTokenizer::bpe(std::string_view word, std::vector<int64_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_ || word.size() == 1) {
    // Llama 3: a word that is a token as a whole is taken directly (ref: model.rs, ignore_merges).
    std::string mapped;
    for (char c : word) mapped += byte_chars_[static_cast<uint8_t>(c)];
    auto it = token_to_id_.find(mapped);
    if (it != token_to_id_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int64_t id;
    int32_t prev, next;
    bool alive;
  };
  thread_local std::vector<Symbol> symbols;
  symbols.clear();
  for (char c : word) {
    int64_t id = byte_ids_[static_cast<uint8_t>(c)];
    if (id < 0) continue;
    int32_t n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, n + 1, true});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;
  struct Candidate {
    int32_t rank, pos;
    int64_t id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  const auto lookup = [&](int64_t a, int64_t b) -> const Merge* {
    auto it = merges_.find(static_cast<uint64_t>(a) << 32 | static_cast<uint64_t>(b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  for (size_t k = 0; k + 1 < symbols.size(); ++k) {
    if (const Merge* m = lookup(symbols[k].id, symbols[k + 1].id))
      queue.push({m->rank, static_cast<int32_t>(k), m->id});
  }
  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<size_t>(top.pos)];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[static_cast<size_t>(left.next)];
    const Merge* m = lookup(left.id, right.id);
    if (!m || m->id != top.id) continue;  // stale: a neighbour merged since
    left.id = top.id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[static_cast<size_t>(left.next)].prev = top.pos;
    if (left.prev >= 0) {
      if (const Merge* p = lookup(symbols[static_cast<size_t>(left.prev)].id, left.id))
        queue.push({p->rank, left.prev, p->id});
    }
    if (left.next >= 0) {
      if (const Merge* n = lookup(left.id, symbols[static_cast<size_t>(left.next)].id))
        queue.push({n->rank, top.pos, n->id});
    }
  }
  for (const Symbol& s : symbols) {
    if (s.alive) ids.push_back(s.id);
  }
}

std::string ByteLevelBpeTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  std::string bytes;
  for (int64_t id : ids) {
    if (skip_special && is_special(id)) continue;
    bytes += token_bytes(id, false);
  }
  return utf8_lossy(bytes);
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& file) {
  return std::make_unique<ByteLevelBpeTokenizer>(file);
}

}  // namespace pal::text
