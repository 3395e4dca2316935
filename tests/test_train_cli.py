"""CLI surface shared by the commands: ``--threads`` everywhere a model runs, ``--device`` checked up front,
"line"/"lines" grammar."""
from __future__ import annotations

import argparse

import pytest
import torch

from elmo_fast.cli import build_parser
from elmo_fast.commands import add_runtime_args, add_threads_arg, apply_threads
from elmo_fast.data import format_line_numbers


def _subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path", [("train",), ("evaluate",), ("export",), ("demo",), ("embed",), ("probe", "pos"),
                                  ("probe", "wic")])
def test_every_model_command_has_threads(path):
    p = _subparser(build_parser(), *path)
    assert any("--threads" in a.option_strings for a in p._actions), path


def test_threads_are_applied_and_checked():
    p = argparse.ArgumentParser()
    add_runtime_args(p)
    add_threads_arg(p)  # a second call (older commands did both) is harmless
    before = torch.get_num_threads()
    try:
        apply_threads(p.parse_args(["--threads", "1"]))
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="--threads: expected a positive integer, found -2"):
            apply_threads(p.parse_args(["--threads", "-2"]))
        with pytest.raises(ValueError, match="--device 'tpu': not a device"):
            apply_threads(p.parse_args(["--device", "tpu"]))
    finally:
        torch.set_num_threads(before)


def test_line_lists_read_as_english():
    assert format_line_numbers([2]) == "line 2"
    assert format_line_numbers([2, 5]) == "lines 2, 5"
    assert format_line_numbers(list(range(1, 58))) == "lines 1, 2, 3, 4, 5, ... (57 in all)"
