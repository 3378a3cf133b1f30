// Training checkpoints: model folders (pal/models/pal_checkpoint.h) plus what a run needs
// to continue exactly where it stopped.
//
//   <output_dir>/step-000500/       one checkpoint
//       model.yaml, model.safetensors, tokenizer files   (a model folder: pal-infer loads it)
//       config.yaml                 the fully resolved stage config
//       optimizer.safetensors       AdamW moments and step counts, by parameter name
//       rng.safetensors             LibTorch's generator states (CPU, CUDA)
//       trainer_state.json          step, data cursor, loss scaler, counters
//   <output_dir>/final/             the end of the stage (trainer_state.json: "finished": true)
//   <output_dir>/latest             the name of the newest complete checkpoint
//
// A checkpoint is written into a hidden temporary folder and renamed into place, then
// `latest` is replaced atomically: a crash or a kill at any moment leaves the previous
// checkpoint complete and `latest` pointing at a complete one.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace pal::train {

struct TrainerState {
  std::string stage;
  int64_t step = 0;          // optimizer steps done
  int64_t total_steps = 0;
  int64_t epoch = 0;
  std::string data_cursor;   // the loader's cursor after the last batch trained on (rank 0's)
  int64_t world_size = 1;    // ranks of the run that wrote it
  std::vector<std::string> data_cursors;  // world_size > 1: every rank's cursor, in rank order
  double loss_scale = 0;     // fp16 dynamic loss scale (0: unused)
  int64_t scaler_good_steps = 0;
  int64_t skipped_steps = 0;      // fp16 overflow steps skipped
  int64_t tokens_seen = 0;
  double audio_seconds_seen = 0;
  double elapsed_seconds = 0;
  double last_loss = 0;
  bool finished = false;
  std::vector<std::string> saved_parameters;  // names in model.safetensors
};

std::string to_json(const TrainerState& state);
// Throws TrainError naming `source` on malformed JSON or missing keys.
TrainerState trainer_state_from_json(const std::string& text, const std::string& source);

// Writes one checkpoint folder `<output_dir>/<name>` atomically: `write_contents(tmp)`
// fills a temporary folder, which is then renamed to `name` (replacing an older folder of
// that name) and recorded in `latest`. On failure the temporary folder is removed and the
// previous checkpoints stay as they were.
void commit_checkpoint(const std::filesystem::path& output_dir, const std::string& name,
                       const std::function<void(const std::filesystem::path&)>& write_contents);

// The newest complete checkpoint of a run: `latest` when it names a complete folder,
// else the highest complete step-N folder; nullopt when there is none. Stale temporary
// folders of an interrupted save are removed (and logged).
std::optional<std::filesystem::path> find_resume_checkpoint(const std::filesystem::path& output_dir);

// True when the folder has every file of a checkpoint.
bool is_complete_checkpoint(const std::filesystem::path& folder);

// Keeps the `keep` newest step-N folders (and final/), deleting the rest.
void prune_checkpoints(const std::filesystem::path& output_dir, int64_t keep);

// "step-000123".
std::string step_checkpoint_name(int64_t step);

// LibTorch's generator states, for rng.safetensors.
std::vector<std::pair<std::string, at::Tensor>> rng_state();
void restore_rng_state(const std::filesystem::path& file);

}  // namespace pal::train
