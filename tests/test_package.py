"""The package surface: lazy public names, version, `python -m openic`."""

import subprocess
import sys

import openic


def test_every_public_name_resolves():
    for name in openic.__all__:
        assert getattr(openic, name) is not None, name


def test_import_openic_and_recordio_do_not_import_torch():
    code = "import sys, openic, openic.recordio, openic.lst; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_openic_version():
    out = subprocess.run([sys.executable, "-m", "openic", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"openic {openic.__version__}"
