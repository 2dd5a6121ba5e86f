// Checkpoint layout and commit protocol. Every tasklet writes its files into
// <dir>/step-NNNNNNNN/; once all have written, one committer (the coordinator,
// or the in-process Trainer) writes manifest.json listing every file with its
// size and CRC-32C, then points <dir>/LATEST at the step directory. Both are
// written to a temporary name and renamed, so a crash leaves either the old
// or the new checkpoint committed, never half of one. Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "geopipe/job_spec.h"

namespace geopipe::runtime {

struct CheckpointFile {
  std::string name;  // relative to the step directory
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};

// Version 2 (written since the model families) adds the model and each
// stage's global layer range, so `geopipe export` can merge the tasklets'
// files into one model; version 1 checkpoints still resume.
struct CheckpointManifest {
  int version = 2;
  std::string job;
  int64_t next_step = 0;  // the first step a resumed run executes
  int stages = 0;
  int replicas = 0;
  std::vector<CheckpointFile> files;
  // Version 2: checkpointModelJson() of the job's model; layers [first,
  // last) of each stage (tasklet-<r>.pt of stage s holds these layers as
  // children 0.. of its module archive).
  std::string model_json;
  std::vector<std::pair<int, int>> layers_of_stage;
};

// The manifest's "model" object: kind, the Hugging Face config (gpt2 |
// llama) or the shape (other kinds), seq_len, dtype, and the folders a
// tokenizer can be copied from (data.tokenizer, model.from).
std::string checkpointModelJson(const ModelSpec& model, const std::string& tokenizer_dir);

// Whether tasklets write a checkpoint after step `step` (0-based) of a run
// of `steps`: every checkpoint.every_steps, and after the last step of any
// job with a checkpoint.dir (even with every_steps 0), so its final weights
// can be exported.
bool checkpointDue(const CheckpointSpec& checkpoint, int64_t step, int64_t steps);

// "<dir>/step-00000042".
std::string stepDirectory(const std::string& dir, int64_t next_step);

// Size and CRC-32C of a file; IoError if unreadable.
CheckpointFile describeFile(const std::string& step_dir, const std::string& name);

// Writes manifest.json into the step directory (every file of every tasklet
// listed, checksummed now), then atomically updates <dir>/LATEST, then keeps
// this checkpoint and the `keep` - 1 committed ones before it, removing older
// ones (and uncommitted leftovers older than this one). Directories of later
// steps are left alone: tasklets may be writing them, and the one LATEST
// names is never removed, so --resume finds the checkpoint LATEST names.
void commitCheckpoint(const std::string& dir, CheckpointManifest manifest, int keep);

// What a run that does not resume does with its checkpoint.dir `dir`: when
// `dir` holds what an earlier run wrote there (LATEST, step-NNNNNNNN
// directories), a new run would mix its checkpoints with those and a later
// --resume could pick either, so it is refused (ConfigError naming the
// directory, its newest checkpoint and the two ways out: --resume or
// --overwrite). With `overwrite` those are removed instead: LATEST first,
// then every step directory's checkpoint files; only names geopipe writes
// (manifest.json, tasklet-<rank>.<kind>, their .tmp), and nothing at all when
// a step directory holds anything else (ConfigError naming it). Other files
// in `dir` are never touched. Does nothing for an empty `dir` (no
// checkpoint.dir) or one that does not exist. Returns the number of step
// directories removed.
int prepareFreshCheckpointDir(const std::string& dir, bool overwrite);

// The newest committed checkpoint whose files all match their manifest,
// trying LATEST first and then older step directories; corrupt or partial
// ones are skipped with a warning naming what is wrong. nullopt when none.
std::optional<CheckpointManifest> findLatestCheckpoint(const std::string& dir);

// Checks one committed checkpoint; throws IoError naming the bad file.
CheckpointManifest readAndVerify(const std::string& step_dir);
// Its manifest only (parsed, its next_step checked against the directory's
// name), for a worker told to resume from a checkpoint the coordinator has
// verified. IoError as readAndVerify.
CheckpointManifest readManifest(const std::string& step_dir);

// Whether the checkpoint was written under DiLoCo (it holds outer state).
bool holdsOuterState(const CheckpointManifest& manifest);

// What `--resume` of a job of `stages` x `replicas` continues from: the
// newest committed checkpoint in checkpoint.dir `dir`. Another replica
// count, stage count or layer split is resharded when the tasklets load
// (Tasklet::loadCheckpoint: every layer is found by its global index in the
// saved stage that held it), so it only needs the global batch to split
// over the new replicas, which the job's own checks ensure. ConfigError
// when `dir` is empty, holds no committed checkpoint, the stages differ and
// the manifest is version 1 (no layer ranges) or the checkpoint is DiLoCo's
// (its outer state resumes only with its own split), or the checkpoint is at
// or past the job's last step `steps` (nothing left to train; the message
// says how to train on).
CheckpointManifest resumePoint(const std::string& dir, int stages, int replicas, int64_t steps);

// The body layers per stage a version 2 checkpoint was written with (its
// layer ranges less the prologue on the first stage and the epilogue on the
// last), so a resumed run keeps the saved split even when the scheduler
// would now cut the model elsewhere; empty for a version 1 manifest.
std::vector<int> savedBodySplit(const CheckpointManifest& manifest, int prologue_layers,
                                int epilogue_layers);
// The same for any layer ranges (a placement's layers_of_stage): the body
// layers per stage, the inverse of scheduler::modelLayerRanges.
std::vector<int> bodySplit(const std::vector<std::pair<int, int>>& layers_of_stage,
                           int prologue_layers, int epilogue_layers);

// Atomic small-file write: path + ".tmp", fsync, rename.
void writeFileAtomic(const std::string& path, const std::string& content);

}  // namespace geopipe::runtime
