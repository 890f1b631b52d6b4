"""ipywidgets explorers. They import and build without a display; in a notebook they redraw live.

Each figure is placed in an ``ipywidgets.Output`` by replacing its ``outputs`` with plotly's
mime bundle (``application/vnd.plotly.v1+json``, what JupyterLab's plotly renderer draws): no
``print``, no ``clear_output`` escape codes, and no ``display`` call, which for a plotly figure
would publish into the notebook cell instead of the widget. The latest figures stay available
as attributes, so code and tests can read what is shown.
"""

from __future__ import annotations

import json
from typing import Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
import plotly.io as pio

from diffmm.casestudy import case_users
from diffmm.data.dataset import RecDataset
from diffmm.viz.graphs import case_study_figure, denoising_figure, denoising_frame


def _show(output: widgets.Output, fig: go.Figure) -> None:
    """Replace what ``output`` shows with ``fig``."""
    bundle = {"application/vnd.plotly.v1+json": json.loads(pio.to_json(fig, validate=False)),
              "text/plain": f"<plotly figure: {fig.layout.title.text}>"}
    output.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)


class UserExplorer(widgets.VBox):
    """A user selector and a modality selector redraw the case study (:func:`case_study_figure`);
    a slider over the reverse diffusion steps shows the denoised scores of the user's top items
    (:func:`denoising_figure`). Build it with :func:`explore_users`.

    Attributes:
        user, modality, step: the controls (``Dropdown``, ``ToggleButtons``, ``IntSlider``).
        case_figure, denoising_figure: the figures currently shown.
        frame: the :func:`denoising_frame` of the current user and modality.
    """

    def __init__(self, model, dataset: RecDataset, users: Sequence[int], max_items: int = 20, top: int = 10,
                 note: str | None = None):
        self.model, self.dataset, self.max_items, self.top, self.note = model, dataset, max_items, top, note
        names = dataset.user_names
        self.user = widgets.Dropdown(
            options=[(f"{names[u]} ({u})" if names is not None else f"user {u}", int(u)) for u in users],
            description="user")
        self.modality = widgets.ToggleButtons(options=list(model.modalities), style={"button_width": "auto"},
                                              layout=widgets.Layout(width="auto"))  # labelled in the row below
        self.step = widgets.IntSlider(value=0, min=0, max=1, description="reverse step", continuous_update=False,
                                      style={"description_width": "initial"})  # the whole label, not 'reverse st...'
        self.case_output, self.denoising_output = widgets.Output(), widgets.Output()
        self.case_figure = self.denoising_figure = None
        self.frame = None
        controls = widgets.HBox([self.user, widgets.Label("modality", layout=widgets.Layout(margin="0 4px 0 12px")),
                                 self.modality], layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        super().__init__([controls, self.case_output, self.step, self.denoising_output])
        self.user.observe(self._redraw_all, names="value")
        self.modality.observe(self._redraw_all, names="value")
        self.step.observe(self._redraw_step, names="value")
        self._redraw_all()

    def _redraw_all(self, change=None) -> None:
        user, modality = int(self.user.value), self.modality.value
        self.case_figure = case_study_figure(self.model, self.dataset, user, modality, self.max_items, note=self.note)
        _show(self.case_output, self.case_figure)
        self.frame = denoising_frame(self.model, self.dataset, user, modality, self.top)
        last = int(self.frame["step"].max())
        with self.step.hold_trait_notifications():
            self.step.max = max(last, 1)
            self.step.value = last
        self._redraw_step()

    def _redraw_step(self, change=None) -> None:
        step = min(int(self.step.value), int(self.frame["step"].max()))
        self.denoising_figure = denoising_figure(self.frame, step, note=self.note)
        _show(self.denoising_output, self.denoising_figure)


def explore_users(model, dataset: RecDataset, users: Sequence[int] | None = None, n_users: int = 50,
                  max_items: int = 20, top: int = 10, note: str | None = None) -> UserExplorer:
    """An explorer over users, modalities and reverse diffusion steps of a trained DiffMM.

    Args:
        model: a trained DiffMM (``generated``, ``denoising_trajectory``, ``modalities``).
        dataset: its dataset.
        users: the users offered; default :func:`~diffmm.casestudy.case_users` (the ``n_users``
            users whose generated edges hit the most test items).
        n_users: how many users by default.
        max_items: training items kept per subgraph.
        top: items shown in the denoising panel.
        note: added to every figure's subtitle, e.g. 'brief training: 3 epochs'.
    """
    if users is None:
        users = case_users(model, dataset, n_users)
    users = [int(u) for u in users]
    if not users:
        raise ValueError("explore_users needs at least one user")
    return UserExplorer(model, dataset, users, max_items, top, note)
