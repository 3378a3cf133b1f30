#include "pal/pipeline.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <list>
#include <map>
#include <mutex>
#include <system_error>
#include <unordered_map>

#include "pal/audio/decode.h"
#include "pal/core/config.h"
#include "pal/core/error.h"
#include "pal/core/runtime.h"
#include "pal/models/audio_batch.h"
#include "pal/models/pal_checkpoint.h"
#include "pal/text/prompt.h"
#include "pal/text/tokenizer.h"

namespace pal {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

bool blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c); });
}

// FNV-1a, 64 bit: the cache key of in-memory audio.
uint64_t fnv1a(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", s);
  return buf;
}

const char* dtype_name(models::ModelDtype d) {
  switch (d) {
    case models::ModelDtype::float32: return "float32";
    case models::ModelDtype::bfloat16: return "bfloat16";
    case models::ModelDtype::float16: return "float16";
  }
  return "?";
}

}  // namespace

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::stop_token:
    case FinishReason::stop_string: return "stop";
    case FinishReason::length: return "length";
    case FinishReason::cancelled: return "cancelled";
  }
  return "length";
}

void PipelineOptions::validate() const {
  if (threads < -1)
    throw ConfigError("threads: must be -1 (leave as set), 0 (every core) or a count, got " +
                      std::to_string(threads));
  if (!device.is_cpu() && !device.is_cuda())
    throw ConfigError("device: '" + device.str() + "' is not supported (cpu, cuda, cuda:N)");
  long_audio.validate();
}

// ---- Audio ------------------------------------------------------------------------------------

double Pipeline::Audio::seconds() const {
  return encoded_ ? encoded_->seconds() : 0.0;
}
int64_t Pipeline::Audio::token_count() const {
  return encoded_ ? encoded_->token_count() : 0;
}
const infer::EncodedAudio& Pipeline::Audio::encoded() const {
  if (!encoded_) throw ModelError("Pipeline::Audio: empty (no clip was encoded into it)");
  return *encoded_;
}

// ---- state ------------------------------------------------------------------------------------

struct Pipeline::State {
  fs::path folder;
  PipelineOptions options;
  models::PalModel model{nullptr};
  std::string dtype;

  std::mutex model_mutex;  // model work, one call at a time
  std::map<std::string, std::unique_ptr<text::PromptBuilder>> system_prompts;  // under model_mutex

  mutable std::mutex cache_mutex;                                                       // cache and stats
  std::list<std::pair<std::string, std::shared_ptr<const infer::EncodedAudio>>> cache;  // most recent first
  std::unordered_map<std::string, decltype(cache)::iterator> cache_index;
  PipelineStats stats;

  std::shared_ptr<const infer::EncodedAudio> cached(const std::string& key) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache_index.find(key);
    if (it == cache_index.end()) return nullptr;
    cache.splice(cache.begin(), cache, it->second);
    ++stats.cache_hits;
    return it->second->second;
  }

  void remember(const std::string& key, std::shared_ptr<const infer::EncodedAudio> encoded) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (options.audio_cache_clips == 0 || key.empty() || cache_index.count(key)) return;
    cache.emplace_front(key, std::move(encoded));
    cache_index[key] = cache.begin();
    while (cache.size() > options.audio_cache_clips) {
      cache_index.erase(cache.back().first);
      cache.pop_back();
    }
  }

  std::shared_ptr<const infer::EncodedAudio> encode(const infer::SampleReader& read,
                                                    const std::string& name) {
    std::lock_guard<std::mutex> lock(model_mutex);
    auto encoded = std::make_shared<infer::EncodedAudio>(
        infer::encode_long_audio(*model, read, options.long_audio, name));
    std::lock_guard<std::mutex> stats_lock(cache_mutex);
    ++stats.clips_encoded;
    return encoded;
  }

  // Rejects audio longer than the limit before decoding it.
  void check_duration(const audio::AudioStream& stream, const std::string& name, double start,
                      std::optional<double> end) const {
    const double limit = options.long_audio.max_seconds;
    if (limit <= 0) return;
    double seconds = stream.info().seconds();
    if (end) seconds = std::min(seconds, *end);
    seconds -= start;
    if (seconds > limit)
      throw AudioError(name + ": " + seconds_text(seconds) + " of audio; the limit is " +
                       seconds_text(limit) + " (long_audio.max_seconds)");
  }

  const text::PromptBuilder& prompts_for(const std::optional<std::string>& system) {
    if (!system || *system == model->config().prompt.system) return *model->prompts();
    auto it = system_prompts.find(*system);
    if (it == system_prompts.end()) {
      if (system_prompts.size() >= 16) system_prompts.clear();
      text::PromptConfig config = model->config().prompt;
      config.system = *system;
      const fs::path llm = fs::path(model->config().llm).is_absolute()
                               ? fs::path(model->config().llm)
                               : model->base_dir() / model->config().llm;
      it = system_prompts
               .emplace(*system, std::make_unique<text::PromptBuilder>(*model->tokenizer(), config, llm,
                                                                       model->config().audio_token))
               .first;
    }
    return *it->second;
  }

  std::vector<Answer> generate(const std::vector<Question>& questions, const GenerationOptions& options,
                               const TokenCallback& on_token, const std::vector<size_t>& index);
};

