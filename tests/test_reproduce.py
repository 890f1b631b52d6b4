"""The reproduction pipeline: declared analyses -> runs -> results store -> figures, on the quick variants."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffmm import memory
from diffmm.cli import main as cli
from diffmm.experiments import analyses as declared
from diffmm.experiments import reproduce, tables
from diffmm.experiments.runs import build_run_config
from diffmm.experiments.store import (LEGACY_VALUES, RecordError, compact, late_mean, load_records, read_record, run_key,
                                     write_record)
from diffmm.train import Callback
from diffmm.viz.gallery import _anchors, gallery_markdown

VOLATILE = ("finished", "wall_s", "cpu_s", "epoch_s", "code", "threads", "python", "torch", "peak_rss_mib", "peak_gpu_mib")


def quick(tmp, *extra):
    return cli(["reproduce", "--quick", "--store", str(tmp / "store"), "--out", str(tmp / "figures"),
                "--work", str(tmp / "work"), "--no-progress", *extra])


def comparable(record: dict) -> dict:
    """A record without what depends on when, where and how fast it ran (times, memory), and without the
    logged losses (multi-threaded float32 sums: equal to rounding, checked separately)."""
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    out["history"] = {k: v for k, v in record["history"].items() if not k.endswith(("_s", "_mib")) and not is_loss(k)}
    return out


def is_loss(column: str) -> bool:
    return column.startswith(("train_", "gen_"))


def same_losses(a: dict, b: dict) -> bool:
    columns = [c for c in a["history"] if is_loss(c)]
    return columns == [c for c in b["history"] if is_loss(c)] and all(
        np.allclose(a["history"][c], b["history"][c], rtol=1e-5, atol=0) for c in columns)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Every quick analysis, trained once for this module."""
    tmp = tmp_path_factory.mktemp("quick")
    assert quick(tmp) == 0
    return tmp


def test_every_quick_analysis_runs_end_to_end(full, capsys):
    analyses = declared.quick_analyses()
    assert {a.name for a in analyses.values()} == {
        "table2_comparison", "fig2_sparsity", "table3_ablation", "table4_tau_lambda1", "fig3a_lambda0",
        "fig3b_omega", "fig4_fusion_ratio", "search_mf_l2", "search_vbpr_l2", "search_vbpr_projection_l2",
        "search_vbpr_l2_given_projection_l2", "search_lightgcn_l2", "search_bm3_dropout", "search_bm3_l2", "search_bm3_layers",
        "search_lattice_graphs", "search_lattice_lr", "search_lattice_l2", "search_lightgcn-m_l2"}
    for analysis in analyses.values():
        for suffix in (".png", ".pdf", ".html", ".csv"):
            path = full / "figures" / declared.QUICK_DATA / f"{analysis.name}{suffix}"
            assert path.stat().st_size > 1000 if suffix != ".csv" else path.stat().st_size > 50, path
        table = pd.read_csv(full / "figures" / declared.QUICK_DATA / f"{analysis.name}.csv", dtype={"label": str})
        if analysis.kind == "groups":
            assert set(table["label"]) == {p.label for p in analysis.points}
            assert (table["users"] > 0).all() and table["recall@20 mean"].between(0, 1).all()
        else:
            assert list(table["label"]) == [p.label for p in analysis.points]
            assert (table["seeds"] == 1).all() and table["recall@20 mean"].between(0, 1).all()
    # shared points are one run: 8 comparison runs + 3 ablations + 8 + 4 + 4 + 5 new points, and the runs
    # of the searches that Table 2 and the other passes do not share: MF's L2 4; VBPR's L2 with E free 5,
    # lambda_E 4, L2 again 4; LightGCN's L2 6; BM3's dropout 6, lambda 3, layers 2; LATTICE's graphs 1,
    # learning rate 3, L2 3; LightGCN-M's L2 6
    records = load_records(full / "store")
    assert len(records) == 79
    for record in (r for r in records.values() if r["model"] == "diffmm"):  # the case-study measures, per modality
        generation = record["generation"]["modalities"]
        assert set(generation) == set(record["data"]["modalities"])
        assert all(0 <= g["seen_share"]["generated"] <= 1 for g in generation.values())
    capsys.readouterr()
    assert quick(full, "--status") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"done": 79, "missing": 0,
                                                                           "estimated_hours": 0.0}


