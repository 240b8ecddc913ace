#include "bindings.hpp"
#include "flashback/error.hpp"

namespace flashback::python {

void bind_errors(py::module_& m) {
  static py::exception<Error> base(m, "FlashbackError", PyExc_RuntimeError);
  static PyObject* format = PyErr_NewExceptionWithDoc(
      "flashback._C.FormatError", "A file is missing, unreadable or malformed; the message starts with its path.",
      PyTuple_Pack(2, base.ptr(), PyExc_ValueError), nullptr);
  static PyObject* invalid = PyErr_NewExceptionWithDoc(
      "flashback._C.InvalidArgument", "A value outside what the operation accepts.",
      PyTuple_Pack(2, base.ptr(), PyExc_ValueError), nullptr);
  m.attr("FormatError") = py::handle(format);
  m.attr("InvalidArgument") = py::handle(invalid);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FormatError& e) {
      PyErr_SetString(format, e.what());
    } catch (const InvalidArgument& e) {
      PyErr_SetString(invalid, e.what());
    } catch (const Error& e) {
      PyErr_SetString(base.ptr(), e.what());
    }
  });
}

}  // namespace flashback::python
