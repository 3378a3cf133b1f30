#include "pal/text/tokenizer.h"

#include <fstream>
#include <sstream>

#include "pal/core/error.h"
#include "tokenizer_impl.h"
#include "unicode.h"

namespace pal::text {

std::string read_tokenizer_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw TokenizerError(file.string() + ": cannot open the tokenizer file");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) throw TokenizerError(file.string() + ": read error");
  return bytes.str();
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& folder_or_file) {
  namespace fs = std::filesystem;
  const fs::path& p = folder_or_file;
  if (fs::is_directory(p)) {
    if (fs::exists(p / "tokenizer.json")) return load_hf_tokenizer(p / "tokenizer.json");
    if (fs::exists(p / "tokenizer.model")) return load_sentencepiece_tokenizer(p / "tokenizer.model");
    throw TokenizerError(p.string() + ": the folder has neither tokenizer.json nor tokenizer.model");
  }
  if (!fs::exists(p)) throw TokenizerError(p.string() + ": no such tokenizer file or folder");
  if (p.extension() == ".json") return load_hf_tokenizer(p);
  if (p.extension() == ".model") return load_sentencepiece_tokenizer(p);
  // Any other name: a JSON file starts with '{', a sentencepiece protobuf never does.
  std::ifstream in(p, std::ios::binary);
  char c = 0;
  while (in.get(c) && (c == ' ' || c == '\n' || c == '\r' || c == '\t')) {
  }
  return c == '{' ? load_hf_tokenizer(p) : load_sentencepiece_tokenizer(p);
}

std::string utf8_lossy(std::string_view bytes) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(bytes.size());
  size_t done = 0;  // bytes[0, done) are copied
  for (size_t i = 0; i < bytes.size();) {
    int n = unicode::utf8_sequence_length(bytes, i);
    if (n > 0) {
      i += static_cast<size_t>(n);
      continue;
    }
    out.append(bytes.substr(done, i - done));
    out += kReplacement;
    i += static_cast<size_t>(-n);
    done = i;
  }
  out.append(bytes.substr(done));
  return out;
}

TokenStreamDecoder::TokenStreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string TokenStreamDecoder::push(int64_t id) {
  if (tokenizer_.is_special(id)) {
    first_ = true;  // sentencepiece decodes the text after a special token on its own
    if (skip_special_) return {};
    pending_ += tokenizer_.token_bytes(id, false);
  } else {
    pending_ += tokenizer_.token_bytes(id, first_);
    first_ = false;
  }
  size_t keep = unicode::incomplete_utf8_suffix(pending_);
  std::string out = utf8_lossy(std::string_view(pending_).substr(0, pending_.size() - keep));
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string TokenStreamDecoder::finish() {
  std::string out = utf8_lossy(pending_);
  pending_.clear();
  first_ = true;
  return out;
}

}  // namespace pal::text
