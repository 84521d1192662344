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
