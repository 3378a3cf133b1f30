#include "pal/train/trainer.h"

#include <fnmatch.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "../core/log.h"
#include "autocast.h"
#include "classifier.h"
#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "pal/core/runtime.h"
#include "pal/data/loader.h"
#include "pal/io/safetensors.h"
#include "pal/models/pal_checkpoint.h"
#include "pal/text/prompt.h"
#include "pal/train/checkpoint.h"
#include "pal/train/distributed.h"
#include "pal/train/optimizer.h"
#include "progress.h"

namespace pal::train {
namespace fs = std::filesystem;
using detail::log_info;
using detail::log_warn;

namespace {

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int signal) {
  g_stop_signal.store(signal);
  // A second signal ends the process at once.
  std::signal(signal, SIG_DFL);
}

bool has_glob(const std::string& pattern) { return pattern.find_first_of("*?[") != std::string::npos; }

// `local_rank`: a rank's device on its node (cuda:LOCAL_RANK for "auto" and "cuda").
c10::Device resolve_device(const std::string& name, int64_t local_rank) {
  const auto local_cuda = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
  if (name == "auto") return torch::cuda::is_available() ? local_cuda : c10::Device(c10::kCPU);
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(name);
  } catch (const std::exception&) {
    throw ConfigError("device: '" + name + "' is not a device (auto, cpu, cuda, cuda:N)");
  }
  if (device.is_cuda() && !torch::cuda::is_available())
    throw ConfigError("device: '" + name + "', but no CUDA device is available" +
                      (runtime_info().torch_cuda_build ? "" : " (this LibTorch is a CPU build)"));
  if (device.is_cuda() && !device.has_index()) device = local_cuda;
  if (device.is_cuda() && device.index() >= static_cast<int64_t>(torch::cuda::device_count()))
    throw ConfigError("device: " + device.str() + ", but this machine has " +
                      std::to_string(torch::cuda::device_count()) + " CUDA device(s)" +
                      (local_rank > 0 ? " (LOCAL_RANK=" + std::to_string(local_rank) + ")" : ""));
  return device;
}

// Token ids, validity and answer masks of a batch, right-padded.
struct Collated {
  torch::Tensor ids, valid, labels;
  int64_t text_tokens = 0;
  bool with_audio = true;
};

// With LossMean::examples the labels weigh each answer token 1 / (its answer's tokens).
Collated collate(const data::Batch& batch, const text::PromptBuilder& prompts, LossMean loss_mean) {
  const int64_t b = static_cast<int64_t>(batch.examples.size());
  int64_t with_audio = 0;
  for (const auto& e : batch.examples) with_audio += e.audio.empty() ? 0 : 1;
  if (with_audio != 0 && with_audio != b)
    throw TrainError("a batch mixes examples with and without audio (" + batch.examples.front().source + ", " +
                     batch.examples.back().source +
                     "); text-only examples need a stage, or manifests, of their own");
  std::vector<text::PromptBuilder::Example> encoded;
  int64_t longest = 0;
  for (const auto& e : batch.examples) {
    encoded.push_back(prompts.example(e.instruction, e.output, with_audio > 0));
    longest = std::max<int64_t>(longest, static_cast<int64_t>(encoded.back().ids.size()));
  }
  Collated c;
  c.with_audio = with_audio > 0;
  c.ids = torch::zeros({b, longest}, torch::kInt64);
  c.valid = torch::zeros({b, longest}, torch::kBool);
  c.labels = torch::zeros({b, longest}, torch::kFloat32);
  auto ids = c.ids.accessor<int64_t, 2>();
  auto valid = c.valid.accessor<bool, 2>();
  auto labels = c.labels.accessor<float, 2>();
  for (int64_t i = 0; i < b; ++i) {
    const auto& e = encoded[static_cast<size_t>(i)];
    const auto answer_tokens =
        std::count_if(e.is_answer.begin(), e.is_answer.end(), [](auto a) { return a != 0; });
    const float w =
        loss_mean == LossMean::examples && answer_tokens > 0 ? 1.0f / static_cast<float>(answer_tokens) : 1.0f;
    for (size_t t = 0; t < e.ids.size(); ++t) {
      ids[i][static_cast<int64_t>(t)] = e.ids[t];
      valid[i][static_cast<int64_t>(t)] = true;
      labels[i][static_cast<int64_t>(t)] = e.is_answer[t] != 0 ? w : 0.0f;
    }
    c.text_tokens += static_cast<int64_t>(e.ids.size());
  }
  if (loss_mean == LossMean::tokens) c.labels = c.labels.to(torch::kBool);
  return c;
}

