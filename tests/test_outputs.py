"""A small output travels in its task's result to a dependent on a rig without the file."""
from __future__ import annotations

import pytest

from llamarig.work import outputs
from llamarig.work.commands import DefinitionError


def test_a_small_output_is_carried_and_written_where_it_is_missing(tmp_path):
    produced = tmp_path / "a" / "output.srt"
    produced.parent.mkdir()
    produced.write_bytes(b"1\n00:00 --> 00:01\nhello\n")
    data = outputs.carry(str(produced))["output_data"]
    produced.unlink()  # as on another rig
    here = tmp_path / "b"
    here.mkdir()
    ctx = {"outputs": {"a": str(produced)}, "inputs": {"doc": str(produced), "lang": "en"}, "carried": {"a": data}}
    local = outputs.localize(ctx, here)
    assert local["outputs"]["a"] == local["inputs"]["doc"] == str(here / "inputs" / "a.srt")
    assert (here / "inputs" / "a.srt").read_bytes() == b"1\n00:00 --> 00:01\nhello\n" and local["inputs"]["lang"] == "en"


def test_a_present_output_is_used_where_it_is_and_a_large_missing_one_is_a_definition_error(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * (outputs.CARRY_BYTES + 1))
    assert outputs.carry(str(big)) == {}
    ctx = {"outputs": {"a": str(big)}, "inputs": {}, "carried": {}}
    assert outputs.localize(ctx, tmp_path) is ctx
    big.unlink()
    with pytest.raises(DefinitionError, match="too large to carry"):
        outputs.localize(ctx, tmp_path)
