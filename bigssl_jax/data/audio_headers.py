"""Where an audio file's container says its sample data ends, to catch files cut short.

libsndfile trims the frame count of a WAV, AIFF, AU, CAF ... file whose data chunk runs past
the end of the file to what the file holds, so a truncated file decodes as a shorter one and
the frame count it reports cannot tell. `declared_data_end` reads the container's own sizes
instead; `audio_io` skips the file as `truncated` when that end lies beyond the file's size.

Containers parsed (by their magic bytes, whatever the file's extension):
  * RIFF / RIFX / RF64 / BW64 (WAV, WAVEX; RF64's 64-bit data size from its `ds64` chunk) and
    Sony Wave64: the `data` chunk;
  * IFF FORM: AIFF / AIFC (`SSND`), 8SVX / 16SV (`BODY`);
  * Sun / NeXT AU (`.snd`): the data offset + data size;
  * NIST SPHERE (uncompressed): header bytes + sample_count x channel_count x sample_n_bytes;
  * Apple CAF: the `data` chunk;
  * Ogg (Vorbis, Opus, FLAC-in-Ogg): every page whole and the last one marked end-of-stream.
A chunk before the data that already runs past the end of the file counts as its end. Sizes a
streaming writer leaves unknown (0xFFFFFFFF, CAF's -1) declare nothing. FLAC and MP3 are
checked in `audio_io` by comparing the frames their header declares (STREAMINFO, Xing) with
the frames decoded; the remaining containers libsndfile opens (VOC, PAF, IRCAM, MAT, ...)
rely on libsndfile's own checks.
"""

import os
import re
import struct
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

_UNKNOWN_32 = 0xFFFFFFFF
_WAVE64_RIFF_GUID_TAIL = bytes.fromhex("2e91cf11a5d628db04c10000")
_OGG_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, ..., segments
_OGG_END_OF_STREAM = 0x04


class _Layout(NamedTuple):
    """How a chunked container lays out its chunks.

    Attributes:
      start: offset of the first chunk header.
      size_format: struct format of a chunk's size field.
      id_size: bytes of a chunk id (Wave64's are 16-byte GUIDs, named by their first 4).
      header_in_size: whether the size counts the chunk's own header (Wave64).
      align: chunks start at multiples of this.
      data_ids: ids of the chunk holding the samples.
    """

    start: int
    size_format: str
    id_size: int = 4
    header_in_size: bool = False
    align: int = 2
    data_ids: tuple[bytes, ...] = (b"data",)


_RIFF = _Layout(12, "<I")
_RIFX = _Layout(12, ">I")
_WAVE64 = _Layout(40, "<Q", id_size=16, header_in_size=True, align=8)
_IFF = _Layout(12, ">I", data_ids=(b"SSND", b"BODY"))
_CAF = _Layout(8, ">q", align=1)


def _chunks(handle: BinaryIO, layout: _Layout, file_size: int) -> Iterator[tuple[bytes, int, int]]:
    """Yields (chunk id, body offset, body size) up to the first header that does not fit."""
    header = layout.id_size + struct.calcsize(layout.size_format)
    offset = layout.start
    while offset + header <= file_size:
        handle.seek(offset)
        raw = handle.read(header)
        (size,) = struct.unpack(layout.size_format, raw[layout.id_size :])
        body = size - header if layout.header_in_size else size
        yield raw[:4], offset + header, body
        offset += header + body
        offset += -offset % layout.align


def _chunked_data_end(handle: BinaryIO, layout: _Layout, file_size: int) -> int | None:
    """End of the data chunk, or of an earlier chunk that runs past the file's end."""
    wide_size = None  # RF64 / BW64: the data size lives in the ds64 chunk
    for chunk_id, body, size in _chunks(handle, layout, file_size):
        if chunk_id == b"ds64":
            handle.seek(body + 8)
            (wide_size,) = struct.unpack("<Q", handle.read(8))
        if chunk_id in layout.data_ids:
            if size == _UNKNOWN_32 and wide_size is not None:
                size = wide_size
            return None if size in (_UNKNOWN_32, -1) else body + size
        if body + size > file_size:
            return body + size
    return None


def _au_data_end(head: bytes) -> int | None:
    """Sun / NeXT AU: data offset + data size (big-endian `.snd`, little-endian `dns.`)."""
    order = ">" if head[:4] == b".snd" else "<"
    offset, size = struct.unpack(order + "II", head[4:12])
    return None if size == _UNKNOWN_32 else offset + size


def _nist_data_end(handle: BinaryIO) -> int | None:
    """NIST SPHERE: header size + sample_count x channel_count x sample_n_bytes."""
    handle.seek(0)
    head = handle.read(1024).decode("latin-1")
    fields = dict(re.findall(r"^(\w+) -\w+ (\S+)", head, re.MULTILINE))
    coding = fields.get("sample_coding", "pcm")
    if "sample_count" not in fields or "shorten" in coding or "pack" in coding:
        return None
    samples = int(fields["sample_count"]) * int(fields.get("channel_count", 1))
    return int(head.split("\n")[1]) + samples * int(fields.get("sample_n_bytes", 2))


def _ogg_data_end(handle: BinaryIO, file_size: int) -> int | None:
    """Ogg: the end of a page that runs past the file's end; file_size + 1 (more was promised)
    when the last page is not marked end-of-stream; None for a whole stream."""
    offset, flags = 0, _OGG_END_OF_STREAM
    while offset + _OGG_HEADER.size <= file_size:
        handle.seek(offset)
        header = handle.read(_OGG_HEADER.size)
        capture, _, flags, *_, segments = _OGG_HEADER.unpack(header)
        if capture != b"OggS":
            return None
        lacing = handle.read(segments)
        offset += _OGG_HEADER.size + segments + sum(lacing)
        if len(lacing) < segments or offset > file_size:
            return max(offset, file_size + 1)
    if offset < file_size or not flags & _OGG_END_OF_STREAM:
        return file_size + 1
    return None


def declared_data_end(path: os.PathLike) -> int | None:
    """The byte offset where the container says the audio data ends.

    Args:
      path: an audio file.

    Returns:
      That offset, a lower bound for Ogg (beyond the file's size when the file was cut
      short), or None when the container is not one parsed here, declares no size or has a
      header too malformed to parse (libsndfile then judges the file).
    """
    file_size = os.path.getsize(path)
    with open(path, "rb") as handle:
        try:
            return _container_data_end(handle, file_size)
        except (struct.error, ValueError, IndexError):
            return None


def _container_data_end(handle: BinaryIO, file_size: int) -> int | None:
    """`declared_data_end` of an open file, by the container its magic bytes name."""
    head = handle.read(16)
    magic, form = head[:4], head[8:12]
    if magic in (b"RIFF", b"RF64", b"BW64") and form == b"WAVE":
        return _chunked_data_end(handle, _RIFF, file_size)
    if magic == b"RIFX" and form == b"WAVE":
        return _chunked_data_end(handle, _RIFX, file_size)
    if magic == b"riff" and head[4:16] == _WAVE64_RIFF_GUID_TAIL:
        return _chunked_data_end(handle, _WAVE64, file_size)
    if magic == b"FORM" and form in (b"AIFF", b"AIFC", b"8SVX", b"16SV"):
        return _chunked_data_end(handle, _IFF, file_size)
    if magic == b"caff":
        return _chunked_data_end(handle, _CAF, file_size)
    if magic in (b".snd", b"dns."):
        return _au_data_end(head)
    if head[:8] == b"NIST_1A\n":
        return _nist_data_end(handle)
    if magic == b"OggS":
        return _ogg_data_end(handle, file_size)
    return None