Pipeline::Pipeline(std::unique_ptr<State> state) : state_(std::move(state)) {}
Pipeline::~Pipeline() = default;
Pipeline::Pipeline(Pipeline&&) noexcept = default;
Pipeline& Pipeline::operator=(Pipeline&&) noexcept = default;

Pipeline Pipeline::load(const fs::path& folder, const PipelineOptions& options) {
  options.validate();
  if (options.device.is_cuda() && !torch::cuda::is_available())
    throw ModelError(
        "device " + options.device.str() + ": CUDA is not available (" +
        (runtime_info().torch_cuda_build ? "no usable GPU" : "this LibTorch was built without CUDA") + ")");
  if (options.device.is_cuda() && options.device.has_index() &&
      options.device.index() >= static_cast<int>(torch::cuda::device_count()))
    throw ModelError("device " + options.device.str() + ": there are " +
                     std::to_string(torch::cuda::device_count()) + " CUDA devices");
  if (!fs::is_directory(folder))
    throw IoError(folder.string() + ": " + (fs::exists(folder) ? "not a folder" : "no such folder") +
                  " (a model folder holds model.yaml and model.safetensors)");
  for (const char* file : {models::kModelConfigFile, models::kModelWeightsFile})
    if (!fs::is_regular_file(folder / file))
      throw IoError(
          folder.string() + ": no " + file +
          " (a model folder holds model.yaml and model.safetensors, as pal-train and save_pal_model "
          "write them)");
  if (options.threads >= 0) configure_threads({options.threads, 0});
  auto state = std::make_unique<State>();
  state->folder = folder;
  state->options = options;
  state->model = models::load_pal_model(folder, {options.device, options.dtype});
  const auto& config = state->model->config();
  state->dtype = dtype_name(options.dtype ? *options.dtype : config.dtype);
  if (!state->model->tokenizer() || !state->model->prompts())
    throw ModelError(
        folder.string() + ": the LLM folder '" + config.llm +
        "' has no tokenizer (tokenizer.json or tokenizer.model); pal::Pipeline needs one to read "
        "questions and write answers");
  return Pipeline(std::move(state));
}

Pipeline::Audio Pipeline::encode(const fs::path& file, double start, std::optional<double> end) {
  State& s = *state_;
  std::error_code ec;
  const fs::path canonical = fs::weakly_canonical(file, ec);
  const auto size = fs::file_size(file, ec);
  const auto mtime = fs::last_write_time(file, ec).time_since_epoch().count();
  std::string key;
  if (!ec)
    key = "file:" + (canonical.empty() ? file : canonical).string() + ":" + std::to_string(size) + ":" +
          std::to_string(mtime) + ":" + std::to_string(start) + ":" + (end ? std::to_string(*end) : "end");
  if (auto hit = key.empty() ? nullptr : s.cached(key)) return Audio(hit);
  audio::LoadOptions load;
  load.start = start;
  load.end = end;
  auto stream = std::make_shared<audio::AudioStream>(file, load);
  s.check_duration(*stream, file.string(), start, end);
  auto encoded = s.encode([stream](std::vector<float>& out) { return stream->read(out); }, file.string());
  s.remember(key, encoded);
  return Audio(encoded);
}

