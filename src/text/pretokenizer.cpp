#include "pretokenizer.h"

namespace pal::text {
namespace {

using unicode::CharClass;

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Matches one pattern at position i of [.., end); returns the match end, or i for none.
class Matcher {
 public:
  Matcher(const std::vector<char32_t>& cps, const std::vector<CharClass>& classes, size_t end)
      : cps_(cps), classes_(classes), end_(end) {}

  size_t gpt2(size_t i) const {
    if (size_t e = contraction(i, false); e != i) return e;
    size_t j = cps_[i] == ' ' ? i + 1 : i;
    for (CharClass c : {CharClass::kLetter, CharClass::kNumber, CharClass::kOther}) {
      if (is(j, c)) return run(j, c);
    }
    return whitespace(i);
  }

  size_t llama3(size_t i, size_t max_digits) const {
    if (size_t e = contraction(i, true); e != i) return e;
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (is(i, CharClass::kLetter)) return run(i, CharClass::kLetter);
    if (!is_newline(i) && !is(i, CharClass::kNumber) && is(i + 1, CharClass::kLetter))
      return run(i + 1, CharClass::kLetter);
    // \p{N}{1,3} or \p{N}
    if (is(i, CharClass::kNumber)) {
      size_t j = i;
      while (j < end_ && j - i < max_digits && is(j, CharClass::kNumber)) ++j;
      return j;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    size_t j = (cps_[i] == ' ' && is(i + 1, CharClass::kOther)) ? i + 1 : i;
    if (is(j, CharClass::kOther)) {
      j = run(j, CharClass::kOther);
      while (is_newline(j)) ++j;
      return j;
    }
    // \s*[\r\n]+ : the whitespace run up to its last newline.
    if (is(i, CharClass::kSpace)) {
      size_t ws_end = run(i, CharClass::kSpace), last_newline = i;
      for (size_t k = i; k < ws_end; ++k) {
        if (is_newline(k)) last_newline = k + 1;
      }
      if (last_newline != i) return last_newline;
    }
    return whitespace(i);
  }

 private:
  bool is(size_t i, CharClass c) const { return i < end_ && classes_[i] == c; }
  bool is_newline(size_t i) const { return i < end_ && (cps_[i] == '\r' || cps_[i] == '\n'); }
  size_t run(size_t i, CharClass c) const {
    while (i < end_ && classes_[i] == c) ++i;
    return i;
  }

  // 's|'t|'re|'ve|'m|'ll|'d, optionally case-insensitive. Under Unicode case folding U+017F
  // (long s) equals 's'.
  size_t contraction(size_t i, bool ignore_case) const {
    if (cps_[i] != '\'' || i + 1 >= end_) return i;
    const auto at = [&](size_t k, char lower) {
      if (k >= end_) return false;
      char32_t c = cps_[k];
      if (c == static_cast<char32_t>(lower)) return true;
      if (!ignore_case) return false;
      return c == static_cast<char32_t>(lower - 'a' + 'A') || (lower == 's' && c == 0x17F);
    };
    if (at(i + 1, 's') || at(i + 1, 't') || at(i + 1, 'm') || at(i + 1, 'd')) return i + 2;
    if ((at(i + 1, 'r') || at(i + 1, 'v')) && at(i + 2, 'e')) return i + 3;
    if (at(i + 1, 'l') && at(i + 2, 'l')) return i + 3;
    return i;
  }

  // \s+(?!\S)|\s+ : a whitespace run, less its last character when a non-space follows
  // (that character then leads the next word), unless the run is a single character.
  size_t whitespace(size_t i) const {
    if (!is(i, CharClass::kSpace)) return i;
    size_t e = run(i, CharClass::kSpace);
    if (e == end_ || e - i == 1) return e;
    return e - 1;
  }

  const std::vector<char32_t>& cps_;
  const std::vector<CharClass>& classes_;
  size_t end_;
};

}  // namespace

std::optional<SplitPattern> recognise_split_pattern(std::string_view regex) {
  if (regex == kGpt2Regex) return SplitPattern::kGpt2;
  if (regex == kLlama3Regex) return SplitPattern::kLlama3;
  if (regex == kQwen2Regex) return SplitPattern::kQwen2;
  return std::nullopt;
}

void split(SplitPattern pattern, const std::vector<char32_t>& cps, const std::vector<CharClass>& classes,
           size_t begin, size_t end, std::vector<std::pair<size_t, size_t>>& pieces) {
  Matcher m(cps, classes, end);
  size_t gap = begin;  // start of text not yet matched
  for (size_t i = begin; i < end;) {
    size_t e = pattern == SplitPattern::kGpt2     ? m.gpt2(i)
               : pattern == SplitPattern::kLlama3 ? m.llama3(i, 3)
                                                  : m.llama3(i, 1);
    if (e == i) {
      ++i;
      continue;
    }
    if (gap < i) pieces.emplace_back(gap, i);
    pieces.emplace_back(i, e);
    i = gap = e;
  }
  if (gap < end) pieces.emplace_back(gap, end);
}

}  // namespace pal::text
