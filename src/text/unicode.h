// Unicode helpers of the tokenizers: UTF-8 decoding, the character classes of the
// pre-tokenizer patterns, and NFC. Tables: unicode_tables.inc (scripts/make_unicode_tables.py).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pal::text::unicode {

// The classes the pre-tokenizer patterns distinguish: \p{L}, \p{N}, \s, and the rest.
enum class CharClass : uint8_t { kOther, kLetter, kNumber, kSpace };

CharClass char_class(char32_t cp);
inline bool is_space(char32_t cp) {
  return char_class(cp) == CharClass::kSpace;
}

// Decodes UTF-8 into code points; offsets gets the byte offset of each code point plus a
// final entry text.size(). Returns the byte offset of the first invalid sequence, or npos.
size_t decode_utf8(std::string_view text, std::vector<char32_t>& cps, std::vector<size_t>& offsets);

// Length of the well-formed character at bytes[i], or minus the length of the maximal
// invalid subpart there (Unicode 3.9, "U+FFFD substitution of maximal subparts").
int utf8_sequence_length(std::string_view bytes, size_t i);

void append_utf8(std::string& out, char32_t cp);

// Canonical composition (NFC, UAX #15). Input must be valid UTF-8.
std::string nfc(std::string_view text);

// Length of the incomplete UTF-8 sequence at the end of `bytes` that more bytes could still
// complete (0 when the text ends on a character boundary or on an invalid sequence).
size_t incomplete_utf8_suffix(std::string_view bytes);

const char* unicode_version();

}  // namespace pal::text::unicode
