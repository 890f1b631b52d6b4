"""Data: the dataset object, readers and writers, synthetic data, negative sampling."""

from diffmm.data.dataset import SPLITS, DataError, RecDataset
from diffmm.data.io import (
    from_dataframe,
    load_dataset,
    read_diffmm_dir,
    read_mmrec,
    read_recbole,
    to_dataframe,
    write_diffmm_dir,
    write_mmrec,
    write_recbole,
)
from diffmm.data.synthetic import make_synthetic

__all__ = [
    "SPLITS", "DataError", "RecDataset",
    "read_diffmm_dir", "write_diffmm_dir", "read_mmrec", "write_mmrec", "read_recbole", "write_recbole",
    "to_dataframe", "from_dataframe", "load_dataset", "make_synthetic",
]
