"""android_demo/: the Android project is complete and agrees with the exporter and the C++ sources.

Nothing here builds Android (no NDK or Gradle), so this checks what can be checked statically: files, manifest,
package layout, CMake wiring, the ONNX I/O names against the exporter's own code, that the app reads the artifact's
tokenizer.json, and the tokenizer's worked examples (those the Kotlin unit test asserts) against transformers (the
manifest keys it reads come from ArtifactKeys.kt, checked against artifact.py in test_artifact.py). The app's
Android-free Kotlin (tokenizer, sampler, their unit tests) is compiled and run on the JVM in test_kotlin_jvm.py, and
by `./gradlew test` on a machine with Gradle.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "android_demo"
APP = DEMO / "app"
MAIN = APP / "src" / "main"
KOTLIN_MAIN = MAIN / "java" / "org" / "bonsaiexport" / "demo"
ANDROID_NS = "{http://schemas.android.com/apk/res/android}"


def kotlin_files() -> list[Path]:
    return sorted((APP / "src").rglob("*.kt"))


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_required_files_exist():
    required = ["settings.gradle.kts", "build.gradle.kts", "gradle.properties", "gradle/libs.versions.toml",
                "README.md", "app/build.gradle.kts", "app/src/main/AndroidManifest.xml",
                "app/src/main/cpp/CMakeLists.txt", "app/src/main/res/layout/activity_main.xml"]
    missing = [f for f in required if not (DEMO / f).is_file()]
    assert not missing, f"android_demo lacks {missing}"
    names = {p.stem for p in kotlin_files()}
    for stem in ("ModelFolder", "Tokenizer", "Generator", "MainActivity", "Settings", "OrtModel", "Sampler"):
        assert stem in names, f"no {stem}.kt"


def test_no_placeholders_or_machine_paths():
    for path in sorted(p for p in DEMO.rglob("*") if p.is_file()):
        text = read(path)
        for word in ("TODO", "FIXME", "XXX", "TBD"):
            assert not re.search(rf"\b{word}\b", text), f"{path.relative_to(ROOT)}: {word}"
        for pattern in (r"/home/\w+", r"/root/", r"(?<!/local)/tmp/"):
            assert not re.search(pattern, text), f"{path.relative_to(ROOT)}: machine path {pattern}"


def test_manifest_declares_the_launcher_activity():
    root = ET.parse(MAIN / "AndroidManifest.xml").getroot()
    activities = root.findall("application/activity")
    launchers = [a for a in activities
                 if any(act.get(f"{ANDROID_NS}name") == "android.intent.action.MAIN"
                        for act in a.findall("intent-filter/action"))]
    assert len(launchers) == 1
    name = launchers[0].get(f"{ANDROID_NS}name")
    assert launchers[0].get(f"{ANDROID_NS}exported") == "true"
    assert name.lstrip(".") == "MainActivity" and (KOTLIN_MAIN / "MainActivity.kt").is_file()
    for xml in (MAIN / "res").rglob("*.xml"):
        ET.parse(xml)  # every resource is well-formed


def test_kotlin_packages_match_paths_and_namespace():
    gradle = read(APP / "build.gradle.kts")
    namespace = re.search(r'namespace\s*=\s*"([\w.]+)"', gradle).group(1)
    for path in kotlin_files():
        package = re.search(r"^package\s+([\w.]+)", read(path), re.M).group(1)
        source_root = path.parents[len(package.split("."))]
        assert source_root.name == "java" and path.parent == source_root.joinpath(*package.split(".")), path
        assert package == namespace, f"{path}: package {package}, namespace {namespace}"


def test_gradle_wiring():
    gradle = read(APP / "build.gradle.kts")
    versions = read(DEMO / "gradle/libs.versions.toml")
    assert re.search(r'^agp = "8\.\d+\.\d+"', versions, re.M)
    assert re.search(r'^onnxruntime = "1\.\d+\.\d+"', versions, re.M)
    assert 'abiFilters += "arm64-v8a"' in gradle
    assert "compileSdk = 35" in gradle and re.search(r"minSdk = 2[6-9]", gradle)
    assert 'path = file("src/main/cpp/CMakeLists.txt")' in gradle
    assert "-DBONSAI_ORT_AAR=" in gradle and 'targets += "bonsai_ort_ops"' in gradle
    assert "useLegacyPackaging = true" in gradle  # registerCustomOpLibrary needs a file path


def test_cmake_points_at_real_sources_and_16k_pages():
    cmake = read(MAIN / "cpp" / "CMakeLists.txt")
    assert "-Wl,-z,max-page-size=16384" in cmake
    default = re.search(r'get_filename_component\(default_source_dir "\$\{CMAKE_CURRENT_SOURCE_DIR\}/([./]+)"',
                        cmake).group(1)
    source_dir = (MAIN / "cpp" / default).resolve()
    assert source_dir == ROOT
    for sub in re.findall(r'add_subdirectory\("\$\{BONSAI_SOURCE_DIR\}/([\w/]+)"', cmake):
        assert (source_dir / sub / "CMakeLists.txt").is_file(), sub
    assert (source_dir / "custom_ops/onnxruntime/ops.cpp").is_file()
    ort_cmake = read(ROOT / "custom_ops/onnxruntime/CMakeLists.txt")
    assert "add_library(bonsai_ort_ops SHARED" in ort_cmake and "BONSAI_ORT_INCLUDE_DIR" in ort_cmake


def _exporter_function(name: str, **namespace):
    """A function of bonsai_export/export/onnx.py, run without importing the module (it imports torch: slow)."""
    tree = ast.parse(read(ROOT / "bonsai_export/export/onnx.py"))
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    code = compile(ast.Module(body=[node], type_ignores=[]), "onnx.py", "exec")
    exec(code, namespace)
    return namespace[name]


def _kotlin_io_defaults() -> dict[str, str]:
    text = read(KOTLIN_MAIN / "ModelFolder.kt")
    block = re.search(r"data class IoNames\((.*?)\n\)", text, re.S).group(1)
    return dict(re.findall(r'val (\w+): String = "([^"]+)"', block))


def test_io_names_match_the_exporter():
    from onnx import TensorProto, helper

    from bonsai_export.artifact import ONNX_FILE

    args = SimpleNamespace(n_layers=3, n_kv_heads=2, head_dim=8, vocab_size=32, dim=16, n_heads=4, bos_id=1,
                           eos_ids=(2,), pad_id=0)
    model = SimpleNamespace(args=args, max_seq_len=64)
    inputs, outputs = _exporter_function("io_specs", helper=helper, TensorProto=TensorProto)(model)
    genai = _exporter_function("genai_config", ONNX_FILE=ONNX_FILE)(model, None)["model"]["decoder"]

    kt = _kotlin_io_defaults()
    layers = range(args.n_layers)
    kotlin_inputs = [kt["inputIds"], kt["attentionMask"], kt["positionIds"]] + \
        [kt[k] % i for i in layers for k in ("pastKey", "pastValue")]
    kotlin_outputs = [kt["logits"]] + [kt[k] % i for i in layers for k in ("presentKey", "presentValue")]
    assert kotlin_inputs == [v.name for v in inputs]
    assert kotlin_outputs == [v.name for v in outputs]
    # genai_config.json's names are what the app reads first; its keys and the Kotlin defaults must agree
    assert {kt["inputIds"], kt["attentionMask"], kt["positionIds"], kt["pastKey"], kt["pastValue"]} == \
        set(genai["inputs"].values())
    assert {kt["logits"], kt["presentKey"], kt["presentValue"]} == set(genai["outputs"].values())
    model_folder = read(KOTLIN_MAIN / "ModelFolder.kt")
    for key in list(genai["inputs"]) + list(genai["outputs"]):
        assert f'"{key}"' in model_folder, f"ModelFolder.kt does not read genai_config key {key}"


@pytest.fixture(scope="module")
def bonsai_tokenizer(tmp_path_factory):
    """transformers' tokenizer of Bonsai's files (Mistral v1's model in the layout make-checkpoint writes)."""
    transformers = pytest.importorskip("transformers")
    from tokenizer_layouts import write_layout

    from bonsai_export.sentencepiece_json import spm_to_tokenizer_json
    try:
        from bonsai_export.tokenizer import mistral_v1_spm

        spm = mistral_v1_spm()
    except Exception as exc:  # mistral-common missing
        pytest.skip(f"Bonsai's tokenizer.model is not available: {exc}")
    root = tmp_path_factory.mktemp("android-tok")
    spm_to_tokenizer_json(spm, root / "base.json")
    folder = write_layout("json-legacy-normalizer", root / "bonsai", spm, root / "base.json")
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def test_the_app_reads_the_artifacts_tokenizer_json():
    """The app loads the canonical tokenizer.json export writes (docs/TOKENIZER.md), imports it, and takes BOS
    from its post-processor rather than adding one of its own."""
    from bonsai_export.tokenizer import TOKENIZER_JSON

    model_folder = read(KOTLIN_MAIN / "ModelFolder.kt")
    assert re.search(r'const val TOKENIZER = "([^"]+)"', model_folder).group(1) == TOKENIZER_JSON
    assert re.search(r"NEEDED_FILES = setOf\([^)]*\bTOKENIZER\b", model_folder)
    generator = read(KOTLIN_MAIN / "Generator.kt")
    assert "tokenizer.encode(prompt)" in generator and not re.search(r"bos_?id", generator, re.I)
    gradle = read(APP / "build.gradle.kts")
    assert "implementation(libs.kotlinx.serialization.json)" in gradle  # TokenizerJson.kt's JSON reader


def test_documented_tokenizer_examples_match_transformers(bonsai_tokenizer):
    """The (text, ids) pairs TokenizerTest.kt asserts on Bonsai's tokenizer.json, and Tokenizer.kt's KDoc."""
    tok = bonsai_tokenizer
    test_kt = read(APP / "src/test/java/org/bonsaiexport/demo/TokenizerTest.kt")
    examples = re.findall(r'"([^"]+)" to intArrayOf\(([\d, ]+)\)', test_kt)
    assert len(examples) >= 3
    for text, ids in examples:
        ids = [int(i) for i in ids.split(",")]
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids, skip_special_tokens=True) == text, text
    doc_examples = re.findall(r'^\s*\*\s+"([^"]+)"\s+-> ([^-]+?)\s+-> ([\d ]+)$',
                              read(KOTLIN_MAIN / "Tokenizer.kt"), re.M)
    assert len(doc_examples) >= 2
    for text, pieces, ids in doc_examples:
        want = tok(text)["input_ids"]
        assert tok.convert_ids_to_tokens(want) == pieces.split(), text
        assert want == [int(i) for i in ids.split()], text
