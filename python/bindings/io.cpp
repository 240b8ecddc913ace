// The atomic writes of io/, for the Python package's own files (fine-tuning
// checkpoints, histories).
#include "bindings.hpp"
#include "flashback/io/atomic_dir.hpp"
#include "flashback/io/atomic_file.hpp"

namespace flashback::python {

void bind_io(py::module_& m) {
  py::class_<StagedDirectory>(m, "StagedDirectory",
                              "A directory written as a whole (see flashback.io.atomic_directory).")
      .def(py::init<const std::string&, const std::string&, const std::string&>(), py::arg("target"),
           py::arg("marker"), py::arg("kind"))
      .def_property_readonly("path", &StagedDirectory::path)
      .def_property_readonly("target", &StagedDirectory::target)
      .def("commit", &StagedDirectory::commit, release_gil())
      .def("discard", &StagedDirectory::discard);
  m.def("write_file_atomic", [](const std::string& path, const py::bytes& data) {
          std::string s = data;
          py::gil_scoped_release nogil;
          write_file_atomic(path, s);
        }, py::arg("path"), py::arg("data"), "writes `data` to `path` atomically (temporary file, fsync, rename)");
}

}  // namespace flashback::python
