"""MovieLens-100k as a multi-modal dataset: its interactions (MMRec format), text and genre modalities,
and the movie titles as item names."""

from __future__ import annotations

from typing import TYPE_CHECKING
import dataclasses
import os
from pathlib import Path

import numpy as np

from diffmm.data.dataset import DataError, RecDataset
from diffmm.data.io import read_mmrec
from diffmm.features import ML100K_GENRE_FLAGS, item_text_ml100k, multi_hot, sentence_embeddings

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd


def read_ml100k(folder: str | os.PathLike, min_rating: float | None = None, text: str = "shipped",
                text_cache: str | os.PathLike | None = None, progress: bool = True) -> RecDataset:
    """MovieLens-100k as a multi-modal dataset: interactions, text and genre modalities, titles.

    Interactions come from ``ml100k.inter`` with its own train/valid/test split (``x_label``).
    Implicit feedback: **by default every rating (1-5) counts as an interaction**
    (``min_rating=None``), since the split is given per rating; ``min_rating=4`` keeps only
    ratings >= 4 ("liked") in every split.

    Modalities (row k = itemID k):
        ``text``: (1682, 384) all-MiniLM-L6-v2 embeddings of :func:`item_text_ml100k`;
        ``genre``: (1682, 19) multi-hot genre flags ('unknown', 'Action', ..., 'Western').
    ``item_names`` are the movie titles, e.g. 'Toy Story (1995)'.

    Args:
        folder: holds ``ml100k.inter``, ``items.csv`` and (for ``text='shipped'``)
            ``text_feat_minilm.npy``.
        min_rating: keep ratings >= this; None (default) keeps all.
        text: 'shipped' (default) reads ``text_feat_minilm.npy``; 'rebuild' embeds the item
            text with the sentence model (needs ``pip install 'diffmm[text]'``).
        text_cache: cache folder for rebuilt embeddings (``diffmm.data.registry`` passes ``<data home>/features``).
        progress: progress bar while rebuilding.
    """
    folder = Path(folder)
    if text not in ("shipped", "rebuild"):
        raise ValueError(f"text must be 'shipped' or 'rebuild', got {text!r}")
    items = _read_ml100k_items(folder / "items.csv")
    data = read_mmrec(folder, inter_file="ml100k.inter", name="ml100k", min_rating=min_rating,
                      n_items=len(items),
                      feature_files={"text": "text_feat_minilm.npy"} if text == "shipped" else {})
    features = dict(data.item_features)
    if text == "rebuild":
        features["text"] = sentence_embeddings(item_text_ml100k(items), progress=progress,
                                               cache=text_cache)
    features["genre"] = multi_hot(items, ML100K_GENRE_FLAGS)  # (n_items, 19)
    return dataclasses.replace(data, item_features=features, item_names=items["movie title"].tolist(),
                               source=str(folder))


def _read_ml100k_items(file: Path) -> pd.DataFrame:
    """items.csv, checked: the columns the modalities and titles need, one row per item in id order."""
    import pandas as pd
    items = pd.read_csv(file, dtype=str, keep_default_na=False)
    needed = ["movie id", "movie title", "Summary", "Cast", "Director", *ML100K_GENRE_FLAGS]
    missing = [c for c in needed if c not in items.columns]
    if missing:
        raise DataError(str(file), ", ".join(missing), f"the MovieLens-100k item columns {needed}",
                        f"columns {list(items.columns)}")
    ids = pd.to_numeric(items["movie id"], errors="coerce").to_numpy()
    off = np.flatnonzero(ids != np.arange(1, len(items) + 1))
    if off.size:
        row = int(off[0])
        raise DataError(str(file), "movie id", f"one row per movie, ids 1..{len(items)} in order "
                        "(row k is item k of ml100k.inter)", f"{items['movie id'].iloc[row]!r} in row {row}")
    return items
