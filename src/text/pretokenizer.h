// The regex splits of byte-level BPE tokenizers, hand-written for the patterns real models
// use (there is no Unicode-aware regex library to run them). Each splitter reproduces the
// leftmost-first, backtracking match of its pattern under Oniguruma, which HF tokenizers uses.
#pragma once

#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "unicode.h"

namespace pal::text {

enum class SplitPattern {
  kGpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,  // (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
            // ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kQwen2,   // as kLlama3 with \p{N} (single digits)
};

// The splitter for a regex as written in tokenizer.json; nullopt for any other pattern.
std::optional<SplitPattern> recognise_split_pattern(std::string_view regex);

// Splits code points [begin, end) of `cps` (classes: their CharClass) into the matches of
// `pattern` and the gaps between them (HF's SplitDelimiterBehavior::Isolated). Appends
// [first, last) index ranges to `pieces`. The text is taken to end at `end`.
void split(SplitPattern pattern, const std::vector<char32_t>& cps,
           const std::vector<unicode::CharClass>& classes, size_t begin, size_t end,
           std::vector<std::pair<size_t, size_t>>& pieces);

}  // namespace pal::text
