"""Atomic writes (recbole_reveal/infra/files.py): a reader never sees half a file, a failed write leaves the old
file whole and no temporary file behind."""

import os
import threading

import pytest

from recbole_reveal.infra.files import atomic_open, atomic_path, write_json_atomic

OLD, NEW = b"old content\n" * 1000, b"new content\n" * 2000


def _write(path, data):
    with atomic_open(path, "wb") as f:
        f.write(data)


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def test_a_reader_sees_the_old_file_whole_until_the_new_one_is_complete(tmp_path):
    path = tmp_path / "table.bin"
    path.write_bytes(OLD)
    with atomic_open(str(path), "wb") as f:
        f.write(NEW[:len(NEW) // 2])
        f.flush()
        assert path.read_bytes() == OLD                  # half written: the reader still sees the old file
        f.write(NEW[len(NEW) // 2:])
        assert path.read_bytes() == OLD
    assert path.read_bytes() == NEW and _leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    path = tmp_path / "stages.json"
    write_json_atomic(str(path), {"stages": ["init"]})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(str(path), {"stages": ["init", object()]})    # json fails half-way through
    with pytest.raises(RuntimeError):
        with atomic_path(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write('{"stages": [')
            raise RuntimeError("killed")
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_concurrent_readers_only_ever_see_complete_versions(tmp_path):
    """A writer replacing the file many times while a reader reads it: every read is one whole version."""
    path = str(tmp_path / "features.bin")
    versions = [bytes([v]) * (256 * 1024) for v in range(1, 21)]
    _write(path, versions[0])
    done, seen = threading.Event(), []

    def read():
        while not done.is_set():
            with open(path, "rb") as f:
                seen.append(f.read())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for v in versions[1:]:
            _write(path, v)
    finally:
        done.set()
        reader.join()
    assert seen and all(s in versions for s in seen)
    assert _leftovers(tmp_path) == []
