"""bonsai_runner (C++, no Python) on a Ternary-Bonsai (Qwen3, t2g) .pte: a text prompt through its byte-level
tokenizer gives the ids transformers' tokenizer gives, and its greedy tokens equal the Python .pte runner's, though
the model has more logits than the tokenizer has ids (Qwen pads its vocabulary)."""

from __future__ import annotations

import json
import subprocess

import pytest
from transformers import AutoTokenizer

from bonsai_export import artifact as A
from bonsai_export.export import export
from bonsai_export.generate import greedy
from bonsai_export.native import native_dir
from bonsai_export.runners import open_runner
from bonsai_export.synthetic import make_checkpoint

PROMPTS = ["The capital of France is", "  def f(x):\n\treturn x**2  # 中文 😀"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-runner")
    ckpt = make_checkpoint("ternary-bonsai-tiny", root / "ckpt", seed=0, progress=False)
    export(ckpt, root / "art", A.ExportConfig(format="pte", act_quant="none", max_seq_len=64))
    return ckpt, root / "art"


def test_cpp_runner_tokenizes_and_generates_as_the_python_runner(exported):
    ckpt, art = exported
    hf = AutoTokenizer.from_pretrained(str(ckpt))
    manifest = A.read_manifest(art)
    assert len(hf) < manifest.model.vocab_size  # the padded vocabulary this test is about
    runner = open_runner(art)
    for prompt in PROMPTS:
        proc = subprocess.run([str(native_dir() / "bonsai_runner"), str(art), "--prompt", prompt,
                               "--max-new-tokens", "8"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        timings = json.loads(proc.stdout.strip().splitlines()[1])
        assert timings["prompt_ids"] == hf(prompt).input_ids, prompt
        runner.reset()
        assert timings["generated_ids"] == greedy(runner, timings["prompt_ids"], 8)[: len(timings["generated_ids"])]


def test_cpp_runner_names_a_pte_without_our_format_version(tmp_path):
    """A .pte of another exporter (or of a bonsai-export older than format 2) gets one line saying to re-export."""
    import torch
    from executorch.exir import to_edge

    class Plus(torch.nn.Module):
        def forward(self, x):
            return x + 1

    program = to_edge(torch.export.export(Plus(), (torch.ones(2),))).to_executorch()
    pte = tmp_path / "foreign.pte"
    pte.write_bytes(program.buffer)
    proc = subprocess.run([str(native_dir() / "bonsai_runner"), str(pte), "--tokens", "1"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no artifact format version" in proc.stderr and "re-export it" in proc.stderr
