// Directories written as a whole: indexes, PEFT adapters, converted
// checkpoints, fine-tuning checkpoints. A reader (or a crash) sees the old
// directory or the new one, never a mix and never half of one.
//
// The files go to a staging directory beside the target ("<target>.tmp-XXXXXX":
// the same filesystem, so the final rename is atomic). commit() makes every
// file and directory in it durable (fsync), then swaps it into place with
// renameat2(RENAME_EXCHANGE) when the target exists (the old contents land in
// the staging path and are removed), or a plain rename when it does not, and
// makes the rename durable (fsync of the parent). On a filesystem without
// RENAME_EXCHANGE the old directory is moved aside first: a crash between the
// two renames leaves no directory at the target (the old one survives as
// "<target>.old-XXXXXX" and the next write of the target puts it back), still
// never half of one.
//
// A writer holds an flock on its staging directory while it lives; the next
// write of the same target removes staging directories nobody holds (a killed
// writer's), so a crash leaves nothing behind for long. Proven with real kills
// at every step (tests/python/test_crash_safety.py, docs/reliability.md).
//
// An existing target is replaced only if it is empty or holds `marker` (the
// file every directory of that kind has: meta.json, adapter_config.json,
// config.json, ...): `--out ~` never wipes a home directory. The check runs
// before any work and again at commit(); `kind` names the directory in the
// error ("an index", "a PEFT adapter", ...).
#pragma once

#include <functional>
#include <string>

namespace flashback {

class StagedDirectory {
 public:
  // Creates the parent directories and the staging directory; throws Error
  // naming the target when it exists and may not be replaced.
  StagedDirectory(const std::string& target, const std::string& marker, const std::string& kind);
  ~StagedDirectory();  // removes the staging directory unless committed
  StagedDirectory(const StagedDirectory&) = delete;
  StagedDirectory& operator=(const StagedDirectory&) = delete;

  const std::string& path() const { return path_; }      // write the files here
  const std::string& target() const { return target_; }
  void commit();   // swaps the staging directory into place (once)
  void discard();  // removes the staging directory now (no-op after commit)

 private:
  std::string target_, marker_, kind_, path_;
  int lock_fd_ = -1;  // the staging directory, flock'ed while this writer lives
  bool done_ = false;
};

// Runs fill(staging_path) and commits; on an exception nothing is replaced.
void write_directory_atomic(const std::string& target, const std::string& marker, const std::string& kind,
                            const std::function<void(const std::string& dir)>& fill);

}  // namespace flashback
