"""Chat: the chat template rendered as transformers renders it, a multi-turn session over one KV cache whose answers
equal from-scratch runs over the whole conversation, the context-full policy, and `bonsai-export chat` / `run --chat`
through the command line."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import bonsai_export
from bonsai_export import artifact as A
from bonsai_export.chat import ChatSession, ChatTemplate, ContextFull, common_prefix, converse, open_session
from bonsai_export.errors import BonsaiError
from bonsai_export.export import export
from bonsai_export.generate import SamplingConfig, generate
from bonsai_export.runners import open_runner
from bonsai_export.synthetic import make_checkpoint
from bonsai_export.tokenizer import Tokenizer
from test_kotlin_jvm import kotlin  # noqa: F401  (the fixture: the app's JVM Kotlin, compiled once)

PACKAGE_PARENT = str(Path(bonsai_export.__file__).resolve().parents[1])
# -P: the subprocess imports the package the tests import (PYTHONPATH), not a source tree under its working folder.
CLI = [sys.executable, "-P", "-m", "bonsai_export"]
GREEDY = SamplingConfig(max_new_tokens=12)

# Our own template with what ChatML templates use beyond plain loops: a namespace, loop controls, raise_exception,
# tojson, a {% generation %} block, the special tokens, thinking stripped from answers before the last user turn,
# and un-dashed tags on their own indented lines (which only trim_blocks + lstrip_blocks render without blanks).
RICH_TEMPLATE = """{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}
{% for m in messages %}
    {% if m.role not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + m.role|tojson) }}
    {% endif %}
    {% set content = m.content %}
    {% if m.role == 'assistant' and loop.index0 < ns.last_user and '</think>' in content %}
        {% set content = content.split('</think>')[-1].lstrip('\\n') %}
    {% endif %}