// FNV-1a over the bytes of the tensors: ranks that hold bit-identical parameters have
// the same fingerprint.
std::string fingerprint(const std::vector<NamedParameter>& parameters) {
  uint64_t h = 1469598103934665603ULL;
  for (const auto& p : parameters) {
    const at::Tensor t = p.tensor.detach().to(torch::kCPU).contiguous();
    const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
    const size_t n = static_cast<size_t>(t.numel()) * t.element_size();
    for (size_t i = 0; i < n; ++i) h = (h ^ bytes[i]) * 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void install_stop_signal_handlers() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}
bool stop_requested() { return g_stop_signal.load() != 0; }
int stop_signal() { return g_stop_signal.load(); }
void clear_stop_request() { g_stop_signal.store(0); }

bool stage_finished(const fs::path& output_dir) {
  const fs::path state = output_dir / "final" / "trainer_state.json";
  if (!is_complete_checkpoint(output_dir / "final")) return false;
  try {
    return trainer_state_from_json(read_file(state), state.string()).finished;
  } catch (const Error&) {
    return false;
  }
}

struct Trainer::State {
  StageConfig config;
  TrainOptions options;
  c10::Device device{c10::kCPU};
  models::PalModel model{nullptr};
  std::vector<NamedParameter> trainable;
  std::set<std::string> saved;  // parameters this run owns (written to model.safetensors)
  std::unique_ptr<AdamW> optimizer;
  std::unique_ptr<DynamicLossScaler> scaler;
  TrainerState progress;
  fs::path output_dir;
  ProcessGroup* group = nullptr;  // multi-process runs
  std::unique_ptr<GradientBuckets> buckets;
  int64_t saves = 0;              // store keys of the cursor exchange
  std::unique_ptr<internal::AnswerClassifier> classifier;  // objective: classify

  struct BatchLoss {
    torch::Tensor loss;
    int64_t text_tokens = 0;
    int64_t correct = 0, classified = 0;  // objective: classify
    std::vector<int64_t> correct_by_task, classified_by_task;
  };

  void build_model();
  void select_trainable();
  void build_classifier();
  BatchLoss batch_loss(const data::Batch& batch);
  void load_init_from();
  bool resume();
  void save(const std::string& name);
  void write_checkpoint(const std::string& name);
  struct EvalResult {
    double loss = std::nan("");
    double accuracy = std::nan("");  // objective: classify
    std::map<std::string, double> accuracy_by_task;
  };
  EvalResult evaluate();
  void append_metrics(const nlohmann::json& line) const;
  void truncate_metrics(int64_t step) const;
  int64_t total_steps() const;
};

Trainer::Trainer(StageConfig config, TrainOptions options) : state_(std::make_unique<State>()) {
  state_->config = std::move(config);
  state_->options = std::move(options);
}

Trainer::~Trainer() = default;

void Trainer::State::build_model() {
  device = resolve_device(config.device, options.process_group ? options.process_group->local_rank() : 0);
  if (config.precision.amp != AmpMode::off && !device.is_cuda())
    throw ConfigError("precision.amp: " + config::enum_name(config.precision.amp) +
                      " needs a CUDA device (device: " + config.device +
                      "); on the CPU, training runs in float32: set precision.amp: off");
  if (config.precision.amp != AmpMode::off && config.model.dtype != models::ModelDtype::float32)
    throw ConfigError("precision.amp: " + config::enum_name(config.precision.amp) +
                      " keeps float32 master weights: set model.dtype: float32 (it is " +
                      config::enum_name(config.model.dtype) + ")");
  torch::manual_seed(config.seed);
  model = models::PalModel(config.model, "/");
  if (!model->prompts())
    throw ConfigError("model.llm: " + config.model.llm + " has no tokenizer (tokenizer.json or tokenizer.model)");
}

void Trainer::State::select_trainable() {
  std::vector<bool> matched(config.trainable.size(), false);
  auto matches = [&](const std::string& name) {
    bool any = false;
    for (size_t i = 0; i < config.trainable.size(); ++i) {
      const std::string& pattern = config.trainable[i];
      const bool hit = has_glob(pattern) ? fnmatch(pattern.c_str(), name.c_str(), 0) == 0
                                         : (pattern == name || pattern == models::PalModelImpl::parameter_group(name));
      if (hit) matched[i] = true;
      any = any || hit;
    }
    return any;
  };
  // "encoders.<i>.*" of an encoder built with `weights: random`.
  const auto random_encoder = [&](const std::string& name) {
    const size_t dot = name.find('.', 9);
    if (dot == std::string::npos) return false;
    const size_t i = std::stoul(name.substr(9, dot - 9));
    return i < config.model.encoders.size() && config.model.encoders[i].weights == "random";
  };
  for (auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    const std::string group = models::PalModelImpl::parameter_group(name);
    // Encoder blocks unfrozen by encoders[i].trainable_blocks stay trainable.
    const bool train = matches(name) || (group == "encoders" && p.value().requires_grad());
    p.value().set_requires_grad(train);
    if (train) trainable.push_back({name, p.value()});
    const bool fresh = group == "ensemble" || group == "projector" || group == "probe_adapters" || group == "lora" ||
                       (group == "llm" && config.model.llm_weights == "random") ||
                       (group == "encoders" && random_encoder(name));
    if (train || fresh || config.checkpoint.full_model) saved.insert(name);
  }
  static const std::set<std::string> kGroups = {"encoders", "ensemble",   "projector",
                                                "probe_adapters", "lora", "llm"};
  for (size_t i = 0; i < config.trainable.size(); ++i) {
    // A group this model does not have (probe_adapters in prefix mode, lora at rank 0):
    // one set of stage files serves every fusion mode.
    if (!matched[i] && kGroups.count(config.trainable[i])) {
      log_info("[", config.name, "] trainable: this model has no '", config.trainable[i],
               "' parameters (fusion mode ", config::enum_name(config.model.fusion.mode), ")");
      continue;
    }
    if (!matched[i])
      throw ConfigError("trainable: '" + config.trainable[i] +
                        "' matches no parameter (groups: encoders, ensemble, projector, probe_adapters, lora, llm; "
                        "or a glob over names such as 'decoder.llm.model.layers.*.self_attn.*')");
  }
  if (trainable.empty()) throw ConfigError("trainable: no parameter is trainable");
}

void Trainer::State::build_classifier() {
  if (config.objective != Objective::classify) return;
  for (const auto& p : trainable) {
    const std::string group = models::PalModelImpl::parameter_group(p.name);
    if (group != "encoders" && group != "ensemble")
      throw ConfigError("trainable: '" + p.name + "' (group '" + group +
                        "') gets no gradient with objective: classify, which reads the ensemble's output; "
                        "train only encoders and ensemble in this stage");
  }
  internal::AnswerClasses classes = internal::AnswerClasses::from_manifests(config.data.train, config.classify);
  std::string open;
  for (const auto& t : classes.open_tasks) open += (open.empty() ? "" : ", ") + t;
  log_info("[", config.name, "] objective classify: ", classes.classes.size(), " classes over ", classes.tasks().size(),
           " task(s)", open.empty() ? std::string() : "; open tasks skipped: " + open);
  classifier = std::make_unique<internal::AnswerClassifier>(std::move(classes), config.model.ensemble.width);
  classifier->to(device);
  for (auto& p : classifier->parameters()) trainable.push_back(p);
}

Trainer::State::BatchLoss Trainer::State::batch_loss(const data::Batch& batch) {
  BatchLoss r;
  const bool amp = config.precision.amp != AmpMode::off;
  CudaAutocastGuard autocast(amp, config.precision.amp == AmpMode::fp16 ? at::kHalf : at::kBFloat16);
  if (classifier) {
    internal::AnswerClassifier::Result c = classifier->forward(*model, batch, device);
    r.loss = c.loss;
    r.correct = c.correct;
    r.classified = c.classified;
    r.correct_by_task = std::move(c.correct_by_task);
    r.classified_by_task = std::move(c.classified_by_task);
    return r;
  }
  Collated c = collate(batch, *model->prompts(), config.loss_mean);
  models::FusionOutput out =
      c.with_audio ? model->forward(batch.waveforms.to(device), batch.lengths.to(device), c.ids.to(device),
                                    c.valid.to(device), c.labels.to(device))
                   : model->decoder->forward(c.ids.to(device), c.valid.to(device), {}, c.labels.to(device));
  r.loss = out.loss;
  r.text_tokens = c.text_tokens;
  return r;
}

void Trainer::State::load_init_from() {
  if (config.init_from.empty()) return;
  const fs::path folder(config.init_from);
  const fs::path weights = folder / models::kModelWeightsFile;
  if (!fs::is_regular_file(weights))
    throw ConfigError("init_from: " + folder.string() + " is not a checkpoint (no " + models::kModelWeightsFile +
                      (fs::exists(folder) ? ")" : "; the folder does not exist: did the previous stage run?)"));
  const size_t n = models::load_pal_weights(*model, weights);
  const auto file = io::SafetensorsFile::open(weights);
  for (const auto& info : file.tensors()) saved.insert(info.name);
  log_info("[", config.name, "] initialised ", n, " tensors from ", weights.string());
}

int64_t Trainer::State::total_steps() const {
  if (config.steps > 0) return config.steps;
  int64_t records = 0;
  for (const auto& m : config.data.train) records += data::count_records(m);
  records = (records + options.world_size - 1) / options.world_size;
  const double per_step = static_cast<double>(config.batch_size * config.grad_accum);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(config.epochs * static_cast<double>(records) / per_step)));
}

