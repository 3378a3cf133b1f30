// pal::Pipeline: load a trained PAL model, ask it questions about audio clips.
//
//   #include <pal/pipeline.h>
//
//   pal::Pipeline pipeline = pal::Pipeline::load("runs/instruct/final");  // a model folder
//   pal::Answer a = pipeline.ask("dog.wav", "What animal is this?");
//   std::cout << a.text << "\n";
//
//   pal::Pipeline::Audio clip = pipeline.encode("meeting.flac");  // encoded once, any length
//   for (const std::string& q : questions) pipeline.ask(clip, q);  // reused by every question
//   std::vector<double> ll = pipeline.score(clip, "Which digit?", {"one", "two"});  // log p(answer)
//
//   pal::GenerationOptions sampling;                                 // pal/models/generation.h
//   sampling.sample = true, sampling.temperature = 0.7, sampling.seed = 1;
//   pipeline.ask(clip, "Describe it.", sampling, [](const pal::TokenEvent& e) {
//     std::cout << e.text << std::flush;                             // streamed as it is written
//     return true;                                                   // false: stop this answer
//   });
//
// A model folder is what save_pal_model writes (pal/models/pal_checkpoint.h): model.yaml
// + model.safetensors (+ tokenizer files); the trainer's checkpoints are such folders.
// Questions become prompts as the model's `prompt:` config says (pal/text/prompt.h), the
// same way as in training; answers end at the template's end-of-turn token or EOS.
//
// Thread safety: every method may be called from several threads at once. Model work
// (encoding, generation) runs one call at a time under an internal lock, so concurrent
// callers wait for each other; batch questions with ask_batch (or infer::AnswerQueue,
// which the server uses) for throughput. Audio handles may be shared between threads.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pal/infer/long_audio.h"
#include "pal/models/generation.h"
#include "pal/models/pal_model.h"

namespace pal {

namespace text {
class Tokenizer;
}

using models::FinishReason;
using models::GenerationOptions;

struct PipelineOptions {
  c10::Device device = c10::Device(c10::kCPU);  // cpu, cuda, cuda:N
  std::optional<models::ModelDtype> dtype;      // weights and activations; unset: model.yaml's
  int threads = 0;                              // LibTorch intra-op threads; 0: every core; -1: leave as set
  size_t audio_cache_clips = 16;       // encoded clips kept for reuse (least recently used go); 0: none
  infer::LongAudioOptions long_audio;  // audio longer than an encoder's input

  void validate() const;  // throws ConfigError naming the field
};

// One new token of an answer, for streaming.
struct TokenEvent {
  size_t index = 0;       // which question of the call (0 for ask)
  int64_t token = -1;     // the token id; -1 for the last event of an answer, which carries
                          // text held back until then (an incomplete UTF-8 sequence)
  std::string_view text;  // the complete UTF-8 text this token adds (may be empty)
};
// Return false to end that answer (FinishReason::cancelled). Called on the calling thread
// (the generating one), in order; the events' texts of an answer concatenate to its text.
using TokenCallback = std::function<bool(const TokenEvent&)>;

struct Answer {
  std::string text;             // special tokens dropped
  std::vector<int64_t> tokens;  // new token ids, the end token included
  FinishReason finish_reason = FinishReason::length;
  int64_t prompt_tokens = 0;       // text tokens of the prompt
  int64_t audio_tokens = 0;        // valid audio tokens the model read
  double first_token_seconds = 0;  // from the start of generation to the first new token
  double seconds = 0;              // the generation (encoding excluded)
};

// "stop" (end token or stop string), "length" (max_new_tokens or the context), "cancelled".
const char* finish_reason_name(FinishReason reason);

struct PipelineStats {
  int64_t clips_encoded = 0;  // encoder runs (cache misses and uncached clips)
  int64_t cache_hits = 0;     // clips served from the audio cache
  int64_t answers = 0;        // answers written
};

class Pipeline {
 public:
  // An encoded clip: its audio tokens, ready for any number of questions. Cheap to copy;
  // it keeps its tensors (on the pipeline's device) alive on its own.
  class Audio {
   public:
    Audio() = default;
    bool empty() const { return encoded_ == nullptr; }
    double seconds() const;                      // duration of the audio
    int64_t token_count() const;                 // valid audio tokens, over both routes
    const infer::EncodedAudio& encoded() const;  // throws ModelError when empty

