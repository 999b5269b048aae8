"""The notebooks execute top to bottom on tiny settings and show what they claim."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def execute(name):
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    os.environ["DFCL_NOTEBOOK_TINY"] = "1"
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": ROOT}}).execute()
    finally:
        del os.environ["DFCL_NOTEBOOK_TINY"]
    return nb


def last_json(nb):
    """The JSON object printed by the notebook's last printing cell."""
    for cell in reversed(nb.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            if out.get("name") == "stdout" and "{" in text:
                return json.loads(text[text.index("{"):text.rindex("}") + 1])
    raise AssertionError("no JSON summary printed")


@pytest.mark.parametrize("name", ["inversion_objectives.ipynb"])
def test_inversion_notebook(name):
    nb = execute(name)
    s = last_json(nb)
    o = s["objectives"]
    # The BatchNorm matchings prefer the data the model was trained on to noise.
    for k in ("bn_kl_abd", "bn_kl_pmi", "bn_l2_di"):
        assert o["real images"][k] < o["N(0,1) noise"][k], k
    assert 0 < s["pmi_feature_mse"] < float("inf") and 0 < s["full_model_feature_mse"]
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # DeepInversion curve, loss curves, image grids


def test_results_notebook():
    nb = execute("continual_results.ipynb")
    s = last_json(nb)
    assert set(s) == {"joint", "finetune"} and all(0 <= v <= 1 for v in s.values())
    md = [o for c in nb.cells for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert any("| Base (fine-tune) |" in o["data"]["text/markdown"] for o in md)
