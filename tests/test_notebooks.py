"""Execute the notebooks with small parameters, the way CI does.

Parameters are injected papermill-style: a cell tagged ``injected-parameters`` is inserted right
after the notebook's single ``parameters`` cell, so the notebook's own defaults stay untouched.
The kernel is 'python3', which jupyter_client resolves to this interpreter when ipykernel is
installed in it (checked by ``test_kernel_is_this_interpreter``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
TINY_TRAIN = {"batch_size": 1024, "progress": False}


def execute(name: str, parameters: dict, timeout: int = 300) -> nbformat.NotebookNode:
    """Run notebooks/<name> in notebooks/ with ``parameters`` overriding the defaults."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: expected one cell tagged 'parameters', found {len(tagged)}"
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def html_names(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.html")}


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_committed_clean(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs; clear them"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "FIGURES_DIR" in params[0].source
    assert nb.metadata.kernelspec.name == "python3"


SCREEN_WIDTH = 88  # characters of a code line JupyterLab shows at 1280x800 with the file browser open


@pytest.mark.parametrize("name", ALL)
def test_code_cells_fit_a_projected_screen(name):
    """Teachers project the notebooks: no code line may need horizontal scrolling."""
    cells = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))["cells"]
    too_long = [f"{name} cell {index}: ({len(line)} chars) {line}"
                for index, cell in enumerate(cells) if cell["cell_type"] == "code"
                for line in "".join(cell["source"]).splitlines() if len(line) > SCREEN_WIDTH]
    assert not too_long, f"code lines longer than {SCREEN_WIDTH} characters:\n" + "\n".join(too_long)


def test_kernel_is_this_interpreter():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    assert nb.cells[0].outputs[0]["text"].strip() == sys.prefix


def test_01_train_diffmm(tmp_path):
    figures = tmp_path / "figures"
    execute("01_train_diffmm.ipynb", {"FIGURES_DIR": str(figures), "RUN_DIR": str(tmp_path / "runs"), "EPOCHS": 2, "DATA": "synthetic",
                                      "SYNTHETIC": {"n_users": 200, "n_items": 150}, "TRAIN_OVERRIDES": TINY_TRAIN})
    assert html_names(figures) >= {"01_tiktok_stored_curves", "01_training_curves_diffmm", "01_training_curves_vs_lightgcn",
                                   "01_modality_weights"}
    assert (figures / "01_metrics.csv").read_text().count("\n") == 4  # header + DiffMM, LightGCN, optimistic
    assert len(list((tmp_path / "runs").glob("*/metrics.json"))) == 2


def test_04_case_study(tmp_path):
    figures = tmp_path / "figures"
    nb = execute("04_case_study.ipynb", {"DATA": "synthetic", "FIGURES_DIR": str(figures), "EPOCHS": 2,
                                         "SYNTHETIC": {"n_users": 200, "n_items": 150},
                                         "MODEL_OVERRIDES": {"dim": 16, "denoiser_hidden": (32,), "rebuild_k": 3},
                                         "TRAIN_OVERRIDES": TINY_TRAIN})
    names = html_names(figures)
    assert {n.rsplit("_", 1)[1] for n in names if n.startswith("04_case_study_user")} == {"image", "text"}
    kinds = [mime for o in nb.cells[-1].outputs for mime in o.get("data", {})]
    assert "application/vnd.jupyter.widget-view+json" in kinds, "the explorer widget was not displayed"
    assert "application/vnd.plotly.v1+json" not in kinds, "the explorer's figures leaked out of its Output widgets"


