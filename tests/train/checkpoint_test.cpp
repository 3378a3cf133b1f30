#include "pal/train/checkpoint.h"

#include <gtest/gtest.h>

#include "pal/core/atomic_file.h"
#include "pal/core/error.h"
#include "test_util.h"

namespace pal::train {
namespace {
namespace fs = std::filesystem;

// A folder with every file a checkpoint has (contents do not matter here).
void fill(const fs::path& folder, const std::string& tag) {
  for (const char* f : {"trainer_state.json", "config.yaml", "optimizer.safetensors", "rng.safetensors",
                        "model.yaml", "model.safetensors"})
    write_file_atomic(folder / f, tag);
}

TEST(Checkpoint, CommitIsAtomicAndUpdatesLatest) {
  test::TempDir dir;
  commit_checkpoint(dir.path(), "step-000001", [](const fs::path& tmp) { fill(tmp, "one"); });
  EXPECT_EQ(read_file(dir / "latest"), "step-000001\n");
  EXPECT_EQ(find_resume_checkpoint(dir.path()), dir / "step-000001");

  // A save that fails half way leaves the previous checkpoint as it was and no debris.
  EXPECT_THROW(commit_checkpoint(dir.path(), "step-000002",
                                 [](const fs::path& tmp) {
                                   write_file_atomic(tmp / "model.yaml", "partial");
                                   throw IoError("disk full (simulated)");
                                 }),
               IoError);
  EXPECT_FALSE(fs::exists(dir / "step-000002"));
  EXPECT_EQ(read_file(dir / "latest"), "step-000001\n");
  for (const auto& e : fs::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename().string().rfind(".tmp-", 0), std::string::npos) << e.path();

  // Replacing a checkpoint of the same name.
  commit_checkpoint(dir.path(), "step-000001", [](const fs::path& tmp) { fill(tmp, "again"); });
  EXPECT_EQ(read_file(dir / "step-000001" / "model.yaml"), "again");
}

TEST(Checkpoint, ResumeSkipsWhatAKillLeftBehind) {
  test::TempDir dir;
  commit_checkpoint(dir.path(), "step-000004", [](const fs::path& tmp) { fill(tmp, "4"); });
  // A save killed while writing: a temporary folder, and `latest` still at step 4.
  fs::create_directories(dir / ".tmp-step-000006-123");
  write_file_atomic(dir / ".tmp-step-000006-123" / "model.yaml", "torn");
  EXPECT_EQ(find_resume_checkpoint(dir.path()), dir / "step-000004");
  EXPECT_FALSE(fs::exists(dir / ".tmp-step-000006-123"));

  // `latest` naming an incomplete folder: fall back to the newest complete one.
  fs::create_directories(dir / "step-000008");
  write_file_atomic(dir / "latest", "step-000008\n");
  EXPECT_EQ(find_resume_checkpoint(dir.path()), dir / "step-000004");

  // Killed between moving the old copy of a checkpoint away and moving the new one in.
  fs::rename(dir / "step-000004", dir / ".old-step-000004-77");
  EXPECT_EQ(find_resume_checkpoint(dir.path()), dir / "step-000004");
  EXPECT_TRUE(is_complete_checkpoint(dir / "step-000004"));
}

TEST(Checkpoint, PruneKeepsTheNewest) {
  test::TempDir dir;
  for (int s : {2, 4, 6, 8}) commit_checkpoint(dir.path(), step_checkpoint_name(s), [](const fs::path& t) { fill(t, "x"); });
  commit_checkpoint(dir.path(), "final", [](const fs::path& t) { fill(t, "x"); });
  prune_checkpoints(dir.path(), 2);
  EXPECT_FALSE(fs::exists(dir / "step-000002"));
  EXPECT_FALSE(fs::exists(dir / "step-000004"));
  EXPECT_TRUE(fs::exists(dir / "step-000006"));
  EXPECT_TRUE(fs::exists(dir / "step-000008"));
  EXPECT_TRUE(fs::exists(dir / "final"));
}

TEST(Checkpoint, TrainerStateRoundTripsAndRejectsGarbage) {
  TrainerState s;
  s.stage = "probe";
  s.step = 12;
  s.total_steps = 40;
  s.data_cursor = "{\"x\": 1}";
  s.loss_scale = 512;
  s.saved_parameters = {"projector.fc1.weight", "decoder.llm.lm_head.weight"};
  s.finished = true;
  const TrainerState t = trainer_state_from_json(to_json(s), "state.json");
  EXPECT_EQ(t.stage, "probe");
  EXPECT_EQ(t.step, 12);
  EXPECT_EQ(t.data_cursor, s.data_cursor);
  EXPECT_EQ(t.saved_parameters, s.saved_parameters);
  EXPECT_TRUE(t.finished);
  const std::string msg = test::error_message<TrainError>([] { trainer_state_from_json("{\"step\": 1}", "x/state.json"); });
  EXPECT_NE(msg.find("x/state.json"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal::train