<|im_start|>{{ m.role }}
{% if m.role == 'assistant' %}{% generation %}{{ content }}{% endgeneration %}{% else %}{{ content }}{% endif %}
<|im_end|>
    {% if loop.index0 > 64 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant{{ ' ' + {'eos': eos_token}|tojson if eos_token != '<|im_end|>' else '' }}
{% if enable_thinking is defined and enable_thinking is false %}
<think>

</think>

{% endif %}
{% endif %}"""

# A template that rewrites the start of the conversation every turn: the session must rewind its cache.
COUNTING_TEMPLATE = ("{{ '<|im_start|>system\\n' + (messages|length)|string + ' messages<|im_end|>\\n' }}"
                     "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
                     "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

LLAMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]"
                  "{% elif m.role == 'assistant' %} {{ m.content }}{{ eos_token }}{% else %}<<SYS>>{{ m.content }}"
                  "<</SYS>>{% endif %}{% endfor %}")


@dataclass(frozen=True)
class Case:
    name: str
    messages: tuple
    add_generation_prompt: bool
    enable_thinking: bool | None  # None: not passed


SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "Hello there, how are you?"}
ANSWER = {"role": "assistant", "content": "<think>\nfine\n</think>\n\nFine, thanks."}
AGAIN = {"role": "user", "content": "tab\there, newline\nand 日本語 😀 <|im_end|> typed as text"}
CASES = [
    Case("user, generation prompt", (USER,), True, None),
    Case("system, thinking off", (SYSTEM, USER), True, False),
    Case("system, thinking on", (SYSTEM, USER), True, True),
    Case("multi-turn, thinking off", (SYSTEM, USER, ANSWER, AGAIN), True, False),
    Case("multi-turn, no generation prompt", (USER, ANSWER, AGAIN), False, None),
    Case("multi-turn ending in an answer", (SYSTEM, USER, ANSWER), False, True),
]
assert len(CASES) == 6


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """The tiny Ternary-Bonsai (Qwen3) folder: byte-level BPE, a ChatML template with the thinking switch."""
    return make_checkpoint("ternary-bonsai-tiny", tmp_path_factory.mktemp("chat") / "qwen", seed=0, progress=False)


@pytest.fixture(scope="module")
def qwen_runner(qwen):
    return open_runner(qwen)


def with_template(folder: Path, dst: Path, template: str, as_file: bool = False) -> Path:
    """A copy of `folder` whose chat template is `template` (in tokenizer_config.json, or chat_template.jinja)."""
    shutil.copytree(folder, dst)
    if as_file:
        (dst / "chat_template.jinja").write_text(template)
    else:
        cfg = json.loads((dst / "tokenizer_config.json").read_text())
        (dst / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": template}))
    return dst


def ours(folder: Path, case: Case) -> list[int]:
    text = ChatTemplate.read(folder).render(list(case.messages), case.add_generation_prompt, case.enable_thinking)
    return Tokenizer(folder).encode(text, specials=False)


def transformers_ids(folder: Path, case: Case) -> list[int]:
    extra = {} if case.enable_thinking is None else {"enable_thinking": case.enable_thinking}
    ref = AutoTokenizer.from_pretrained(str(folder))
    return ref.apply_chat_template(list(case.messages), add_generation_prompt=case.add_generation_prompt,
                                   **extra)["input_ids"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_folder_template_gives_transformers_ids(qwen, case):
    assert ours(qwen, case) == transformers_ids(qwen, case)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_richer_template_gives_transformers_ids(qwen, tmp_path, case):
    folder = with_template(qwen, tmp_path / "rich", RICH_TEMPLATE)
    assert ours(folder, case) == transformers_ids(folder, case)


def test_thinking_switch_and_history_rewrite_reach_the_text(qwen, tmp_path):
    """Guards the tests above against a template that ignores its inputs."""
    folder = with_template(qwen, tmp_path / "rich", RICH_TEMPLATE)
    off, on = (ChatTemplate.read(folder).render([USER], True, flag) for flag in (False, True))
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and on.endswith("<|im_start|>assistant\n")
    history = ChatTemplate.read(folder).render([USER, ANSWER, AGAIN])
    assert "fine\n</think>" not in history and "Fine, thanks." in history


def test_chat_template_jinja_wins_over_the_config_as_in_transformers(qwen, tmp_path):
    folder = with_template(qwen, tmp_path / "file", COUNTING_TEMPLATE, as_file=True)
    assert "2 messages" in ChatTemplate.read(folder).render([USER, ANSWER])
    assert ours(folder, CASES[3]) == transformers_ids(folder, CASES[3])


def test_a_template_file_travels_into_the_artifact(qwen, tmp_path):
    """An artifact keeps one template, the one transformers would use: a folder's chat_template.jinja goes into the
    artifact's tokenizer_config.json."""
    from bonsai_export.tokenizer import write_canonical

    folder = with_template(qwen, tmp_path / "file", COUNTING_TEMPLATE, as_file=True)
    out = tmp_path / "art"
    out.mkdir()
    write_canonical(folder, out)
    assert not (out / "chat_template.jinja").exists()
    assert "2 messages" in ChatTemplate.read(out).render([USER, ANSWER])


def test_a_template_error_is_one_bonsai_error(qwen, tmp_path):
    folder = with_template(qwen, tmp_path / "rich", RICH_TEMPLATE)
    with pytest.raises(BonsaiError, match='chat template: unknown role "tool"'):
        ChatTemplate.read(folder).render([{"role": "tool", "content": "x"}])
    broken = with_template(qwen, tmp_path / "broken", "{% for m in messages %}")
    with pytest.raises(BonsaiError, match="chat template: not valid Jinja"):
        ChatTemplate.read(broken).render([USER])


def test_a_sentencepiece_folder_with_a_template_gives_transformers_ids(tiny_ckpt, tmp_path):
    folder = with_template(tiny_ckpt, tmp_path / "llama", LLAMA_TEMPLATE)
    for case in CASES[1], CASES[4]:
        assert ours(folder, case) == transformers_ids(folder, case)


def test_a_base_model_has_no_template(tiny_ckpt):
    with pytest.raises(BonsaiError, match="has no chat template"):
        ChatTemplate.read(tiny_ckpt)


class Recording:
    """A runner that records each call's (first position, tokens fed)."""

    def __init__(self, runner):
        self.runner, self.calls = runner, []

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def __call__(self, tokens, input_pos):
        self.calls.append((int(input_pos[0]), tokens.shape[1]))
        return self.runner(tokens, input_pos)

    def reset(self):
        self.calls.append("reset")
        self.runner.reset()


def from_scratch(runner, session: ChatSession, messages: list[dict]) -> list[int]:
    """Greedy answer to the whole conversation rendered from nothing, on the same runner."""
    runner.reset()
    prompt = session.prompt_ids(messages)
    return generate(runner, prompt, session.sampling, session.stops, runner.max_seq_len).tokens


def two_turns(runner, folder: Path, **kw) -> tuple[ChatSession, Recording, list]:
    rec = Recording(runner)
    session = ChatSession(rec, ChatTemplate.read(folder), Tokenizer(folder), sampling=GREEDY, **kw)
    first = session.turn("Hello there")
    cached, rec.calls = list(session.cached), []
    second = session.turn("Tell me more about it.")
    return session, rec, [first, cached, second]


def test_second_answer_equals_a_from_scratch_run_and_only_the_new_turn_is_fed(qwen, qwen_runner):
    session, rec, (first, cached, second) = two_turns(qwen_runner, qwen, system="Be brief.", enable_thinking=False)
    conversation = session.messages[:-1]
    ids = session.prompt_ids(conversation)
    keep = common_prefix(cached, ids)
    assert keep > 0 and rec.calls[0] == (keep, len(ids) - keep) and second.fed_tokens == len(ids) - keep
    assert all(pos == len(ids) + i for i, (pos, _) in enumerate(rec.calls[1:]))  # then one a step
    assert "reset" not in rec.calls
    assert len(second.tokens) > 0 and from_scratch(qwen_runner, session, conversation) == second.tokens


class Scripted(Recording):
    """Answers `answer`'s tokens, then <|im_end|>, whatever the model's logits say; the cache is the model's own."""

    def __init__(self, runner, script: list[int]):
        super().__init__(runner)
        self.script, self.step = script, 0

    def __call__(self, tokens, input_pos):
        logits = super().__call__(tokens, input_pos)
        forced = torch.full_like(logits, -1e9)
        forced[..., self.script[min(self.step, len(self.script) - 1)]] = 0
        self.step += 1
        return forced


def test_an_answer_that_encodes_back_to_its_tokens_keeps_the_whole_cache(qwen, qwen_runner):
    tok, answer = Tokenizer(qwen), "Fine, thanks."
    rec = Scripted(qwen_runner, [*tok.encode(answer, specials=False), tok.pipeline.token_to_id("<|im_end|>")])
    # thinking left on: the tiny template renders an answer in history as it was generated, after the bare header
    session = ChatSession(rec, ChatTemplate.read(qwen), tok, sampling=GREEDY)
    assert session.turn("Hello there").text == answer
    cached, rec.calls = list(session.cached), []
    session.turn("And then?")
    new_turn = "<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n"
    assert rec.calls[0] == (len(cached), len(tok.encode(new_turn, specials=False)))


def test_a_template_that_rewrites_history_rewinds_the_cache(qwen, qwen_runner, tmp_path):
    folder = with_template(qwen, tmp_path / "counting", COUNTING_TEMPLATE)
    session, rec, (first, cached, second) = two_turns(qwen_runner, folder)
    header = Tokenizer(folder).encode("<|im_start|>system\n", specials=False)
    assert rec.calls[0][0] == len(header)  # the header kept; the message count after it changed
    assert from_scratch(qwen_runner, session, session.messages[:-1]) == second.tokens


def test_answers_stop_at_im_end(qwen, qwen_runner):
    session = ChatSession(qwen_runner, ChatTemplate.read(qwen), Tokenizer(qwen))
    im_end = Tokenizer(qwen).pipeline.token_to_id("<|im_end|>")
    assert im_end in session.stops and set(qwen_runner.eos_ids) <= set(session.stops)


@pytest.fixture(scope="module")
def small_context(qwen):
    return open_runner(qwen, max_seq_len=64)


def test_context_full_refuses_the_turn_and_keeps_the_conversation(qwen, small_context):
    session = ChatSession(small_context, ChatTemplate.read(qwen), Tokenizer(qwen),
                          sampling=SamplingConfig(max_new_tokens=4))
    session.turn("Hi")
    before = (list(session.messages), list(session.cached))
    long = "word " * 30
    need = len(session.prompt_ids([*session.messages, {"role": "user", "content": long}]))
    with pytest.raises(ContextFull, match=f"needs {need} prompt tokens \\+ 1 to answer, but the context holds 64"):
        session.turn(long)
    assert (session.messages, session.cached) == before
    assert session.turn("Ok").tokens  # a turn that fits still goes on the same cache


def test_an_answer_that_reaches_the_context_end_stops_there(qwen, small_context):
    session = ChatSession(small_context, ChatTemplate.read(qwen), Tokenizer(qwen),
                          sampling=SamplingConfig(max_new_tokens=100))
    res = session.turn("Hi")
    if res.stopped_at_eos:
        pytest.skip("the random model ended its answer early")
    assert res.hit_context and len(session.cached) == 64
    with pytest.raises(ContextFull, match="context holds 64"):
        session.turn("more")
    session.reset()
    assert session.cached == [] and session.turn("Hi").tokens == res.tokens


@pytest.fixture(scope="module")
def qwen_artifact(qwen, tmp_path_factory):
    """An ONNX artifact of the tiny Ternary-Bonsai: its template travels in tokenizer_config.json."""
    out = tmp_path_factory.mktemp("chat-art") / "qwen"
    export(qwen, out, A.ExportConfig(format="onnx", max_seq_len=96))
    return out


def test_an_artifact_carries_the_template_and_chats_over_its_cache(qwen, qwen_artifact):
    assert ChatTemplate.read(qwen_artifact) == ChatTemplate.read(qwen)
    runner = open_runner(qwen_artifact)
    session, rec, (first, cached, second) = two_turns(runner, qwen_artifact, enable_thinking=False)
    ids = session.prompt_ids(session.messages[:-1])
    assert rec.calls[0] == (common_prefix(cached, ids), second.fed_tokens) and second.fed_tokens < len(ids)
    assert from_scratch(runner, session, session.messages[:-1]) == second.tokens


def test_converse_resets_reports_a_full_context_and_goes_on(qwen):
    session = open_session(qwen, SamplingConfig(max_new_tokens=4), max_seq_len=64)
    out, err = io.StringIO(), io.StringIO()
    lines = ["Hi", "", "/reset", "Hi", "word " * 40, "Ok"]
    assert converse(session, iter(lines), out, err, quiet=True) == 0
    answers = out.getvalue().splitlines()
    assert len(answers) == 3 and answers[0] == answers[1]  # /reset: the same answer to the same first message
    assert err.getvalue().count("error: context full") == 1 and "context holds 64" in err.getvalue()
    assert [m["content"] for m in session.messages if m["role"] == "user"] == ["Hi", "Ok"]
    with pytest.raises(ContextFull):
        converse(session, ["word " * 40], out, err, keep_going=False)


def test_open_session_refuses_a_base_model_before_loading_it(tiny_ckpt):
    with pytest.raises(BonsaiError, match="has no chat template"):
        open_session(tiny_ckpt, GREEDY)


# ---- the Android app's ChatML format (Chat.kt), on the JVM ----

def test_the_apps_chatml_gives_transformers_ids(kotlin, qwen, tmp_path):
    """Chat.kt renders what Qwen3-style templates render (RICH_TEMPLATE: thinking switch, thinking dropped from
    answers before the last user message), and the app's tokenizer encodes it to transformers' ids."""
    from test_kotlin_jvm import run_harness

    folder = with_template(qwen, tmp_path / "rich", RICH_TEMPLATE)
    request = {"tokenizer": str(qwen / "tokenizer.json"),
               "conversations": [{"messages": list(c.messages), "add_generation_prompt": c.add_generation_prompt,
                                  "thinking": c.enable_thinking} for c in CASES]}
    answer = run_harness(kotlin, request, tmp_path, main="org.bonsaiexport.demo.ChatHarnessKt")
    template = ChatTemplate.read(folder)
    for case, text, ids in zip(CASES, answer["texts"], answer["ids"], strict=True):
        assert text == template.render(list(case.messages), case.add_generation_prompt, case.enable_thinking), case
        assert ids == transformers_ids(folder, case), case.name


# ---- the command line ----

def cli(*args, stdin: str = "", timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": PACKAGE_PARENT}
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env)


CLI_TURNS = ["Hello there", "", "Tell me more about it.", "word " * 40, "/reset", "Hello there"]


@pytest.fixture(scope="module")
def cli_chat(qwen):
    """One `chat --json` run over CLI_TURNS (a blank line, a turn too long for the context, /reset), to end of input."""
    return cli("--json", "chat", str(qwen), "--no-think", "--max-new-tokens", "6", "--max-seq-len", "64",
               stdin="\n".join(CLI_TURNS) + "\n")


def test_cli_chat_answers_as_the_session_does_and_ends_at_eof(cli_chat, qwen, small_context):
    assert cli_chat.returncode == 0, cli_chat.stderr
    turns = [json.loads(line) for line in cli_chat.stdout.splitlines()]
    session = ChatSession(small_context, ChatTemplate.read(qwen), Tokenizer(qwen), enable_thinking=False,
                          sampling=SamplingConfig(max_new_tokens=6))
    first, second = session.turn("Hello there"), session.turn("Tell me more about it.")
    assert [t["tokens"] for t in turns] == [first.tokens, second.tokens, first.tokens]  # /reset: the first again
    assert turns[1]["fed_tokens"] < turns[1]["prompt_tokens"] and turns[2]["fed_tokens"] == turns[2]["prompt_tokens"]


def test_cli_chat_reports_a_full_context_on_one_line_and_goes_on(cli_chat):
    errors = [line for line in cli_chat.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "context full" in errors[0] and "context holds 64" in errors[0], cli_chat.stderr
    assert "Traceback" not in cli_chat.stderr


def test_run_chat_streams_one_turn(cli_chat, qwen):
    done = cli("run", str(qwen), "--chat", "--no-think", "--prompt", "Hello there", "--max-new-tokens", "6",
               "--max-seq-len", "64")
    assert done.returncode == 0, done.stderr
    assert done.stdout == json.loads(cli_chat.stdout.splitlines()[0])["text"] + "\n"
    assert "stopped at EOS" in done.stderr or "max new tokens" in done.stderr  # the turn's summary line


def test_cli_chat_interrupted_exits_130(qwen):
    env = {**os.environ, "PYTHONPATH": PACKAGE_PARENT}
    proc = subprocess.Popen([*CLI, "--quiet", "chat", str(qwen)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(3)  # anywhere: starting, loading, or waiting for a line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err


@pytest.mark.parametrize("argv", [["chat"], ["run", "--chat", "--prompt", "Hi"], ["run", "--system", "x",
                                                                                  "--prompt", "Hi"]])
def test_cli_chat_bad_input_is_one_error_line(tiny_ckpt, capsys, argv):
    from bonsai_export.cli import main

    assert main(["--quiet", argv[0], str(tiny_ckpt), *argv[1:]]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    want = "are chat options; add --chat" if "--system" in argv else "has no chat template"
    assert len(errors) == 1 and want in errors[0] and "Traceback" not in err, err
