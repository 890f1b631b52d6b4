"""The current code against the results store: the first epochs of a stored TikTok run, trained again,
give the same validation and test curve (CPU, same seed and threads), to 1e-6.

A store record names the commit that trained it and its random stream (``diffmm.RANDOM_STREAM``); this test
is how a refactor shows it changed no result. A record of an earlier stream is compared with this code's
numbers for the same run, pinned here.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from diffmm.experiments.runs import RunConfig
from diffmm.experiments.store import load_records

STORE = Path(__file__).resolve().parents[1] / "figures" / "results"
EPOCHS = 3
COLUMNS = ("valid_recall@20", "valid_ndcg@20", "test_recall@20", "test_ndcg@20")
# The reference run's first epochs under this code's random stream, for when its stored record is of an earlier
# stream (draw for draw the same only within a stream). Pinned with 3aa97d4 (stream 2; 964262a gave the same
# validation Recall@20; 2026-12-03, AMD EPYC, 1 thread); re-pin, and say why in the commit, when the stream changes.
PINNED = {"record": "044e8e4ee6e9", "random_stream": 2, "history": {
    "valid_recall@20": [0.04260898066, 0.05375286791, 0.06456899377],
    "valid_ndcg@20": [0.02310705919, 0.02858764927, 0.03044499923],
    "test_recall@20": [0.04877650897, 0.06084828711, 0.06411092985],
    "test_ndcg@20": [0.02631399047, 0.03105098159, 0.03126341233]}}


@pytest.mark.slow
def test_the_first_epochs_of_a_stored_tiktok_run_are_reproduced(tiktok, tmp_path):
    import diffmm
    from diffmm.experiments import run

    stored = [r for r in load_records(STORE, "tiktok").values()
              if r["model"] == "diffmm" and str(r["device"]).startswith("cpu")]
    if not stored:
        pytest.skip("no CPU DiffMM run of TikTok in the store yet")
    record = min(stored, key=lambda r: (r["seed"], r["key"]))
    if record["code"].get("random_stream", 1) == diffmm.RANDOM_STREAM:
        expected = {column: record["history"][column][:EPOCHS] for column in COLUMNS}
    else:  # trained by an earlier stream: this code's numbers for that run are pinned above
        assert (PINNED["record"], PINNED["random_stream"]) == (record["key"], diffmm.RANDOM_STREAM), \
            "the store's reference run or the random stream changed: re-pin PINNED with this code"
        expected = PINNED["history"]
    config = RunConfig.from_dict(record["config"])
    config = config.replace(train=config.train.replace(epochs=EPOCHS, threads=record["threads"], progress=False,
                                                       device="cpu"))
    result, _ = run(tiktok, config, tmp_path)
    for column in COLUMNS:
        again = result.history[column].to_numpy()
        assert np.allclose(again, expected[column], rtol=0, atol=1e-6), (column, again, expected[column], record["code"])
    print(json.dumps({"record": record["key"], "commit": record["code"]["commit"], "epochs": EPOCHS}))