void Trainer::State::append_metrics(const nlohmann::json& line) const {
  if (options.rank != 0) return;
  std::ofstream out(output_dir / "metrics.jsonl", std::ios::app);
  out << line.dump() << "\n";
  if (!out) throw IoError((output_dir / "metrics.jsonl").string() + ": cannot append");
}

void Trainer::State::truncate_metrics(int64_t step) const {
  const fs::path file = output_dir / "metrics.jsonl";
  if (!fs::exists(file)) return;
  std::ifstream in(file);
  std::string line, kept;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.value("step", int64_t{0}) > step) continue;
    kept += line + "\n";
  }
  write_file_atomic(file, kept);
}

bool Trainer::State::resume() {
  // Rank 0 looks first: it removes an interrupted save's temporary folder.
  if (group && options.rank != 0) group->barrier("looking for a checkpoint to resume");
  const auto found = find_resume_checkpoint(output_dir);
  if (group && options.rank == 0) group->barrier("looking for a checkpoint to resume");
  if (!found) return false;
  const fs::path folder = *found;
  const fs::path state_file = folder / "trainer_state.json";
  progress = trainer_state_from_json(read_file(state_file), state_file.string());
  // The architecture must be the one the checkpoint was trained with.
  const models::PalModelConfig saved_model = config::load<models::PalModelConfig>(folder / models::kModelConfigFile);
  if (config::to_yaml(saved_model.fusion) != config::to_yaml(config.model.fusion) ||
      config::to_yaml(saved_model.lora) != config::to_yaml(config.model.lora) ||
      config::to_yaml(saved_model.ensemble) != config::to_yaml(config.model.ensemble) ||
      config::to_yaml(saved_model.projector) != config::to_yaml(config.model.projector))
    throw ConfigError("output_dir: " + output_dir.string() + " holds a run of a different model (" +
                      folder.string() + "/model.yaml differs in fusion, lora, ensemble or projector); " +
                      "use another output_dir, or delete it to start over");
  models::load_pal_weights(*model, folder / models::kModelWeightsFile);
  for (const auto& name : progress.saved_parameters) saved.insert(name);
  if (classifier) classifier->load(folder);
  optimizer->load_state(io::SafetensorsFile::open(folder / "optimizer.safetensors"));
  if (scaler) scaler->restore(progress.loss_scale, progress.scaler_good_steps, progress.skipped_steps);
  restore_rng_state(folder / "rng.safetensors");
  log_info("[", config.name, "] resuming from ", folder.string(), " at step ", progress.step, "/",
           progress.total_steps);
  return true;
}

