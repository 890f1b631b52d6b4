"""Named datasets: real downloads from a local HTTP server, checksums, search order, errors, cards."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from diffmm import datasets as D
from diffmm.data import RecDataset, write_diffmm_dir
from diffmm.data.card import activity_distribution, dataset_card
from diffmm.data.dataset import DataError
from diffmm.data.registry import ChecksumError, DatasetUnavailableError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
ML100K = [f.name for f in D.DATASETS["ml100k"].files]


def real(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"real dataset {path} not available")
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's cache, environment or registered folders."""
    monkeypatch.delenv("DIFFMM_DATA", raising=False)
    monkeypatch.delenv("DIFFMM_BASE_URL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(D, "_LOCAL", {})


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 serving ``root``; records every requested path."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def www(tmp_path):
    """``www/ml100k/`` holds copies of the real files (in tmp_path, never in the repo)."""
    source = real("ml100k")
    (tmp_path / "www" / "ml100k").mkdir(parents=True)
    for name in ML100K:
        shutil.copy(source / name, tmp_path / "www" / "ml100k" / name)
    return tmp_path / "www"


@pytest.fixture
def server(www):
    srv = Server(www)
    yield srv
    srv.stop()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


# ------------------------------------------------------------------- registry
def test_registry_checksums_match_the_reference_copies():
    for name, spec in D.DATASETS.items():
        if spec.format == "synthetic":
            assert spec.files == ()
            continue
        folder = real(name)
        assert sorted(f.name for f in spec.files) == sorted(p.name for p in folder.iterdir())
        for f in spec.files:
            assert D.sha256_file(folder / f.name) == f.sha256, f.name
            assert (folder / f.name).stat().st_size == f.size, f.name
            assert f.url is None or (f.url.startswith("https://") and f.url.endswith(f"/{f.name}"))
            assert f.url is None or "/HEAD/" not in f.url  # pinned to a commit: the bytes cannot change under it
        assert spec.licence and spec.description


def test_files_without_a_public_download_are_named_before_anything_is_fetched(tmp_path, monkeypatch):
    unpublished = [f.name for f in D.DATASETS["ml100k"].files if f.url is None]
    assert unpublished == ["items.csv", "text_feat_minilm.npy"]
    monkeypatch.delenv("DIFFMM_BASE_URL", raising=False)
    monkeypatch.setattr(D, "download_file", lambda *a, **k: pytest.fail("nothing may be downloaded"))
    with pytest.raises(D.DatasetUnavailableError) as info:
        D.fetch("ml100k", root=tmp_path, progress=False)
    message = str(info.value)
    assert "items.csv" in message and "no public download" in message and str(tmp_path / "ml100k") in message
    assert "from https://raw.githubusercontent.com/" in message  # ml100k.inter's source is still listed
    assert not (tmp_path / "ml100k").exists() or not any((tmp_path / "ml100k").iterdir())


def test_spec_validation_errors():
    with pytest.raises(ValueError, match="format must be one of"):
        D.DatasetSpec("x", "csv", files=D.DATASETS["baby"].files)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        D.RemoteFile("a.npy", "https://example.org/a.npy", "abc", 1)
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        D.fetch("nope")
    with pytest.raises(ValueError, match="neither a registered dataset"):
        D.load("nope")


# ------------------------------------------------------------------- download
def test_download_verifies_and_caches_then_needs_no_network(server, tmp_path):
    cache = tmp_path / "cache"
    data = D.load("ml100k", root=cache, base_url=server.url, progress=False)
    assert sorted(server.requests) == sorted(f"/ml100k/{n}" for n in ML100K)  # each file once
    assert sorted(p.name for p in (cache / "ml100k").iterdir()) == sorted(ML100K)  # no temp files left
    for f in D.DATASETS["ml100k"].files:
        assert D.sha256_file(cache / "ml100k" / f.name) == f.sha256
    assert (data.n_users, data.n_items) == (943, 1682)
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (75_000, 12_000, 13_000)
    assert data.modalities == ["text", "genre"]
    assert data.item_features["text"].shape == (1682, 384)
    assert data.item_features["genre"].shape == (1682, 19)
    assert data.item_names[0] == "Toy Story (1995)"

    server.stop()  # the second load must be served from the cache
    again = D.load("ml100k", root=cache, base_url=server.url, progress=False)
    assert (again.train != data.train).nnz == 0
    assert len(server.requests) == len(ML100K)


def test_download_goes_to_DIFFMM_DATA_and_base_url_from_env(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMM_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("DIFFMM_BASE_URL", server.url + "/")
    folder = D.fetch("ml100k", progress=False)
    assert folder == tmp_path / "env" / "ml100k"
    assert sorted(p.name for p in folder.iterdir()) == sorted(ML100K)


def test_corrupt_download_fails_checksum_and_leaves_no_file(www, tmp_path):
    corrupt = www / "ml100k" / "items.csv"
    blob = bytearray(corrupt.read_bytes())
    blob[1000] ^= 0xFF  # one flipped byte, same size
    corrupt.chmod(0o644)
    corrupt.write_bytes(bytes(blob))
    bad_hash = D.sha256_file(corrupt)
    expected = {f.name: f.sha256 for f in D.DATASETS["ml100k"].files}["items.csv"]
    srv = Server(www)
    try:
        with pytest.raises(ChecksumError) as info:
            D.fetch("ml100k", root=tmp_path / "cache", base_url=srv.url, progress=False)
    finally:
        srv.stop()
    message = str(info.value)
    assert "items.csv" in message and expected in message and bad_hash in message
    assert (info.value.expected, info.value.found) == (expected, bad_hash)
    left = sorted(p.name for p in (tmp_path / "cache" / "ml100k").iterdir())
    assert left == ["ml100k.inter"]  # the verified file before it stays; no items.csv, no temp file


def test_a_wrong_file_beside_missing_ones_is_refused_before_downloading(server, tmp_path):
    target = tmp_path / "cache" / "ml100k"
    target.mkdir(parents=True)
    (target / "items.csv").write_text("not the MovieLens items\n")  # copied in by hand; ml100k.inter missing
    with pytest.raises(ChecksumError, match="items.csv"):
        D.fetch("ml100k", root=tmp_path / "cache", base_url=server.url, progress=False)
    assert not server.requests


def test_offline_error_names_files_and_folder(tmp_path):
    target = tmp_path / "cache" / "ml100k"
    with pytest.raises(DatasetUnavailableError) as info:
        D.fetch("ml100k", root=tmp_path / "cache", base_url=closed_port_url(), progress=False)
    message = str(info.value)
    assert "are you offline?" in message and f"Put these files in {target}/" in message
    for f in D.DATASETS["ml100k"].files:
        assert f.name in message and f.sha256 in message
    assert not target.exists() or not any(target.iterdir())


def test_missing_with_download_off_and_http_404(server, tmp_path):
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        D.load("tiktok", root=tmp_path / "cache", download=False)
    assert server.requests == []
    with pytest.raises(DatasetUnavailableError, match="HTTP 404"):
        D.fetch("tiktok", root=tmp_path / "cache", base_url=server.url, progress=False)


# --------------------------------------------------------------- where files are found
def touch_all(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in D.DATASETS[name].files:
        (folder / f.name).write_bytes(b"")
    return folder


def test_search_order_registered_then_env_then_cache(tmp_path, monkeypatch):
    cache = touch_all(tmp_path / "xdg" / "diffmm" / "baby", "baby")
    assert D.fetch("baby", download=False, verify=False) == cache
    env = touch_all(tmp_path / "env" / "baby", "baby")
    monkeypatch.setenv("DIFFMM_DATA", str(tmp_path / "env"))
    assert D.fetch("baby", download=False, verify=False) == env
    local = touch_all(tmp_path / "mine", "baby")
    D.register_local("baby", local)
    assert D.fetch("baby", download=False, verify=False) == local.resolve()
    explicit = touch_all(tmp_path / "root" / "baby", "baby")
    assert D.fetch("baby", root=tmp_path / "root", download=False, verify=False) == explicit
    D.register_local("baby", None)
    assert D.fetch("baby", download=False, verify=False) == env
    (local / "trnMat.pkl").unlink()  # an incomplete folder is skipped
    D.register_local("baby", local)
    assert D.fetch("baby", download=False, verify=False) == env
    with pytest.raises(ChecksumError, match="trnMat.pkl"):  # empty files fail verification
        D.fetch("baby", download=False)  # verified by default


def test_load_folders_and_synthetic(tmp_path):
    ml = D.load(real("ml100k"), verify=True, min_rating=4)  # named like a dataset: its reader
    ratings = pd.read_csv(real("ml100k") / "ml100k.inter", sep="\t")
    assert ml.train.nnz == int(((ratings.rating >= 4) & (ratings.x_label == 0)).sum())
    assert ml.modalities == ["text", "genre"] and len(ml.item_names) == 1682
    renamed = tmp_path / "movies"  # the same files under another folder name: still its reader
    renamed.mkdir()
    for f in real("ml100k").iterdir():
        (renamed / f.name).symlink_to(f)
    ml = D.load(renamed)
    assert ml.name == "ml100k" and ml.modalities == ["text", "genre"] and len(ml.item_names) == 1682

    D.register_local("tiktok", real("tiktok"))
    tiktok = D.load("tiktok", download=False)
    assert (tiktok.n_users, tiktok.n_items, tiktok.train.nnz) == (9308, 6710, 59541)
    assert sorted(tiktok.modalities) == ["audio", "image"]

    synthetic = D.load("synthetic", n_users=60, n_items=30, seed=3)
    assert (synthetic.n_users, synthetic.n_items, synthetic.name) == (60, 30, "synthetic")
    write_diffmm_dir(synthetic, tmp_path / "mine")  # an unregistered folder: format detection
    mine = D.load(tmp_path / "mine")
    assert (mine.train != synthetic.train).nnz == 0 and mine.name == "mine"
    write_diffmm_dir(synthetic, tmp_path / "synthetic")  # named like the generated dataset: still the folder's data
    own = D.load(tmp_path / "synthetic")
    assert (own.n_users, own.n_items) == (60, 30) and (own.train != synthetic.train).nnz == 0

    with pytest.raises(DatasetUnavailableError, match=r"lacks \['ml100k.inter', 'items.csv'"):
        D.load(tmp_path / "mine", spec="ml100k")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.rename(columns={"movie title": "title"}), r"items.csv: field 'movie title': expected the MovieLens"),
    (lambda t: t.drop(index=5), r"items.csv: field 'movie id': expected one row per movie.*'7' in row 5"),
    (lambda t: t.drop(columns=["Action"]), r"items.csv: field 'Action'"),
])
def test_ml100k_items_errors_name_the_file_and_field(tmp_path, edit, message):
    folder = tmp_path / "ml100k"
    folder.mkdir()
    for f in real("ml100k").iterdir():
        if f.name != "items.csv":
            (folder / f.name).symlink_to(f)
    edit(pd.read_csv(real("ml100k") / "items.csv", dtype=str, keep_default_na=False)).to_csv(
        folder / "items.csv", index=False)
    with pytest.raises(ChecksumError, match="items.csv"):  # a changed copy of a registered dataset: refused
        D.load(folder)
    with pytest.raises(DataError, match=message):  # read anyway: the reader names what is wrong
        D.load(folder, verify=False)


