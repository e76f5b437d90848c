"""Builds custom_ops/ with CMake and runs the C++ kernel tests (custom_ops/tests/test_kernels.cpp):
natively under AddressSanitizer + UBSan, and cross-compiled for aarch64 under qemu-user with a CPU that has
dot product (`-cpu max`, must pick "dotprod") and one that has not (`-cpu cortex-a53`, must pick "neon" and never
raise SIGILL). Then the whole device side for aarch64: kernels, the ExecuTorch op library (against the aarch64
executorch wheel, fetched with pip), the ONNX Runtime op library and bonsai_runner, whose greedy tokens under
qemu must equal the host runner's. Each test skips, naming the missing tool, only when its toolchain is absent;
CI (.ci/run) installs g++-aarch64-linux-gnu and qemu-user.
"""

from __future__ import annotations

import importlib.metadata
import json
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


KERNEL_TESTS_ONLY = ("-DBONSAI_BUILD_TESTS=ON", "-DBONSAI_BUILD_EXECUTORCH_OPS=OFF", "-DBONSAI_BUILD_ORT_OPS=OFF")


def cmake_build(build_dir: Path, *options: str, target: str = "test_kernels") -> Path:
    tools = require("cmake")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={tool('ninja')}"] if tool("ninja") else []
    configure = [tools["cmake"], "-S", str(REPO), "-B", str(build_dir), *generator,
                 f"-DPython_EXECUTABLE={sys.executable}", *options]
    for command in (configure, [tools["cmake"], "--build", str(build_dir), "--target", target, "-j", "2"]):
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
    return "avx2" if {"avx2", "fma", "f16c"} <= flags else "ref"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the native build test expects an x86-64 host")
def test_native_under_address_sanitizer(tmp_path):
    require("c++")
    binary = cmake_build(tmp_path / "asan", *KERNEL_TESTS_ONLY, "-DBONSAI_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug")
    output = run_test_binary([str(binary)], native_x86_isa())
    assert "isa ref:" in output and "shapes checked" in output


def require_aarch64() -> None:
    require("aarch64-linux-gnu-g++", "qemu-aarch64")
    if not Path(AARCH64_SYSROOT).is_dir():
        pytest.skip(f"toolchain absent: {AARCH64_SYSROOT} (g++-aarch64-linux-gnu) not found")


@pytest.fixture(scope="module")
def aarch64_binary(tmp_path_factory):
    require_aarch64()
    return cmake_build(tmp_path_factory.mktemp("aarch64"), *KERNEL_TESTS_ONLY, f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}")


@pytest.mark.parametrize("cpu, expect_isa", [("max", "dotprod"), ("cortex-a53", "neon")])
def test_aarch64_under_qemu(aarch64_binary, cpu, expect_isa):
    qemu = [tool("qemu-aarch64"), "-L", AARCH64_SYSROOT, "-cpu", cpu, str(aarch64_binary)]
    output = run_test_binary(qemu, expect_isa)
    assert f"isa {expect_isa}: " in output and "shapes checked" in output
    if expect_isa == "neon":
        assert "isa dotprod: not supported here" in output


# ---- the device side for aarch64: op libraries and the runner, under qemu ----

def aarch64_executorch() -> Path:
    """The executorch package of the aarch64 wheel of the installed version (libexecutorch.so, XNNPACK backend,
    headers, CMake config), fetched once with pip into the project's cache."""
    from bonsai_export.synthetic import cache_dir

    version = importlib.metadata.version("executorch")
    root = cache_dir() / f"executorch-{version}-aarch64"
    if not (root / "executorch" / "share" / "cmake" / "executorch-config.cmake").is_file():
        download = root.with_name(root.name + ".download")
        shutil.rmtree(download, ignore_errors=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"executorch=={version}", "--no-deps", "--only-binary=:all:",
             "--platform", "manylinux_2_28_aarch64", "-d", str(download), "-q"],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            pytest.skip(f"cannot fetch the aarch64 executorch wheel (package index unreachable?): "
                        f"{result.stderr.strip()[-300:]}")
        import zipfile

        (wheel,) = download.glob("executorch-*.whl")
        with zipfile.ZipFile(wheel) as z:
            z.extractall(download / "unpacked", [n for n in z.namelist()
                                                 if n.startswith(("executorch/lib/", "executorch/include/", "executorch/share/"))])
        shutil.rmtree(root, ignore_errors=True)
        (download / "unpacked").rename(root)
        shutil.rmtree(download)
    return root / "executorch"


@pytest.fixture(scope="module")
def aarch64_device_build(tmp_path_factory):
    require_aarch64()
    et_root = aarch64_executorch()
    build = tmp_path_factory.mktemp("aarch64-device")
    cmake_build(build, f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}", f"-DBONSAI_EXECUTORCH_ROOT={et_root}", target="all")
    return build / "custom_ops", et_root / "lib"


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little")


def run_runner(command: list[str], model: Path, prompt: str) -> dict:
    result = subprocess.run([*command, str(model), "--prompt", prompt, "--max-new-tokens", "12", "--threads", "2"],
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, f"exit status {result.returncode}:\n{result.stderr[-3000:]}"
    ids_line, json_line = result.stdout.strip().splitlines()
    timings = json.loads(json_line)
    assert [int(t) for t in ids_line.split(",")] == timings["generated_ids"]
    return timings


@pytest.fixture(scope="module")
def tiny_pte(tiny_ckpt, tmp_path_factory):
    from bonsai_export.artifact import ExportConfig
    from bonsai_export.export import export

    out = tmp_path_factory.mktemp("runner-pte") / "art"
    export(tiny_ckpt, out, ExportConfig(max_seq_len=64))
    return out


@pytest.mark.parametrize("cpu", ["max", "cortex-a53"])
def test_aarch64_runner_under_qemu_matches_the_host_runner(aarch64_device_build, tiny_pte, cpu):
    ops, et_lib = aarch64_device_build
    for library in (ops / "libbonsai_kernels.so", ops / "executorch" / "libbonsai_et_ops.so",
                    ops / "onnxruntime" / "libbonsai_ort_ops.so", ops / "executorch" / "bonsai_runner"):
        assert elf_machine(library) == 183, f"{library} is not an aarch64 binary"  # EM_AARCH64
    from bonsai_export.native import native_dir

    prompt = "Once upon a time, in a land far away"
    host = run_runner([str(native_dir() / "bonsai_runner")], tiny_pte, prompt)
    qemu = [tool("qemu-aarch64"), "-L", AARCH64_SYSROOT, "-cpu", cpu,
            "-E", f"LD_LIBRARY_PATH={et_lib}:{ops / 'executorch'}", str(ops / "executorch" / "bonsai_runner")]
    device = run_runner(qemu, tiny_pte, prompt)
    assert device["prompt_ids"] == host["prompt_ids"]
    assert device["generated_ids"] == host["generated_ids"] and len(host["generated_ids"]) == 12
    assert device["text"] == host["text"]