// Collective in multi-process runs: every rank's data cursor goes to rank 0, which writes;
// a barrier after the write keeps the others from running ahead of (or exiting before) it.
void Trainer::State::save(const std::string& name) {
  progress.world_size = options.world_size;
  progress.data_cursors.clear();
  if (group) {
    const std::string key = config.name + "/" + name + "/" + std::to_string(saves++);
    progress.data_cursors = group->all_gather_strings(progress.data_cursor, "cursors/" + key);
    // Data parallelism keeps every rank's parameters bit-identical; a checkpoint checks it.
    const std::vector<std::string> prints = group->all_gather_strings(fingerprint(trainable), "fingerprints/" + key);
    append_metrics({{"type", "ranks"}, {"stage", config.name}, {"step", progress.step}, {"checkpoint", name},
                    {"parameter_fingerprints", prints}});
    for (size_t r = 1; r < prints.size(); ++r)
      if (prints[r] != prints[0])
        throw TrainError("[" + config.name + "] the trainable parameters of rank " + std::to_string(r) +
                         " differ from rank 0's at step " + std::to_string(progress.step) +
                         " (fingerprints " + prints[r] + " and " + prints[0] + "): the ranks diverged");
  }
  if (options.rank == 0) write_checkpoint(name);
  if (group) group->barrier("checkpoint " + name);
}

void Trainer::State::write_checkpoint(const std::string& name) {
  progress.saved_parameters.assign(saved.begin(), saved.end());
  if (scaler) {
    progress.loss_scale = scaler->scale();
    progress.scaler_good_steps = scaler->good_steps();
    progress.skipped_steps = scaler->skipped_steps();
  }
  commit_checkpoint(output_dir, name, [&](const fs::path& tmp) {
    models::save_pal_model(*model, tmp, saved);
    write_file_atomic(tmp / "config.yaml", config::to_yaml(config));
    io::save_safetensors(tmp / "optimizer.safetensors", optimizer->state());
    io::save_safetensors(tmp / "rng.safetensors", rng_state());
    write_file_atomic(tmp / "trainer_state.json", to_json(progress));
    if (classifier) classifier->save(tmp);
  });
  if (name != "final") prune_checkpoints(output_dir, config.checkpoint.keep);
}

Trainer::State::EvalResult Trainer::State::evaluate() {
  if (config.data.eval.empty()) return {};
  data::LoaderOptions lo;
  lo.batch_size = config.batch_size;
  lo.seed = config.seed;
  lo.shuffle = false;
  lo.repeat = false;
  lo.rank = options.rank;
  lo.world_size = options.world_size;
  data::DataLoader loader(config.data.eval, config.data, "/", lo);
  torch::NoGradGuard no_grad;
  model->eval();
  double total = 0;
  int64_t batches = 0, correct = 0, classified = 0;
  const std::vector<std::string> tasks = classifier ? classifier->classes().tasks() : std::vector<std::string>{};
  std::vector<double> by_task(2 * tasks.size(), 0.0);  // correct, then classified, per task
  while (config.eval.batches == 0 || batches < config.eval.batches) {
    auto batch = loader.next();
    if (!batch) break;
    const BatchLoss b = batch_loss(*batch);
    // A classify batch without a closed-task example has no loss to average.
    if (!classifier || b.classified > 0) {
      total += b.loss.item<double>();
      ++batches;
    }
    correct += b.correct;
    classified += b.classified;
    for (size_t t = 0; t < b.correct_by_task.size(); ++t) {
      by_task[t] += static_cast<double>(b.correct_by_task[t]);
      by_task[tasks.size() + t] += static_cast<double>(b.classified_by_task[t]);
    }
  }
  model->train();
  if (group) {
    // The mean over every rank's eval batches (each rank reads its shard).
    std::vector<double> values = {total, static_cast<double>(batches), static_cast<double>(correct),
                                  static_cast<double>(classified)};
    values.insert(values.end(), by_task.begin(), by_task.end());
    std::vector<at::Tensor> sums = {torch::tensor(values, torch::kFloat64).to(device)};
    group->all_reduce_sum(sums, "eval loss");
    const at::Tensor cpu = sums[0].cpu();
    total = cpu[0].item<double>();
    batches = static_cast<int64_t>(cpu[1].item<double>());
    correct = static_cast<int64_t>(cpu[2].item<double>());
    classified = static_cast<int64_t>(cpu[3].item<double>());
    for (size_t i = 0; i < by_task.size(); ++i) by_task[i] = cpu[static_cast<int64_t>(4 + i)].item<double>();
  }
  EvalResult r;
  if (batches > 0) r.loss = total / static_cast<double>(batches);
  if (classified > 0) r.accuracy = static_cast<double>(correct) / static_cast<double>(classified);
  for (size_t t = 0; t < tasks.size(); ++t)
    if (by_task[tasks.size() + t] > 0) r.accuracy_by_task[tasks[t]] = by_task[t] / by_task[tasks.size() + t];
  return r;
}

