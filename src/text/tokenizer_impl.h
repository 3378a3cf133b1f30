// Loaders of the tokenizer implementations, for load_tokenizer().
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "pal/text/tokenizer.h"

namespace pal::text {

// HF tokenizer.json with a byte-level BPE model (bpe_tokenizer.cpp).
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& file);

// A sentencepiece model file (sentencepiece_tokenizer.cpp).
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::filesystem::path& file);

// Reads a whole file; TokenizerError naming it when that fails.
std::string read_tokenizer_file(const std::filesystem::path& file);

}  // namespace pal::text