Pipeline::Audio Pipeline::encode_bytes(std::string bytes, const std::string& name) {
  State& s = *state_;
  char hash[40];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(fnv1a(bytes)));
  const std::string key = "bytes:" + std::to_string(bytes.size()) + ":" + hash;
  if (auto hit = s.cached(key)) return Audio(hit);
  auto stream = std::make_shared<audio::AudioStream>(audio::AudioStream::from_memory(std::move(bytes), name));
  s.check_duration(*stream, name, 0, {});
  auto encoded = s.encode([stream](std::vector<float>& out) { return stream->read(out); }, name);
  s.remember(key, encoded);
  return Audio(encoded);
}

Pipeline::Audio Pipeline::encode_waveform(const at::Tensor& waveform) {
  return Audio(state_->encode(infer::waveform_reader(waveform), "waveform"));
}

Answer Pipeline::ask(const Audio& audio, const std::string& question, const GenerationOptions& options,
                     const TokenCallback& on_token) {
  Question q;
  q.audio = audio;
  q.question = question;
  return ask_batch({q}, options, on_token).front();
}

Answer Pipeline::ask(const fs::path& file, const std::string& question, const GenerationOptions& options,
                     const TokenCallback& on_token) {
  if (blank(question)) throw GenerationError("the question is empty; ask something about the clip");
  return ask(encode(file), question, options, on_token);
}

std::vector<Answer> Pipeline::ask_batch(const std::vector<Question>& questions,
                                        const GenerationOptions& options, const TokenCallback& on_token) {
  options.validate();
  for (size_t i = 0; i < questions.size(); ++i) {
    if (blank(questions[i].question))
      throw GenerationError(questions.size() == 1
                                ? std::string("the question is empty; ask something about the clip")
                                : "question " + std::to_string(i) + " is empty");
    if (questions[i].max_new_tokens < 0)
      throw GenerationError("question " + std::to_string(i) + ": max_new_tokens must be >= 0, got " +
                            std::to_string(questions[i].max_new_tokens));
  }
  // A batch is all with audio or all without (a prefix-routed batch needs a placeholder in
  // every prompt): mixed batches run as two.
  std::vector<size_t> with, without;
  for (size_t i = 0; i < questions.size(); ++i) (questions[i].audio.empty() ? without : with).push_back(i);
  std::vector<Answer> answers(questions.size());
  std::lock_guard<std::mutex> lock(state_->model_mutex);
  for (const auto* group : {&with, &without}) {
    if (group->empty()) continue;
    std::vector<Question> part;
    for (size_t i : *group) part.push_back(questions[i]);
    std::vector<Answer> out = state_->generate(part, options, on_token, *group);
    for (size_t j = 0; j < group->size(); ++j) answers[(*group)[j]] = std::move(out[j]);
  }
  std::lock_guard<std::mutex> stats_lock(state_->cache_mutex);
  state_->stats.answers += static_cast<int64_t>(questions.size());
  return answers;
}

