"""WebDataset shards: tar files holding samples as members ``<key>.<ext>``, plain or gzip-compressed.

Shards are listed from their headers (the members' data is skipped, never extracted) and one
sample's image is read by its offset and size in the shard. A gzip-compressed shard (told by its
content, whatever its name) is decompressed as a stream: listing reads through it once, and its
offsets are those of the uncompressed tar; reads go forward through one cached stream per process
(:class:`_ForwardReader`), as the engine reads a shard's samples in order. A sample's key is
webdataset's ``__key__`` (:func:`sample_key`); its source is the shard's absolute path
(:func:`shard_name`). A sample without an image member, or one cut short by the end of a truncated
shard (or of damaged gzip data), is still a sample: reading it fails with the reason, which the
errors output shows with its key.
"""
from __future__ import annotations

import gzip
import mmap
import os
import re
import struct
import tarfile
import zlib
from collections.abc import Iterable
from typing import NamedTuple

from ...errors import error_text
from ..files import shown
from . import SHARD_SUFFIXES, Sample, check_file

__all__ = ['IMAGE_MEMBERS', 'listed_again', 'sample_key', 'shard_name', 'compressed',
           'shard_samples', 'collect', 'read']

#: The image member of a sample, when ``--image-member`` names none: the first of these present.
IMAGE_MEMBERS = ('jpg', 'jpeg', 'png', 'webp')
_KEY_AND_EXTENSION = re.compile(r'^((?:.*/|)[^.]+)[.]([^/]*)$')  # webdataset's base_plus_ext


def sample_key(member_name: str) -> tuple[str, str] | None:
    """``'a/b/000123.jpg'`` -> ``('a/b/000123', 'jpg')``: webdataset's ``__key__`` (the name up to the
    first dot of its last part, folders kept) and the extension, lower-cased; None for a name
    without one (webdataset skips those)."""
    start = member_name.rfind('/') + 1
    dot = member_name.find('.', start)
    if dot > start:  # the usual case, without a regular expression (a million names are listed in seconds)
        return member_name[:dot], member_name[dot + 1:].lower()
    match = _KEY_AND_EXTENSION.match(member_name)
    return None if match is None else (match[1], match[2].lower())


def shard_name(path: str | os.PathLike) -> str:
    """A shard's source: its path as given, made absolute."""
    return os.path.abspath(os.fsdecode(path))


class _Member(NamedTuple):
    name: str
    offset_data: int
    size: int


_BLOCK = 512
_END_BLOCK = bytes(_BLOCK)
# A ustar header's name, size, type flag, magic and prefix fields (offsets 0, 124, 156, 257, 345).
_HEADER = struct.Struct('100s24x12s20xc100x5s83x155s')
_FILE_TYPES = (b'0', b'\0', b'7')  # regular (and contiguous) files; directories and links are skipped
_SKIPPED_TYPES = (b'1', b'2', b'3', b'4', b'5', b'6')


def _scanned(archive: mmap.mmap, length: int) -> list[_Member] | None:
    """The regular files of a plain ustar/GNU tar, read from their headers in place; None as soon as a
    header needs tarfile (no ustar magic, long names, pax headers, base-256 sizes)."""
    members, position, unpack = [], 0, _HEADER.unpack_from
    while position + _BLOCK <= length:
        name, size, kind, magic, prefix = unpack(archive, position)
        if magic != b'ustar':
            if archive[position:position + _BLOCK] == _END_BLOCK:
                break  # the end-of-archive blocks
            return None
        if size[0] & 0x80 or (kind not in _FILE_TYPES and kind not in _SKIPPED_TYPES):
            return None
        size = int(size.partition(b'\0')[0] or b'0', 8)
        if kind in _FILE_TYPES:
            name = name.partition(b'\0')[0]
            if prefix[0]:
                name = prefix.partition(b'\0')[0] + b'/' + name
            members.append(_Member(name.decode('utf-8', 'surrogateescape'), position + _BLOCK, size))
        position += _BLOCK + (size + _BLOCK - 1) // _BLOCK * _BLOCK
    return members


_GZIP_MAGIC = b'\x1f\x8b'
# What damaged gzip data raises while it is decompressed (BadGzipFile is an OSError).
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


