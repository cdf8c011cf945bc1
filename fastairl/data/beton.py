"""Read the images and labels of ffcv ``.beton`` files without importing ffcv.

Why our own reader: the GPU-decode backends (nvjpeg, DALI) only need each sample's
compressed JPEG bytes and its label, handed to a decoder that is not ffcv's. Going
through ffcv's Loader for that would drag in numba compilation and its process model;
importing ffcv at all needs its compiled extension and system libraries. The file format
is simple enough to read with one read-only :class:`numpy.memmap`:

``[header][field descriptors][metadata table][data pages ...][allocation table]``

* **header** (24 bytes, little endian): format version (u16, 2 for ffcv 1.0.x), number of
  fields (u16), page size (u32), number of samples (u64), byte offset of the allocation
  table (u64).
* **field descriptors**: one 1041-byte record per field: type id (u8), the field name
  (16 bytes, NUL padded ASCII) and 1024 bytes of field arguments.
* **metadata table**: one fixed-size record per sample, the fields' metadata records laid
  out as a C struct (each member aligned to its own alignment). An RGB image field stores
  ``mode`` (u8: 0 JPEG, 1 raw pixels), ``width`` (u16), ``height`` (u16) and ``data_ptr``
  (u64, byte offset of its payload) packed in 13 bytes; an int field stores its value
  (i64) directly.
* **data pages**: payloads, packed into pages of ``page_size`` bytes.
* **allocation table**: runs to the end of the file; one ``(sample_id, ptr, size)``
  record (3 x u64) per payload. It is the only place a payload's length is written.

Everything a reader hands out is a slice of the map or an array computed once at open,
so one :class:`BetonReader` can serve any number of threads (there is no shared file
position), and it pickles by path (a worker process reopens its own map).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["BetonError", "BetonReader", "read_classes_json", "FORMAT_VERSION", "JPEG_MODE", "RAW_MODE"]

#: The on-disk format version written by ffcv 1.0.x.
FORMAT_VERSION = 2
#: Image payload modes stored in the metadata of an RGB image field.
JPEG_MODE = 0
RAW_MODE = 1

_HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                    ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)
_FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", "<u1", (16,)), ("arguments", "<u1", (1024,))],
                       align=True)
_ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
_IMAGE_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
_PTR_SIZE_META = np.dtype([("ptr", "<u8"), ("size", "<u8")])

#: type id -> (readable name, per-sample metadata record). Every id ffcv 1.0.2 writes must be
#: known, even for fields we never read, because each one's record size shifts the rest.
_FIELD_TYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float", np.dtype("<f8")),
    1: ("int", np.dtype("<i8")),
    2: ("rgb_image", _IMAGE_META),
    3: ("bytes", _PTR_SIZE_META),
    4: ("ndarray", np.dtype("<u8")),
    5: ("json", _PTR_SIZE_META),
    6: ("torch_tensor", np.dtype("<u8")),
}
_CUSTOM_TYPE_ID = 255
_MAX_FIELDS = 1024
_REWRITE = "re-run data_prep/write_ffcv.py --overwrite to rebuild it"


class BetonError(ValueError):
    """A file that is not a complete, readable ffcv .beton (the message names the file)."""


def _field_name(raw: np.ndarray) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("ascii", errors="replace")


class BetonReader:
    """Zero-copy access to the samples of one ffcv ``.beton`` file.

    ``image_field`` / ``label_field`` pick fields by name; by default the first RGB image
    field and the first int field are used (fastairl's writer stores ``image`` and
    ``label``). A file without an int field has ``labels is None``.

    Attributes: ``path``, ``num_samples`` (also ``len()``), ``page_size``, ``field_names``,
    ``field_types`` (name -> "rgb_image", "int", ...), ``image_field``, ``label_field``,
    ``labels`` (int64), ``heights`` / ``widths`` (int64, as stored, after the writer's
    ``max_resolution`` resize), ``modes`` (uint8, :data:`JPEG_MODE` or :data:`RAW_MODE`),
    ``sizes`` (payload bytes per sample, int64).
    """

    def __init__(self, path: str | os.PathLike, image_field: str | None = None,
                 label_field: str | None = None) -> None:
        self.path = Path(path)
        self._requested = (image_field, label_field)
        self._open()

    # ------------------------------------------------------------------ parsing
    def _fail(self, what: str) -> BetonError:
        return BetonError(f"{self.path}: {what}")

    def _open(self) -> None:
        path = self.path
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such .beton file (pack a dataset with "
                                    f"data_prep/write_ffcv.py, or check --data)")
        if not path.is_file():
            raise BetonError(f"{path} is not a regular file; expected an ffcv .beton")
        size = path.stat().st_size
        if size < _HEADER.itemsize:
            raise self._fail(f"{size} bytes, too short for an ffcv .beton header; is this a .beton file?")
        self._mm = np.memmap(path, dtype=np.uint8, mode="r")
        mm = self._mm
        header = mm[:_HEADER.itemsize].view(_HEADER)[0]
        version = int(header["version"])
        if version != FORMAT_VERSION:
            raise self._fail(f"not an ffcv 1.0 .beton (format version field reads {version}, expected "
                             f"{FORMAT_VERSION}); a foreign or damaged file")
        n_fields = int(header["num_fields"])
        self.page_size = int(header["page_size"])
        self.num_samples = int(header["num_samples"])
        table_at = int(header["alloc_table_ptr"])
        if not 0 < n_fields <= _MAX_FIELDS:
            raise self._fail(f"header claims {n_fields} fields; not a valid ffcv .beton")
        if self.page_size <= 0 or self.page_size & (self.page_size - 1):
            raise self._fail(f"header page size {self.page_size} is not a power of two; not a valid ffcv .beton")

        desc_end = _HEADER.itemsize + n_fields * _FIELD_DESC.itemsize
        if size < desc_end:
            raise self._fail(f"truncated: {size} bytes, but its {n_fields} field descriptors end at byte "
                             f"{desc_end}; {_REWRITE}")
        desc = mm[_HEADER.itemsize:desc_end].view(_FIELD_DESC)
        names = [_field_name(d["name"]) for d in desc]
        type_ids = [int(d["type_id"]) for d in desc]
        for name, tid in zip(names, type_ids):
            if tid == _CUSTOM_TYPE_ID:
                raise self._fail(f"field {name!r} uses a custom ffcv field type whose layout is not in the "
                                 f"file; only the stock ffcv field types can be read")
            if tid not in _FIELD_TYPES:
                raise self._fail(f"field {name!r} has unknown type id {tid}; a foreign or damaged file")
        self.field_names = names
        self.field_types = {n: _FIELD_TYPES[t][0] for n, t in zip(names, type_ids)}
        # Member names are positional ("f0", "f1", ...) because ffcv leaves them empty and
        # two fields could share a truncated 16-byte name.
        meta_type = np.dtype([(f"f{i}", _FIELD_TYPES[t][1]) for i, t in enumerate(type_ids)], align=True)

        meta_end = desc_end + self.num_samples * meta_type.itemsize
        if self.num_samples == 0:
            raise self._fail("holds no samples; " + _REWRITE)
        if table_at == 0:
            raise self._fail(f"its header has no allocation table: the writer never finished; {_REWRITE}")
        if table_at > size:
            raise self._fail(f"truncated: the file is {size} bytes but its allocation table starts at byte "
                             f"{table_at}; copy it again or {_REWRITE}")
        if table_at < meta_end:
            raise self._fail(f"allocation table at byte {table_at} overlaps the metadata of "
                             f"{self.num_samples} samples (ends at {meta_end}); a damaged file")
        if (size - table_at) % _ALLOC.itemsize:
            raise self._fail(f"truncated inside its allocation table ({size - table_at} bytes is not a whole "
                             f"number of {_ALLOC.itemsize}-byte records); copy it again or {_REWRITE}")
        self.metadata = mm[desc_end:meta_end].view(meta_type)
        alloc = mm[table_at:size].view(_ALLOC)

        rgb = [i for i, n in enumerate(names) if self.field_types[n] == "rgb_image"]
        ints = [i for i, n in enumerate(names) if self.field_types[n] == "int"]
        want_img, want_lab = self._requested
        if want_img is None:
            if not rgb:
                raise self._fail(f"has no RGB image field (fields: {self.field_types}); it cannot feed an "
                                 f"image loader")
            img_i = rgb[0]
        else:
            if want_img not in names or names.index(want_img) not in rgb:
                raise self._fail(f"has no RGB image field named {want_img!r} (fields: {self.field_types})")
            img_i = names.index(want_img)
        if want_lab is None:
            lab_i = ints[0] if ints else None
        else:
            if want_lab not in names or names.index(want_lab) not in ints:
                raise self._fail(f"has no int field named {want_lab!r} (fields: {self.field_types})")
            lab_i = names.index(want_lab)
        self.image_field = names[img_i]
        self.label_field = names[lab_i] if lab_i is not None else None

        img = self.metadata[f"f{img_i}"]
        self.modes = np.ascontiguousarray(img["mode"]).astype(np.uint8)
        self.widths = img["width"].astype(np.int64)
        self.heights = img["height"].astype(np.int64)
        self.ptrs = img["data_ptr"].astype(np.int64)
        self.labels = (self.metadata[f"f{lab_i}"].astype(np.int64) if lab_i is not None else None)

        bad_mode = np.flatnonzero((self.modes != JPEG_MODE) & (self.modes != RAW_MODE))
        if bad_mode.size:
            i = int(bad_mode[0])
            raise self._fail(f"sample {i} has image mode {int(self.modes[i])} (expected 0 jpeg or 1 raw); "
                             f"a damaged file")
        if (self.widths == 0).any() or (self.heights == 0).any():
            i = int(np.flatnonzero((self.widths == 0) | (self.heights == 0))[0])
            raise self._fail(f"sample {i} has a zero image size in its metadata; a damaged file")

        # A payload's length lives only in the allocation table: find each image's
        # allocation by its start offset.
        a_ptr = alloc["ptr"].astype(np.int64)
        a_size = alloc["size"].astype(np.int64)
        if a_ptr.size and int((a_ptr + a_size).max()) > table_at:
            raise self._fail(f"an allocation runs past byte {table_at} where the allocation table starts; "
                             f"a damaged file; {_REWRITE}")
        order = np.argsort(a_ptr, kind="stable")
        a_ptr, a_size = a_ptr[order], a_size[order]
        pos = np.searchsorted(a_ptr, self.ptrs)
        pos_c = np.minimum(pos, max(a_ptr.size - 1, 0))
        found = (pos < a_ptr.size) & (a_ptr[pos_c] == self.ptrs) if a_ptr.size else np.zeros_like(pos, bool)
        if not found.all():
            i = int(np.flatnonzero(~found)[0])
            raise self._fail(f"truncated or damaged: the image of sample {i} (byte {int(self.ptrs[i])}) is missing "
                             f"from its allocation table ({a_ptr.size} entries for {self.num_samples} samples); "
                             f"copy it again or {_REWRITE}")
        self.sizes = a_size[pos_c]
        raw = self.modes == RAW_MODE
        if raw.any():
            expect = self.heights[raw] * self.widths[raw] * 3
            if (self.sizes[raw] != expect).any():
                i = int(np.flatnonzero(raw)[np.flatnonzero(self.sizes[raw] != expect)[0]])
                raise self._fail(f"raw sample {i} holds {int(self.sizes[i])} bytes, not "
                                 f"{int(self.heights[i])}x{int(self.widths[i])}x3; a damaged file")
        for a in (self.modes, self.widths, self.heights, self.ptrs, self.sizes):
            a.setflags(write=False)
        if self.labels is not None:
            self.labels.setflags(write=False)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"BetonReader({str(self.path)!r}, samples={self.num_samples}, image_field={self.image_field!r}, "
                f"label_field={self.label_field!r})")

    def _index(self, i: int) -> int:
        i = int(i)
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"{self.path} has {self.num_samples} samples; index {i} is out of range")
        return i % self.num_samples

    def image_mode(self, i: int) -> str:
        """``"jpeg"`` or ``"raw"``: how sample ``i`` was stored (ffcv's ``write_mode``)."""
        return "jpeg" if self.modes[self._index(i)] == JPEG_MODE else "raw"

    def payload(self, i: int) -> np.ndarray:
        """The stored bytes of sample ``i``'s image (JPEG stream or raw HWC pixels), a view of the map."""
        i = self._index(i)
        start = int(self.ptrs[i])
        return self._mm[start:start + int(self.sizes[i])]

    def jpeg(self, i: int) -> np.ndarray:
        """The JPEG byte stream of sample ``i`` as a read-only uint8 view of the file map.

        Raw-mode samples have no JPEG stream: asking for one raises :class:`BetonError`
        (use :meth:`raw` or :meth:`image`).
        """
        i = self._index(i)
        if self.modes[i] != JPEG_MODE:
            raise self._fail(f"sample {i} is stored as raw pixels, not JPEG; read it with .raw({i}) or .image({i})")
        return self.payload(i)

    def raw(self, i: int) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 pixels of a raw-mode sample, a view of the map."""
        i = self._index(i)
        if self.modes[i] != RAW_MODE:
            raise self._fail(f"sample {i} is stored as JPEG; read its bytes with .jpeg({i}) and decode them")
        return self.payload(i).reshape(int(self.heights[i]), int(self.widths[i]), 3)

    def image(self, i: int) -> np.ndarray:
        """Decoded ``(H, W, 3)`` RGB pixels of sample ``i`` (CPU decode for JPEG samples).

        A convenience for tools and tests; the loaders decode in batches themselves.
        """
        i = self._index(i)
        if self.modes[i] == RAW_MODE:
            return self.raw(i)
        import io

        from PIL import Image
        with Image.open(io.BytesIO(self.jpeg(i).tobytes())) as im:
            return np.asarray(im.convert("RGB"))

    def label(self, i: int) -> int:
        if self.labels is None:
            raise self._fail("has no int (label) field")
        return int(self.labels[self._index(i)])

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        # A memmap pickles as a full in-memory copy; send the path and reopen instead.
        return {"path": str(self.path), "requested": self._requested}

    def __setstate__(self, state: dict) -> None:
        self.path = Path(state["path"])
        self._requested = tuple(state["requested"])
        self._open()


def read_classes_json(root: str | os.PathLike) -> list[str] | None:
    """Class names in label order from ``<root>/classes.json`` (``{"classes": [...]}``), or None if absent.

    fastairl's packer writes this file beside the .beton files; a .beton on its own only
    has integer labels.
    """
    path = Path(root) / "classes.json"
    if not path.is_file():
        return None
    try:
        classes = json.loads(path.read_text())["classes"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BetonError(f"{path} is not a fastairl classes.json ({type(e).__name__}: {e}); {_REWRITE}") from None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise BetonError(f"{path}: 'classes' must be a non-empty list of names; {_REWRITE}")
    return classes


def class_names(path: str | os.PathLike, labels, owner: str, logger) -> list[str]:
    """The class names of the packed file ``path`` with these ``labels``: its ``classes.json``,
    or, without one, the classes numbered (logged once through the backend's ``logger``).

    One rule for every backend that reads packed files (ffcv, nvjpeg, dali), so the same
    file gives the same classes whichever backend reads it. A ``classes.json`` naming fewer
    classes than the labels need belongs to another packing and is refused.
    """
    path = Path(path)
    lo, hi = int(np.min(labels)), int(np.max(labels))
    if lo < 0:
        raise BetonError(f"{path} holds negative labels; {_REWRITE}")
    classes = read_classes_json(path.parent)
    if classes is None:
        logger.warning("%s: %s has no classes.json beside it; naming the %d classes by number", owner, path, hi + 1)
        return [str(k) for k in range(hi + 1)]
    if len(classes) <= hi:
        raise BetonError(f"{path} has labels in [{lo}, {hi}] but {path.parent / 'classes.json'} names "
                         f"{len(classes)} classes; the two files do not belong together (they come from "
                         f"different packings); {_REWRITE}")
    return list(classes)

