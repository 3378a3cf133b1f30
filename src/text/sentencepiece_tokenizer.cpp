// A sentencepiece .model (Llama 2 style) through libsentencepiece.
//
// Special tokens in text: sentencepiece itself treats "<s>" in text as the characters
// '<', 's', '>'. Like HF's (slow, legacy) LlamaTokenizer, the text is first split on the
// control pieces (<s>, </s>) and the tokens added with add_special_token; each piece of
// text between them is encoded by sentencepiece on its own (so it gets its own dummy-prefix
// space). Decoding mirrors it: special tokens render as their text (unless skipped) and the
// runs between them are decoded by sentencepiece.
//
// libsentencepiece is reached through the module libpal_sentencepiece.so, loaded with
// RTLD_DEEPBIND next to libpal (sentencepiece_module.cpp says why).
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>

#include "pal/core/error.h"
#include "tokenizer_impl.h"

namespace pal::text {
namespace {

// The functions of libpal_sentencepiece.so (sentencepiece_module.cpp).
struct SentencePieceModule {
  void* (*load)(const char*, size_t, char**);
  void (*destroy)(void*);
  void (*free)(void*);
  bool (*encode)(const void*, const char*, size_t, int**, size_t*, char**);
  char* (*decode)(const void*, const int*, size_t, size_t*, char**);
  int (*query)(const void*, int, int);
  const char* (*piece)(const void*, int, size_t*);
  int (*piece_to_id)(const void*, const char*, size_t);
};

const SentencePieceModule& sentencepiece_module() {
  static SentencePieceModule module;
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    Dl_info self{};
    dladdr(reinterpret_cast<void*>(&sentencepiece_module), &self);
    std::filesystem::path path = self.dli_fname ? std::filesystem::path(self.dli_fname).parent_path() : "";
    path /= "libpal_sentencepiece.so";
    int flags = RTLD_NOW | RTLD_LOCAL;
#if !defined(__SANITIZE_ADDRESS__)
    flags |= RTLD_DEEPBIND;  // AddressSanitizer does not support it
#endif
    void* handle = dlopen(path.c_str(), flags);
    if (!handle) {
      error = std::string("cannot load ") + path.string() + ": " + dlerror();
      return;
    }
    const auto get = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(handle, name));
      if (!fn && error.empty()) error = path.string() + ": missing " + name;
    };
    get(module.load, "pal_sp_load");
    get(module.destroy, "pal_sp_delete");
    get(module.free, "pal_sp_free");
    get(module.encode, "pal_sp_encode");
    get(module.decode, "pal_sp_decode");
    get(module.query, "pal_sp_query");
    get(module.piece, "pal_sp_piece");
    get(module.piece_to_id, "pal_sp_piece_to_id");
  });
  if (!error.empty()) throw TokenizerError("sentencepiece: " + error);
  return module;
}

// A SentencePieceProcessor of the module, with the calls this file makes.
class Processor {
 public:
  Processor(const std::string& blob, const std::string& file) : m_(sentencepiece_module()) {
    char* error = nullptr;
    handle_ = m_.load(blob.data(), blob.size(), &error);
    if (!handle_) throw TokenizerError(file + ": not a valid sentencepiece model: " + take(error));
  }
  ~Processor() { m_.destroy(handle_); }
  Processor(const Processor&) = delete;
  Processor& operator=(const Processor&) = delete;

  std::vector<int> encode(std::string_view text, const std::string& file) const {
    int* ids = nullptr;
    size_t count = 0;
    char* error = nullptr;
    if (!m_.encode(handle_, text.data(), text.size(), &ids, &count, &error))
      throw TokenizerError(file + ": cannot encode text: " + take(error));
    std::vector<int> out(ids, ids + count);
    m_.free(ids);
    return out;
  }
  std::string decode(const std::vector<int>& ids, const std::string& file) const {
    size_t length = 0;
    char* error = nullptr;
    char* text = m_.decode(handle_, ids.data(), ids.size(), &length, &error);
    if (!text) throw TokenizerError(file + ": cannot decode ids: " + take(error));
    std::string out(text, length);
    m_.free(text);
    return out;
  }
  int size() const { return m_.query(handle_, 0, 0); }
  int bos_id() const { return m_.query(handle_, 1, 0); }
  int eos_id() const { return m_.query(handle_, 2, 0); }
  bool is_control(int id) const { return m_.query(handle_, 10, id) != 0; }
  bool is_unknown(int id) const { return m_.query(handle_, 11, id) != 0; }
  bool is_byte(int id) const { return m_.query(handle_, 12, id) != 0; }
  std::string piece(int id) const {
    size_t length = 0;
    const char* p = m_.piece(handle_, id, &length);
    return std::string(p, length);
  }
  int piece_to_id(std::string_view piece) const {
    return m_.piece_to_id(handle_, piece.data(), piece.size());
  }

