"""The CLI's parser is built from the config dataclasses: every export option is an ExportConfig field with the
dataclass's default, and nothing else becomes part of an artifact (threads are a runtime option)."""

from __future__ import annotations

import dataclasses

from bonsai_export.artifact import ExportConfig
from bonsai_export.cli import build_parser


def _subparser(name: str):
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]  # argparse keeps subparsers there


def test_export_options_are_the_export_configs_fields_with_its_defaults():
    args = _subparser("export").parse_args(["-o", "out"])
    fields = {f.name: f.default for f in dataclasses.fields(ExportConfig)}
    assert {name: getattr(args, name) for name in fields} == fields
    assert not hasattr(args, "threads")
    assert ExportConfig(**{name: getattr(args, name) for name in fields}) == ExportConfig()


def test_runtimes_take_threads_at_run_time():
    for command, argv in (("run", ["--prompt", "x"]), ("validate", ["art"]), ("eval", ["art"])):
        assert _subparser(command).parse_args([*argv, "--threads", "1"]).threads == 1, command