def test_asking_again_trains_nothing(full, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(reproduce, "execute", no_training)
    before = {p.name: p.read_bytes() for p in (full / "store").rglob("*.json")}
    assert quick(full) == 0
    assert {p.name: p.read_bytes() for p in (full / "store").rglob("*.json")} == before


def test_render_only_draws_from_the_store(full, tmp_path):
    shutil.copytree(full / "store", tmp_path / "store")
    assert quick(tmp_path, "--render-only", "--only", "table3_ablation") == 0
    assert (tmp_path / "figures" / declared.QUICK_DATA / "table3_ablation.png").exists()
    assert not (tmp_path / "work").exists()
    # a redraw of the same store writes the same bytes (no random ids or dates: committed figures only
    # change where the numbers do)
    drawn = {p.name: p.read_bytes() for p in (tmp_path / "figures" / declared.QUICK_DATA).iterdir()}
    assert quick(tmp_path, "--render-only", "--only", "table3_ablation") == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "figures" / declared.QUICK_DATA).iterdir()} == drawn
    records = load_records(tmp_path / "store")
    text = gallery_markdown(list(declared.quick_analyses().values()), records)
    case = text[text.index("### Case study, measured"):]
    modalities = sorted(next(r for r in records.values() if r["model"] == "diffmm")["data"]["modalities"])
    assert [line.split(" | ")[0].strip("| ") for line in case.splitlines()[6:6 + len(modalities)]] == modalities
    # the summary links every analysis of the paper to its own section, by GitHub's heading anchors
    glance = text[text.index("## At a glance"):text.index("\n## ", text.index("## At a glance") + 1)]
    rows = [line for line in glance.splitlines() if line.startswith("| ") and "](#" in line]
    assert len(rows) == sum(1 for a in declared.quick_analyses().values() if a.claim) > 3
    headings = [line for line in text.splitlines() if line.startswith("#")]
    for row in rows:
        title, anchor = re.search(r"\[(.+)\]\(#(.+)\)", row).groups()
        assert headings[_anchors(headings).index(anchor)] == f"### {title}"
    assert _anchors(["# A: b (c)", "## A: b (c)", "### x_y - z"]) == ["a-b-c", "a-b-c-1", "x_y---z"]


class Crash(Callback):
    """Kills the second run of a sweep after its first epoch (as a kill -9 would, after last.pt is written)."""

    def __init__(self):
        self.fits = 0

    def on_fit_start(self, trainer):
        self.fits += 1

    def on_epoch_end(self, trainer, record):
        if self.fits == 2 and record["epoch"] == 1:
            trainer.save_state(trainer.out_dir / "last.pt")
            raise KeyboardInterrupt


def test_a_killed_sweep_restarted_gives_the_same_store(full, tmp_path):
    chosen = declared.select("table3_ablation", declared.quick_analyses())
    _, missing = reproduce.plan(chosen, tmp_path / "store")
    assert len(missing) == 4
    with pytest.raises(KeyboardInterrupt):
        reproduce.run_jobs(missing, tmp_path / "store", tmp_path / "work", progress=False, callbacks=[Crash()])
    assert len(load_records(tmp_path / "store")) == 1  # the first run finished, the second was killed
    assert list((tmp_path / "work").rglob("last.pt"))  # ... and left its checkpoint to resume from
    _, missing = reproduce.plan(chosen, tmp_path / "store")
    assert len(missing) == 3
    reproduce.run_jobs(missing, tmp_path / "store", tmp_path / "work", progress=False)
    restarted = load_records(tmp_path / "store")
    uninterrupted = load_records(full / "store")
    assert set(restarted) <= set(uninterrupted) and len(restarted) == 4
    for key, record in restarted.items():
        assert comparable(record) == comparable(uninterrupted[key]), key
        assert same_losses(record, uninterrupted[key]), key
    assert not list((tmp_path / "work").rglob("*.pt"))  # finished runs leave no checkpoints behind