std::vector<double> Pipeline::score(const Audio& audio, const std::string& question,
                                    const std::vector<std::string>& candidates, int64_t batch_size) {
  if (blank(question)) throw GenerationError("the question is empty; ask something about the clip");
  if (batch_size < 0)
    throw GenerationError("score: batch_size must be >= 0, got " + std::to_string(batch_size));
  for (size_t i = 0; i < candidates.size(); ++i)
    if (candidates[i].empty()) throw GenerationError("score: candidate " + std::to_string(i) + " is empty");
  std::vector<double> scores(candidates.size(), 0.0);
  if (candidates.empty()) return scores;
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.model_mutex);
  c10::InferenceMode inference;
  const text::PromptBuilder& builder = *s.model->prompts();
  const bool with_audio = !audio.empty();
  const auto device = s.options.device;
  const size_t chunk = batch_size > 0 ? static_cast<size_t>(batch_size) : candidates.size();
  for (size_t from = 0; from < candidates.size(); from += chunk) {
    const size_t n = std::min(chunk, candidates.size() - from);
    std::vector<text::PromptBuilder::Example> examples;
    size_t longest = 0;
    for (size_t i = 0; i < n; ++i) {
      examples.push_back(builder.example(question, candidates[from + i], with_audio));
      longest = std::max(longest, examples.back().ids.size());
    }
    // Right-padded [n, longest] ids, valid and labels (the answer's tokens).
    const int64_t rows = static_cast<int64_t>(n), columns = static_cast<int64_t>(longest);
    torch::Tensor ids = torch::zeros({rows, columns}, torch::kInt64);
    torch::Tensor valid = torch::zeros({rows, columns}, torch::kBool);
    torch::Tensor labels = torch::zeros({rows, columns}, torch::kBool);
    auto ids_a = ids.accessor<int64_t, 2>();
    auto valid_a = valid.accessor<bool, 2>();
    auto labels_a = labels.accessor<bool, 2>();
    std::vector<int64_t> targets, owner;  // in the forward's order of label rows: by example, then position
    for (size_t b = 0; b < n; ++b)
      for (size_t t = 0; t < examples[b].ids.size(); ++t) {
        ids_a[static_cast<int64_t>(b)][static_cast<int64_t>(t)] = examples[b].ids[t];
        valid_a[static_cast<int64_t>(b)][static_cast<int64_t>(t)] = true;
        if (!examples[b].is_answer[t]) continue;
        labels_a[static_cast<int64_t>(b)][static_cast<int64_t>(t)] = true;
        targets.push_back(examples[b].ids[t]);
        owner.push_back(static_cast<int64_t>(b));
      }
    models::EnsembleOutput batch_audio;
    if (with_audio) {
      const models::EnsembleOutput& tokens = audio.encoded().tokens;
      if (!tokens.prefix.empty())
        batch_audio.prefix =
            models::stack_audio_tokens(std::vector<const models::AudioTokens*>(n, &tokens.prefix));
      if (!tokens.probe.empty())
        batch_audio.probe =
            models::stack_audio_tokens(std::vector<const models::AudioTokens*>(n, &tokens.probe));
    }
    models::FusionOutput out =
        s.model->decoder->forward(ids.to(device), valid.to(device), batch_audio, labels.to(device));
    // With labels, forward's logits are the rows that predict the label tokens, in order.
    if (out.logits.size(0) != static_cast<int64_t>(targets.size()))
      throw ModelError("score: the forward predicted " + std::to_string(out.logits.size(0)) +
                       " answer tokens, expected " + std::to_string(targets.size()));
    torch::Tensor log_probs = torch::log_softmax(out.logits.to(torch::kFloat64), -1)
                                  .gather(1, torch::tensor(targets).to(device).unsqueeze(1))
                                  .squeeze(1)
                                  .to(torch::kCPU);
    torch::Tensor sums = torch::zeros({rows}, torch::kFloat64).index_add_(0, torch::tensor(owner), log_probs);
    for (size_t b = 0; b < n; ++b) scores[from + b] = sums[static_cast<int64_t>(b)].item<double>();
  }
  return scores;
}

