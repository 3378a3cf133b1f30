// The interface every audio encoder of an ensemble implements (Whisper, AST, EAT, ...).
//
// An encoder owns its frontend settings: encode() takes 16 kHz waveforms, computes its
// own features (Whisper log-mel, Kaldi fbank) and returns a time sequence of hidden
// states with a validity mask, so that an ensemble can run encoders with different
// frontends and frame rates on the same clips.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <memory>
#include <string>

namespace pal::models {

// How long audio is cut for an encoder with a bounded input (pal/infer/long_audio.h): clips
// of up to `samples` are encoded whole; a longer one as windows of `samples` that start
// every `hop` samples, where `hop` is the audio that a full window's outputs stand for,
// so that the windows' valid outputs, one after another, tile time at
// frames_per_second().
struct EncoderWindow {
  int64_t samples = 0;  // the longest clip encode() takes (16 kHz samples); 0: any length
  int64_t hop = 0;      // samples between window starts, <= samples
};

struct EncoderOutput {
  at::Tensor hidden;  // [B, T, width]: one vector per time step
  at::Tensor mask;    // [B, T] bool: true at valid time steps (clips shorter than the batch's longest)
  at::Tensor cls;     // [B, cls_width] summary token(s) pooled to one vector; undefined if none
};

class AudioEncoder : public torch::nn::Module {
 public:
  // waveforms [B, N] float32 16 kHz mono, zero-padded; lengths [B] int64 valid samples.
  virtual EncoderOutput encode(const at::Tensor& waveforms, const at::Tensor& lengths) = 0;
  virtual int64_t width() const = 0;  // hidden size of `hidden`
  // Size of `cls`: width() unless an encoder widens `hidden` (an AST-family encoder that
  // stacks its frequency patches: width = hidden size x frequency patches).
  virtual int64_t cls_width() const { return width(); }
  virtual double frames_per_second() const = 0;  // time steps of `hidden` per second of audio
  virtual std::string type() const = 0;          // the registry name, e.g. "whisper", "ast"
  // The longest input encode() takes and how longer audio is windowed; default: no limit.
  virtual EncoderWindow window() const { return {}; }

  // Freezes every parameter, then makes the last `n` transformer blocks (and the final
  // norm, when n > 0) trainable again. n = 0: fully frozen (the default for ensembles).
  virtual void train_last_blocks(int64_t n) = 0;
};

}  // namespace pal::models