def test_train_only_trains_without_the_plotting_libraries(tmp_path):
    """A training-only node (e.g. a GPU machine without plotly) stores records and draws nothing."""
    code = ("import sys\n"
            "for name in ('plotly', 'seaborn', 'matplotlib'): sys.modules[name] = None  # importing them fails\n"
            "from diffmm.cli import main\n"
            f"sys.exit(main(['reproduce', '--quick', '--only', 'search_mf_l2', '--train-only', '--no-progress', "
            f"'--store', {str(tmp_path / 'store')!r}, '--out', {str(tmp_path / 'figures')!r}, "
            f"'--work', {str(tmp_path / 'work')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["missing"] == 0
    assert len(load_records(tmp_path / "store")) == 5
    assert not (tmp_path / "figures").exists()


def test_two_worker_processes(tmp_path, monkeypatch):
    chosen = declared.select("table2_comparison", declared.quick_analyses())
    _, missing = reproduce.plan(chosen, tmp_path / "store")
    baselines = [j for j in missing if j.config.model in ("popularity", "mf")]
    # the records name the code the sweep started with, not what a worker finds on disk when its run ends
    sweep_code = {"version": "0", "commit": "c0de" * 10, "dirty": False}
    monkeypatch.setattr(reproduce, "code_version", lambda: sweep_code)
    assert reproduce.run_jobs(baselines, tmp_path / "store", tmp_path / "work", jobs=2, progress=False) == []
    records = load_records(tmp_path / "store")
    assert sorted(r["model"] for r in records.values()) == ["mf", "popularity"]
    assert all(r["threads"] >= 1 and r["device"] == "cpu" for r in records.values())
    assert all(r["code"] == sweep_code for r in records.values())


def test_records_name_the_random_stream_of_the_code():
    """A record says which random stream trained it: only code of that stream reproduces it draw for draw."""
    import diffmm
    from diffmm.experiments.store import code_version

    assert code_version()["random_stream"] == diffmm.RANDOM_STREAM >= 2  # 2: the 16-bit dropout draws


def test_runs_train_in_worker_processes_not_in_the_sweeps(tmp_path, monkeypatch):
    """Without callbacks, each run trains in a fresh worker: nothing the sweep's process holds (its store,
    its figures, a patched function here) reaches a run, and the worker writes the record itself."""
    chosen = declared.select("table2_comparison", declared.quick_analyses())
    _, missing = reproduce.plan(chosen, tmp_path / "store")
    two = [j for j in missing if j.config.model in ("popularity", "mf")]

    def not_here(*args, **kwargs):
        raise AssertionError("a run trained in the sweep's own process")

    monkeypatch.setattr(reproduce, "execute", not_here)
    assert reproduce.run_jobs(two, tmp_path / "store", tmp_path / "work", progress=False) == []
    assert sorted(r["model"] for r in load_records(tmp_path / "store").values()) == ["mf", "popularity"]


def test_the_key_ignores_runtime_settings_only():
    (_, _, config), *_ = declared.ANALYSES["tiktok/table3_ablation"].runs()
    moved = config.replace(train=config.train.replace(threads=7, device="cuda", progress=True))
    assert run_key("tiktok", moved) == run_key("tiktok", config)
    assert run_key("ml100k", config) != run_key("tiktok", config)
    reseeded = config.replace(train=config.train.replace(seed=1))
    assert run_key("tiktok", reseeded) != run_key("tiktok", config)
    # a field added to the config classes later, absent from an old record, takes its default
    old = config.replace(model_config={k: v for k, v in config.model_config.to_dict().items()
                                       if k != "view_keep_rate"})
    assert run_key("tiktok", old) == run_key("tiktok", config)


@pytest.mark.parametrize("model, field", [(m, f) for m, fields in LEGACY_VALUES.items() for f in fields])
def test_an_older_record_keeps_the_setting_it_ran_with(tmp_path, model, field):
    """A setting whose default changed (BM3's and LATTICE's features became fine-tuned): a record written
    before, without the field, ran with the old value, and is found under that config's key, not the new
    default's."""
    config = build_run_config(model)  # the defaults of today's code
    value = LEGACY_VALUES[model][field]
    assert getattr(config.model_config, field) != value
    before = config.replace(model_config=config.model_config.replace(**{field: value}))
    old = {k: v for k, v in config.to_dict()["model_config"].items() if k != field}
    record = {"key": "x", "dataset": "tiktok", "model": model, "seed": 421, "best_epoch": 1, "test": {}, "valid": {},
              "history": {}, "by_n_train": {}, "late_mean": {}, "optimistic_test": {},
              "config": {**config.to_dict(), "model_config": old}}
    (tmp_path / "tiktok").mkdir()
    (tmp_path / "tiktok" / f"{model}-old.json").write_text(json.dumps(record))
    (key, loaded), = load_records(tmp_path).items()
    assert key == run_key("tiktok", before) != run_key("tiktok", config)
    assert loaded["config"]["model_config"][field] == value


def test_a_record_of_newer_code_is_left_out_with_a_warning(tmp_path):
    """Stores merge across machines: a record whose config has a field this version lacks (written by newer
    code) is skipped with a warning naming it, not fatal to a sweep; a malformed config still is."""
    (_, _, config), *_ = declared.ANALYSES["tiktok/table3_ablation"].runs()
    record = {"key": "x", "dataset": "tiktok", "model": "diffmm", "seed": 421, "best_epoch": 1, "test": {}, "valid": {},
              "history": {}, "by_n_train": {}, "late_mean": {}, "optimistic_test": {},
              "code": {"commit": "0123456789abcdef"}, "config": config.to_dict()}
    record["config"]["model_config"]["a_later_setting"] = 1
    (tmp_path / "tiktok").mkdir()
    (tmp_path / "tiktok" / "diffmm-newer.json").write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="diffmm-newer.json: left out.*a_later_setting.*0123456789ab"):
        assert load_records(tmp_path) == {}
    newer_model = {**record, "model": "diffmm2", "config": {**config.to_dict(), "model": "diffmm2"}}
    (tmp_path / "tiktok" / "diffmm-newer.json").write_text(json.dumps(newer_model))
    with pytest.warns(UserWarning, match="diffmm-newer.json: left out; its model 'diffmm2'.*0123456789ab"):
        assert load_records(tmp_path) == {}
    (tmp_path / "tiktok" / "diffmm-newer.json").write_text(json.dumps({**newer_model, "model": "diffmm"}))
    with pytest.raises(RecordError, match="diffmm-newer.json: field 'model' is 'diffmm' but its config trains 'diffmm2'"):
        load_records(tmp_path)
    record["config"]["model_config"] = {"dim": "sixty-four"}
    (tmp_path / "tiktok" / "diffmm-newer.json").write_text(json.dumps(record))
    with pytest.raises(RecordError, match="diffmm-newer.json: field 'config'"):
        load_records(tmp_path)


