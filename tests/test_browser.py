"""The notebooks as a new user sees them: JupyterLab in headless Chromium.

Each ``notebooks/*.ipynb`` is opened in JupyterLab (a temporary copy of ``notebooks/`` and ``figures/``,
so the relative paths ``../runs/...`` and ``../figures/results`` resolve inside a temporary folder and
nothing committed is written), at 1280 x 800 with the file browser open, and run with its committed
parameters through JupyterLab's "Run All Cells". Then:

* no cell has an error output, and no output anywhere (widget outputs included) shows a traceback;
* every plotly figure is drawn (traces in the DOM, not an empty div) and lies inside the notebook
  panel, not cut off at its right edge or by a scrolling output;
* a notebook that builds an explorer (``explore_users``) has its user dropdown, modality buttons and
  reverse-step slider driven, and the figures they control must change.

Screenshots (the window after Run All, one per figure scrolled into view, the explorer after each
change) and ``timings.json`` go to ``$DIFFMM_BROWSER_SHOTS``, else to a pytest temporary folder
(its path is printed). Run with ``bash scripts/test.sh -m browser``. Run All should take at most 60 s
(longer is reported as a warning); it fails after 240 s (``$DIFFMM_BROWSER_TIMEOUT_S``).

Nothing is installed at run time: the test needs Debian's Chromium at ``/usr/bin/chromium`` (override
with ``$DIFFMM_CHROMIUM``) and the ``playwright`` Python package (the ``dev`` extra; its own browser
downloads are never used). Without them it is skipped, except under CI (``$CI`` set), where it fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
ALL = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
SHARED = Path(os.environ.get("DIFFMM_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
CHROMIUM = Path(os.environ.get("DIFFMM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
RUN_ALL_TIMEOUT_S = int(os.environ.get("DIFFMM_BROWSER_TIMEOUT_S", 240))  # unfinished by then: failed
RUN_ALL_TARGET_S = 60       # what a new user should wait at most; longer is reported, not failed
WIDGET_TIMEOUT_S = 90       # one explorer redraw
IN_CI = bool(os.environ.get("CI"))


def require(ok: bool, reason: str) -> None:
    """Skip when a browser requirement is missing, except under CI, where that is a failure."""
    if not ok:
        (pytest.fail if IN_CI else pytest.skip)(f"{reason} (needed by the browser test)")


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ["DIFFMM_BROWSER_SHOTS"]) if os.environ.get("DIFFMM_BROWSER_SHOTS") \
        else tmp_path_factory.mktemp("browser-shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def timings(shots):
    found: dict[str, dict] = {}
    yield found
    (shots / "timings.json").write_text(json.dumps(found, indent=2) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free loopback port, serving a temporary copy of notebooks/."""
    require(importlib.util.find_spec("jupyterlab") is not None,
            "JupyterLab is not installed: pip install -e '.[dev,notebooks]'")
    home = tmp_path_factory.mktemp("lab")
    root = home / "repo"
    shutil.copytree(NOTEBOOKS, root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.html"))
    shutil.copytree(REPO / "figures", root / "figures")  # ../figures/results: the committed results store
    (root / "runs").mkdir()                               # ../runs/...: where the notebooks write
    config = home / "jupyter-config"  # a fresh user: default layout, no news prompt, no personal settings
    notification = config / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    notebook_settings = config / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    notebook_settings.mkdir(parents=True)  # per-cell execution times in the cells' metadata, for the report
    (notebook_settings / "tracker.jupyterlab-settings").write_text(json.dumps({"recordTiming": True}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_DATA_DIR": str(home / "jupyter-data"),
           "JUPYTER_RUNTIME_DIR": str(home / "jupyter-runtime"), "IPYTHONDIR": str(home / "ipython")}
    if not env.get("DIFFMM_DATA") and SHARED.exists():
        env["DIFFMM_DATA"] = str(SHARED)  # registered datasets (ml100k, tiktok) are read from $DIFFMM_DATA/<name>
    port, token = free_port(), secrets.token_hex(16)
    log = (home / "jupyter-lab.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root / 'notebooks'}", "--LabApp.expose_app_in_browser=True"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        cwd=root / "notebooks", env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}:\n{tail(home / 'jupyter-lab.log')}")
            try:
                request = urllib.request.Request(f"{base}/api/status", headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(request, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within 120 s:\n{tail(home / 'jupyter-lab.log')}")
            time.sleep(0.5)
        yield {"base": base, "token": token, "root": root, "log": home / "jupyter-lab.log"}
    finally:
        server.terminate()  # the server shuts its kernels down
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def browser():
    require(CHROMIUM.exists(), f"{CHROMIUM} not found: apt-get install -y --no-install-recommends chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "the playwright package is not installed: pip install -e '.[dev]'")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


# ------------------------------------------------------------------------------ in-page JavaScript
# The open notebook: window.__panel (a NotebookPanel of window.jupyterapp).
FIND_PANEL = """name => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    if (!w || !w.context || w.context.path !== name || !w.sessionContext) return false;
    window.__panel = w;
    return true;
}"""

KERNEL_IDLE = "() => { const k = window.__panel.sessionContext.session?.kernel; return !!k && k.status === 'idle'; }"

# Finished: the kernel is idle and every code cell ran (or a cell failed, which stops Run All).
RUN_ALL_DONE = """() => {
    const p = window.__panel, k = p.sessionContext.session?.kernel;
    if (!k || k.status !== 'idle') return false;
    const cells = p.content.widgets.filter(c => c.model.type === 'code');
    const failed = cells.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
    return failed || cells.every(c => c.model.executionCount !== null);
}"""

CELL_STATE = """() => window.__panel.content.widgets.map((c, i) => {
    if (c.model.type !== 'code') return null;
    const outputs = c.model.outputs.toJSON();
    return {
        index: i, count: c.model.executionCount,
        errors: outputs.filter(o => o.output_type === 'error')
                       .map(o => `${o.ename}: ${o.evalue}\\n${(o.traceback || []).join('\\n')}`
                                     .replace(/\\u001b\\[[0-9;]*m/g, '')),
        stderr: outputs.filter(o => o.output_type === 'stream' && o.name === 'stderr').map(o => o.text),
        plotly: outputs.filter(o => o.data && o.data['application/vnd.plotly.v1+json']).length,
        seconds: (m => m && m['shell.execute_reply'] && m['iopub.execute_input'] ?
                  (Date.parse(m['shell.execute_reply']) - Date.parse(m['iopub.execute_input'])) / 1000 : null)
                 (c.model.getMetadata('execution')),
    };
}).filter(c => c !== null)"""

# Tracebacks shown anywhere in the notebook, also inside widget Output areas (not in the cell model).
DOM_TRACEBACKS = """() => [...window.__panel.node.querySelectorAll('.jp-OutputArea-output')]
    .map(e => e.innerText).filter(t => /Traceback \\(most recent call last\\)/.test(t))"""

PLOTS_DRAWN = """n => {
    const plots = [...window.__panel.node.querySelectorAll('.js-plotly-plot')];
    return plots.length >= n && plots.every(el => el._fullLayout &&
        el.querySelectorAll('.main-svg g.trace, .main-svg g.hm, .main-svg g.table, .gl-container canvas').length > 0);
}"""

# One plotly figure: traces, what is drawn, its box, the visible right edge it must stay within (the
# notebook panel, and every ancestor that clips or scrolls its overflow), and the labels (titles, tick
# labels, annotations, legend entries) that plotly drew past the figure's own edges, which are cut off.
PLOT_INFO = """el => {
    const box = (el.querySelector('.main-svg') || el).getBoundingClientRect();  // the div may be wider
    const panel = window.__panel.node.getBoundingClientRect();
    let clip = {right: panel.right, by: 'the notebook panel'};
    for (let a = el.parentElement; a && a !== window.__panel.node; a = a.parentElement) {
        const style = getComputedStyle(a);
        if (style.overflowX !== 'visible') {
            const right = a.getBoundingClientRect().left + a.clientLeft + a.clientWidth;
            if (right < clip.right) clip = {right: right, by: a.className};
        }
    }
    const title = el.layout && el.layout.title;
    const cut = [];
    for (const t of el.querySelectorAll('.main-svg text')) {
        const text = t.textContent.trim(), style = getComputedStyle(t), r = t.getBoundingClientRect();
        if (!text || t.closest('.hoverlayer') || style.display === 'none' || style.visibility === 'hidden'
            || style.opacity === '0' || r.width === 0) continue;
        const legend = !!t.closest('.legend');  // a scrolled legend hides entries below it on purpose
        let edge = box, where = 'figure';
        const subplot = t.closest('.cartesianlayer .subplot'), group = t.closest('g.trace');
        const trace = group && group.__data__ && group.__data__[0] && group.__data__[0].trace;
        let clipped = false;
        for (let a = t.parentElement; subplot && a && a !== subplot; a = a.parentElement)
            clipped = clipped || (a.getAttribute('clip-path') || '').startsWith('url(');
        if (clipped && !(trace && trace.cliponaxis === false)) {
            const id = [...subplot.classList].find(c => el._fullLayout._plots[c]);
            const area = id && el._fullLayout._plots[id];
            if (area) {  // trace text is clipped to its subplot's plotting area
                where = 'subplot';
                edge = {left: box.left + area.xaxis._offset, right: box.left + area.xaxis._offset + area.xaxis._length,
                        top: box.top + area.yaxis._offset, bottom: box.top + area.yaxis._offset + area.yaxis._length};
            }
        }
        const past = {left: edge.left - r.left, right: r.right - edge.right,
                      top: legend ? 0 : edge.top - r.top, bottom: legend ? 0 : r.bottom - edge.bottom};
        const side = Object.keys(past).reduce((a, b) => past[a] >= past[b] ? a : b);
        if (past[side] > 2) cut.push({text: text.slice(0, 50), side: side, px: Math.round(past[side]), where: where});
    }
    const overlaps = [];  // unrotated tick labels of one axis drawn over each other
    for (const layer of el.querySelectorAll('.xaxislayer-above, .yaxislayer-above')) {
        const horizontal = layer.classList.contains('xaxislayer-above');
        const ticks = [...layer.querySelectorAll('text')]
            .filter(t => t.textContent.trim() && !/rotate\\((?!0[,)])/.test(t.getAttribute('transform') || ''))
            .map(t => ({text: t.textContent.trim(), r: t.getBoundingClientRect()}))
            .sort((a, b) => horizontal ? a.r.left - b.r.left : a.r.top - b.r.top);
        for (let i = 1; i < ticks.length; i++) {
            const a = ticks[i - 1], b = ticks[i];
            const overlap = horizontal ? a.r.right - b.r.left : a.r.bottom - b.r.top;
            if (overlap > 1) { overlaps.push({a: a.text.slice(0, 30), b: b.text.slice(0, 30), px: Math.round(overlap)}); }
        }
    }
    return {
        overlaps: overlaps,
        title: (typeof title === 'string' ? title : title && title.text) || '(untitled)',
        traces: (el.data || []).length,
        drawn: el.querySelectorAll('.main-svg g.trace, .main-svg g.hm, .main-svg g.table, .gl-container canvas').length,
        left: box.left, right: box.right, top: box.top, width: box.width, height: box.height,
        panelRight: panel.right, clipRight: clip.right, clippedBy: clip.by, cut: cut,
    };
}"""

FIGURE_STATE = "el => JSON.stringify({title: el.layout && el.layout.title, data: el.data})"

SCROLL_TOP = "() => window.__panel.node.querySelectorAll('*').forEach(e => { if (e.scrollTop > 0) e.scrollTop = 0; })"

# Outputs and inputs wider than the notebook: they scroll sideways (reported, not failed).
WIDE = """() => {
    const found = [], cells = window.__panel.content.widgets;
    const wide = (e, what) => {
        if (e.scrollWidth <= e.clientWidth + 1) return;
        const cell = cells.findIndex(c => c.node.contains(e));
        found.push({cell: cell, what: what, width: e.scrollWidth, shown: e.clientWidth,
                    text: e.innerText.trim().split('\\n')[0].slice(0, 60)});
    };
    window.__panel.node.querySelectorAll('.jp-OutputArea-output').forEach(e => wide(e, 'output'));
    window.__panel.node.querySelectorAll('.jp-InputArea-editor .cm-scroller').forEach(e => wide(e, 'code'));
    return found;
}"""

FILE_BROWSER_OPEN = "() => { const fb = document.getElementById('filebrowser'); return !!fb && fb.offsetWidth > 0; }"


# ------------------------------------------------------------------------------------------ helpers
def open_notebook(page, lab, name: str) -> float:
    """Open ``name`` in a fresh workspace; returns the seconds until its kernel was idle."""
    workspace = re.sub(r"\W", "-", Path(name).stem)
    start = time.monotonic()
    page.goto(f"{lab['base']}/lab/workspaces/{workspace}/tree/{name}?reset&token={lab['token']}")
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=120_000)
    page.evaluate("async () => { await window.jupyterapp.started; await window.jupyterapp.restored; }")
    page.wait_for_function(FIND_PANEL, arg=name, timeout=120_000)
    page.evaluate("async () => { await window.__panel.context.ready; await window.__panel.sessionContext.ready; }")
    if not page.evaluate(FILE_BROWSER_OPEN):
        page.evaluate("() => window.jupyterapp.shell.activateById('filebrowser')")
    page.wait_for_function(FILE_BROWSER_OPEN, timeout=30_000)
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    return time.monotonic() - start


def plots(page):
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .js-plotly-plot")


def show(locator) -> None:
    """Scroll a figure into view: its top near the window's top when it is taller than the window."""
    locator.evaluate("el => el.scrollIntoView({block: el.getBoundingClientRect().height > 700 ? 'start' : 'center'})")
    locator.page.wait_for_timeout(300)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", re.sub(r"<[^>]+>", " ", text)).strip("-")[:60] or "figure"


def check_figure(figure, path: Path, report: list[str], problems: list[str], label: str) -> dict:
    """Scroll ``figure`` into view, screenshot the window, and note what is empty or cut off."""
    show(figure)
    info = figure.evaluate(PLOT_INFO)
    figure.page.screenshot(path=path)
    if info["height"] > 700:  # taller than the window: its lower part too
        figure.evaluate("el => el.scrollIntoView({block: 'end'})")
        figure.page.wait_for_timeout(300)
        figure.page.screenshot(path=path.with_name(f"{path.stem}-bottom.png"))
    info["title"] = re.sub(r"<br>.*", "", info["title"])  # the title without its subtitle
    report.append(f"  {label} {info['title']!r}: {info['width']:.0f} x {info['height']:.0f} px at "
                  f"x {info['left']:.0f}-{info['right']:.0f} (visible to {info['clipRight']:.0f}), "
                  f"{info['traces']} traces, {info['drawn']} drawn -> {path.name}")
    if info["traces"] == 0 or info["drawn"] == 0:
        problems.append(f"{label} {info['title']!r} is empty ({info['traces']} traces, {info['drawn']} drawn)")
    if info["right"] > info["clipRight"] + 1:
        problems.append(f"{label} {info['title']!r} is cut off: its right edge is at {info['right']:.0f} px, "
                        f"{info['right'] - info['clipRight']:.0f} px past {info['clippedBy']} "
                        f"(at {info['clipRight']:.0f} px)")
    if info["cut"]:
        labels = ", ".join(f"{c['text']!r} ({c['px']} px past the {c['side']} edge of its {c['where']})"
                           for c in info["cut"][:8])
        more = f" and {len(info['cut']) - 8} more" if len(info["cut"]) > 8 else ""
        problems.append(f"{label} {info['title']!r} ({info['width']:.0f} px wide) cuts off {len(info['cut'])} "
                        f"labels: {labels}{more}")
    if info["overlaps"]:
        pairs = ", ".join(f"{o['a']!r}/{o['b']!r} ({o['px']} px)" for o in info["overlaps"][:6])
        more = f" and {len(info['overlaps']) - 6} more" if len(info["overlaps"]) > 6 else ""
        problems.append(f"{label} {info['title']!r}: {len(info['overlaps'])} pairs of tick labels overlap: "
                        f"{pairs}{more}")
    return info


def wait_for_change(locator, before: str, what: str) -> str:
    deadline = time.monotonic() + WIDGET_TIMEOUT_S
    while time.monotonic() < deadline:
        now = locator.evaluate(FIGURE_STATE)
        if now != before:
            return now
        locator.page.wait_for_timeout(250)
    pytest.fail(f"{what}: the figure did not change within {WIDGET_TIMEOUT_S} s")


# An explorer: a VBox holding a Dropdown, ToggleButtons and a slider (diffmm.viz.widgets.UserExplorer).
EXPLORER = ".widget-vbox:has(.widget-dropdown select):has(.widget-toggle-buttons):has(.widget-slider)"


def drive_explorer(page, folder: Path, report: list[str], problems: list[str]) -> None:
    """Change an explorer's user, modality and reverse step; the figures they control must change."""
    explorer = page.locator(EXPLORER).last
    explorer.wait_for(timeout=60_000)
    figures = explorer.locator(".js-plotly-plot")
    page.wait_for_function("el => el.querySelectorAll('.js-plotly-plot').length >= 2",
                           arg=explorer.element_handle(), timeout=60_000)
    case, denoising = figures.nth(0), figures.nth(1)
    state = {"case": case.evaluate(FIGURE_STATE), "denoising": denoising.evaluate(FIGURE_STATE)}
    explorer.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    page.screenshot(path=folder / "explorer-0-controls.png")
    report.append("  explorer:")

    select = explorer.locator(".widget-dropdown select")
    options = select.locator("option")
    assert options.count() >= 2, "the explorer offers fewer than two users"
    chosen = options.nth(1).get_attribute("value")
    select.select_option(value=chosen)
    state["case"] = wait_for_change(case, state["case"], "user dropdown -> case-study figure")
    state["denoising"] = wait_for_change(denoising, state["denoising"], "user dropdown -> denoising figure")
    report.append(f"  - user -> {options.nth(1).inner_text()}")
    check_figure(case, folder / "explorer-1-user-case.png", report, problems, "  explorer figure")
    check_figure(denoising, folder / "explorer-1-user-denoising.png", report, problems, "  explorer figure")

    buttons = explorer.locator(".widget-toggle-buttons button")
    inactive = explorer.locator(".widget-toggle-buttons button:not(.mod-active)")
    assert buttons.count() >= 2 and inactive.count() >= 1, "the explorer offers fewer than two modalities"
    modality = inactive.first.inner_text()
    inactive.first.click()
    state["case"] = wait_for_change(case, state["case"], f"modality button {modality!r} -> case-study figure")
    report.append(f"  - modality -> {modality}")
    check_figure(case, folder / "explorer-2-modality-case.png", report, problems, "  explorer figure")

    readout = explorer.locator(".widget-slider .widget-readout")
    step_before = readout.inner_text().strip()
    handle = explorer.locator(".widget-slider .noUi-handle").first
    handle.focus()
    handle.press("Home" if step_before != "0" else "End")
    page.wait_for_function("([el, v]) => el.innerText.trim() !== v",
                           arg=[readout.element_handle(), step_before], timeout=30_000)
    state["denoising"] = wait_for_change(denoising, state["denoising"], "reverse-step slider -> denoising figure")
    report.append(f"  - reverse step {step_before} -> {readout.inner_text().strip()}")
    check_figure(denoising, folder / "explorer-3-step-denoising.png", report, problems, "  explorer figure")


# --------------------------------------------------------------------------------------------- test
@pytest.mark.parametrize("name", ALL)
def test_notebook_in_browser(name, browser, lab, shots, timings, capsys):
    folder = shots / Path(name).stem
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    report = [f"{name}:"]
    try:
        kernel_s = open_notebook(page, lab, name)
        page.screenshot(path=folder / "window-opened.png")

        start = time.monotonic()
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        try:
            page.wait_for_function(RUN_ALL_DONE, timeout=RUN_ALL_TIMEOUT_S * 1000, polling=250)
        except Exception:
            page.screenshot(path=folder / "window-timeout.png")
            pytest.fail(f"{name}: Run All did not finish within {RUN_ALL_TIMEOUT_S} s\n{tail(lab['log'])}")
        run_all_s = time.monotonic() - start
        cells = page.evaluate(CELL_STATE)
        per_cell = {c["index"]: c["seconds"] for c in cells if c["seconds"] is not None}
        timings[name] = {"kernel_ready_s": round(kernel_s, 1), "run_all_s": round(run_all_s, 1),
                         "cells_s": {str(i): round(s, 1) for i, s in per_cell.items()}}
        slowest = sorted(per_cell.items(), key=lambda item: -item[1])[:3]
        report.append(f"  kernel ready {kernel_s:.1f} s, Run All {run_all_s:.1f} s"
                      + (f" (over the {RUN_ALL_TARGET_S} s target)" if run_all_s > RUN_ALL_TARGET_S else "")
                      + "; slowest cells: " + ", ".join(f"cell {i} {s:.1f} s" for i, s in slowest))
        if run_all_s > RUN_ALL_TARGET_S:
            warnings.warn(f"{name}: Run All took {run_all_s:.0f} s, over the {RUN_ALL_TARGET_S} s target")
        errors = [f"cell {c['index']}: {e}" for c in cells for e in c["errors"]]
        errors += [f"traceback shown: {t}" for t in page.evaluate(DOM_TRACEBACKS)]
        assert not errors, f"{name}: error output\n" + "\n\n".join(errors)
        assert all(c["count"] is not None for c in cells), f"{name}: cells left unexecuted"
        for c in cells:
            for text in c["stderr"]:
                report.append(f"  stderr of cell {c['index']}: {text.strip()[:300]}")

        n_plotly = sum(c["plotly"] for c in cells)
        try:
            page.wait_for_function(PLOTS_DRAWN, arg=n_plotly, timeout=60_000)
        except Exception:
            pass  # the assertions below say which figure is missing or empty
        page.evaluate(SCROLL_TOP)
        page.wait_for_timeout(500)
        page.screenshot(path=folder / "window.png")
        assert page.evaluate(FILE_BROWSER_OPEN), "the file browser is not open"

        for w in page.evaluate(WIDE):
            report.append(f"  {w['what']} of cell {w['cell']} scrolls sideways ({w['width']} px in {w['shown']} px):"
                          f" {w['text']!r}")

        figures = plots(page)
        n_dom = figures.count()
        assert n_dom >= n_plotly, f"{name}: {n_plotly} plotly outputs but {n_dom} figures in the page"
        problems: list[str] = []
        for i in range(n_dom):
            title = figures.nth(i).evaluate(PLOT_INFO)["title"]
            check_figure(figures.nth(i), folder / f"figure-{i:02d}-{slug(title)}.png", report, problems,
                         f"figure {i}")

        opened = json.loads((lab["root"] / "notebooks" / name).read_text())
        source = "".join("".join(c["source"]) for c in opened["cells"])
        if "explore_users(" in source or page.locator(EXPLORER).count():
            drive_explorer(page, folder, report, problems)
            traces = page.evaluate(DOM_TRACEBACKS)
            assert not traces, f"{name}: the explorer shows a traceback\n" + "\n".join(traces)
        if page_errors:
            report.append("  page errors: " + "; ".join(page_errors))
        assert not problems, f"{name} at 1280 x 800 with the file browser open:\n" + "\n".join(problems)
    finally:
        report.append(f"  screenshots: {folder}")
        with capsys.disabled():
            print("\n" + "\n".join(report))
        try:
            page.evaluate("async () => { if (window.__panel) await window.__panel.sessionContext.shutdown(); }")
        except Exception:
            pass
        context.close()
