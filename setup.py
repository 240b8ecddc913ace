"""Builds flashback._C and the `flashback` CLI with CMake, then packages them.

The CMake build directory defaults to <repo>/build (the one scripts/build.sh
uses), so installing after a build only links what changed;
FLASHBACK_CMAKE_BUILD_DIR overrides it. All metadata is in pyproject.toml."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        build = Path(os.environ.get("FLASHBACK_CMAKE_BUILD_DIR", ROOT / "build")).resolve()
        build.mkdir(parents=True, exist_ok=True)
        cache = build / "CMakeCache.txt"
        text = cache.read_text() if cache.exists() else ""
        # A build dir already configured for the extension is only built (the
        # generator re-runs CMake itself when a CMakeLists changed); it keeps its
        # interpreter: a venv's python and the one it was made from share headers.
        if "FLASHBACK_BUILD_PYTHON:BOOL=ON" not in text:
            args = ["-DFLASHBACK_BUILD_PYTHON=ON"]
            if "Python_EXECUTABLE:" not in text:
                args += [f"-DPython_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release"]
            if not text:
                gen = ["-G", "Ninja"] if shutil.which("ninja") else []
                shared = os.environ.get("FLASHBACK_SHARED")
                args += gen + ([f"-DFLASHBACK_SHARED_DIR={shared}"] if shared else [])
            subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), *args], check=True)
        jobs = str(os.cpu_count() or 1)
        subprocess.run(["cmake", "--build", str(build), "-j", jobs, "--target", "flashback_python", "flashback_cli"],
                       check=True)
        built = next((build / "python" / "flashback").glob("_C*.so"))
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, dest)
        # The CLI goes next to the module; an editable install imports the
        # package from the source tree, so it goes there as well.
        targets = [dest.parent]
        if getattr(self, "editable_mode", False) or self.inplace:
            targets.append(ROOT / "python" / "flashback")
        for pkg in targets:
            (pkg / "bin").mkdir(exist_ok=True)
            shutil.copy2(build / "flashback", pkg / "bin" / "flashback")


setup(ext_modules=[CMakeExtension("flashback._C")], cmdclass={"build_ext": CMakeBuild})
