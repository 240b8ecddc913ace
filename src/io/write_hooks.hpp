// What the atomic writers (atomic_file.cpp, atomic_dir.cpp) share beyond their headers: the
// crash points the kill tests stop them at, and the removal of what a killed writer left.
#pragma once

#include <string>

namespace flashback::detail {

// A named step of an atomic write. With FLASHBACK_CRASH_AT=<name> (or <name>:<n>, the n-th time
// that step is reached, counting from 1) in the environment the process SIGKILLs itself there:
// the kill tests (tests/python/test_crash_safety.py) stop a real writer at every step this way.
// Without the variable it costs one cached comparison.
void crash_point(const char* name);

// FLASHBACK_IO_NO_EXCHANGE=1: commit as on a filesystem without renameat2(RENAME_EXCHANGE) (the
// kill tests reach the move-aside path this way).
bool rename_exchange_disabled();

// Temporary siblings of `target` ("<name>.tmp.*", "<name>.tmp-*", "<name>.old-*") whose writer
// is gone: each live writer holds an flock on its temporary (the kernel releases it however the
// process ends), so one whose lock can be taken belongs to a killed writer and is removed while
// that lock is held, and a directory moved aside by a writer killed before its replacement
// arrived is put back when the target is missing. Runs before each write of `target`; errors are
// ignored (best effort).
void remove_stale_temporaries(const std::string& target);

// Takes the flock that marks a new temporary (fd) as its live writer's. False when a cleaner got
// it first, between the temporary's creation and this call: the writer makes another one.
bool lock_temporary(int fd);

}  // namespace flashback::detail
