"""Rebuild the small real MNIST / Fashion-MNIST subsets the tests use (gzipped IDX files).

    python tests/data/make_subset.py ../shared/data

Takes the first N images of each split (the shared training files are already shuffled), keeping the
IDX format so torchvision reads the subset exactly as it reads the full data set.
"""

import gzip
import struct
import sys
from pathlib import Path

# (folder, train count, test count)
SUBSETS = [("MNIST", 2000, 1000), ("FashionMNIST", 500, 250)]
IMAGE_BYTES = 28 * 28


def write_subset(src: Path, dst: Path, prefix: str, count: int) -> None:
    images = (src / f"{prefix}-images-idx3-ubyte").read_bytes()
    labels = (src / f"{prefix}-labels-idx1-ubyte").read_bytes()
    image_header = struct.pack(">IIII", 2051, count, 28, 28)
    label_header = struct.pack(">II", 2049, count)
    with gzip.GzipFile(dst / f"{prefix}-images-idx3-ubyte.gz", "wb", mtime=0) as f:
        f.write(image_header + images[16 : 16 + count * IMAGE_BYTES])
    with gzip.GzipFile(dst / f"{prefix}-labels-idx1-ubyte.gz", "wb", mtime=0) as f:
        f.write(label_header + labels[8 : 8 + count])


def main(shared_data: str) -> None:
    here = Path(__file__).parent
    for folder, n_train, n_test in SUBSETS:
        src = Path(shared_data) / folder / "raw"
        dst = here / folder / "raw"
        dst.mkdir(parents=True, exist_ok=True)
        write_subset(src, dst, "train", n_train)
        write_subset(src, dst, "t10k", n_test)


if __name__ == "__main__":
    main(sys.argv[1])