 private:
  std::string take(char* error) const {
    std::string s = error ? error : "unknown error";
    m_.free(error);
    return s;
  }
  const SentencePieceModule& m_;
  void* handle_ = nullptr;
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::filesystem::path& file)
      : file_(file.string()), sp_(read_tokenizer_file(file), file_) {
    pieces_ = sp_.size();
    for (int id = 0; id < pieces_; ++id) {
      if (sp_.is_control(id)) specials_.push_back({sp_.piece(id), id});
    }
    sort_specials();
  }

  std::vector<int64_t> encode(std::string_view text, bool add_special) const override {
    std::vector<int64_t> ids;
    if (add_special && sp_.bos_id() >= 0) ids.push_back(sp_.bos_id());
    size_t start = 0;
    const auto encode_run = [&](size_t end) {
      if (end <= start) return;
      std::vector<int> run = sp_.encode(text.substr(start, end - start), file_);
      ids.insert(ids.end(), run.begin(), run.end());
    };
    for (size_t i = 0; i < text.size();) {
      const Special* match = nullptr;
      for (const Special& s : specials_) {  // longest first
        if (text.compare(i, s.content.size(), s.content) == 0) {
          match = &s;
          break;
        }
      }
      if (!match) {
        ++i;
        continue;
      }
      encode_run(i);
      ids.push_back(match->id);
      i = start = i + match->content.size();
    }
    encode_run(text.size());
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override {
    std::string out;
    std::vector<int> run;
    const auto flush = [&] {
      if (run.empty()) return;
      out += sp_.decode(run, file_);
      run.clear();
    };
    for (int64_t id : ids) {
      if (id < 0 || id >= vocab_size()) continue;
      if (is_special(id)) {
        flush();
        if (!skip_special) out += token(id);
      } else {
        run.push_back(static_cast<int>(id));
      }
    }
    flush();
    return out;
  }

  std::string token_bytes(int64_t id, bool first) const override {
    if (id < 0 || id >= vocab_size()) return {};
    if (is_special(id)) return token(id);
    const std::string piece = sp_.piece(static_cast<int>(id));
    if (sp_.is_byte(static_cast<int>(id))) {  // "<0xAB>"
      return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
    }
    if (sp_.is_unknown(static_cast<int>(id))) return " \xE2\x81\x87 ";  // sentencepiece's " ⁇ "
    std::string out;
    static constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, sentencepiece's space
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, kSpace.size(), kSpace) == 0) {
        if (!(first && i == 0)) out += ' ';  // the dummy prefix of the first piece is dropped
        i += kSpace.size();
      } else {
        out += piece[i++];
      }
    }
    return out;
  }

  int64_t vocab_size() const override { return pieces_ + static_cast<int64_t>(added_.size()); }
  std::optional<int64_t> token_id(std::string_view token) const override {
    for (size_t k = 0; k < added_.size(); ++k) {
      if (added_[k] == token) return pieces_ + static_cast<int64_t>(k);
    }
    int id = sp_.piece_to_id(token);  // the unknown id for pieces not in the vocab
    if (id < 0 || sp_.piece(id) != token) return std::nullopt;
    return id;
  }
  std::string token(int64_t id) const override {
    if (id < 0 || id >= vocab_size())
      throw TokenizerError(file_ + ": token id " + std::to_string(id) + " is outside the vocab of " +
                           std::to_string(vocab_size()));
    return id < pieces_ ? sp_.piece(static_cast<int>(id)) : added_[static_cast<size_t>(id - pieces_)];
  }
  std::optional<int64_t> bos_id() const override {
    return sp_.bos_id() >= 0 ? std::optional<int64_t>(sp_.bos_id()) : std::nullopt;
  }
  std::optional<int64_t> eos_id() const override {
    return sp_.eos_id() >= 0 ? std::optional<int64_t>(sp_.eos_id()) : std::nullopt;
  }
  bool is_special(int64_t id) const override {
    if (id >= pieces_) return id < vocab_size();
    return id >= 0 && sp_.is_control(static_cast<int>(id));
  }
  int64_t add_special_token(const std::string& content) override {
    if (content.empty()) throw TokenizerError(file_ + ": cannot add an empty special token");
    std::optional<int64_t> id = token_id(content);
    if (!id) {
      id = vocab_size();
      added_.push_back(content);
    }
    if (std::none_of(specials_.begin(), specials_.end(),
                     [&](const Special& s) { return s.content == content; })) {
      specials_.push_back({content, *id});
      sort_specials();
    }
    return *id;
  }
  std::string describe() const override { return file_ + " (sentencepiece)"; }

 private:
  struct Special {
    std::string content;
    int64_t id;
  };
  void sort_specials() {
    std::stable_sort(specials_.begin(), specials_.end(),
                     [](const Special& a, const Special& b) { return a.content.size() > b.content.size(); });
  }

  std::string file_;
  Processor sp_;
  int64_t pieces_ = 0;
  std::vector<Special> specials_;   // matched in text, longest first
  std::vector<std::string> added_;  // ids pieces_, pieces_ + 1, ...
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::filesystem::path& file) {
  return std::make_unique<SentencePieceTokenizer>(file);
}

}  // namespace pal::text
