"""Files laid out as `torch.save` lays them out, written without torch (which is not installed).

PyTorch's zip writer (caffe2/serialize/inline_container.cc, torch/serialization.py `_save`)
writes an uncompressed zip whose records all sit in one folder, `<archive>/`: `data.pkl` (the
pickled object, whose persistent ids name the storages), `.format_version`,
`.storage_alignment`, `byteorder`, one record `data/<key>` per tensor storage, and at the end
`version` and `.data/serialization_id`. Every record's data starts on a 64-byte boundary: the
local header's extra field carries a block tagged `FB` whose length pads the header out; the
central directory's entries carry no such padding. `write_torch_zip` reproduces that with
`zipfile`, so the chunker meets the same bytes it meets in a real checkpoint.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

ALIGNMENT = 64


class _AlignedRecord(zipfile.ZipInfo):
    """A record whose local header (only) is padded so that its data starts on a 64-byte
    boundary, with PyTorch's `FB` extra block."""

    __slots__ = ()

    def FileHeader(self, zip64: bool | None = None) -> bytes:  # zipfile calls it by this name
        central_extra = self.extra
        start = self.header_offset + 30 + len(self.filename.encode()) + 4
        padding = -start % ALIGNMENT
        self.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
        try:
            return super().FileHeader(zip64)
        finally:
            self.extra = central_extra


def write_torch_zip(
    path: Path, storages: list[bytes], *, archive: str = "archive", pickle_extra: object = None
) -> None:
    """Write `storages` as records `<archive>/data/0`, `/data/1`, ... between the records
    `torch.save` writes around them. `pickle_extra` goes into `data.pkl` (a Lightning
    checkpoint's hyperparameters, an optimizer's settings)."""
    state = {
        "storages": [
            ("storage", "FloatStorage", str(k), "cpu", len(s)) for k, s in enumerate(storages)
        ],
        "extra": pickle_extra,
    }
    records: list[tuple[str, bytes]] = [
        ("data.pkl", pickle.dumps(state, protocol=2)),
        (".format_version", b"1"),
        (".storage_alignment", b"64"),
        ("byteorder", b"little"),
    ]
    records += [(f"data/{key}", data) for key, data in enumerate(storages)]
    records += [
        ("version", b"3\n"),
        (".data/serialization_id", b"0123456789012345678901234567890123"),
    ]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive_file:
        for name, data in records:
            info = _AlignedRecord(f"{archive}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            archive_file.writestr(info, data)


def record_data_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """Each record's name → (start, end) of its data in the file, read from the local headers."""
    ranges: dict[str, tuple[int, int]] = {}
    with path.open("rb") as f, zipfile.ZipFile(f) as archive_file:
        for info in archive_file.infolist():
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = struct.unpack_from("<HH", local, 26)
            start = info.header_offset + 30 + name_len + extra_len
            ranges[info.filename] = (start, start + info.compress_size)
    return ranges
