// The config of one training stage, and of a curriculum of stages (DESIGN.md section 4).
//
// A stage YAML (every key below; unknown keys are errors naming the key's path):
//
//   model: {...}                 # PalModelConfig (pal/models/pal_model.h)
//   init_from: ../align/final    # a checkpoint (model folder) whose weights start this stage
//   output_dir: runs/probe       # checkpoints, metrics.jsonl, the resolved config
//   trainable: [ensemble, projector, "decoder.probe_adapters.*", lora]
//   objective: lm                # lm: the answer tokens' cross-entropy; classify: see below
//   classify: {max_answers: 32, tasks: []}
//   data: {train: [{path: train.jsonl, weight: 1}], eval: [...], ...}
//   optim: {lr: 2e-4, weight_decay: 0.01, betas: [0.9, 0.999], eps: 1e-8, clip_grad_norm: 1.0}
//   schedule: {warmup_steps: 100, min_lr_ratio: 0.1}
//   steps: 1000                  # or epochs: 2 (over the train manifests)
//   batch_size: 8
//   grad_accum: 4                # micro-batches per optimizer step
//   precision: {amp: bf16}       # off | bf16 | fp16 (CUDA); fp16 uses dynamic loss scaling
//   eval: {every: 200, batches: 20}
//   checkpoint: {every: 500, keep: 3, full_model: false}
//   distributed: {backend: auto, timeout_s: 600, bucket_mb: 25}   # multi-process runs only
//
// Relative paths are taken from the folder of the YAML file they appear in.
//
// `objective: classify` pre-trains the audio side without the LLM: a linear head over the
// mean of the ensemble's output tokens (before the projector) learns the closed tasks'
// answers, one class per (task, answer) seen in the train manifests, by cross-entropy.
// A task is closed when its train answers number at most classify.max_answers (or when
// classify.tasks names it); examples of other tasks are skipped. Encoders trained from
// scratch need it: read through the LLM alone, their output hardly depends on the clip
// at first, and the LLM's loss does not move them (README, "The demo"). The head is saved
// beside the model (classifier.safetensors, classes.json), not in model.safetensors: the
// next stage's init_from loads the model alone.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pal/core/config.h"
#include "pal/data/loader.h"
#include "pal/models/pal_model.h"
#include "pal/train/distributed.h"

namespace pal::train {

enum class AmpMode { off, bf16, fp16 };
enum class Objective { lm, classify };
enum class LossMean { tokens, examples };

}  // namespace pal::train

template <>
struct pal::config::EnumNames<pal::train::Objective> {
  static std::vector<std::pair<pal::train::Objective, std::string>> get() {
    return {{pal::train::Objective::lm, "lm"}, {pal::train::Objective::classify, "classify"}};
  }
};

template <>
struct pal::config::EnumNames<pal::train::LossMean> {
  static std::vector<std::pair<pal::train::LossMean, std::string>> get() {
    return {{pal::train::LossMean::tokens, "tokens"}, {pal::train::LossMean::examples, "examples"}};
  }
};

template <>
struct pal::config::EnumNames<pal::train::AmpMode> {
  static std::vector<std::pair<pal::train::AmpMode, std::string>> get() {
    return {{pal::train::AmpMode::off, "off"},
            {pal::train::AmpMode::bf16, "bf16"},
            {pal::train::AmpMode::fp16, "fp16"}};
  }
};

namespace pal::train {

struct OptimizerConfig {
  double lr = 1e-4;                       // peak learning rate
  double weight_decay = 0.01;             // AdamW decay; never on norms, biases and 1-D tensors
  std::vector<double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double clip_grad_norm = 1.0;            // global L2 norm; 0: no clipping

  template <class V>
  void visit(V& v) {
    v("lr", lr, config::Rule().greater_than(0));
    v("weight_decay", weight_decay, config::Rule().at_least(0));
    v("betas", betas, config::Rule().at_least(0).less_than(1));
    v("eps", eps, config::Rule().greater_than(0));
    v("clip_grad_norm", clip_grad_norm, config::Rule().at_least(0));
    v.check(betas.size() == 2, "betas", "needs two values, e.g. [0.9, 0.999]");
  }
};

struct ScheduleConfig {
  int64_t warmup_steps = 0;   // linear from 0 to lr
  double min_lr_ratio = 0.0;  // cosine decay from lr to lr * min_lr_ratio at the last step

  template <class V>
  void visit(V& v) {
    v("warmup_steps", warmup_steps, config::Rule().at_least(0));
    v("min_lr_ratio", min_lr_ratio, config::Rule().at_least(0).at_most(1));
  }
};

struct PrecisionConfig {
  AmpMode amp = AmpMode::off;            // autocast on CUDA; CPU trains in float32
  double initial_loss_scale = 65536.0;   // fp16: the dynamic scaler's start
  int64_t scale_growth_interval = 2000;  // fp16: steps without overflow before the scale doubles

  template <class V>
  void visit(V& v) {
    v("amp", amp);
    v("initial_loss_scale", initial_loss_scale, config::Rule().greater_than(0));
    v("scale_growth_interval", scale_growth_interval, config::Rule().at_least(1));
  }
};

struct ClassifyConfig {
  int64_t max_answers = 32;        // a task with more distinct train answers is open (skipped)
  std::vector<std::string> tasks;  // the tasks to classify; empty: every closed task