def test_the_late_mean_is_one_window_for_every_run():
    history = {"epoch": list(range(1, 61)), "test_recall@20": [float(e) for e in range(1, 61)]}
    assert late_mean(history) == {"from_epoch": 20, "to_epoch": 50, "recall@20": 35.0}  # epochs 20..50, not 20..60
    short = {"epoch": list(range(1, 41)), "test_recall@20": [0.1] * 40}
    assert late_mean(short) == {"from_epoch": 20, "to_epoch": 50}  # stopped before the window ends: none


def test_records_are_standard_json_without_nan(tmp_path):
    (_, _, config), *_ = declared.ANALYSES["tiktok/table3_ablation"].runs()
    record = {"key": "x", "dataset": "tiktok", "model": "diffmm", "seed": 421, "best_epoch": 1, "test": {"recall@20": float("nan")},
              "valid": {}, "history": {"test_recall@20": [float("inf"), 0.1]}, "by_n_train": {}, "late_mean": {},
              "optimistic_test": {}, "wall_s": float("nan"), "config": config.to_dict()}
    path = write_record(tmp_path, record)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = read_record(path)
    assert back["test"] == {"recall@20": None} and back["wall_s"] is None and back["history"]["test_recall@20"] == [None, 0.1]
    path.write_text(text.replace("null", "NaN"))
    with pytest.raises(RecordError, match="'NaN' is not JSON"):
        read_record(path)


