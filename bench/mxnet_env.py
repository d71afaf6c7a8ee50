"""A private virtual environment with Apache MXNet 1.9.1, the reference the benchmarks compare against.

MXNet 1.9.1 needs ``numpy<1.24`` while openic's own venv has a newer numpy, so MXNet lives in its own venv
(``bench/.mxnet-venv``, git-ignored). ``ensure_mxnet_venv()`` creates it on first use and returns its python;
later calls only check that ``import mxnet`` works. Run ``python bench/mxnet_env.py`` to create it by hand.
MXNet's ``im2rec.py`` comes with the wheel (``mxnet/tools/im2rec.py``); ``mxnet_im2rec_script()`` finds it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
VENV_DIR = BENCH_DIR / ".mxnet-venv"
MXNET_REQUIREMENTS = ("mxnet==1.9.1", "numpy<1.24", "opencv-python-headless")
# The mxnet 1.9.1 wheel is py3-none but was built against numpy 1.x; numpy 1.23 has wheels up to Python 3.11.
_CHECK = "import mxnet, numpy, cv2; print(mxnet.__version__, numpy.__version__, cv2.__version__)"


def venv_python(venv: Path = VENV_DIR) -> Path:
    return venv / "bin" / "python"


def _works(python: Path) -> bool:
    if not python.exists():
        return False
    result = subprocess.run([str(python), "-c", _CHECK], capture_output=True, text=True)
    if result.returncode == 0:
        log.info("MXNet venv ok: mxnet/numpy/opencv %s", result.stdout.strip())
    return result.returncode == 0


def ensure_mxnet_venv(venv: Path = VENV_DIR, base_python: str | None = None) -> Path:
    """Return the python of a venv where ``import mxnet`` (1.9.1) works, creating the venv if needed.

    Args:
        venv: where the venv lives (created with ``python3 -m venv``).
        base_python: interpreter to create it with; defaults to ``python3.11``/``python3`` on PATH, since
            numpy<1.24 has no wheels for Python 3.12+.
    """
    python = venv_python(venv)
    if _works(python):
        return python
    base = base_python or _pick_base_python()
    log.info("creating MXNet venv at %s with %s", venv, base)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *MXNET_REQUIREMENTS], check=True)
    if not _works(python):
        raise RuntimeError(f"{venv}: 'import mxnet' still fails after installing {' '.join(MXNET_REQUIREMENTS)}")
    return python


def mxnet_im2rec_script(python: Path) -> Path:
    """MXNet 1.9.1's own ``tools/im2rec.py``: the wheel ships it as ``mxnet/tools/im2rec.py`` (Apache-2.0)."""
    code = "import mxnet, os; print(os.path.join(os.path.dirname(mxnet.__file__), 'tools', 'im2rec.py'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _pick_base_python() -> str:
    for name in ("python3.11", "python3.10", "python3.9", "python3"):
        found = subprocess.run(["which", name], capture_output=True, text=True)
        if found.returncode == 0:
            return found.stdout.strip()
    return sys.executable


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_mxnet_venv())
