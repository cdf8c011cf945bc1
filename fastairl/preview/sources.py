"""The source images a loader reads: the grid's first column and the sizes crop windows refer to."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class SourceImages:
    """Random access, by dataset index, to the images a loader reads.

    Found from the loader itself where it says (the folder loader's ImageFolder, the
    nvjpeg loader's source, the ffcv loader's .beton path), else from the data root the
    same way every backend lists a split: ``<root>/<split>/`` in ImageFolder order, or
    ``<root>/<split>.beton``.
    """

    def __init__(self, loader: Any, root: Path, split: str) -> None:
        self.paths: list[str] | None = None
        self.reader = None
        dataset = getattr(loader, "dataset", None)
        source = getattr(loader, "source", None)
        path = getattr(loader, "path", None)
        if dataset is not None and hasattr(dataset, "samples"):
            self.paths = [p for p, _ in dataset.samples]
        elif source is not None and hasattr(source, "paths"):
            self.paths = list(source.paths)
        elif source is not None and hasattr(source, "reader"):
            self.reader = source.reader
        elif path is not None and str(path).endswith(".beton"):
            from fastairl.data.beton import BetonReader
            self.reader = BetonReader(path)
        elif (root / split).is_dir():
            from fastairl.data.folder import image_folder
            self.paths = [p for p, _ in image_folder(root / split).samples]
        elif (root / f"{split}.beton").is_file():
            from fastairl.data.beton import BetonReader
            self.reader = BetonReader(root / f"{split}.beton")

    @property
    def available(self) -> bool:
        return self.paths is not None or self.reader is not None

    def size(self, i: int) -> tuple[int, int]:
        """(height, width) of image ``i`` as decoded (header only for files)."""
        if self.reader is not None:
            return int(self.reader.heights[i]), int(self.reader.widths[i])
        from PIL import Image
        with Image.open(self.paths[i]) as im:  # lazy: reads the header, not the pixels
            w, h = im.size
        return h, w

    def image(self, i: int) -> np.ndarray:
        """Decoded ``(H, W, 3)`` uint8 RGB of image ``i``."""
        if self.reader is not None:
            return np.ascontiguousarray(self.reader.image(i))
        from PIL import Image
        with Image.open(self.paths[i]) as im:
            return np.asarray(im.convert("RGB"))
