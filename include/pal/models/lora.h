// LoRA (ref: Hu et al. 2021; HF peft's LoraLayer): a linear layer W gets a trainable
// low-rank update, y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T, with A [rank, in]
// (Kaiming-uniform init) and B [out, rank] (zeros, so a new adapter changes nothing).
//
// The decoder's projections are LoraLinear layers: without an adapter they are plain
// linear layers with the checkpoint's names (weight, bias); an adapter adds the
// parameters <name>.lora_A.weight and <name>.lora_B.weight (peft's names, less its
// ".default"). Adapters are saved and loaded apart from the base weights, and can be
// merged into W for inference.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <filesystem>
#include <string>
#include <vector>

#include "pal/core/config.h"

namespace pal::models {

struct LoraConfig {
  int64_t rank = 0;       // 0: no LoRA
  double alpha = 16.0;    // scale = alpha / rank
  double dropout = 0.05;  // on the adapter's input, in training mode
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj"};  // layer names to adapt

  template <class V>
  void visit(V& v) {
    v("rank", rank, config::Rule().at_least(0));
    v("alpha", alpha, config::Rule().greater_than(0));
    v("dropout", dropout, config::Rule().at_least(0).less_than(1));
    v("targets", targets, config::Rule().non_empty());
  }
};

class LoraLinearImpl : public torch::nn::Module {
 public:
  LoraLinearImpl(int64_t in, int64_t out, bool bias);
  // x [..., in] -> [..., out]. A single row on the CPU goes through a matrix-vector
  // product (see the .cpp for why).
  torch::Tensor forward(const torch::Tensor& x);

  void add_adapter(int64_t rank, double alpha, double dropout);
  bool has_adapter() const { return !lora_A.is_empty(); }
  // W += scale * B A; the adapter is removed.
  void merge_adapter();

  torch::Tensor weight, bias;                          // bias undefined when absent
  torch::nn::Linear lora_A{nullptr}, lora_B{nullptr};  // set by add_adapter()
  double scale = 0, dropout = 0;
};
TORCH_MODULE(LoraLinear);

// x W^T (+ bias) with the single-row fast path, for weights outside a LoraLinear.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

// Adds adapters to every LoraLinear of `model` whose own name (the last part of its path)
// is in config.targets. Returns how many; throws ConfigError when a target matches none.
int64_t add_lora(torch::nn::Module& model, const LoraConfig& config);
// Merges every adapter of `model` into its base weights.
int64_t merge_lora(torch::nn::Module& model);
// Writes the adapters' parameters (names relative to `model`) and the LoRA config to a
// safetensors file, atomically.
void save_lora(const torch::nn::Module& model, const LoraConfig& config, const std::filesystem::path& file);
// Adds adapters as recorded in `file` and loads their weights; a missing or mis-shaped
// tensor is a WeightsError naming it. Returns the config read from the file.
LoraConfig load_lora(torch::nn::Module& model, const std::filesystem::path& file);

}  // namespace pal::models
