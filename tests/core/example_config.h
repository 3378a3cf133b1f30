// A small config tree that exercises every field kind the loader supports; used by the
// config tests and the config fuzz target.
#pragma once

#include <string>
#include <vector>

#include "pal/core/config.h"

namespace pal::test {

enum class Precision { off, bf16, fp16 };

}  // namespace pal::test

template <>
struct pal::config::EnumNames<pal::test::Precision> {
  static std::vector<std::pair<pal::test::Precision, std::string>> get() {
    return {{pal::test::Precision::off, "off"},
            {pal::test::Precision::bf16, "bf16"},
            {pal::test::Precision::fp16, "fp16"}};
  }
};

namespace pal::test {

using config::Rule;

struct ManifestConfig {
  std::string path;     // JSONL manifest, relative to the config file
  double weight = 1.0;  // mixing weight
  template <class V>
  void visit(V& v) {
    v("path", path, Rule().required().non_empty());
    v("weight", weight, Rule().greater_than(0));
  }
};

struct OptimConfig {
  double lr = 1e-3;           // peak learning rate
  double weight_decay = 0.0;  // AdamW decoupled weight decay
  int64_t warmup_steps = 0;   // linear warmup
  std::vector<double> betas = {0.9, 0.999};
  template <class V>
  void visit(V& v) {
    v("lr", lr, Rule().greater_than(0).at_most(10));
    v("weight_decay", weight_decay, Rule().at_least(0));
    v("warmup_steps", warmup_steps, Rule().at_least(0));
    v("betas", betas, Rule().at_least(0).less_than(1));
  }
};

struct StageConfig {
  std::string name = "align";
  int64_t steps = 100;
  int batch_size = 8;
  float grad_clip = 1.0f;
  bool shuffle = true;
  Precision amp = Precision::off;
  std::vector<std::string> trainable = {"projector.*"};
  std::vector<int> layers;
  OptimConfig optim;
  std::vector<ManifestConfig> manifests;
  template <class V>
  void visit(V& v) {
    v("name", name, Rule().one_of({"align", "probe", "instruct"}));
    v("steps", steps, Rule().at_least(1));
    v("batch_size", batch_size, Rule().at_least(1));
    v("grad_clip", grad_clip, Rule().greater_than(0));
    v("shuffle", shuffle);
    v("amp", amp);
    v("trainable", trainable);
    v("layers", layers, Rule().at_least(0));
    v("optim", optim);
    v("manifests", manifests, Rule().required().non_empty());
    v.check(optim.warmup_steps <= steps, "optim", "warmup_steps must not exceed steps");
  }
};

}  // namespace pal::test
