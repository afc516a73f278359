"""A task's output reaches a dependent on a rig without the file by reference: served by the
compute API of the rig that made it, whatever its size (tests/test_work.py serves one); bytes a
result of an older release carried are still written where missing."""
from __future__ import annotations

import asyncio

import pytest

from llamarig.shared.verify import hash_file
from llamarig.work import outputs
from llamarig.work.commands import DefinitionError


async def _no_fetch(url, dest, sha256):
    raise AssertionError("nothing should be fetched")


def _attempt(root) -> object:
    folder = root / "plans" / "p-20261130-000000-abcdef" / "tasks" / "a" / "attempt-2"
    folder.mkdir(parents=True)
    return folder


@pytest.mark.parametrize("size", [0, 24, outputs.HASH_INLINE_BYTES, outputs.HASH_INLINE_BYTES + 1, 3 * 2**20])
def test_an_output_of_any_size_is_named_never_carried(tmp_path, size):
    folder = _attempt(tmp_path)
    produced = folder / "output.srt"
    produced.write_bytes(b"x" * size)
    said = asyncio.run(outputs.carry(str(produced), folder, "http://rig-a:8000"))
    assert said == {"output_url": "http://rig-a:8000/admin/work/outputs/p-20261130-000000-abcdef/a/attempt-2/output.srt",
                    "output_sha256": hash_file(produced)}  # the same size in a result, whatever the file's


def test_bytes_an_older_release_carried_are_written_where_missing(tmp_path):
    import base64

    produced = tmp_path / "a" / "output.srt"  # on the rig that ran it, not here
    data = base64.b64encode(b"1\n00:00 --> 00:01\nhello\n").decode()
    here = tmp_path / "b"
    here.mkdir()
    ctx = {"outputs": {"a": str(produced)}, "inputs": {"doc": str(produced), "lang": "en"}, "carried": {"a": data}}
    local = asyncio.run(outputs.localize(ctx, here, _no_fetch))
    assert local["outputs"]["a"] == local["inputs"]["doc"] == str(here / "inputs" / "a.srt")
    assert (here / "inputs" / "a.srt").read_bytes() == b"1\n00:00 --> 00:01\nhello\n" and local["inputs"]["lang"] == "en"


def test_a_large_output_is_served_with_its_sha256_and_fetched_where_it_is_missing(tmp_path):
    folder = _attempt(tmp_path)
    big = folder / "output"
    big.write_bytes(b"x" * (outputs.HASH_INLINE_BYTES + 1))
    said = asyncio.run(outputs.carry(str(big), folder, "http://rig-a:8000"))
    assert said == {"output_url": "http://rig-a:8000/admin/work/outputs/p-20261130-000000-abcdef/a/attempt-2/output",
                    "output_sha256": hash_file(big)}
    ctx = {"outputs": {"a": str(big)}, "inputs": {}, "carried": {}, "served": {"a": {"url": said["output_url"],
                                                                                    "sha256": said["output_sha256"]}}}
    assert asyncio.run(outputs.localize(ctx, tmp_path, _no_fetch)) is ctx  # present: used where it is
    big.unlink()
    fetched = []

    async def fetch(url, dest, sha256):
        fetched.append((url, sha256))
        dest.write_bytes(b"from rig a")
    local = asyncio.run(outputs.localize(ctx, tmp_path, fetch))
    assert fetched == [(said["output_url"], said["output_sha256"])]
    assert open(local["outputs"]["a"], "rb").read() == b"from rig a"


def test_an_output_neither_carried_nor_served_is_a_definition_error(tmp_path):
    ctx = {"outputs": {"a": str(tmp_path / "nowhere" / "output")}, "inputs": {}, "carried": {}}
    with pytest.raises(DefinitionError, match="neither carried nor served"):
        asyncio.run(outputs.localize(ctx, tmp_path, _no_fetch))


def test_only_an_attempts_own_output_files_are_offered(tmp_path):
    folder = _attempt(tmp_path)
    elsewhere = tmp_path / "output"
    elsewhere.write_bytes(b"y" * (outputs.HASH_INLINE_BYTES + 1))
    assert asyncio.run(outputs.carry(str(elsewhere), folder, "http://rig-a:8000")) == {}
    assert asyncio.run(outputs.carry(None, folder, "http://rig-a:8000")) == {}
