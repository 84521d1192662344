import subprocess
import sys

from typer.testing import CliRunner

from innerdist.cli import _parse_shape, app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("targets",):
        assert command in result.output


def test_cli_import_does_not_load_heavy_modules():
    # --help must be instant: torch, numba and daisy are imported inside the commands.
    code = (
        "import sys, innerdist.cli, innerdist; "
        "print(sorted(m for m in ('torch', 'numba', 'daisy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parse_shape():
    assert _parse_shape("8,16,16") == (8, 16, 16)
    assert _parse_shape(None) is None
    for bad in ("8,,16", "a", "0,4", "-1"):
        try:
            _parse_shape(bad)
        except ValueError as e:
            assert repr(bad) in str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted")


# --- one line per failure ---------------------------------------------------------------------

import errno  # noqa: E402

import pytest  # noqa: E402

from innerdist.cli import fault_message, user_errors_exit_2  # noqa: E402


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "m.pt", "a.zarr/r", "o.zarr/p", "--workers", "0"],
         "Invalid value for '--workers' / '-w'"),
        (["predict", "m.pt", "a.zarr/r", "o.zarr/p", "--batch-size", "0"],
         "Invalid value for '--batch-size'"),
        (["segment", "a.zarr/p", "o.zarr/s", "--max-watershed-voxels", "0"],
         "Invalid value for '--max-watershed-voxels'"),
        (["segment", "a.zarr/p", "o.zarr/s", "--workers", "two"], "valid integer"),
        (["segment"], "Missing argument 'prediction'"),
        (["targets", "a.zarr/l", "o.zarr/t"], "Missing option '--scale-factor'"),
        (["predict", "m.pt", "a.zarr/r", "o.zarr/p", "--bogus"], "No such option: --bogus"),
        (["demo", "--minutes", "0"], "Invalid value for '--minutes'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args, message):
    """Bad option values and missing arguments: the one-line form of every other error,
    not click's boxed usage panel (whose message gets cut off)."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"innerdist {args[0]}: error: "), lines[0]
    assert message in lines[0], lines[0]
    assert "╭" not in result.stderr and "Usage:" not in result.stderr


def test_unknown_command_and_bare_invocation():
    result = runner.invoke(app, ["nosuch"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "innerdist: error: No such command 'nosuch'."
    bare = runner.invoke(app, [])
    assert "Commands" in bare.output and "targets" in bare.output  # the help, as before


def test_errors_name_the_command_as_typed(tmp_path):
    """The command's name in the message is the one the user typed (make-data, not the
    Python function's name)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.zarr").mkdir()
    result = runner.invoke(app, ["make-data", str(tmp_path / "d"), "--dims", "4"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("innerdist make-data: error: "), result.stderr


def test_fault_message():
    assert fault_message(OSError(errno.ENOSPC, "No space left on device", "o.zarr/p/c/0")) == (
        "o.zarr/p/c/0: no space left on device (errno ENOSPC); free space, then run the "
        "same command again to resume"
    )
    assert fault_message(OSError(errno.ENOSPC, "No space left on device"), "o.zarr/p") == (
        "writing o.zarr/p: no space left on device (errno ENOSPC); free space, then run the "
        "same command again to resume"
    )
    assert fault_message(PermissionError(errno.EACCES, "Permission denied", "/x")) == (
        "/x: permission denied (errno EACCES); check the permissions (or choose another "
        "output location)"
    )
    assert fault_message(OSError(errno.EIO, "I/O error", "a", None, "b")) == (
        "a -> b: I/O error (errno EIO)"
    )
    assert fault_message(OSError("disk gone")) == "disk gone"


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (ValueError("bad value\nsecond line"), 2, "innerdist fake: error: bad value"),
        (FileExistsError("exists"), 2, "innerdist fake: error: exists"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/o.zarr"), 1,
         "innerdist fake: error: /ro/o.zarr: read-only file system (errno EROFS); choose a "
         "writable output location"),
        (PermissionError(errno.EACCES, "Permission denied"), 1,
         "innerdist fake: error: writing out.zarr/x: permission denied (errno EACCES); check "
         "the permissions (or choose another output location)"),
    ],
)
def test_error_wrapper_exit_codes(error, code, line, capsys):
    import typer

    @user_errors_exit_2
    def fake(out: str) -> None:
        raise error

    with pytest.raises(typer.Exit) as caught:
        fake(out="out.zarr/x")
    assert caught.value.exit_code == code
    assert capsys.readouterr().err.strip() == line


def test_bugs_keep_their_traceback():
    @user_errors_exit_2
    def buggy() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        buggy()


def test_warnings_for_the_user_are_one_line(monkeypatch) -> None:
    import warnings

    from innerdist.cli import _setup_logging

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after
    _setup_logging(False)
    text = warnings.formatwarning("best value on the edge", RuntimeWarning, "/x/train.py", 592,
                                  "    new_rows = validate(model)")
    assert text == "innerdist: warning: best value on the edge\n"
