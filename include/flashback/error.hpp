// Error types. Every failure the library reports is a flashback::Error (or a
// subclass) carrying one human-readable line; the CLI prints it and exits 1,
// the Python bindings map it to a Python exception in one place.
#pragma once

#include <stdexcept>
#include <string>

namespace flashback {

// Base of everything flashback throws on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A file is missing, unreadable, truncated or malformed. The message always
// starts with the path: "<path>: <problem>".
class FormatError : public Error {
 public:
  FormatError(const std::string& path, const std::string& problem)
      : Error(path + ": " + problem), path_(path) {}
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
};

// A caller passed a value outside what the operation accepts (token id out of
// range, sequence past the maximum position, cache overflow, bad option).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

}  // namespace flashback