def test_04_case_study_of_a_trained_run_directory(tmp_path):
    """RUN: the notebook shows a model trained elsewhere (its best weights and generated graphs), trains none."""
    from diffmm import datasets
    from diffmm.experiments import build_run_config, run

    synthetic = {"n_users": 200, "n_items": 150}
    config = build_run_config("diffmm", None, {"dim": 16, "denoiser_hidden": (32,), "rebuild_k": 3, "epochs": 2,
                                               **TINY_TRAIN})
    run(datasets.load("synthetic", **synthetic), config, tmp_path / "run")
    figures = tmp_path / "figures"
    nb = execute("04_case_study.ipynb", {"DATA": "synthetic", "SYNTHETIC": synthetic, "RUN": str(tmp_path / "run"),
                                         "FIGURES_DIR": str(figures), "EPOCHS": 0})
    shown = [o["data"]["application/vnd.plotly.v1+json"] for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert shown and all("run run, epoch" in s["layout"]["title"]["text"] for s in shown)
    assert {n.rsplit("_", 1)[1] for n in html_names(figures) if n.startswith("04_case_study_user")} == {"image", "text"}


@pytest.mark.parametrize("name, figures", [
    ("02_sparsity.ipynb", {"tiktok_fig2_sparsity", "tiktok_table2_comparison"}),
    ("03_fusion_ratio_and_hyperparameters.ipynb", {"tiktok_fig4_fusion_ratio", "tiktok_fig3a_lambda0",
                                                   "tiktok_fig3b_omega", "tiktok_table4_tau_lambda1"}),
])
def test_reproduction_notebooks_open_on_the_committed_results(tmp_path, name, figures):
    """Defaults: the committed store, no training, nothing written into committed paths."""
    repo = NOTEBOOKS.parent
    before = {p: p.stat().st_mtime_ns for p in (repo / "figures").rglob("*") if p.is_file()}
    nb = execute(name, {"FIGURES_DIR": str(tmp_path / "figures")}, timeout=120)
    assert html_names(tmp_path / "figures") == figures
    after = {p: p.stat().st_mtime_ns for p in (repo / "figures").rglob("*") if p.is_file()}
    assert {p: after.get(p) for p in before} == before  # nothing committed was rewritten or removed
    # new files only where a sweep running on this checkout at the same time stores its records
    assert [p for p in after.keys() - before.keys() if "results" not in p.parts] == []
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "training" not in text  # nothing was trained
    shown = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(shown) == len(figures) and all(o["data"]["application/vnd.plotly.v1+json"]["data"] for o in shown)


@pytest.mark.parametrize("name, analysis", [("02_sparsity.ipynb", "fig2_sparsity"),
                                            ("03_fusion_ratio_and_hyperparameters.ipynb", "fig4_fusion_ratio")])
def test_quick_trains_its_toy_runs_and_labels_its_figures_as_toys(tmp_path, name, analysis):
    """QUICK alone trains the toy variant (its store starts empty) and says what it trains."""
    nb = execute(name, {"FIGURES_DIR": str(tmp_path / "figures"), "QUICK": True, "NAMES": [analysis],
                        "QUICK_STORE": str(tmp_path / "store")},
                 timeout=900)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "training" in text and "h here)" in text
    shown = [o["data"]["application/vnd.plotly.v1+json"] for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert shown and "TOY SETTINGS" in shown[0]["layout"]["title"]["text"]
    assert all(s["data"] for s in shown)


def test_05_diffusion_walkthrough(tmp_path):
    figures = tmp_path / "figures"
    nb = execute("05_diffusion_walkthrough.ipynb", {"DATA": "synthetic", "FIGURES_DIR": str(figures), "EPOCHS": 2,
                                                    "SYNTHETIC": {"n_users": 200, "n_items": 150},
                                                    "MODEL_OVERRIDES": {"dim": 16, "denoiser_hidden": (32,),
                                                                        "rebuild_k": 3},
                                                    "TRAIN_OVERRIDES": TINY_TRAIN})
    assert html_names(figures) == {"05_noise_schedule", "05_forward_noising", "05_reverse_steps",
                                   "05_msi_comparison"}
    shown = [o["data"]["application/vnd.plotly.v1+json"] for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(shown) == 4 and all(s["data"] for s in shown)
    titles = [s["layout"]["title"]["text"] for s in shown]
    assert all("after 2 training epochs" in t for t in titles[2:])  # the trained panels say how briefly
    assert all("width" not in s["layout"] for s in shown)  # every figure fills the cell, none is wider


def test_05_walks_through_trained_run_directories(tmp_path):
    from diffmm import datasets
    from diffmm.experiments import build_run_config, run

    synthetic = {"n_users": 200, "n_items": 150}
    dataset, runs = datasets.load("synthetic", **synthetic), {}
    for label, msi_weight in (("MSI off", 0.0), ("MSI on", 0.1)):
        config = build_run_config("diffmm", None, {"dim": 16, "denoiser_hidden": (32,), "rebuild_k": 3, "epochs": 3,
                                                   "msi_weight": msi_weight, **TINY_TRAIN})
        runs[label] = str(tmp_path / label.replace(" ", "-"))
        run(dataset, config, runs[label])
    nb = execute("05_diffusion_walkthrough.ipynb", {"DATA": "synthetic", "SYNTHETIC": synthetic, "RUNS": runs,
                                                    "EPOCHS": 0, "FIGURES_DIR": str(tmp_path / "figures")})
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "msi_weight 0.0" in printed and "msi_weight 0.1" in printed
    shown = [o["data"]["application/vnd.plotly.v1+json"] for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(shown) == 4 and "training epoch" in shown[2]["layout"]["title"]["text"]
