// Reading Hugging Face checkpoint folders into modules whose parameter names are the
// checkpoint's keys: config.json fields with errors that name the file and the key, and
// a name-lookup weight loader with errors that name the tensor. Internal to src/models.
#pragma once

#include <torch/nn/module.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace pal::models::detail {

// A parsed config.json; every accessor throws ConfigError("<file>: <key>: <why>").
class ConfigJson {
 public:
  static ConfigJson open(const std::filesystem::path& file);

  const std::string& file() const { return file_; }
  bool has(const char* key) const;
  std::string model_type() const;  // "" when absent
  [[noreturn]] void fail(const std::string& key, const std::string& why) const;
  // Throws unless model_type is one of `expected` (a checkpoint of another architecture).
  void require_model_type(const std::vector<std::string>& expected, const std::string& what) const;

  int64_t integer(const char* key, std::optional<int64_t> fallback = std::nullopt) const;
  double number(const char* key, std::optional<double> fallback = std::nullopt) const;
  bool boolean(const char* key, bool fallback) const;
  std::string string(const char* key, std::optional<std::string> fallback = std::nullopt) const;

 private:
  nlohmann::json json_;
  std::string file_;
};

// Copies the tensors "<prefix><name>" of the checkpoint in `folder` into the parameters
// and buffers `name` of `module` (no gradient tracking). The prefix is the first of
// `prefixes` under which the checkpoint holds `probe` (a parameter every such checkpoint
// has); tensors outside the prefix, or matching `ignore`, are left alone (a decoder, a
// classifier head). Throws WeightsError naming the tensor when one is missing, has
// another shape, or sits under the prefix without a place in the module.
void load_prefixed(torch::nn::Module& module, const std::filesystem::path& folder,
                   const std::vector<std::string>& prefixes, const std::string& probe,
                   const std::string& what, const std::function<bool(const std::string&)>& ignore = nullptr);

// Fresh weights in the Hugging Face initialisation: weights ~ N(0, std) truncated at
// +-2 std, biases 0, LayerNorm scales 1 (a parameter named "...norm....weight").
// For encoders trained from scratch (`weights: random`).
void init_hf_style(torch::nn::Module& module, double std);

// Sets requires_grad on every parameter of `module`.
void set_trainable(torch::nn::Module& module, bool trainable);

}  // namespace pal::models::detail