def test_two_files_of_one_run_keep_one_and_say_so(tmp_path):
    (_, _, config), *_ = declared.ANALYSES["tiktok/table3_ablation"].runs()
    record = {"key": "x", "dataset": "tiktok", "model": "diffmm", "seed": 421, "best_epoch": 1, "test": {}, "valid": {},
              "history": {}, "by_n_train": {}, "late_mean": {}, "optimistic_test": {}, "config": config.to_dict()}
    (tmp_path / "tiktok").mkdir()
    for name in ("diffmm-a.json", "diffmm-b.json"):
        (tmp_path / "tiktok" / name).write_text(json.dumps({**record, "finished": name}))
    with pytest.warns(UserWarning, match="diffmm-b.json: the same run as .*diffmm-a.json; only diffmm-b.json is kept"):
        (kept,) = load_records(tmp_path).values()
    assert kept["finished"] == "diffmm-b.json"


def test_the_time_estimate_counts_core_seconds(monkeypatch):
    records = [{"dataset": "d", "model": "mf", "wall_s": 100.0, "threads": 2, "cpu_s": 150.0},  # CPU time
               {"dataset": "d", "model": "mf", "wall_s": 300.0, "threads": 1},  # no CPU time: not used here
               {"dataset": "d", "model": "mf", "wall_s": 400.0, "threads": 1, "cpu_s": 90.0},  # shared cores
               {"dataset": "d", "model": "mf", "wall_s": 5.0, "device": "cuda", "cpu_s": 5.0}]  # not a CPU run
    assert reproduce.cost_s("d", "mf", records) == 120.0  # the median of the CPU times 150 and 90
    assert reproduce.cost_s("d", "mf", records[1:2]) == 300.0  # without any: wall x threads
    assert reproduce.cost_s("d", "lightgcn", records) == reproduce.DEFAULT_COST_S.get(("d", "lightgcn"), 120.0)
    monkeypatch.setattr(memory.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 << 30)
    assert memory.cores_used() == 8 and memory.cores_used(jobs=3) == 6  # 3 runs x 2 threads
    assert memory.cores_used(jobs=4, threads=4) == 8 and memory.cores_used(jobs=2, threads=1) == 2
    assert memory.threads_per_run(3) == 2 and memory.threads_per_run(16) == 1  # cores split, at least one each
    assert memory.threads_per_run(2, "cuda") == 1
    chosen = declared.select("tiktok/table3_ablation")
    _, one = reproduce.status(chosen, store="/nonexistent", jobs=1, threads=1)
    _, all_cores = reproduce.status(chosen, store="/nonexistent")
    assert one["missing"] == 12 and one["estimated_hours"] == pytest.approx(8 * all_cores["estimated_hours"], 1e-2)


def test_a_sweep_runs_one_single_threaded_run_per_core_as_memory_allows(monkeypatch):
    monkeypatch.setattr(memory.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 << 30)
    assert memory.default_jobs("cpu") == 8 and memory.default_jobs("cuda") == 1
    monkeypatch.setattr(memory, "available_bytes", lambda: 3 * memory.RUN_MEMORY_BYTES + 1)
    assert memory.default_jobs("cpu") == 3
    monkeypatch.setattr(memory, "available_bytes", lambda: 100 << 20)  # less than one run's: still one
    assert memory.default_jobs("cpu") == 1
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # unknown: the cores decide
    assert memory.default_jobs("cpu") == 8


