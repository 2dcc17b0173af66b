"""Issue 20: user errors are one ConfigError family that the commands turn into one ``error:`` line (exit status 2);
any other exception is a bug and keeps its traceback."""
from __future__ import annotations

import pytest

from openood_diffood import cli
from openood_diffood.config import ConfigError
from openood_diffood.errors import MissingFileError, MissingPackageError, OutputExistsError
from openood_diffood.openood import launcher
from openood_diffood.train import trainer


def test_user_error_classes_stay_the_builtin_errors_callers_catch():
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(OutputExistsError, FileExistsError)
    assert issubclass(MissingPackageError, ImportError) and issubclass(ConfigError, ValueError)
    assert all(issubclass(c, ConfigError) for c in (MissingFileError, OutputExistsError, MissingPackageError))


def _error_lines(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("command", ["cli", "launcher", "train"])
def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys, tmp_path, command):
    def fail(*_args, **_kwargs):
        raise raised

    if command == "cli":
        monkeypatch.setattr(cli, "eval_main", fail)
        run = lambda: cli.main(["eval", "--id-test", str(tmp_path / "x.npz")])  # noqa: E731
    elif command == "launcher":
        monkeypatch.setattr(launcher, "register", fail)
        run = lambda: launcher.main(["--root", str(tmp_path)])  # noqa: E731
    else:
        monkeypatch.setattr(trainer, "train_main", fail)
        run = lambda: trainer.main(["x.npz", "--output", str(tmp_path / "out")])  # noqa: E731
    raised = MissingFileError(f"{tmp_path / 'x.npz'} does not exist; check the path")
    assert run() == 2 and _error_lines(capsys) == [f"error: {raised}"]
    for bug in (ValueError("internal"), OSError("internal"), ImportError("internal"), KeyError("internal")):
        raised = bug
        with pytest.raises(type(bug), match="internal"):
            run()


def test_real_user_errors_through_each_command(capsys, tmp_path):
    assert cli.main(["eval", "--id-test", str(tmp_path / "nowhere.npz"), "--near", f"n={tmp_path / 'n.npz'}"]) == 2
    assert [line.split(":")[0] for line in _error_lines(capsys)] == ["error"]
    assert launcher.main([]) == 2
    assert _error_lines(capsys) == ["error: nothing to run: give --config A.yml ... (main.py mode) or --root RUNS "
                                    "(eval_ood.py mode); see --help"]
    assert trainer.main([str(tmp_path / "nowhere.npz"), "--output", str(tmp_path / "out")]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nowhere.npz" in lines[0]