TrainResult Trainer::run() {
  State& s = *state_;
  const StageConfig& cfg = s.config;
  s.output_dir = cfg.output_dir;
  TrainResult result;
  if (stage_finished(s.output_dir)) {
    const fs::path state_file = s.output_dir / "final" / "trainer_state.json";
    const TrainerState done = trainer_state_from_json(read_file(state_file), state_file.string());
    log_info("[", cfg.name, "] already finished (", (s.output_dir / "final").string(), ")");
    result.step = done.step;
    result.finished = true;
    result.checkpoint = s.output_dir / "final";
    result.last_loss = done.last_loss;
    return result;
  }
  configure_threads({static_cast<int>(cfg.threads), 0});
  fs::create_directories(s.output_dir);
  if (s.options.process_group) {
    s.group = s.options.process_group.get();
    s.options.rank = s.group->rank();
    s.options.world_size = s.group->world_size();
  }

  s.build_model();
  if (s.group) s.group->connect(s.device.is_cuda(), cfg.distributed);
  s.load_init_from();
  s.select_trainable();
  s.model->to(s.device);
  s.model->train();
  // Re-read the parameters after the move: to() may replace tensors on another device.
  {
    std::vector<NamedParameter> moved;
    for (auto& p : s.model->named_parameters())
      if (p.value().requires_grad()) moved.push_back({p.key(), p.value()});
    s.trainable = std::move(moved);
  }
  s.build_classifier();
  AdamW::Options ao;
  ao.weight_decay = cfg.optim.weight_decay;
  ao.beta1 = cfg.optim.betas[0];
  ao.beta2 = cfg.optim.betas[1];
  ao.eps = cfg.optim.eps;
  s.optimizer = std::make_unique<AdamW>(s.trainable, ao);
  if (cfg.precision.amp == AmpMode::fp16)
    s.scaler = std::make_unique<DynamicLossScaler>(cfg.precision.initial_loss_scale, cfg.precision.scale_growth_interval);

  s.progress = TrainerState{};
  s.progress.stage = cfg.name;
  const bool resumed = s.resume();
  s.progress.total_steps = s.total_steps();
  if (resumed && s.options.rank == 0) s.truncate_metrics(s.progress.step);
  if (!resumed && s.options.rank == 0) {
    write_file_atomic(s.output_dir / "config.yaml", config::to_yaml(cfg));
    s.truncate_metrics(0);
  }

  int64_t trainable_count = 0;
  for (const auto& p : s.trainable) trainable_count += p.tensor.numel();
  log_info("[", cfg.name, "] ", s.trainable.size(), " trainable tensors (", trainable_count, " parameters, ",
           s.optimizer->decayed_count(), " with weight decay) on ", s.device.str(), "; ", s.progress.total_steps,
           " steps of ", cfg.batch_size, " x ", cfg.grad_accum, " examples");

  if (s.group) {
    // Every rank starts from rank 0's weights (and buffers), whatever it built or loaded;
    // ranks > 0 draw their own dropout masks.
    std::vector<at::Tensor> state;
    for (const auto& p : s.model->parameters()) state.push_back(p);
    for (const auto& b : s.model->buffers())
      if (b.is_floating_point()) state.push_back(b);  // (masks and indices follow from the config)
    if (s.classifier)
      for (const auto& p : s.classifier->parameters()) state.push_back(p.tensor);
    broadcast_from_rank0(*s.group, state, cfg.distributed.bucket_mb, "the model's parameters");
    std::vector<at::Tensor> grads;
    for (const auto& p : s.trainable) grads.push_back(p.tensor);
    s.buckets = std::make_unique<GradientBuckets>(grads, cfg.distributed.bucket_mb);
    if (s.options.rank > 0)
      torch::manual_seed(cfg.seed + 7919 * static_cast<uint64_t>(s.options.rank) + static_cast<uint64_t>(s.progress.step));
    log_info("[", cfg.name, "] data parallel over ", s.options.world_size, " ranks (", s.group->backend_name(), "); ",
             s.buckets->bucket_count(), " gradient buckets of up to ", cfg.distributed.bucket_mb, " MiB");
  }

  data::LoaderOptions lo;
  lo.batch_size = cfg.batch_size;
  lo.seed = cfg.seed;
  lo.rank = s.options.rank;
  lo.world_size = s.options.world_size;
  // The data cursor of this rank, when the checkpoint was written by as many ranks. At
  // another world size the shards differ and no cursor maps onto them: the data pass
  // restarts on the new shards with a seed moved by the step, so that the batches after
  // the resume are a fresh shuffle, not a replay of the stage's first batches.
  std::string cursor;
  const bool same_world = s.progress.world_size == s.options.world_size &&
                          (s.options.world_size == 1 ||
                           s.progress.data_cursors.size() == static_cast<size_t>(s.options.world_size));
  if (resumed && same_world)
    cursor = s.options.world_size == 1 ? s.progress.data_cursor
                                       : s.progress.data_cursors.at(static_cast<size_t>(s.options.rank));
  else if (resumed) {
    lo.seed = cfg.seed + 1000003ULL * static_cast<uint64_t>(s.progress.step);
    log_warn("[", cfg.name, "] the checkpoint was written by ", s.progress.world_size, " rank(s), this run has ",
             s.options.world_size, ": the weights, optimizer and step ", s.progress.step,
             " continue; the data pass restarts on the new shards (seed ", lo.seed, ")");
  }
  data::DataLoader loader(cfg.data.train, cfg.data, "/", lo);
  if (!cursor.empty()) loader.restore(cursor);

  ProgressBar bar(cfg.name, s.progress.total_steps, s.options.progress_bar && s.options.rank == 0);
  // No BlasThreadingGuard here (unlike decoding): a training step also spends much time in
  // element-wise and reduction kernels, which need LibTorch's own threads; measured with
  // pal-bench train on Debian's LibTorch, 0.93 s/step without the guard, 1.02 s with it.

  const auto run_start = std::chrono::steady_clock::now();
  const double elapsed_before = s.progress.elapsed_seconds;
  auto window_start = std::chrono::steady_clock::now();
  int64_t window_tokens = 0, window_steps = 0;
  double window_audio = 0, window_loss = 0;
  int64_t window_correct = 0, window_classified = 0;  // objective: classify
  int64_t steps_this_call = 0;
  std::string cursor_before_step = s.progress.data_cursor;

  while (s.progress.step < s.progress.total_steps) {
    double step_loss = 0;
    int64_t step_tokens = 0;
    double step_audio = 0;
    std::string first_source;
    double data_seconds = 0, compute_seconds = 0;
    int64_t step_correct = 0, step_classified = 0;
    for (int64_t micro = 0; micro < cfg.grad_accum; ++micro) {
      const auto wait_start = std::chrono::steady_clock::now();
      auto batch = loader.next();
      data_seconds += seconds_since(wait_start);
      const auto compute_start = std::chrono::steady_clock::now();
      if (!batch) throw TrainError("the training data ended (repeat is on: this is a bug)");
      if (micro == 0) first_source = batch->examples.front().source;
      State::BatchLoss out = s.batch_loss(*batch);
      const double loss = out.loss.item<double>();
      if (!std::isfinite(loss) && !s.scaler && !s.group) {
        s.progress.data_cursor = cursor_before_step;
        s.progress.elapsed_seconds = elapsed_before + seconds_since(run_start);
        const std::string name = step_checkpoint_name(s.progress.step);
        s.save(name);
        throw TrainError("[" + cfg.name + "] the loss is " + (std::isnan(loss) ? "nan" : "inf") + " at step " +
                         std::to_string(s.progress.step + 1) + " (batch starting with " + first_source +
                         "); training stopped. The weights before this step are saved in " +
                         (s.output_dir / name).string() +
                         ". Try a lower optim.lr, a longer schedule.warmup_steps or optim.clip_grad_norm, "
                         "or check that batch's data");
      }
      torch::Tensor scaled = out.loss / static_cast<double>(cfg.grad_accum);
      if (s.scaler) scaled = scaled * s.scaler->scale();
      scaled.backward();
      step_loss += loss / static_cast<double>(cfg.grad_accum);
      step_tokens += out.text_tokens;
      step_correct += out.correct;
      step_classified += out.classified;
      step_audio += static_cast<double>(batch->lengths.sum().item<int64_t>()) / 16000.0;
      s.progress.epoch = batch->epoch;
      s.progress.data_cursor = batch->cursor;
      compute_seconds += seconds_since(compute_start);
    }
    bool stop = stop_requested() || (s.options.stop_after_steps > 0 && steps_this_call + 1 >= s.options.stop_after_steps);
    double allreduce_seconds = 0;
    if (s.group) {
      allreduce_seconds = s.buckets->all_reduce_mean(*s.group);
      // One all-reduce for what every rank must agree on: the loss (mean over ranks), the
      // counts (sums), a stop (any rank's signal stops all at the same step).
      const auto opts = torch::TensorOptions().dtype(torch::kFloat64).device(s.device);
      std::vector<at::Tensor> sums = {torch::tensor({std::isfinite(step_loss) ? step_loss : 0.0,
                                                     std::isfinite(step_loss) ? 0.0 : 1.0,
                                                     static_cast<double>(step_tokens), step_audio, stop ? 1.0 : 0.0},
                                                    torch::kFloat64)
                                           .to(opts.device())};
      s.group->all_reduce_sum(sums, "step metrics");
      const at::Tensor r = sums[0].cpu();
      const double ranks = static_cast<double>(s.options.world_size);
      step_loss = r[1].item<double>() > 0 ? std::nan("") : r[0].item<double>() / ranks;
      step_tokens = static_cast<int64_t>(r[2].item<double>());
      step_audio = r[3].item<double>();
      stop = r[4].item<double>() > 0;
      if (!std::isfinite(step_loss) && !s.scaler) {
        s.progress.data_cursor = cursor_before_step;
        s.progress.elapsed_seconds = elapsed_before + seconds_since(run_start);
        const std::string name = step_checkpoint_name(s.progress.step);
        s.save(name);
        throw TrainError("[" + cfg.name + "] the loss is not finite at step " + std::to_string(s.progress.step + 1) +
                         " on at least one rank (this rank's batch starts with " + first_source +
                         "); training stopped. The weights before this step are saved in " +
                         (s.output_dir / name).string() +
                         ". Try a lower optim.lr, a longer schedule.warmup_steps or optim.clip_grad_norm, "
                         "or check the data");
      }
    }
    const auto update_start = std::chrono::steady_clock::now();

    bool finite = true;
    if (s.scaler) finite = s.scaler->unscale(s.trainable);
    double grad_norm = 0;
    if (finite) {
      grad_norm = s.optimizer->clip_grad_norm(cfg.optim.clip_grad_norm);
      if (!std::isfinite(grad_norm)) {
        if (!s.scaler) {
          const std::string name = step_checkpoint_name(s.progress.step);
          // Name the parameters whose gradients hold NaN / Inf: where the fault starts.
          std::string bad;
          int64_t bad_count = 0;
          for (const auto& p : s.trainable) {
            const torch::Tensor g = p.tensor.grad();
            if (!g.defined() || torch::isfinite(g).all().item<bool>()) continue;
            if (++bad_count <= 3) bad += (bad.empty() ? "" : ", ") + p.name;
          }
          if (bad_count > 3) bad += " and " + std::to_string(bad_count - 3) + " more";
          if (bad.empty()) {  // finite values whose norm overflows: name the largest
            double largest = -1;
            for (const auto& p : s.trainable) {
              const torch::Tensor g = p.tensor.grad();
              if (!g.defined()) continue;
              const double m = g.abs().max().item<double>();
              if (m > largest) largest = m, bad = p.name + " (largest |gradient| " + std::to_string(m) + ")";
            }
          }
          s.progress.data_cursor = cursor_before_step;
          s.optimizer->zero_grad();
          s.save(name);
          throw TrainError("[" + cfg.name + "] the gradient norm is not finite at step " +
                           std::to_string(s.progress.step + 1) + " (batch starting with " + first_source +
                           (bad.empty() ? std::string() : (bad_count > 0 ? "; non-finite gradients in " : "; overflowing gradients in ") + bad) +
                           "); training stopped. The weights before this step are saved in " +
                           (s.output_dir / name).string() + ". Try a lower optim.lr or a longer warmup");
        }
        finite = false;
      }
    }
    const double lr = learning_rate(s.progress.step, s.progress.total_steps, cfg.optim.lr,
                                    cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio);
    if (finite) s.optimizer->step(lr);
    if (s.scaler) s.scaler->update(finite);
    s.optimizer->zero_grad();
    const double update_seconds = seconds_since(update_start);
    ++s.progress.step;
    ++steps_this_call;
    cursor_before_step = s.progress.data_cursor;
    s.progress.tokens_seen += step_tokens;
    s.progress.audio_seconds_seen += step_audio;
    s.progress.last_loss = step_loss;
    s.progress.elapsed_seconds = elapsed_before + seconds_since(run_start);

    window_tokens += step_tokens;
    window_audio += step_audio;
    window_loss += step_loss;
    window_correct += step_correct;
    window_classified += step_classified;
    ++window_steps;
    const double window_seconds = std::max(1e-9, seconds_since(window_start));
    StepMetrics m;
    m.step = s.progress.step;
    m.total_steps = s.progress.total_steps;
    m.loss = step_loss;
    m.lr = lr;
    m.grad_norm = grad_norm;
    m.tokens_per_second = static_cast<double>(window_tokens) / window_seconds;
    m.audio_seconds_per_second = window_audio / window_seconds;
    m.skipped = !finite;
    m.data_seconds = data_seconds;
    m.compute_seconds = compute_seconds;
    m.update_seconds = update_seconds;
    m.allreduce_seconds = allreduce_seconds;
    m.elapsed_seconds = s.progress.elapsed_seconds;
    if (s.options.on_step) s.options.on_step(m);
    bar.update(m);

    const bool last = s.progress.step == s.progress.total_steps;
    if (s.progress.step % cfg.log_every == 0 || last) {
      nlohmann::json line = {{"type", "train"},
                             {"stage", cfg.name},
                             {"step", m.step},
                             {"loss", window_loss / static_cast<double>(window_steps)},
                             {"lr", lr},
                             {"grad_norm", grad_norm},
                             {"tokens_per_s", m.tokens_per_second},
                             {"audio_s_per_s", m.audio_seconds_per_second},
                             {"elapsed_s", m.elapsed_seconds},
                             {"epoch", s.progress.epoch},
                             {"skipped_steps", s.scaler ? s.scaler->skipped_steps() : 0}};
      std::string accuracy;
      if (s.classifier && window_classified > 0) {
        line["accuracy"] = static_cast<double>(window_correct) / static_cast<double>(window_classified);
        accuracy = " accuracy " + std::to_string(line["accuracy"].get<double>());
      }
      s.append_metrics(line);
      if (!bar.active())
        log_info("[", cfg.name, "] step ", m.step, "/", m.total_steps, " loss ", line["loss"].get<double>(), accuracy,
                 " lr ", lr, " ",
                 s.classifier ? std::to_string(static_cast<int64_t>(m.audio_seconds_per_second)) + " audio s/s"
                              : std::to_string(static_cast<int64_t>(m.tokens_per_second)) + " tok/s");
      window_start = std::chrono::steady_clock::now();
      window_tokens = window_steps = 0;
      window_audio = window_loss = 0;
      window_correct = window_classified = 0;
    }
    if ((cfg.eval.every > 0 && s.progress.step % cfg.eval.every == 0) || last) {
      const State::EvalResult eval = s.evaluate();
      if (std::isfinite(eval.loss)) {
        nlohmann::json line = {{"type", "eval"}, {"stage", cfg.name}, {"step", s.progress.step}, {"eval_loss", eval.loss}};
        std::string note = "eval loss " + std::to_string(eval.loss);
        if (std::isfinite(eval.accuracy)) {
          line["eval_accuracy"] = eval.accuracy;
          line["eval_accuracy_by_task"] = eval.accuracy_by_task;
          note += ", accuracy " + std::to_string(eval.accuracy);
          if (!bar.active()) log_info("[", cfg.name, "] step ", s.progress.step, ": ", note);
        }
        s.append_metrics(line);
        bar.note(note);
      }
    }
    if (!s.group) stop = stop || stop_requested();  // a signal during this step's update
    if (last) break;
    if ((cfg.checkpoint.every > 0 && s.progress.step % cfg.checkpoint.every == 0) || stop) {
      s.save(step_checkpoint_name(s.progress.step));
      result.checkpoint = s.output_dir / step_checkpoint_name(s.progress.step);
    }
    if (stop) {
      bar.finish();
      result.interrupted = true;
      result.step = s.progress.step;
      result.last_loss = step_loss;
      result.skipped_steps = s.scaler ? s.scaler->skipped_steps() : 0;
      result.bad_records = loader.stats().bad;
      log_info("[", cfg.name, "] stopped at step ", s.progress.step, "; checkpoint ", result.checkpoint.string(),
               "; run the same command again to resume");
      return result;
    }
  }
  bar.finish();
  s.progress.finished = true;
  s.save("final");
  result.finished = true;
  result.step = s.progress.step;
  result.checkpoint = s.output_dir / "final";
  result.last_loss = s.progress.last_loss;
  result.skipped_steps = s.scaler ? s.scaler->skipped_steps() : 0;
  result.bad_records = loader.stats().bad;
  log_info("[", cfg.name, "] finished ", s.progress.step, " steps in ", s.progress.elapsed_seconds, " s; final loss ",
           s.progress.last_loss, "; model in ", result.checkpoint.string());
  return result;
}

