// Exception types of PAL, one per domain.
//
// Every error a user can cause (a bad file, a bad key, a bad value) is thrown as one of
// these, with a message that names the file, the key or tensor, and what was expected.
// The library never calls exit(); the command-line tools catch pal::Error at the top of
// main, print its message and return a documented exit code.
#pragma once

#include <stdexcept>
#include <string>

namespace pal {

// Base of all PAL errors. what() is the full, user-facing message.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A config file or --set override is wrong: unknown key, wrong type, out of range.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Reading or writing files failed: missing file, permission, short write, bad rename.
class IoError : public Error {
 public:
  using Error::Error;
};

// A weights file (safetensors, index, checkpoint folder) is malformed or does not match
// what the model expects.
class WeightsError : public Error {
 public:
  using Error::Error;
};

// Audio could not be decoded or resampled.
class AudioError : public Error {
 public:
  using Error::Error;
};

// A model was built or called with inconsistent shapes or options.
class ModelError : public Error {
 public:
  using Error::Error;
};

// A data manifest or record is malformed.
class DataError : public Error {
 public:
  using Error::Error;
};

// Training cannot go on (NaN loss, a killed peer, a corrupt resume state).
class TrainError : public Error {
 public:
  using Error::Error;
};

// A tokenizer file (tokenizer.json, sentencepiece .model) is malformed, or text cannot
// be encoded / ids cannot be decoded with it.
class TokenizerError : public Error {
 public:
  using Error::Error;
};

// A generation request is invalid (prompt longer than the context, bad sampling options).
class GenerationError : public Error {
 public:
  using Error::Error;
};

}  // namespace pal
