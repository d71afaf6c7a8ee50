"""examples/workshop.ipynb runs offline from the first cell to the last (nbclient, a real kernel)."""

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "workshop.ipynb"
WORKSHOP_NAMES = ("role", "sess", "bucket", "prefix", "training_image", "download", "s3train", "s3validation",
                  "s3_output_location", "ic", "train_data", "validation_data", "data_channels", "predictor")


def test_workshop_cells_keep_the_workshops_order_and_names():
    source = "\n".join(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    positions = [re.search(rf"^(def )?{name}\b", source, re.M).start() for name in WORKSHOP_NAMES]
    assert positions == sorted(positions)
    assert "import sagemaker" not in source.replace("from openic import sagemaker", "")


@pytest.mark.slow
def test_workshop_notebook_runs_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENIC_WORKSHOP_DATA", "digits")
    monkeypatch.setenv("OPENIC_WORKSHOP_EPOCHS", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = ["".join(o.get("text", "") for o in c.get("outputs", [])) for c in nb.cells if c.cell_type == "code"]
    text = "\n".join(outputs)
    assert "arn:aws:iam::" in text and "image-classification" in text
    assert "Epoch[0] Validation-accuracy=" in text
    assert text.count("predicted ") == 8 and "/8 right" in text
    assert "Completed" in text and (tmp_path / "output" / "ic-fulltraining").is_dir()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the charts cell displayed no chart"