std::vector<StageConfig> load_curriculum(const fs::path& curriculum_file, const std::vector<std::string>& overrides) {
  const CurriculumConfig curriculum = config::load<CurriculumConfig>(curriculum_file);
  const fs::path base = fs::absolute(curriculum_file).parent_path();
  fs::path output_dir = (base / curriculum.output_dir).lexically_normal();
  // `--set output_dir=X` moves the whole curriculum (stage i then writes to X/<name>).
  std::vector<std::string> stage_overrides;
  for (const auto& o : overrides) {
    if (o.rfind("output_dir=", 0) == 0)
      output_dir = fs::absolute(o.substr(std::strlen("output_dir="))).lexically_normal();
    else
      stage_overrides.push_back(o);
  }
  std::set<std::string> names;
  for (const auto& stage : curriculum.stages)
    if (!names.insert(stage.name).second)
      throw ConfigError(curriculum_file.string() + ": stages: the name '" + stage.name + "' is used twice");
  std::vector<StageConfig> stages;
  fs::path previous;
  for (const CurriculumStageEntry& entry : curriculum.stages) {
    const fs::path file = fs::path(entry.config).is_absolute() ? fs::path(entry.config) : base / entry.config;
    // The stage's own file, then the curriculum's choices: its `set`, the chain of
    // stages (previous final checkpoint -> init_from), the entry's `set`, the command line.
    std::vector<std::string> all = curriculum.set;
    all.push_back("name=" + entry.name);
    all.push_back("output_dir=" + (output_dir / entry.name).string());
    if (!previous.empty()) all.push_back("init_from=" + previous.string());
    all.insert(all.end(), entry.set.begin(), entry.set.end());
    all.insert(all.end(), stage_overrides.begin(), stage_overrides.end());
    stages.push_back(load_stage_config(file, all));
    previous = output_dir / entry.name / "final";
  }
  return stages;
}

TrainResult run_curriculum(const fs::path& curriculum_file, const std::vector<std::string>& overrides,
                           const TrainOptions& options) {
  // Every stage's config is read and checked before the first one trains.
  const std::vector<StageConfig> stages = load_curriculum(curriculum_file, overrides);
  TrainResult result;
  for (size_t i = 0; i < stages.size(); ++i) {
    log_info("curriculum ", curriculum_file.string(), ": stage ", i + 1, "/", stages.size(), " '", stages[i].name,
             "'");
    Trainer trainer(stages[i], options);
    result = trainer.run();
    if (!result.finished) return result;
  }
  return result;
}

}  // namespace pal::train
