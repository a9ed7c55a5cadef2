"""The config-generated commands: --help shows each default (or [required]) in plain words, and a
runtime error from the library is one ``error: …`` line with exit code 2, not a traceback."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import typer
from typer.testing import CliRunner

from assay.cli import app, command
from assay.config import ConfigError


@dataclass(frozen=True, kw_only=True)
class Demo:
    """A demo command. See :func:`assay.hooks.capture` and ``code``."""

    name: str
    """Who to greet (``required``)."""
    mood: Literal["calm", "loud"] = "calm"
    """Tone."""
    times: int = 3
    """How often."""
    tags: tuple[str, ...] = ("a", "b")
    """Tags."""
    out: Path = Path("runs/demo")
    """Output folder."""
    note: str = ""
    """An optional note."""


def _app(run):
    a = typer.Typer()
    command(a, "demo", Demo, run)
    command(a, "other", Demo, run)  # two commands, so typer keeps the sub-command name
    return a


def test_help_shows_defaults_required_and_no_markup(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps help in boxes at the terminal width
    res = CliRunner().invoke(_app(lambda cfg: None), ["demo", "--help"], terminal_width=200)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "[default: (3)]" in text and "[default: (a b)]" in text and "[default: (runs/demo)]" in text
    assert "An optional note. [default: (none)]" in text and "()" not in text  # an empty string reads "none"
    assert "REQUIRED. Who to greet" in text and "Choices: calm, loud." in text
    assert "`" not in res.output and ":func:" not in res.output
    assert "assay.hooks.capture" in text


def test_runtime_errors_are_one_line(monkeypatch):
    def boom(cfg):
        raise ConfigError(f"no such thing for {cfg.name}")

    res = CliRunner().invoke(_app(boom), ["demo", "--name", "x"])
    assert res.exit_code == 2
    assert "error: no such thing for x" in res.output and "Traceback" not in res.output
    monkeypatch.setenv("ASSAY_TRACEBACK", "1")
    res = CliRunner().invoke(_app(boom), ["demo", "--name", "x"])
    assert isinstance(res.exception, ConfigError)  # the traceback is there on request


def test_programming_errors_still_raise():
    def bug(cfg):
        raise ZeroDivisionError("a bug, not bad input")

    res = CliRunner().invoke(_app(bug), ["demo", "--name", "x"])
    assert isinstance(res.exception, ZeroDivisionError)


@pytest.mark.parametrize("args, message", [
    (["attribute", "--images", "not_a_photo", "--out-dir", "{tmp}/o"], "skimage.data has no photo 'not_a_photo'"),
    (["report", "--runs", "/nonexistent/folder", "--out", "{tmp}/r.html"], "/nonexistent/folder is not a folder"),
])
def test_real_commands_report_bad_input_cleanly(tmp_path, args, message):
    res = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_default_threads_follow_free_cores(monkeypatch):
    import os

    import torch

    from assay.cli import default_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("ASSAY_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.6, 0, 0))
    assert default_threads() == 2  # 8 cores, ~6 busy
    monkeypatch.setattr(os, "getloadavg", lambda: (30.0, 0, 0))
    assert default_threads() == 1  # never 0
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0, 0))
    assert default_threads() == 8
    monkeypatch.setenv("ASSAY_THREADS", "3")
    assert default_threads() == 3
