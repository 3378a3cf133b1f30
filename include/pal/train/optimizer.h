// The optimizer side of training: AdamW over named parameter groups, the warmup + cosine
// schedule, and the dynamic loss scaler of fp16 AMP. State is kept per parameter *name*,
// so that it saves to safetensors and loads into a freshly built model.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "pal/io/safetensors.h"

namespace pal::train {

struct NamedParameter {
  std::string name;
  at::Tensor tensor;  // a leaf that requires grad
};

// AdamW as torch.optim.AdamW defines it (decoupled decay: p -= lr * wd * p; bias-corrected
// moments; eps added after the square root). Two groups: with weight decay, and without
// (norms, biases and every 1-D tensor).
// ref: torch/optim/adamw.py (_single_tensor_adamw)
class AdamW {
 public:
  struct Options {
    double weight_decay = 0.01;
    double beta1 = 0.9, beta2 = 0.999;
    double eps = 1e-8;
  };
  AdamW(std::vector<NamedParameter> parameters, const Options& options);

  // One update at learning rate `lr` from the parameters' .grad() (undefined grads are
  // skipped). Grads must be unscaled already.
  void step(double lr);
  void zero_grad();

  // L2 norm over every gradient; scales them to `max_norm` when above (max_norm > 0).
  // Returns the norm before clipping (inf/nan when a gradient is not finite).
  double clip_grad_norm(double max_norm);

  // Moments and step counts as named tensors ("exp_avg.<param>", "exp_avg_sq.<param>",
  // "step.<param>") for a safetensors file, and back. load_state() throws TrainError when
  // a parameter's state is missing or mis-shaped.
  io::NamedTensors state() const;
  void load_state(const io::SafetensorsFile& file);

  const std::vector<NamedParameter>& parameters() const { return parameters_; }
  int64_t decayed_count() const;  // parameters in the weight-decay group

 private:
  struct Slot {
    NamedParameter param;
    bool decay = true;
    at::Tensor exp_avg, exp_avg_sq;  // float32, lazily created
    int64_t step = 0;
  };
  std::vector<NamedParameter> parameters_;
  std::vector<Slot> slots_;
  Options options_;
};

// Learning rate at optimizer step `step` (0-based) of `total`: linear warmup from 0 over
// `warmup` steps, then half a cosine from `peak` down to `peak * min_ratio` at the last step.
double learning_rate(int64_t step, int64_t total, double peak, int64_t warmup, double min_ratio);

// fp16 dynamic loss scaling (torch.cuda.amp.GradScaler's rule): multiply the loss by
// scale(); after backward, unscale() divides the grads and reports whether all are
// finite; an overflow step is skipped and halves the scale; `growth_interval` good steps
// in a row double it.
// ref: torch/amp/grad_scaler.py
class DynamicLossScaler {
 public:
  DynamicLossScaler(double initial_scale = 65536.0, int64_t growth_interval = 2000);
  double scale() const { return scale_; }
  // Divides every defined grad by scale(); returns false when any grad holds inf or nan.
  bool unscale(const std::vector<NamedParameter>& parameters) const;
  // After a step: `finite` from unscale(). Halves on overflow (and counts it), else grows.
  void update(bool finite);
  int64_t skipped_steps() const { return skipped_; }
  // For checkpoints.
  void restore(double scale, int64_t good_steps, int64_t skipped);
  int64_t good_steps() const { return good_steps_; }

 private:
  double scale_;
  int64_t growth_interval_;
  int64_t good_steps_ = 0;
  int64_t skipped_ = 0;
};

}  // namespace pal::train
