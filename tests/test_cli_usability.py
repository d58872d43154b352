"""The command lines a new user meets (issue 20.6): every option explained, no raw markup, a dry
run that says each thing once, studies named after the user's data, the data check on the
sweep's own phantom, and progress bars only where a terminal can draw them."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _parsers(parser: argparse.ArgumentParser, path: str = ""):
    yield path or parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}".strip())


def _all_parsers():
    from lungray.cli import build_parser as lungray_parser
    from lungray.sweep.cli import build_parser as sweep_parser

    yield from _parsers(lungray_parser(), "lungray")
    yield from _parsers(sweep_parser("size_study.py"), "size_study.py")


def test_every_option_of_every_command_has_help_text():
    missing = []
    for where, p in _all_parsers():
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (a.help or "").strip() or a.help == argparse.SUPPRESS:
                missing.append(f"{where} {'/'.join(a.option_strings) or a.dest}")
    assert missing == []


def test_help_pages_show_no_restructuredtext_markup():
    for where, p in _all_parsers():
        text = p.format_help()
        assert "``" not in text and ":func:" not in text, (where, text[:400])
    from lungray.cli import build_parser

    lines = build_parser().format_help().splitlines()
    assert any(line.startswith("lungray command line: data checks") for line in lines), lines[:6]


def test_dry_run_says_the_grid_and_each_error_once(capsys, tmp_path):
    from lungray.sweep.cli import main

    rc = main(["--dry-run", "--set", "data.eval_size=5000", "--output", str(tmp_path)], prog="size_study.py")
    out, err = capsys.readouterr()
    both = out + err
    assert rc == 2
    assert both.count("18 trials") == 1  # the dry run's grid line; the banner leaves its grid line out
    assert both.count("eval_size = 5000 is larger than the 1000 images available") == 1, both[-2000:]
    assert err.strip().splitlines() == [err.strip()] and err.startswith("size_study.py: error: ")


def test_the_missing_weights_line_says_who_downloads_them():
    """The runner fetches pretrained weights once, in the driver (lungray.sweep.runner); the dry
    run's line must say that, not that every trial downloads them."""
    from lungray.models.weights import WeightsStatus

    line = WeightsStatus("resnet50", "hf-hub timm/resnet50.a1_in1k", "/cache", False).line()
    assert "downloads them once, in the sweep driver before the first trial" in line
    assert "every trial downloads" not in line


@pytest.mark.parametrize(
    "preset, extra, want",
    [
        ("default", [], "my_xrays_size_study"),
        ("smoke", [], "smoke_my_xrays"),
        ("default", ["--set", "name=mine"], "mine"),  # a name the user set is kept
        ("paper", [], "ct_size_study"),  # a preset written for real data keeps its name
    ],
)
def test_a_phantom_preset_on_the_users_data_is_named_after_the_data(tmp_path, preset, extra, want):
    from lungray.sweep.cli import build_parser, resolve_config

    data = tmp_path / "my xrays"
    for c in ("Normal", "COVID"):
        (data / c).mkdir(parents=True)
    argv = ["--preset", preset, "--data", str(data), "--source", "folder", "--dry-run", "--output", str(tmp_path / "o"), *extra]
    cfg = resolve_config(build_parser("size_study.py").parse_args(argv))
    assert cfg.name == want
    assert cfg.tracking.experiment is None  # so the MLflow experiment is the study name (runner: experiment or name)


def test_data_check_of_the_built_in_phantom_is_the_default_studys_phantom():
    """`lungray data check` with no path checks (and caches) the phantom `python sweeps/size_study.py`
    trains on: same images, difficulty, resolution and split sizes, so the same decoded cache."""
    from lungray.cli import build_parser, data_check_config
    from lungray.config import resolve_study

    args = build_parser().parse_args(["data", "check", "--sizes", "50", "150", "450"])
    cfg = data_check_config(args, "phantom")
    assert cfg == resolve_study("default").data
    assert (cfg.phantom_n, cfg.phantom_difficulty, cfg.resolution, cfg.eval_size, cfg.val_size) == (1000, 0.5, 64, 300, 100)
    args = build_parser().parse_args(["data", "check", "--eval-size", "0.2", "--val-size", "50"])
    cfg = data_check_config(args, "phantom")
    assert (cfg.eval_size, cfg.val_size) == (0.2, 50)
    args = build_parser().parse_args(["data", "check", "/data/x", "--source", "folder"])
    cfg = data_check_config(args, "folder")
    assert (cfg.source, cfg.path, cfg.eval_size, cfg.val_size) == ("folder", "/data/x", 0.25, 0.1)


def test_default_outputs_go_under_the_output_folder_not_the_current_one():
    from lungray.cli import build_parser, default_report_dir

    assert build_parser().parse_args(["phantom"]).out == str(Path("lungray_runs") / "phantom_sheet.png")
    assert default_report_dir("sqlite:////srv/x/lungray_runs/mlflow.db") == Path("/srv/x/lungray_runs/report")
    assert default_report_dir("http://mlflow:5000") == Path("lungray_runs") / "report"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_one_line_otherwise():
    from tqdm import tqdm

    from lungray.data.progress import progress_bar

    log = io.StringIO()
    bar = progress_bar(total=10, desc="decoding images", unit="img", stream=log)
    for _ in range(5):
        bar.update(2)
    bar.close()
    bar.close()  # closing twice says it once
    (line,) = log.getvalue().splitlines()
    assert line.startswith("decoding images: 10 imgs in ") and line.endswith(" s") and "\r" not in log.getvalue()
    log = io.StringIO()
    assert list(progress_bar(range(3), total=4, desc="checking files", unit="img", stream=log)) == [0, 1, 2]
    assert log.getvalue().startswith("checking files: 3/4 imgs in ")
    quiet = io.StringIO()
    progress_bar(total=3, desc="x", stream=quiet, enabled=False).close()
    assert quiet.getvalue() == ""
    tty = _Tty()
    bar = progress_bar(total=3, desc="decoding images", unit="img", stream=tty)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()
