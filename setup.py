"""Builds rv2._C through CMake.

RV2_TARGET_DEVICE picks the native target once:
  cuda  - C++ ops plus CUDA kernels (default where nvcc and a CUDA toolkit are found)
  cpu   - C++ ops only (default elsewhere)
  empty - no extension: a pure-Python wheel (rv2 then uses its Python twins)
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VALID_TARGETS = ("cpu", "cuda", "empty")


def find_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc:
        return nvcc
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and Path(home, "bin", "nvcc").exists():
            return str(Path(home, "bin", "nvcc"))
    return None


def target_device():
    target = os.environ.get("RV2_TARGET_DEVICE", "").strip().lower()
    if not target:
        return "cuda" if find_nvcc() else "cpu"
    if target not in VALID_TARGETS:
        raise SystemExit(f"RV2_TARGET_DEVICE={target!r} is not one of {VALID_TARGETS}")
    return target


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        target = target_device()
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(os.environ.get("RV2_CMAKE_BUILD_DIR") or
                         ROOT / "build" / f"cmake-{target}-py{sys.version_info[0]}{sys.version_info[1]}")
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("RV2_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DRV2_TARGET_DEVICE={target}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
        ]
        if target == "cuda":
            args.append(f"-DCMAKE_CUDA_COMPILER={find_nvcc()}")
            archs = os.environ.get("RV2_CUDA_ARCHS")
            if archs:
                args.append(f"-DRV2_CUDA_ARCHS={archs}")
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_dir, check=True)


ext_modules = [] if target_device() == "empty" else [CMakeExtension("rv2._C")]

setup(
    package_dir={"": "python"},
    packages=find_packages("python"),
    package_data={"rv2": ["py.typed", "engines/profiles/*.yaml", "demo/weights/**/*", "demo/weights/*"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
