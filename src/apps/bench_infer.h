// pal-bench infer: time to first token and tokens/s of pal::Pipeline in `probe` and
// `prefix` mode on one model, and a loopback load test of `pal-infer serve`
// (bench_infer.cpp).
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace pal::bench {

struct InferBenchArgs {
  std::string folder;        // where the bench model lives ("" : a folder under the temp dir)
  double clip_seconds = 10;  // the clip asked about
  int64_t new_tokens = 32;   // tokens per answer
  int repeats = 3;           // timed questions per figure (the median counts)
  int threads = 0;           // LibTorch intra-op threads; 0: all cores
  int llm_layers = 8, llm_width = 512;
  int clients = 8;              // concurrent HTTP clients of the load test (<= 64)
  int requests_per_client = 6;  // each client's requests at most
  double load_seconds = 30;     // and at most this long (<= 300)
  int64_t load_tokens = 16;     // max_tokens of the load test's requests
  bool json = false;
};

// Adds the `infer` subcommand to pal-bench's app.
CLI::App* add_infer_command(CLI::App& app, InferBenchArgs& args);
int bench_infer(const InferBenchArgs& args);

}  // namespace pal::bench
