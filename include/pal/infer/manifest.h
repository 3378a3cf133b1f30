// Answers every question of a JSONL manifest into a JSONL output, in batches, resumably.
//
// Input, one JSON object a line (DESIGN.md section 5; blank lines are skipped):
//   {"audio": "clips/a.wav", "question": "What is it?", "id": "a1", "start": 1.5, "end": 4}
// "instruction" is accepted for "question" and "audio_id" for "audio" (LTU / OpenAQA
// manifests); relative audio paths are taken from the manifest's folder; "start" / "end"
// (seconds) are optional; every other field is copied to the output.
//
// Output, one line per answered input line, in the order answered:
//   {...the input's fields..., "line": 3, "answer": "...", "finish_reason": "stop",
//    "answer_tokens": 12, "audio_seconds": 4.0}
// A line whose audio cannot be read gets {"line": N, ..., "error": "..."} instead.
//
// Resuming: the output is read first; lines it answers are skipped, so rerunning the same
// command after a crash or Ctrl-C finishes the rest. Error records are dropped and those
// lines retried, and a last line cut short by a crash is removed (the file is rewritten
// atomically when it needs either). Each batch's lines are written and flushed together.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>

#include "pal/pipeline.h"

namespace pal::infer {

struct ManifestOptions {
  std::filesystem::path manifest;  // input JSONL
  std::filesystem::path output;    // output JSONL (created, or resumed)
  int64_t batch_size = 8;          // questions per batched generation (>= 1)
  GenerationOptions generation;
};

struct ManifestProgress {
  int64_t lines = 0;     // questions in the manifest
  int64_t skipped = 0;   // answered by an earlier run
  int64_t answered = 0;  // answered now
  int64_t failed = 0;    // lines with an error record (unreadable audio)
};

// Throws DataError naming manifest:line for a line that is not a JSON object or lacks
// "audio" / "question", before any answering; IoError for files that cannot be read or
// written. `progress` is called after each batch.
ManifestProgress answer_manifest(Pipeline& pipeline, const ManifestOptions& options,
                                 const std::function<void(const ManifestProgress&)>& progress = {});

}  // namespace pal::infer
