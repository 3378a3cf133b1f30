// One training stage: builds the model, freezes all but the `trainable` parameters, and
// runs AdamW over the data stream, with evaluation, checkpoints, resume and the user's
// view (progress bar, metrics.jsonl). pal-train is a thin main over this.
//
//   auto config = pal::train::load_stage_config("configs/tiny/stage1_align.yaml");
//   pal::train::Trainer trainer(config);
//   pal::train::TrainResult r = trainer.run();   // resumes from output_dir when it holds a checkpoint
//
// Exact resume: a run stopped at any checkpoint and started again computes the same
// losses as one that never stopped (same seed, same device, same thread count), because
// the weights, the optimizer moments, the generator states and the data cursor are all
// in the checkpoint.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pal/train/distributed.h"
#include "pal/train/stage_config.h"

namespace pal::train {

struct StepMetrics {
  int64_t step = 0;          // optimizer steps done, this one included
  int64_t total_steps = 0;
  double loss = 0;           // mean over the step's micro-batches
  double lr = 0;
  double grad_norm = 0;      // before clipping
  double tokens_per_second = 0;         // text tokens (prompt + answer) through the model
  double audio_seconds_per_second = 0;  // seconds of audio through the encoders
  bool skipped = false;      // fp16 overflow: no update
  double data_seconds = 0;     // this step's wait for batches
  double compute_seconds = 0;  // prompts, forward and backward of its micro-batches
  double update_seconds = 0;   // gradient clipping and the optimizer
  double allreduce_seconds = 0;  // multi-process runs: this step's gradient all-reduce (not in compute_seconds)
  double elapsed_seconds = 0;
};

struct TrainOptions {
  // Stop after this many optimizer steps of this call (checkpoint written, as on
  // SIGTERM); 0: run to the end. For tests and time-boxed jobs.
  int64_t stop_after_steps = 0;
  bool progress_bar = true;                       // on stderr when it is a terminal
  std::function<void(const StepMetrics&)> on_step;  // called after every optimizer step
  int64_t rank = 0, world_size = 1;               // data sharding; set from process_group when there is one
  // Multi-process data parallelism (pal-train sets it from torchrun's environment); null:
  // one process. Connected by the first stage that runs; shared by a curriculum's stages.
  // Every rank trains the same parameters (broadcast from rank 0 at the start) on its
  // shard of the manifests; gradients are averaged over the ranks; only rank 0 writes
  // metrics.jsonl and checkpoints. Resuming at another world size keeps the weights, the
  // optimizer and the step, and restarts the data pass (README, "Multi-process training").
  std::shared_ptr<ProcessGroup> process_group;
};

struct TrainResult {
  int64_t step = 0;              // optimizer steps done in all
  bool finished = false;         // the stage reached its last step (final/ written)
  bool interrupted = false;      // stopped by a signal or stop_after_steps
  std::filesystem::path checkpoint;  // the last checkpoint written or found
  double last_loss = 0;
  int64_t skipped_steps = 0;
  int64_t bad_records = 0;
};

class Trainer {
 public:
  explicit Trainer(StageConfig config, TrainOptions options = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Trains to the end (or a stop), resuming from output_dir's newest checkpoint if any.
  // A stage whose final checkpoint exists returns at once (finished = true). Throws
  // ConfigError / DataError / TrainError with a message naming the file, key or value.
  TrainResult run();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// SIGINT / SIGTERM make a running Trainer write a checkpoint and return (interrupted);
// a second signal ends the process at once. pal-train installs these.
void install_stop_signal_handlers();
bool stop_requested();
int stop_signal();  // the signal that requested the stop, 0 when none
void clear_stop_request();

// Whether a stage is finished: its output_dir holds final/ with "finished": true.
bool stage_finished(const std::filesystem::path& output_dir);

// The curriculum's stages, each config resolved as run_curriculum trains it (paths
// absolute, the chain's init_from and every override applied); checked, nothing loaded.
std::vector<StageConfig> load_curriculum(const std::filesystem::path& curriculum_file,
                                         const std::vector<std::string>& overrides);

// Runs the curriculum's stages in order (every stage's config is checked first); a
// finished stage is skipped, an unfinished one resumed. Stage i writes to
// output_dir/<name> and starts from stage i-1's final checkpoint (init_from). Overrides,
// later ones winning: the curriculum's `set`, the stage chain, the entry's `set`, then
// `overrides` (where `output_dir=X` moves the whole curriculum to X). Returns the last
// stage's result (or the interrupted one's).
TrainResult run_curriculum(const std::filesystem::path& curriculum_file, const std::vector<std::string>& overrides,
                           const TrainOptions& options = {});

}  // namespace pal::train
