"""Chat over any runner: the folder's chat template, rendered as transformers' `apply_chat_template` renders it,
and a multi-turn session that keeps the runner's KV cache across turns.

- The template is the folder's `chat_template.jinja`, else tokenizer_config.json's `chat_template` (a string, or a
  list of named templates, of which "default" is taken), as transformers reads them. jinja2 renders it in a sandbox
  with transformers' settings (trim_blocks, lstrip_blocks, loop controls, its `tojson`, `raise_exception` and
  `strftime_now`); it sees `messages`, `add_generation_prompt`, the named special tokens (bos_token, eos_token, ...)
  and `enable_thinking` when one is given. The text is encoded without the post-processor's BOS/EOS, as
  apply_chat_template does, so the template's own tokens are the only special ones.
- A turn renders the whole conversation and feeds the runner only the tokens after the longest prefix its cache
  already holds: with a template that only appends (ChatML), that is the new turn, at the positions that follow;
  a template that rewrites history (Qwen3's own drops the thinking of earlier answers) rewinds the cache to where
  the two token lists part. An answer ends at the model's EOS ids, the template's eos_token and <|im_end|>.
- Context full: the turn is refused. A turn whose rendered prompt leaves no room for one new token in the runner's
  context raises `ContextFull`, naming the context length and the tokens the conversation needs, and leaves the
  conversation as it was (nothing is dropped silently: `reset()` starts a new one). An answer that reaches the end of
  the context stops there (`TurnResult.hit_context`).
- `converse` is `bonsai-export chat`'s loop: one message a line, `/reset` alone on a line starts a new conversation,
  the end of the input ends it. As with apply_chat_template's default, special tokens typed in a message (say
  `<|im_end|>`) are encoded as the special tokens they name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

import torch

from .errors import BonsaiError
from .generate import SamplingConfig, generate
from .tokenizer import CHAT_TEMPLATE_FILE as TEMPLATE_FILE
from .tokenizer import TOKENIZER_CONFIG, StreamDecoder, Tokenizer, chat_template_source

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
IM_END = "<|im_end|>"  # ChatML's end of a message: an answer stops there even where the config's EOS is another id


class ContextFull(BonsaiError):
    """A turn the runner's context cannot hold; the conversation is left as it was."""


def _json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise BonsaiError(f"{path}: cannot be read as JSON ({exc}); copy in the model's tokenizer files again") \
            from None
    return data if isinstance(data, dict) else {}


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _environment():
    """jinja2 set up as transformers sets it up for chat templates (the same options, filters and globals)."""
    from jinja2 import TemplateError, ext, nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(ext.Extension):  # `{% generation %}` marks assistant text for masks; renders its body as is
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, ext.loopcontrols])
    # json.dumps rather than jinja's tojson, which escapes <, >, & for HTML
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # the Jinja text
    specials: dict[str, str]  # the named special tokens the template sees, as transformers passes them

    @classmethod
    def read(cls, folder: Path) -> ChatTemplate:
        """The template of a checkpoint or artifact folder; a folder without one (a base model) is refused."""
        folder = Path(folder)
        config = _json_file(folder / TOKENIZER_CONFIG)
        source = chat_template_source(folder, config)
        if source is None:
            raise BonsaiError(f"{folder}: has no chat template (no {TEMPLATE_FILE}, no chat_template in "
                              f"{TOKENIZER_CONFIG}): a base model; use `bonsai-export run --prompt`, or add the "
                              f"model's chat_template to {TOKENIZER_CONFIG}")
        older = _json_file(folder / "special_tokens_map.json")  # where older folders name their special tokens
        specials = {name: text for name in SPECIAL_TOKEN_NAMES
                    if (text := _token_text(config.get(name, older.get(name)))) is not None}
        return cls(source, specials)

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               enable_thinking: bool | None = None) -> str:
        """The conversation as text; `enable_thinking` None leaves the switch undefined (the template's default)."""
        from jinja2 import TemplateError

        extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        try:
            return _compiled(self.source).render(messages=messages, tools=None, documents=None,
                                                 add_generation_prompt=add_generation_prompt,
                                                 **self.specials, **extra)
        except TemplateError as exc:  # a syntax error, or the template's own raise_exception
            raise BonsaiError(f"chat template: {exc}") from None


_COMPILED: dict = {}


def _compiled(source: str):
    """The compiled template, once per source (compiling is most of a render's cost)."""
    from jinja2 import TemplateError

    if source not in _COMPILED:
        try:
            _COMPILED[source] = _environment().from_string(source)
        except TemplateError as exc:
            raise BonsaiError(f"chat template: not valid Jinja ({exc}); fix the folder's chat_template") from None
    return _COMPILED[source]


def stop_ids(tokenizer: Tokenizer, template: ChatTemplate, eos_ids: Iterable[int]) -> tuple[int, ...]:
    """Where an answer ends: the model's EOS ids, the template's eos_token and ChatML's <|im_end|>."""
    names = {template.specials.get("eos_token"), IM_END} - {None}
    found = {tokenizer.pipeline.token_to_id(name) for name in names} - {None}
    return tuple(sorted(set(eos_ids) | found))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class TurnResult:
    text: str  # the answer, decoded
    tokens: list[int]  # its ids (the stop token excluded)
    prompt_tokens: int  # the whole rendered conversation
    fed_tokens: int  # of those, the ones this turn fed (the rest were in the cache)
    stopped_at_eos: bool
    hit_context: bool  # the answer stopped at the end of the context
    prefill_tps: float
    decode_tps: float


