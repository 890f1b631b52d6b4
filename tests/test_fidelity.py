"""The current code against the results store: the first epochs of a stored TikTok run, trained again,
give the same validation and test curve (CPU, same seed and threads), to 1e-6.

A store record names the commit that trained it; this test is how a refactor shows it changed no result.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from diffmm.experiments.runs import RunConfig
from diffmm.experiments.store import load_records

STORE = Path(__file__).resolve().parents[1] / "figures" / "results"
EPOCHS = 3


@pytest.mark.slow
def test_the_first_epochs_of_a_stored_tiktok_run_are_reproduced(tiktok, tmp_path):
    from diffmm.experiments import run

    stored = [r for r in load_records(STORE, "tiktok").values()
              if r["model"] == "diffmm" and str(r["device"]).startswith("cpu")]
    if not stored:
        pytest.skip("no CPU DiffMM run of TikTok in the store yet")
    record = min(stored, key=lambda r: (r["seed"], r["key"]))
    config = RunConfig.from_dict(record["config"])
    config = config.replace(train=config.train.replace(epochs=EPOCHS, threads=record["threads"], progress=False,
                                                       device="cpu"))
    result, _ = run(tiktok, config, tmp_path)
    for column in ("valid_recall@20", "valid_ndcg@20", "test_recall@20", "test_ndcg@20"):
        again = result.history[column].to_numpy()
        before = np.asarray(record["history"][column][:EPOCHS], dtype=float)
        assert np.allclose(again, before, rtol=0, atol=1e-6), (column, again, before, record["code"])
    print(json.dumps({"record": record["key"], "commit": record["code"]["commit"], "epochs": EPOCHS}))