  template <class V>
  void visit(V& v) {
    v("max_answers", max_answers, config::Rule().at_least(2));
    v("tasks", tasks);
  }
};

struct EvalConfig {
  int64_t every = 0;      // optimizer steps between evaluations; 0: at the end only
  int64_t batches = 50;   // batches of the eval manifests per evaluation (0: the whole set)

  template <class V>
  void visit(V& v) {
    v("every", every, config::Rule().at_least(0));
    v("batches", batches, config::Rule().at_least(0));
  }
};

struct CheckpointConfig {
  int64_t every = 0;        // optimizer steps between checkpoints; 0: at the end (and on a signal) only
  int64_t keep = 3;         // step checkpoints kept (the final one is always kept)
  bool full_model = false;  // save every parameter, not only those this run owns

  template <class V>
  void visit(V& v) {
    v("every", every, config::Rule().at_least(0));
    v("keep", keep, config::Rule().at_least(1));
    v("full_model", full_model);
  }
};

struct StageConfig {
  std::string name = "stage";      // shown in logs and metrics
  models::PalModelConfig model;
  std::string init_from;           // a model folder; "" starts from the base weights
  std::string output_dir;          // required
  std::vector<std::string> trainable;  // parameter-name globs, or group names (see PalModel::parameter_groups)
  Objective objective = Objective::lm;
  ClassifyConfig classify;         // objective: classify
  // objective lm: the loss's mean over the batch's answer tokens (every token weighs the
  // same: long answers dominate), or over its examples (each example's answer weighs the
  // same, a one-word answer as much as a caption).
  LossMean loss_mean = LossMean::tokens;
  data::DataConfig data;
  OptimizerConfig optim;
  ScheduleConfig schedule;
  int64_t steps = 0;               // optimizer steps; or
  double epochs = 0;               // passes over the train manifests (converted to steps)
  int64_t batch_size = 8;
  int64_t grad_accum = 1;
  PrecisionConfig precision;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  DistributedConfig distributed;   // used when launched as one rank of several (torchrun)
  std::string device = "auto";     // auto (CUDA when present; cuda:LOCAL_RANK for a rank), cpu, cuda, cuda:N
  int64_t threads = 0;             // CPU intra-op threads; 0: every core
  uint64_t seed = 0;
  int64_t log_every = 10;          // steps between metrics lines

  template <class V>
  void visit(V& v) {
    v("name", name, config::Rule().non_empty());
    v("model", model, config::Rule().required());
    v("init_from", init_from);
    v("output_dir", output_dir, config::Rule().required().non_empty());
    v("trainable", trainable, config::Rule().required().non_empty());
    v("objective", objective);
    v("classify", classify);
    v("loss_mean", loss_mean);
    v("data", data, config::Rule().required());
    v("optim", optim);
    v("schedule", schedule);
    v("steps", steps, config::Rule().at_least(0));
    v("epochs", epochs, config::Rule().at_least(0));
    v("batch_size", batch_size, config::Rule().at_least(1));
    v("grad_accum", grad_accum, config::Rule().at_least(1));
    v("precision", precision);
    v("eval", eval);
    v("checkpoint", checkpoint);
    v("distributed", distributed);
    v("device", device, config::Rule().non_empty());
    v("threads", threads, config::Rule().at_least(0));
    int64_t seed64 = static_cast<int64_t>(seed);
    v("seed", seed64, config::Rule().at_least(0));
    seed = static_cast<uint64_t>(seed64);
    v("log_every", log_every, config::Rule().at_least(1));
    v.check((steps > 0) != (epochs > 0), "steps", "set exactly one of steps and epochs (> 0)");
    v.check(objective == Objective::lm || loss_mean == LossMean::tokens, "loss_mean",
            "weighs the answer tokens of objective: lm; objective: classify has no answer tokens");
  }
};

// A curriculum YAML:
//
//   output_dir: runs/pal-probe        # stage i writes to output_dir/<stage name>
//   set: [model.fusion.mode=probe]    # overrides applied to every stage
//   stages:
//     - {name: align, config: stage1_align.yaml}
//     - {name: probe, config: stage2_probe.yaml, set: [steps=2000]}
//     - {name: instruct, config: stage3_instruct.yaml}
//
// Stage i > 0 starts from stage i-1's final checkpoint (its init_from is replaced).
struct CurriculumStageEntry {
  std::string name;
  std::string config;
  std::vector<std::string> set;

  template <class V>
  void visit(V& v) {
    v("name", name, config::Rule().required().non_empty());
    v("config", config, config::Rule().required().non_empty());
    v("set", set);
  }
};

struct CurriculumConfig {
  std::string output_dir;
  std::vector<std::string> set;
  std::vector<CurriculumStageEntry> stages;

  template <class V>
  void visit(V& v) {
    v("output_dir", output_dir, config::Rule().required().non_empty());
    v("set", set);
    v("stages", stages, config::Rule().required().non_empty());
  }
};

// Loads a stage YAML with `overrides` applied; relative paths in it (model folders,
// manifests, init_from, output_dir, the data cache) become absolute, taken from the
// file's folder.
StageConfig load_stage_config(const std::filesystem::path& file, const std::vector<std::string>& overrides = {});

// The same for a config already parsed (paths taken from `base_dir`).
StageConfig resolve_stage_paths(StageConfig config, const std::filesystem::path& base_dir);

}  // namespace pal::train
