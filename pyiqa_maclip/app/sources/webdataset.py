"""WebDataset shards: uncompressed ``.tar`` files holding samples as members ``<key>.<ext>``.

Shards are listed from their headers (the members' data is skipped, never extracted) and one
sample's image is read by its offset and size in the shard. A sample's key is webdataset's
``__key__`` (:func:`sample_key`); its source is the shard's absolute path (:func:`shard_name`).
A sample without an image member, or one cut short by the end of a truncated shard, is still a
sample: reading it fails with the reason, which the errors output shows with its key.
"""
from __future__ import annotations

import mmap
import os
import re
import struct
import tarfile
from collections.abc import Iterable
from typing import NamedTuple

from ...errors import UserError
from . import Sample

__all__ = ['IMAGE_MEMBERS', 'sample_key', 'shard_name', 'shard_samples', 'collect', 'read']

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


def _members(shard: str) -> list[_Member]:
    """The regular files of ``shard`` (name, data offset, size), in order, from their headers alone:
    scanned in place (fast), or by tarfile where a header needs it."""
    with open(shard, 'rb') as file:
        length = os.fstat(file.fileno()).st_size
        if length:
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as archive:
                scanned = _scanned(archive, length)
            if scanned is not None:
                return scanned
    with tarfile.open(shard, 'r:') as archive:
        return [_Member(m.name, m.offset_data, m.size) for m in archive if m.isfile()]


def shard_samples(shard: str, image_member: str | None = None) -> list[Sample]:
    """The samples of one shard, in shard order, each with its image's offset and size (or the reason
    it has none)."""
    source, size = shard_name(shard), os.path.getsize(shard)
    found: dict[str, dict[str, _Member]] = {}
    problem = None
    try:
        for member in _members(shard):
            if split := sample_key(member.name):
                if (members := found.get(split[0])) is None:
                    found[split[0]] = {split[1]: member}
                else:
                    members.setdefault(split[1], member)
    except (tarfile.TarError, OSError) as error:  # damaged from here on: what came before is kept
        problem = f'the shard is damaged after its first {len(found)} samples: {error}'
    wanted = (image_member.lower().lstrip('.'),) if image_member else IMAGE_MEMBERS
    samples = []
    for key, members in found.items():
        for extension in wanted:
            if (member := members.get(extension)) is not None:
                break
        else:
            reason = f'no image member ({", ".join("." + e for e in wanted)}); it has {", ".join(sorted(members))}'
            samples.append(Sample(source, key, ('webdataset', source, None, reason)))
            continue
        if member.offset_data + member.size > size:
            reason = f'the shard ends inside {member.name} (a truncated shard)'
            samples.append(Sample(source, key, ('webdataset', source, None, reason)))
        else:
            samples.append(Sample(source, key, ('webdataset', source, member.offset_data, member.size)))
    if problem is not None or not samples:
        samples.append(Sample(source, '', ('webdataset', source, None, problem or 'the shard holds no samples')))
    return samples


def collect(inputs: Iterable[str], image_member: str | None = None) -> list[Sample]:
    samples = []
    for shard in inputs:
        if not os.path.isfile(shard):
            raise UserError(f'{shard!r} does not exist: expected a WebDataset .tar shard')
        samples += shard_samples(shard, image_member)
    return samples


def read(locator: tuple) -> bytes:
    """The image bytes of a sample: ``('webdataset', shard, offset, size)``, or (shard, None, reason)."""
    _, shard, offset, size = locator
    if offset is None:
        raise ValueError(size)
    with open(shard, 'rb') as file:
        file.seek(offset)
        data = file.read(size)
    if len(data) != size:
        raise ValueError(f'the shard ends {size - len(data)} bytes short of the image member')
    return data
