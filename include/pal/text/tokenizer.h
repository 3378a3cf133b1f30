// Tokenizers: text <-> token ids, with the behaviour of the reference libraries.
//
//   auto tok = pal::text::load_tokenizer("models/Llama-3.2-1B-Instruct");
//   std::vector<int64_t> ids = tok->encode("<|begin_of_text|>Hi");   // special tokens in text
//   std::string text = tok->decode(ids, /*skip_special=*/true);
//
// Two implementations (src/text/):
//   - HF tokenizer.json, byte-level BPE (GPT-2, Llama 3, Qwen2): ids identical to HF
//     `tokenizers` (Tokenizer.encode(text, add_special_tokens).ids).
//   - sentencepiece .model (Llama 2 style) through libsentencepiece.
// Every error (missing or malformed file, unsupported component) is a pal::TokenizerError
// that names the file and the JSON key or component.
//
// Thread safety: the const methods may be called from several threads at once;
// add_special_token must not run concurrently with anything else.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pal::text {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`. Added/special tokens written literally in the text
  // ("<|begin_of_text|>", "<|im_start|>", "<|audio|>") become their single ids, as in HF
  // tokenizers. add_special: apply the tokenizer's post-processing, i.e. prepend BOS when
  // this tokenizer adds one (Llama 3's <|begin_of_text|>, sentencepiece's <s>; Qwen2: none).
  virtual std::vector<int64_t> encode(std::string_view text, bool add_special = true) const = 0;

  // Text of `ids`; invalid UTF-8 from byte tokens becomes U+FFFD. Ids outside the vocab
  // are skipped (as HF does: models often have padded embedding tables). skip_special:
  // drop special tokens (BOS, EOS, chat markers).
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special = false) const = 0;

  // Raw bytes that `id` contributes to decoded text; may be part of a UTF-8 sequence.
  // `first`: the id is the first non-special one of the text (sentencepiece drops the
  // dummy-prefix space there). Empty for ids outside the vocab. Used by TokenStreamDecoder.
  virtual std::string token_bytes(int64_t id, bool first) const = 0;

  // Ids 0 .. vocab_size()-1, added tokens included.
  virtual int64_t vocab_size() const = 0;
  // Id of a token string as stored in the vocab (byte-level form, e.g. "Ġthe", or a
  // special token's content); nullopt when absent.
  virtual std::optional<int64_t> token_id(std::string_view token) const = 0;
  // Vocab string of `id`; throws TokenizerError when out of range.
  virtual std::string token(int64_t id) const = 0;
  virtual std::optional<int64_t> bos_id() const = 0;
  virtual std::optional<int64_t> eos_id() const = 0;
  virtual bool is_special(int64_t id) const = 0;

  // Makes `content` a special token that encode() recognises in text; returns its id: the
  // existing one when the vocab already has it, else the next free id (vocab_size() before
  // the call). Used for the audio placeholder "<|audio|>".
  virtual int64_t add_special_token(const std::string& content) = 0;

  // The file it was loaded from and its kind, for logs ("tokenizer.json (BPE, byte-level)").
  virtual std::string describe() const = 0;
};

// Loads a tokenizer from an HF model folder (tokenizer.json preferred, else tokenizer.model)
// or from a tokenizer.json / .model file. Throws TokenizerError.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& folder_or_file);

// Incremental decoding for generation: push ids one at a time, get back only complete
// UTF-8 text. A multi-byte character split over several byte tokens is held back until it
// is complete; finish() returns what is left (invalid bytes as U+FFFD). The concatenation
// of all returned pieces equals tokenizer.decode(all ids, skip_special).
class TokenStreamDecoder {
 public:
  explicit TokenStreamDecoder(const Tokenizer& tokenizer, bool skip_special = true);
  std::string push(int64_t id);
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  bool first_ = true;    // no non-special id seen yet
  std::string pending_;  // bytes of an incomplete UTF-8 sequence
};

// Replaces invalid UTF-8 by U+FFFD, one per maximal invalid subpart (as Rust's
// String::from_utf8_lossy, which HF tokenizers' decoders use).
std::string utf8_lossy(std::string_view bytes);

}  // namespace pal::text