std::vector<Answer> Pipeline::State::generate(const std::vector<Question>& questions,
                                              const GenerationOptions& options, const TokenCallback& on_token,
                                              const std::vector<size_t>& index) {
  const text::Tokenizer& tokenizer = *model->tokenizer();
  const size_t n = questions.size();
  std::vector<std::vector<int64_t>> prompts;
  std::vector<int64_t> limit(n);
  GenerationOptions batch = options;
  batch.max_new_tokens = 0;
  for (size_t i = 0; i < n; ++i) {
    const text::PromptBuilder& builder = prompts_for(questions[i].system);
    prompts.push_back(builder.prompt(questions[i].question, !questions[i].audio.empty()));
    for (int64_t id : builder.stop_ids())
      if (std::find(batch.stop_token_ids.begin(), batch.stop_token_ids.end(), id) ==
          batch.stop_token_ids.end())
        batch.stop_token_ids.push_back(id);
    limit[i] = questions[i].max_new_tokens > 0 ? questions[i].max_new_tokens : options.max_new_tokens;
    batch.max_new_tokens = std::max(batch.max_new_tokens, limit[i]);
  }
  models::EnsembleOutput audio;
  if (!questions.front().audio.empty()) {
    for (const bool prefix : {true, false}) {
      std::vector<const models::AudioTokens*> parts;
      for (const auto& q : questions) {
        const auto& t = prefix ? q.audio.encoded().tokens.prefix : q.audio.encoded().tokens.probe;
        if (!t.empty()) parts.push_back(&t);
      }
      if (parts.empty()) continue;
      if (parts.size() != n) throw ModelError("ask_batch: clips encoded by different models in one batch");
      (prefix ? audio.prefix : audio.probe) = models::stack_audio_tokens(parts);
    }
  }

  std::vector<text::TokenStreamDecoder> streams;
  for (size_t i = 0; i < n; ++i) streams.emplace_back(tokenizer, /*skip_special=*/true);
  std::vector<int64_t> produced(n, 0);
  std::vector<bool> hit_limit(n, false);
  std::vector<double> first(n, 0);
  const auto start = Clock::now();
  models::TokenCallback callback = [&](size_t i, int64_t token) {
    if (produced[i]++ == 0) first[i] = since(start);
    const std::string piece = streams[i].push(token);
    if (on_token && !on_token(TokenEvent{index[i], token, piece})) return false;
    const bool stops = std::find(batch.stop_token_ids.begin(), batch.stop_token_ids.end(), token) !=
                       batch.stop_token_ids.end();
    if (!stops && produced[i] >= limit[i] && produced[i] < batch.max_new_tokens) {
      hit_limit[i] = true;
      return false;
    }
    return true;
  };
  models::Detokenizer detokenize = [&](const std::vector<int64_t>& ids) {
    return tokenizer.decode(ids, true);
  };
  models::GenerationResult result = model->decoder->generate(prompts, audio, batch, callback, detokenize);
  const double seconds = since(start);

  std::vector<Answer> answers(n);
  for (size_t i = 0; i < n; ++i) {
    Answer& a = answers[i];
    a.tokens = std::move(result.tokens[i]);
    a.text = tokenizer.decode(a.tokens, /*skip_special=*/true);
    a.finish_reason = hit_limit[i] ? FinishReason::length : result.finish_reasons[i];
    a.prompt_tokens = static_cast<int64_t>(std::count_if(
        prompts[i].begin(), prompts[i].end(), [&](int64_t id) { return id != model->audio_token_id(); }));
    a.audio_tokens = questions[i].audio.token_count();
    a.first_token_seconds = first[i];
    a.seconds = seconds;
    const std::string rest = streams[i].finish();
    if (on_token && !rest.empty()) on_token(TokenEvent{index[i], -1, rest});
  }
  return answers;
}

PipelineStats Pipeline::stats() const {
  std::lock_guard<std::mutex> lock(state_->cache_mutex);
  return state_->stats;
}

std::string Pipeline::describe() const {
  const auto& model = *state_->model;
  const auto& c = model.config();
  std::string encoders;
  for (const auto& e : c.encoders) encoders += (encoders.empty() ? "" : " + ") + e.type;
  const auto& llm = model.decoder->llm->config();
  return config::enum_name(c.fusion.mode) + " fusion (start layer " + std::to_string(c.fusion.start_layer) +
         "), encoders " + encoders + ", " + std::to_string(llm.num_hidden_layers) + "-layer " +
         llm.model_type + " LLM (hidden " + std::to_string(llm.hidden_size) + "), " +
         model.prompts()->format() + " prompts, " + state_->options.device.str() + " " + state_->dtype;
}

const fs::path& Pipeline::folder() const {
  return state_->folder;
}
const text::Tokenizer& Pipeline::tokenizer() const {
  return *state_->model->tokenizer();
}
models::PalModelImpl& Pipeline::model() {
  return *state_->model;
}

}  // namespace pal