def test_shared_points_are_declared_once():
    table, missing = reproduce.plan(declared.select("tiktok"), store="/nonexistent")
    per_analysis = table.set_index("analysis")["runs"]
    assert per_analysis["tiktok/table3_ablation"] == 12 and per_analysis["tiktok/table4_tau_lambda1"] == 27
    # the defaults' point (3 seeds) is in all five DiffMM analyses but trained once
    # 94 runs of the paper's analyses, and 47 of TikTok's searches not shared with Table 2 or each other (MF's L2:
    # 4; VBPR's three passes: L2 with E free 5, lambda_E 4, L2 again 4; LightGCN's L2: 6; BM3's dropout: 6, lambda: 3,
    # layers: 2; LATTICE's graphs: 1, learning rate: 3, L2: 3; LightGCN-M's L2: 6)
    assert len(missing) == len({j.key for j in missing}) == 141
    assert sum(j.config.model == "diffmm" for j in missing) == 75


def test_a_notebook_asks_for_analyses_by_name_and_hears_which_its_dataset_lacks():
    names = ["fig4_fusion_ratio", "search_vbpr_l2_given_projection_l2", "fig3b_omega"]
    assert [a.id for a in declared.for_dataset("tiktok", names)] == [f"tiktok/{name}" for name in names]
    assert [a.dataset for a in declared.for_dataset("ml100k", names, quick=True)] == [declared.QUICK_DATA] * 3
    with pytest.warns(UserWarning, match="ml100k does not declare search_vbpr_l2_given_projection_l2; it declares table2_comparison"):
        assert [a.id for a in declared.for_dataset("ml100k", names)] == ["ml100k/fig4_fusion_ratio", "ml100k/fig3b_omega"]


def test_each_analysis_trains_a_seed_of_every_point_first_the_cheapest_first(monkeypatch):
    cost = {"popularity": 1.0, "mf": 2.0, "lightgcn": 5.0, "diffmm": 100.0}
    monkeypatch.setattr(reproduce, "cost_s", lambda dataset, model, records: cost.get(model, 10.0))
    analyses = declared.select("tiktok/table2_comparison,tiktok/table3_ablation")
    _, missing = reproduce.plan(analyses, store="/nonexistent")
    order = [(analyses.index(declared.ANALYSES[j.analyses[0]]), j.seed_pass, j.cost_s) for j in missing]
    assert order == sorted(order) and order[0] == (0, 0, 1.0) and order[-1] == (1, 2, 100.0)
    assert [j.config.model for j in missing].index("diffmm") > [j.config.model for j in missing].index("vbpr")
    # every point's first seed comes before any point's second: the whole table shows after one pass
    seeds = [j.config.train.seed for j in missing if j.analyses[0] == "tiktok/table2_comparison"]
    first_pass = len({p.label for p in declared.ANALYSES["tiktok/table2_comparison"].points})
    assert set(seeds[:first_pass]) == {declared.SEEDS3[0]} and declared.SEEDS3[0] not in seeds[first_pass:]


@pytest.mark.parametrize("store", ["quick", "committed"])
def test_records_keep_seven_significant_digits(full, store):
    """The bulk of a record (history, per-activity sums) is stored rounded, new records and committed ones;
    the late mean is that of the history's fixed window."""
    root = full / "store" if store == "quick" else Path(__file__).resolve().parents[1] / "figures" / "results"
    records = list(load_records(root).values())
    assert records
    for record in records:
        for field in ("history", "by_n_train"):
            assert compact(record[field]) == record[field], f"{record['key']}: {field} is not compact"
        assert record["late_mean"] == late_mean(record["history"]), f"{record['key']}: late mean not of its history"
    assert compact([0.123456789, 1234567.89, float("nan"), 3, "x"]) == [0.1234568, 1234568.0, None, 3, "x"]


