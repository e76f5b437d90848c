"""Builds custom_ops/ with CMake and runs the C++ kernel tests (custom_ops/tests/test_kernels.cpp):
natively under AddressSanitizer + UBSan, and cross-compiled for aarch64 under qemu-user with a CPU that has
dot product (`-cpu max`, must pick "dotprod") and one that has not (`-cpu cortex-a53`, must pick "neon" and never
raise SIGILL). Each test skips, naming the missing tool, only when its toolchain is absent; CI (.ci/run) installs
g++-aarch64-linux-gnu and qemu-user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLCHAIN = REPO / "custom_ops" / "cmake" / "aarch64-linux-gnu.cmake"
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
BUILD_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120


def tool(name: str) -> str | None:
    """A tool from the venv's bin folder (cmake, ninja come with pip) or from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def require(*names: str) -> dict[str, str]:
    found = {name: tool(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.skip(f"toolchain absent: {', '.join(missing)} not found (CI installs them, see .ci/run)")
    return found


def cmake_build(build_dir: Path, *options: str) -> Path:
    tools = require("cmake")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={tool('ninja')}"] if tool("ninja") else []
    configure = [tools["cmake"], "-S", str(REPO), "-B", str(build_dir), *generator, "-DBONSAI_BUILD_TESTS=ON",
                 "-DBONSAI_BUILD_EXECUTORCH_OPS=OFF", "-DBONSAI_BUILD_ORT_OPS=OFF", *options]
    for command in (configure, [tools["cmake"], "--build", str(build_dir), "--target", "test_kernels", "-j", "2"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return build_dir / "custom_ops" / "test_kernels"


def run_test_binary(command: list[str], expect_isa: str) -> str:
    result = subprocess.run(
        [*command, "--expect-isa", expect_isa], capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit status {result.returncode} (negative = signal):\n{output}"
    assert f"auto isa: {expect_isa}" in output and "OK (0 failures)" in output, output
    return output


def native_x86_isa() -> str:
    """The table dispatch.cpp must pick here, from the kernel's view of the CPU flags."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "ref"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the native build test expects an x86-64 host")
def test_native_under_address_sanitizer(tmp_path):
    require("c++")
    binary = cmake_build(tmp_path / "asan", "-DBONSAI_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug")
    output = run_test_binary([str(binary)], native_x86_isa())
    assert "isa ref:" in output and "shapes checked" in output


@pytest.fixture(scope="module")
def aarch64_binary(tmp_path_factory):
    require("aarch64-linux-gnu-g++", "qemu-aarch64")
    if not Path(AARCH64_SYSROOT).is_dir():
        pytest.skip(f"toolchain absent: {AARCH64_SYSROOT} (g++-aarch64-linux-gnu) not found")
    return cmake_build(tmp_path_factory.mktemp("aarch64"), f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}")


@pytest.mark.parametrize("cpu, expect_isa", [("max", "dotprod"), ("cortex-a53", "neon")])
def test_aarch64_under_qemu(aarch64_binary, cpu, expect_isa):
    qemu = [tool("qemu-aarch64"), "-L", AARCH64_SYSROOT, "-cpu", cpu, str(aarch64_binary)]
    output = run_test_binary(qemu, expect_isa)
    assert f"isa {expect_isa}: " in output and "shapes checked" in output
    if expect_isa == "neon":
        assert "isa dotprod: not supported here" in output