def test_ml100k_text_rebuild_embeds_the_template_into_the_cache(tmp_path, monkeypatch):
    calls = {}

    def fake_embeddings(texts, cache=None, progress=True):
        calls.update(texts=texts, cache=cache)
        return np.ones((len(texts), 4), np.float32)

    monkeypatch.setattr("diffmm.data.ml100k.sentence_embeddings", fake_embeddings)
    data = D.read_ml100k(real("ml100k"), text="rebuild")
    assert data.item_features["text"].shape == (1682, 4)
    assert calls["texts"][0].startswith("Toy Story (1995). Genres: Animation, Children's, Comedy. Director: ")
    assert calls["cache"] == tmp_path / "xdg" / "diffmm" / "features"
    with pytest.raises(ValueError, match="text must be 'shipped' or 'rebuild'"):
        D.read_ml100k(real("ml100k"), text="bert")


# ------------------------------------------------------------------------- cards
@pytest.fixture
def tiny() -> RecDataset:
    # 4 users x 5 items; train activity per user = [0, 1, 3, 4]
    train = sp.csr_matrix(np.array([[0, 0, 0, 0, 0],
                                    [1, 0, 0, 0, 0],
                                    [1, 1, 1, 0, 0],
                                    [1, 1, 1, 1, 0]]))
    valid = sp.csr_matrix(np.array([[0, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]]))
    test = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]))
    return RecDataset(train, valid, test, item_features={"image": np.zeros((5, 3)), "text": np.ones((5, 2))},
                      name="tiny")