def test_searched_settings_are_the_ones_the_protocols_use():
    """Where a search's current pass is complete in the committed store, its best validation value is the
    protocol's (a pass is current when the settings it fixed are the protocol's)."""
    records = load_records(Path(__file__).resolve().parents[1] / "figures" / "results")
    checked = 0
    for analysis in (a for a in declared.ANALYSES.values() if a.split == "valid"):
        (field,) = analysis.x
        model = analysis.points[0].model
        protocol = declared.PROTOCOLS[analysis.dataset][model]
        used = build_run_config(model, protocol.preset, protocol.values).setting
        fixed = {k: v for k, v in analysis.points[0].values.items() if k != field}
        runs = tables.run_frame(analysis, records)
        if any(used(k) != v for k, v in fixed.items()) or len(runs) < len(analysis.points):
            continue
        best, _, default = tables.search_choice(analysis, runs)
        if default and field not in protocol.values:  # a tie or a win for the setting without the search
            checked += 1
            continue
        assert field in protocol.values, f"{analysis.id}: the protocol does not set {field}"
        expected = best if isinstance(best, str) else pytest.approx(best)
        assert protocol.values[field] == expected, f"{analysis.id}: validation picks {field} = {best}"
        checked += 1
    assert checked >= 1  # TikTok's MF-BPR search at least


def test_a_malformed_record_names_the_file(tmp_path):
    (tmp_path / "tiktok").mkdir()
    bad = tmp_path / "tiktok" / "diffmm-000000000000.json"
    bad.write_text("{not json")
    with pytest.raises(RecordError, match="diffmm-000000000000.json"):
        load_records(tmp_path)
    bad.write_text("[" * 100_000 + "]" * 100_000)  # nesting deeper than the parser's recursion limit
    with pytest.raises(RecordError, match="diffmm-000000000000.json: not a readable JSON"):
        read_record(bad)
    bad.write_text(json.dumps({"key": "x", "dataset": "tiktok", "model": "diffmm", "seed": "421"}))
    with pytest.raises(RecordError, match="field 'seed' should be int"):
        read_record(bad)
    good = {"key": "x", "dataset": "tiktok", "model": "diffmm", "seed": 421, "best_epoch": 2, "config": {},
            "test": {"recall@20": 0.1}, "valid": {}, "optimistic_test": {}, "late_mean": {"from_epoch": 20},
            "history": {"epoch": [1, 2], "test_recall@20": [None, 0.1]}, "by_n_train": {"n_train": [1], "users": [3]}}
    bad.write_text(json.dumps(good))
    assert read_record(bad) == good
    for field, value, message in [("test", {"recall@20": "0.1"}, "field 'test.recall@20' should be a number"),
                                  ("history", {"epoch": [1, 2], "test_recall@20": [0.1]}, "of one length, found \\[1, 2\\]"),
                                  ("by_n_train", {"n_train": "1"}, "field 'by_n_train.n_train' should be a list")]:
        bad.write_text(json.dumps({**good, field: value}))
        with pytest.raises(RecordError, match=f"diffmm-000000000000.json: .*{message}"):
            read_record(bad)


def test_the_ray_executor_runs_two_quick_runs_on_a_local_ray(tmp_path):
    pytest.importorskip("ray")
    chosen = declared.select("table2_comparison", declared.quick_analyses())
    _, missing = reproduce.plan(chosen, tmp_path / "store")
    two = [j for j in missing if j.config.model in ("popularity", "mf")]
    errors = reproduce.run_jobs(two, tmp_path / "store", tmp_path / "work", jobs=2, threads=1, engine="ray",
                                progress=False)
    assert errors == []
    records = load_records(tmp_path / "store")
    assert sorted(r["model"] for r in records.values()) == ["mf", "popularity"]
    _, left = reproduce.plan(chosen, tmp_path / "store")
    assert {j.key for j in left} == {j.key for j in missing} - {j.key for j in two}


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_run_being_trained_by_another_sweep_is_left_to_it(tmp_path, capsys, jobs):
    """Two sweeps on one store: a run whose work directory another process holds is left to it with a
    line saying so (not an error: the sweep's other runs and its exit status are unaffected), not doubled."""
    import os

    from diffmm.utils import exclusive_directory

    chosen = declared.select("table2_comparison", declared.quick_analyses())
    _, missing = reproduce.plan(chosen, tmp_path / "store")
    job = next(j for j in missing if j.config.model == "popularity")
    with exclusive_directory(tmp_path / "work" / job.dataset / f"{job.config.model}-{job.key}"):
        errors = reproduce.run_jobs([job], tmp_path / "store", tmp_path / "work", jobs=jobs, progress=False)
    assert errors == []
    assert f"left {job.name} to the process training it (pid {os.getpid()})" in capsys.readouterr().out
    assert not load_records(tmp_path / "store")
    assert reproduce.run_jobs([job], tmp_path / "store", tmp_path / "work", progress=False) == []
    assert len(load_records(tmp_path / "store")) == 1