def _is_gzip(file) -> bool:
    file.seek(0)
    compressed = file.read(2) == _GZIP_MAGIC
    file.seek(0)
    return compressed


def compressed(shard: str) -> bool:
    """Whether ``shard`` holds gzip data (whatever its name says)."""
    with open(shard, 'rb') as file:
        return _is_gzip(file)


def _members(shard: str) -> tuple[list[_Member], int, BaseException | None]:
    """The regular files of ``shard`` (name, data offset, size), in order, from their headers alone;
    how many bytes of the (uncompressed) tar were read whole; and the error that stopped the listing
    early, if any (the members before it are kept)."""
    with open(shard, 'rb') as file:
        if _is_gzip(file):
            return _stream_members(file)
        length = os.fstat(file.fileno()).st_size
        if length:
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as archive:
                if hasattr(mmap, 'MADV_RANDOM'):  # no read-ahead: from disk, only the headers' pages are read
                    archive.madvise(mmap.MADV_RANDOM)
                scanned = _scanned(archive, length)
            if scanned is not None:
                return scanned, length, None
        if not length:
            return [], 0, ValueError('the file is empty (0 bytes)')
        members = []
        try:
            with tarfile.open(shard, 'r:') as archive:
                members += (_Member(m.name, m.offset_data, m.size) for m in archive if m.isfile())
        except tarfile.TarError as error:
            return members, length, error
        return members, length, None


def _stream_members(file) -> tuple[list[_Member], int, BaseException | None]:
    """:func:`_members` of a gzip-compressed shard, decompressed once as a stream: the members' data
    is read through in tarfile's buffer-sized blocks, so memory does not grow with the shard."""
    members = []
    with gzip.GzipFile(fileobj=file, mode='rb') as stream:
        salvaged = _Salvaging(stream)
        try:
            with tarfile.open(fileobj=salvaged, mode='r|') as archive:
                while (member := archive.next()) is not None:
                    archive.members.clear()  # tarfile keeps every header it read; a stream never goes back
                    if member.isfile():
                        members.append(_Member(member.name, member.offset_data, member.size))
            while salvaged.read(1 << 16):  # to the end: the gzip trailer holds the CRC
                pass
        except tarfile.TarError as error:
            return members, salvaged.length, salvaged.error or error
        return members, salvaged.length, salvaged.error


class _Salvaging:
    """A gzip stream that ends quietly where its data is damaged (truncated, corrupt), keeping the
    error and how many bytes came out whole: tarfile then lists what came before, as from a truncated tar."""

    def __init__(self, stream: gzip.GzipFile) -> None:
        self.stream, self.length, self.error = stream, 0, None

    def read(self, size: int) -> bytes:
        if self.error is not None:
            return b''
        try:
            data = self.stream.read1(size)  # what one decompression step gives: an error loses none of it
        except _GZIP_ERRORS as error:
            self.error, data = error, b''
        self.length += len(data)
        return data


def _grouped(shard: str) -> tuple[dict[str, dict[str, _Member]], int, BaseException | None]:
    """The members of ``shard`` by sample key and extension (the first of each), the size of the tar, and
    the error that cut the listing short (None)."""
    try:
        listed, whole, error = _members(shard)
    except OSError as unreadable:  # permissions, I/O: the shard's one error row says why
        listed, whole, error = [], 0, unreadable
    found: dict[str, dict[str, _Member]] = {}
    for member in listed:
        if split := sample_key(member.name):
            if (members := found.get(split[0])) is None:
                found[split[0]] = {split[1]: member}
            else:
                members.setdefault(split[1], member)
    return found, whole, error


def shard_samples(shard: str, image_member: str | None = None) -> list[Sample]:
    """The samples of one shard, in shard order, each with its image's offset and size (or the reason
    it has none)."""
    wanted = (image_member.lower().lstrip('.'),) if image_member else IMAGE_MEMBERS
    return _samples(shard, *_grouped(shard), wanted)


