"""Builds the Python module batchcam (python/batchcam) with CMake: batchcam::core and the
extension batchcam._C, against the torch of the Python running this script. No network is
needed; LibTorch, pybind11 and the Python headers come from that torch or the system
(Debian: python3-torch, libtorch-dev, pybind11-dev, python3-dev).

    python3 -m pip install . --no-build-isolation

Environment: BATCHCAM_BUILD_TYPE (default Release), CMAKE_BUILD_PARALLEL_LEVEL (default: all cores).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def version():
    text = (ROOT / "CMakeLists.txt").read_text()
    return re.search(r"project\(batchcam VERSION ([0-9.]+)", text).group(1)


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import torch  # the torch the module is built for

        out = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build = Path(self.build_temp).resolve() / "cmake"
        args = [
            "-DBATCHCAM_CORE_ONLY=ON",
            "-DBATCHCAM_BUILD_PYTHON=ON",
            "-DBATCHCAM_INSTALL=OFF",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('BATCHCAM_BUILD_TYPE', 'Release')}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DBATCHCAM_PYTHON_OUTPUT_DIR={out}",
        ]
        torch_cmake = Path(torch.utils.cmake_prefix_path) / "Torch"
        if torch_cmake.is_dir():  # a PyTorch wheel; Debian's LibTorch is found by CMake itself
            args.append(f"-DTorch_DIR={torch_cmake}")
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build)] + args, check=True)
        subprocess.run(["cmake", "--build", str(build), "--target", "batchcam_python", "--parallel", jobs], check=True)


setup(
    version=version(),
    packages=["batchcam"],
    package_dir={"": "python"},
    package_data={"batchcam": ["py.typed"]},
    ext_modules=[CMakeExtension("batchcam._C")],
    cmdclass={"build_ext": CMakeBuild},
    options={"build": {"build_base": "build-python"}},
    zip_safe=False,
)