def test_dataset_card_is_table_one(tiny):
    other = RecDataset(tiny.train, tiny.valid, tiny.test, item_features={"image": np.zeros((5, 7))}, name="other")
    card = dataset_card(tiny, other)
    assert list(card.index) == ["tiny", "other"]
    row = card.loc["tiny"]
    assert (row.users, row["items"], row.interactions, row.train, row.valid, row.test) == (4, 5, 13, 8, 2, 3)
    assert row["sparsity (%)"] == pytest.approx(100 * (1 - 13 / 20))
    assert row.modalities == "image:3, text:2"
    assert card.loc["other", "image dim"] == 7 and pd.isna(card.loc["other", "text dim"])


def test_activity_distribution_counts_users_per_bin(tiny):
    dist = activity_distribution(tiny, bins=(0, 1, 3, np.inf))
    assert list(dist.index) == ["[0, 1)", "[1, 3)", "[3, inf)"]
    # train activity per user = [0, 1, 3, 4]; test interactions per user = [2, 1, 0, 0]
    assert dist["users"].tolist() == [1, 1, 2]
    assert dist["test users"].tolist() == [1, 1, 0]
    assert dist["test interactions"].tolist() == [2, 1, 0]
    assert dist["share"].tolist() == [0.25, 0.25, 0.5]
    assert activity_distribution(tiny, bins=(1, 4))["users"].tolist() == [2]  # 0 and 4 fall outside
    with pytest.raises(ValueError, match="increasing"):
        activity_distribution(tiny, bins=(5, 1))
    # an int q: quantile groups of the test users' activity ([0, 1]), the groups of the sparsity figure
    quantiles = activity_distribution(tiny, bins=2)
    assert list(quantiles.index) == ["[0, 1)", "[1, inf)"] and quantiles["users"].tolist() == [1, 3]
    from diffmm.viz import sparsity_table

    per_user = pd.DataFrame({"user": [0, 1], "n_train": [0, 1], "recall@20": [0.5, 1.0]})
    assert list(sparsity_table({"m": per_user}, 2, "recall@20")["group"].unique()) == list(quantiles.index)