def _samples(shard: str, found: dict[str, dict[str, _Member]], whole: int, error: BaseException | None,
             wanted: tuple[str, ...]) -> list[Sample]:
    source, samples = shard_name(shard), []
    for key, members in found.items():
        for extension in wanted:
            if (member := members.get(extension)) is not None:
                break
        else:
            reason = f'no image member ({", ".join("." + e for e in wanted)}); it has {", ".join(sorted(members))}'
            samples.append(Sample(source, key, ('webdataset', source, None, reason)))
            continue
        if member.offset_data + member.size > whole:
            reason = f'the shard ends inside {member.name} (a truncated shard, or damaged gzip data)'
            samples.append(Sample(source, key, ('webdataset', source, None, reason)))
        else:
            samples.append(Sample(source, key, ('webdataset', source, member.offset_data, member.size)))
    if error is not None or not samples:
        where = f'after its first {len(found)} samples' if found else 'before its first sample'
        problem = 'the shard holds no samples' if error is None else \
            f'the shard {shown(os.path.basename(shard))} is damaged {where}: {error_text(error)}'
        samples.append(Sample(source, '', ('webdataset', source, None, problem)))
    return samples


def listed_again(shard: str) -> tuple[dict[str, Sample], set[tuple[str, int, int]]]:
    """What a report without its run's records can trust of ``shard``, from one pass over it: the samples
    holding exactly one member with an image file's extension (any format PIL opens: whichever
    ``--image-member`` a run gave, that member is the image it read), by key; and the key, data offset
    and size of every member held whole now (a locator stored earlier still names its sample's image if
    it is among them: a shard rewritten since holds other bytes there)."""
    from ..inputs import image_extensions

    images = {extension.lstrip('.') for extension in image_extensions()}
    found, whole, error = _grouped(shard)
    places = {(key, m.offset_data, m.size) for key, members in found.items() for m in members.values()
              if m.offset_data + m.size <= whole}
    single = {key: members for key, members in found.items() if sum(e in images for e in members) == 1}
    samples = _samples(shard, single, whole, None, IMAGE_MEMBERS)
    return {s.key: s for s in samples if s.key in single}, places


def collect(inputs: Iterable[str], image_member: str | None = None) -> list[Sample]:
    samples = []
    for shard in inputs:
        check_file(shard, f'a WebDataset shard ({", ".join(SHARD_SUFFIXES)})')
        samples += shard_samples(shard, image_member)
    return samples


def read(locator: tuple) -> bytes:
    """The image bytes of a sample: ``('webdataset', shard, offset, size)``, or (shard, None, reason)."""
    _, shard, offset, size = locator
    if offset is None:
        raise ValueError(size)
    with open(shard, 'rb') as file:
        if _is_gzip(file):
            data = _forward_reader(shard, os.fstat(file.fileno())).read(offset, size)
        else:
            file.seek(offset)
            data = file.read(size)
    if len(data) != size:
        raise ValueError(f'the shard ends {size - len(data)} bytes short of the image member')
    return data


class _ForwardReader:
    """A gzip-compressed shard decompressed from its start and left where the last read ended: the next
    sample in shard order costs only the bytes up to it; a read behind the position starts over
    (``GzipFile.seek`` rewinds). Damaged data fails every read that reaches it, at once."""

    def __init__(self, shard: str, identity: tuple) -> None:
        self.shard, self.identity, self.stream, self.damage = shard, identity, None, None

    def read(self, offset: int, size: int) -> bytes:
        if self.damage is not None and offset + size > self.damage[0]:
            raise ValueError(self.damage[1])
        if self.stream is None:
            self.stream = gzip.open(self.shard, 'rb')
        try:
            self.stream.seek(offset)  # forward: decompresses through the members in between
            return self.stream.read(size)
        except _GZIP_ERRORS as error:
            self.close()
            self.damage = (offset, (f'the gzip data of the shard {shown(os.path.basename(self.shard))} is '
                                    f'damaged before this sample ends: {error_text(error)}'))
            raise ValueError(self.damage[1]) from None

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


_reader: _ForwardReader | None = None  # this process's, for the shard it read last


def _forward_reader(shard: str, status: os.stat_result) -> _ForwardReader:
    """This process's reader of ``shard``: the cached one, unless the shard is another file now."""
    global _reader
    identity = (shard, status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    if _reader is None or _reader.identity != identity:
        if _reader is not None:
            _reader.close()
        _reader = _ForwardReader(shard, identity)
    return _reader


def _forget_reader_in_child() -> None:
    """A forked child drops the parent's reader unread: their open file shares its offset with the parent's."""
    global _reader
    _reader = None


os.register_at_fork(after_in_child=_forget_reader_in_child)