@dataclass
class ChatSession:
    """A conversation over one runner; `cached` mirrors the runner's KV cache: position i holds cached[i]."""

    runner: object  # runners.Runner
    template: ChatTemplate
    tokenizer: Tokenizer
    system: str | None = None
    enable_thinking: bool | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    messages: list[dict] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.stops = stop_ids(self.tokenizer, self.template, self.runner.eos_ids)
        self.reset()

    def reset(self) -> None:
        """A new conversation (the system message kept) on an empty cache."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.cached = []
        self.runner.reset()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.template.render(messages, add_generation_prompt=True, enable_thinking=self.enable_thinking)
        return self.tokenizer.encode(text, specials=False)

    def turn(self, user: str, on_text: Callable[[str], None] | None = None) -> TurnResult:
        """Answer one user message; raises ContextFull (nothing changed) when the prompt leaves no room."""
        messages = [*self.messages, {"role": "user", "content": user}]
        ids = self.prompt_ids(messages)
        context = self.runner.max_seq_len
        if len(ids) + 1 > context:
            raise ContextFull(f"context full: this turn needs {len(ids)} prompt tokens + 1 to answer, but the "
                              f"context holds {context}; start a new conversation (/reset in `chat`), send a "
                              f"shorter message, or use a larger --max-seq-len (artifacts: at export)")
        # Keep what the cache already holds; feed at least one token, for the logits of the first answer token.
        keep = min(common_prefix(self.cached, ids), len(ids) - 1)
        res, filled = self._generate(ids, keep, on_text)
        answer = self.tokenizer.decode(res.tokens)
        self.messages = [*messages, {"role": "assistant", "content": answer}]
        self.cached = (ids + res.tokens)[:filled]  # the last token sampled is in the cache only if it was fed
        return TurnResult(answer, res.tokens, len(ids), len(ids) - keep, res.stopped_at_eos, res.hit_max_seq_len,
                          res.prefill_tps, res.decode_tps)

    def _generate(self, ids: list[int], keep: int, on_text):
        """generate()'s decode loop on the positions after `keep`: it sees the cache's tail as a fresh sequence."""
        filled = keep

        def forward(tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
            nonlocal filled
            filled = keep + int(input_pos[0]) + tokens.shape[1]
            return self.runner(tokens, input_pos + keep)

        stream = StreamDecoder(self.tokenizer, context=ids[-1:])
        on_token = (lambda t: on_text(stream.push(t))) if on_text else None
        self.cached = self.cached[:keep]  # from here the cache past `keep` is being rewritten
        res = generate(forward, ids[keep:], self.sampling, self.stops, self.runner.max_seq_len - keep, on_token)
        return res, filled


def open_session(path: str | Path, sampling: SamplingConfig, system: str | None = None,
                 enable_thinking: bool | None = None, **runner_options) -> ChatSession:
    """A chat with the artifact or checkpoint at `path` (`runner_options`: open_runner's)."""
    from .runners import open_runner

    if Path(path).is_dir():
        ChatTemplate.read(Path(path))  # a base model is refused before its weights load
    runner = open_runner(path, **runner_options)
    folder = runner.tokenizer_dir
    return ChatSession(runner, ChatTemplate.read(folder), Tokenizer(folder), system, enable_thinking, sampling)


RESET = "/reset"  # typed alone on a line: a new conversation


def read_messages(stream) -> Iterable[str]:
    """One message per line until EOF: a terminal gets input()'s prompt and line editing, a pipe is read as is."""
    if stream.isatty():
        while True:
            try:
                yield input("> ")
            except EOFError:
                return
    else:
        for line in stream:
            yield line.rstrip("\r\n")


def converse(session: ChatSession, messages: Iterable[str], out, err, quiet: bool = False,
             as_json: bool = False, keep_going: bool = True) -> int:
    """The interactive loop of `bonsai-export chat`: each non-empty line is a user turn, its answer streamed to
    `out` (or, `as_json`, one JSON object a turn); a refused turn (context full) is one error line on `err` and the
    conversation goes on (`keep_going` False: ContextFull is raised, for `run --chat`). Returns 0 at the end of the
    input (Ctrl-C propagates: the CLI answers 130)."""
    turns = 0
    for message in (m for m in messages if m.strip()):
        if message.strip() == RESET:
            session.reset()
            continue
        try:
            res = session.turn(message, None if as_json else (lambda text: print(text, end="", file=out, flush=True)))
        except ContextFull as exc:
            if not keep_going:
                raise
            print(f"error: {exc}", file=err, flush=True)
            continue
        turns += 1
        if as_json:
            print(json.dumps({"turn": turns, "user": message, **vars(res)}), file=out, flush=True)
            continue
        print(file=out, flush=True)
        if not quiet:
            print(turn_summary(res), file=err, flush=True)
    return 0


def turn_summary(res: TurnResult) -> str:
    end = "stopped at EOS" if res.stopped_at_eos else ("context full" if res.hit_context else "max new tokens")
    return (f"[{res.prompt_tokens} tokens in the conversation, {res.fed_tokens} fed, prefill {res.prefill_tps:.1f} "
            f"tok/s; {len(res.tokens)} new, decode {res.decode_tps:.1f} tok/s; {end}]")
