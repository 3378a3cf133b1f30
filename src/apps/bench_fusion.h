// pal-bench fusion: step time, memory and FLOPs of each fusion mode (bench_fusion.cpp).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pal/models/fusion.h"

namespace pal::bench {

struct FusionBenchArgs {
  std::vector<int64_t> audio_lengths = {300, 750, 1500};  // Na
  std::vector<int64_t> text_lengths = {64, 256};          // Nt
  int64_t batch = 2;
  int64_t layers = 12;
  int64_t width = 512;
  int64_t start_layer = 4;
  int64_t answer = 16;  // answer tokens (the loss) at the end of the text
  int repeats = 3;
  int threads = 0;
  bool json = false;
  bool whole = false;  // include a frozen Whisper-base encoder in the step (Na = 50 frames per second)
  // Frozen encoders (random weights) that compute the audio frames in every step, each run
  // on Na / 50 seconds of audio: whisper-base (512 wide, 6 layers: Na frames at 50 Hz),
  // ast-base (768 wide, 12 layers, 1024 fbank frames; its 10 Hz output interpolated to Na
  // frames), or the *-test sizes (64 wide, 2 layers) for dry runs. Several: their frames
  // concatenated along channels (the ensemble's concat_channel). Empty: the frames are
  // given (random), or whisper-base with `whole`.
  std::vector<std::string> encoders;
  std::string device = "cpu";  // cpu, cuda, cuda:N
  // float32, or bfloat16: the frozen decoder and encoders hold bf16 weights and the
  // trainable projector float32 master weights; on CUDA the step runs under autocast
  // (bf16), as the trainer's precision.amp: bf16 does.
  std::string dtype = "float32";
  std::string llm_preset;  // llama-3.2-1b or tiny (bench_device.h); empty: --layers / --width, vocab 32000
  bool mfu = false;        // measure the dense matmul peak of --dtype on --device and report MFU
  int64_t matmul_size = 8192;  // n of the n x n x n products of that measurement
  // A single run in this process (what the parent starts per mode).
  bool single_run = false;
  models::FusionMode single = models::FusionMode::prefix;
  int64_t audio = 750, text = 128;
};

// Resident memory of this process now, and its peak so far, in MiB.
double resident_mib();
double peak_resident_mib();

// self_exe: this program, to run each mode in a child process.
int bench_fusion(const FusionBenchArgs& args, const std::string& self_exe);

}  // namespace pal::bench
