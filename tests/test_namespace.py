"""The embedded engine's namespace, one per run folder (work/namespace.py): chosen once, agreed on
by programs that start at once, kept for a database an older release made."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from llamarig.shared.errors import LlamarigError
from llamarig.shared.work_config import WorkConfig
from llamarig.work import namespace


def _rig(run_dir, **work) -> SimpleNamespace:
    return SimpleNamespace(run_dir=run_dir, work=WorkConfig(**work))


def test_a_new_run_folder_gets_its_own_name_and_keeps_it(tmp_path):
    first = namespace.of_rig(_rig(tmp_path / "a"))
    assert re.fullmatch(r"llamarig-[0-9a-f]{8}", first) and namespace.of_rig(_rig(tmp_path / "a")) == first
    assert namespace.of_rig(_rig(tmp_path / "b")) != first  # two rigs, two namespaces


def test_programs_starting_at_once_agree(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        names = set(pool.map(lambda _: namespace.of_rig(_rig(tmp_path)), range(32)))
    assert len(names) == 1 and not list(tmp_path.glob("*.tmp"))


def test_a_database_an_older_release_made_keeps_the_configured_name(tmp_path):
    (tmp_path / "temporal.db").write_bytes(b"")
    assert namespace.of_rig(_rig(tmp_path, embedded={"namespace": "mine"})) == "mine"


def test_a_cluster_uses_its_configured_namespace_and_writes_nothing(tmp_path):
    rig = _rig(tmp_path, temporal="cluster", cluster={"address": "t:7233", "namespace": "shared"})
    assert namespace.of_rig(rig) == "shared" and not namespace.path(tmp_path).exists()


def test_a_damaged_file_is_refused_saying_what_to_do(tmp_path):
    namespace.path(tmp_path).write_text("not a name!\n")
    with pytest.raises(LlamarigError, match="restore it from a backup"):
        namespace.of_rig(_rig(tmp_path))
