"""MNIST data: IDX reading, source resolution and caching, model views, in-memory batching.

Typical use::

    images, labels = load_mnist(split="train")         # uint8 (50000, 28, 28), int64 (50000,)
    batches = TensorBatches(images, labels, 128, generator=torch.Generator().manual_seed(0))
    for x, y in batches:
        tokens = to_view(x, "patches", patch_size=7)   # float32 (128, 16, 49)
"""
from .batches import TensorBatches
from .binarize import TEST_BINARIZATION_SEED, binarize, fixed_binarization
from .download import download_file
from .idx import DataError, DataWarning, read_idx, write_idx
from .mnist import DATASET_NAMES, SPLITS, default_cache_dir, load_mnist, mnist_source_info
from .sources import load_numpy_pickle
from .views import MNIST_MEAN, MNIST_STD, VIEWS, pixel_permutation, to_view

__all__ = [
    "DATASET_NAMES",
    "DataError",
    "DataWarning",
    "MNIST_MEAN",
    "MNIST_STD",
    "SPLITS",
    "TEST_BINARIZATION_SEED",
    "TensorBatches",
    "VIEWS",
    "binarize",
    "default_cache_dir",
    "download_file",
    "fixed_binarization",
    "load_mnist",
    "load_numpy_pickle",
    "mnist_source_info",
    "pixel_permutation",
    "read_idx",
    "to_view",
    "write_idx",
]