def test_a_run_another_sweep_finished_after_planning_is_not_trained_again(tmp_path, monkeypatch):
    """Two sweeps planned the same run; the second to reach it finds its record and keeps it."""
    chosen = declared.select("table2_comparison", declared.quick_analyses())
    _, missing = reproduce.plan(chosen, tmp_path / "store")
    job = next(j for j in missing if j.config.model == "popularity")
    assert reproduce.run_jobs([job], tmp_path / "store", tmp_path / "work", progress=False) == []  # sweep one
    before = (tmp_path / "store" / job.dataset / f"{job.config.model}-{job.key}.json").read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("a run already in the store was trained again")

    monkeypatch.setattr("diffmm.experiments.runs.run_locked", no_training)
    assert reproduce.run_jobs([job], tmp_path / "store", tmp_path / "work", progress=False) == []  # sweep two
    assert (tmp_path / "store" / job.dataset / f"{job.config.model}-{job.key}.json").read_bytes() == before


def test_a_record_written_while_a_sweep_waits_for_the_run_is_kept(tmp_path, monkeypatch):
    """The other sweep writes the record after this one's first look but before it holds the run's lock (the
    lock is held until the record is written): this one keeps that record and trains nothing."""
    chosen = declared.select("table2_comparison", declared.quick_analyses())
    _, missing = reproduce.plan(chosen, tmp_path / "other")
    job = next(j for j in missing if j.config.model == "popularity")
    other = reproduce.execute(job, tmp_path / "other", tmp_path / "other-work")
    looks = []

    def stored(job_, store):
        looks.append(store)
        if len(looks) == 1:  # the first look finds nothing; then the other sweep's record lands
            write_record(store, other)
            return None
        return reproduce.read_record(Path(store) / job.dataset / f"{job.config.model}-{job.key}.json")

    def no_training(*args, **kwargs):
        raise AssertionError("a run whose record landed meanwhile was trained again")

    monkeypatch.setattr(reproduce, "stored", stored)
    monkeypatch.setattr("diffmm.experiments.runs.run_locked", no_training)
    kept = reproduce.execute(job, tmp_path / "store", tmp_path / "work")
    assert len(looks) == 2 and kept["key"] == job.key and kept["finished"] == other["finished"]


def test_display_tables_are_narrow_and_hold_the_means(full):
    records = load_records(full / "store")
    for analysis in declared.quick_analyses().values():
        runs = tables.run_frame(analysis, records)
        shown = tables.display_table(analysis, runs, records)
        if analysis.kind == "groups":
            assert list(shown.columns) == [p.label for p in analysis.points]
            assert shown.notna().all().all()
        else:
            column = "recall@20" if analysis.split == "test" else "validation recall@20"
            means = tables.point_table(analysis, runs).set_index("label")["recall@20 mean"]
            assert [float(v.split(" ")[0]) for v in shown[column]] == pytest.approx(means.round(4).tolist())
            assert len(shown.columns) <= 5


def test_status_names_the_stored_runs_no_analysis_declares(full):
    """Runs of an earlier protocol stay in the store (the record of what was measured); --status counts them."""
    pool = list(declared.quick_analyses().values())
    datasets = {a.dataset for a in pool}
    assert reproduce.unplanned(pool, full / "store", datasets) == []
    one = declared.select("table2_comparison", declared.quick_analyses())
    keys = {run_key(a.dataset, c) for a in pool if a.dataset == one[0].dataset for _, _, c in a.runs()}
    others = keys - {run_key(one[0].dataset, c) for _, _, c in one[0].runs()}
    left = reproduce.unplanned(one, full / "store", {one[0].dataset})
    assert others and {name.rsplit("-", 1)[1] for name in left} == others
