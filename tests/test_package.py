"""The package surface: lazy public names, version, `python -m openic`."""

import subprocess
import sys

import openic


def test_every_public_name_resolves():
    for name in openic.__all__:
        assert getattr(openic, name) is not None, name


def test_import_openic_and_recordio_do_not_import_torch():
    code = "import sys, openic, openic.formats.recordio, openic.formats.lst; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_openic_version():
    out = subprocess.run([sys.executable, "-m", "openic", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"openic {openic.__version__}"


def test_readme_hyperparameter_table_matches_the_schema():
    from pathlib import Path

    from openic.cli.hpflags import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = "<!-- hyperparameters:start -->\n", "<!-- hyperparameters:end -->"
    table = readme[readme.index(start) + len(start) : readme.index(end)]
    assert table == markdown_table(), "regenerate the README table with: python -m openic.cli.hpflags"