   private:
    friend class Pipeline;
    explicit Audio(std::shared_ptr<const infer::EncodedAudio> encoded) : encoded_(std::move(encoded)) {}
    std::shared_ptr<const infer::EncodedAudio> encoded_;
  };

  // One question of a batch.
  struct Question {
    Audio audio;                        // empty: a question without audio
    std::string question;               // non-empty
    std::optional<std::string> system;  // replaces the model's prompt.system for this question
    int64_t max_new_tokens = 0;         // 0: the call's GenerationOptions; else at most this many
  };

  // Loads `model_folder` (model.yaml + model.safetensors) on options.device. Throws
  // IoError / ConfigError / WeightsError naming the file, key or tensor; ModelError when
  // the model has no tokenizer or the device is unavailable.
  static Pipeline load(const std::filesystem::path& model_folder, const PipelineOptions& options = {});
  ~Pipeline();
  Pipeline(Pipeline&&) noexcept;
  Pipeline& operator=(Pipeline&&) noexcept;

  // Decodes and encodes an audio file (any format pal/audio/decode.h reads, any length up
  // to options.long_audio.max_seconds), optionally a window [start, end) in seconds.
  // Cached by path, size, modification time and window. Throws AudioError naming the file.
  Audio encode(const std::filesystem::path& file, double start = 0, std::optional<double> end = {});
  // The same for the bytes of an audio file held in memory (e.g. from an HTTP request);
  // cached by content. `name` stands for the file in messages.
  Audio encode_bytes(std::string bytes, const std::string& name = "audio");
  // A waveform [N] float32, mono 16 kHz, on any device; not cached.
  Audio encode_waveform(const at::Tensor& waveform);

  // Answers `question` about `audio` (empty: no audio). Throws GenerationError for an
  // empty question or a prompt with its audio that does not fit the model's context.
  Answer ask(const Audio& audio, const std::string& question, const GenerationOptions& options = {},
             const TokenCallback& on_token = {});
  Answer ask(const std::filesystem::path& file, const std::string& question,
             const GenerationOptions& options = {}, const TokenCallback& on_token = {});
  // Answers several questions in one batched generation (left-padded prompts, audio
  // padded and masked). Greedy answers equal ask()'s. Sampling draws from one generator
  // for the batch, so sampled answers depend on the batch's composition.
  std::vector<Answer> ask_batch(const std::vector<Question>& questions, const GenerationOptions& options = {},
                                const TokenCallback& on_token = {});

  // Teacher-forced log-likelihood of each candidate answer to `question` about `audio`
  // (empty: no audio): the sum over the answer's tokens, its end-of-turn (or EOS) token
  // included, of log p(token | audio, prompt, the answer's earlier tokens), natural log,
  // with the prompt and answer built as in training (PromptBuilder::example). Not
  // length-normalised. The audio is encoded once (the handle); the candidates run as
  // batched forwards of up to `batch_size` (0: all at once). Greedy decoding prefers the
  // answer that is locally most likely, so the highest-scoring candidate need not be the
  // one ask() writes. Throws GenerationError for an empty question or candidate.
  std::vector<double> score(const Audio& audio, const std::string& question,
                            const std::vector<std::string>& candidates, int64_t batch_size = 0);

  PipelineStats stats() const;
  // "probe fusion, encoders whisper + ast, 4-layer LLM, llama3 prompts, cpu float32"
  std::string describe() const;
  const std::filesystem::path& folder() const;
  const text::Tokenizer& tokenizer() const;
  // The model itself, for what the pipeline does not cover; not guarded by the lock.
  models::PalModelImpl& model();

 private:
  struct State;
  explicit Pipeline(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace pal
