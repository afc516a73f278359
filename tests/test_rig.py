"""Rig validation: the default rig loads; broken files name each bad field's path."""
import pytest
import yaml

from llamarig.shared.errors import RigError
from llamarig.shared.rig import load_rig

GOOD = {
    "gpus": {"source": "simulated", "simulated": [{"index": 0, "name": "g", "memory_mib": 6144},
                                                  {"index": 1, "name": "g", "memory_mib": 6144}]},
    "models": {"brain": {"path": "m.gguf", "gpus": [0, 1], "tensor_split": [1, 1], "port": 9001}},
}


def load(tmp_path, data) -> object:
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_rig(path)


def problems(tmp_path, data) -> list[str]:
    with pytest.raises(RigError) as e:
        load(tmp_path, data)
    return e.value.problems


def test_default_rig_mirrors_the_seed_rig():
    rig = load_rig("runtime/rig.yaml")
    assert [g.memory_mib for g in rig.gpus.simulated] == [6144] * 5
    assert rig.models["brain"].gpus == [0, 3] and rig.models["brain"].tensor_split == [1, 1]
    assert [rig.models[f"worker-{i}"].gpus for i in (1, 2, 3)] == [[1], [2], [4]]
    assert rig.whisper.gpus == [1, 2, 4] and not rig.models["brain"].may_switch
    assert {m.engine.value for m in rig.models.values()} == {"llama-server", "llama-cpp-python"}


def test_good_rig_loads(tmp_path):
    rig = load(tmp_path, GOOD)
    assert rig.resolve("m.gguf") == tmp_path / "m.gguf"


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["models"]["brain"].update(port=70000), "models.brain.port: Input should be less than or equal to 65535"),
    (lambda d: d["models"]["brain"].update(tensor_split=[1, 1, 1]), "models.brain: tensor_split has 3 entries for 2 GPUs"),
    (lambda d: d["models"]["brain"].update(gpus=[0, 7], tensor_split=None), "models.brain.gpus: GPU [7] not in gpus.simulated [0, 1]"),
    (lambda d: d["models"]["brain"].update(colour="red"), "models.brain.colour: unknown field"),
    (lambda d: d["models"]["brain"].update(gpu_layers=-2), "models.brain.gpu_layers: Input should be greater than or equal to -1"),
    (lambda d: d["models"]["brain"].pop("path"), "models.brain.path: Field required"),
    (lambda d: d["models"].update({"Bad Name": d["models"]["brain"]}), "models.Bad Name.[key]: String should match pattern"),
    (lambda d: d.update(api={"port": 9001}), "models.brain.port: port 9001 already used by api.port"),
    (lambda d: d.update(timeouts={"stop_s": 0}), "timeouts.stop_s: Input should be greater than 0"),
    (lambda d: d.update(whisper={"model_dir": "w", "gpu": 9, "port": 9100}), "whisper.gpu: GPU 9 not in gpus.simulated"),
    (lambda d: d["gpus"].update(source="cuda"), "gpus.source: Input should be 'auto', 'nvml' or 'simulated'"),
    (lambda d: d.update(work={"cpu_processes": 5, "concurrency": {"cpu": 4}}),
     "work: cpu_processes: 5 processes cannot share concurrency.cpu 4"),
    (lambda d: d.update(work={"cpu_processes": 3, "metrics_port_cpu": 9000}),
     "work.metrics_port_cpu (+1, cpu_processes): port 9001 already used by models.brain.port"),
])
def test_each_broken_field_is_named(tmp_path, change, expected):
    import copy

    data = copy.deepcopy(GOOD)
    change(data)
    assert any(p.startswith(expected) for p in problems(tmp_path, data)), problems(tmp_path, data)


def test_several_faults_are_all_reported(tmp_path):
    data = {**GOOD, "models": {"brain": {"path": "m", "gpus": [0], "port": 0, "context_size": 1}}}
    found = problems(tmp_path, data)
    assert {p.split(":")[0] for p in found} >= {"models.brain.port", "models.brain.context_size"}


def test_not_yaml_and_missing_file(tmp_path):
    (tmp_path / "rig.yaml").write_text("models: [unclosed")
    with pytest.raises(RigError) as e:
        load_rig(tmp_path / "rig.yaml")
    assert e.value.problems[0].startswith("(yaml):")
    with pytest.raises(RigError) as e:
        load_rig(tmp_path / "absent.yaml")
    assert "cannot read" in e.value.problems[0]


def test_cli_refuses_a_broken_rig_and_starts_nothing(tmp_path, capsys):
    from llamarig.cli import main

    (tmp_path / "rig.yaml").write_text(yaml.safe_dump({"models": {"x": {"path": "m"}}}))
    assert main(["--rig", str(tmp_path / "rig.yaml"), "launch", "x"]) == 2
    err = capsys.readouterr().err
    assert "rig_invalid" in err and "models.x.gpus: Field required" in err and "models.x.port: Field required" in err


def test_swap_port_is_claimed_like_any_port(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["models"]["brain"]["swap_port"] = 9001
    assert problems(tmp_path, data) == ["models.brain.swap_port: port 9001 already used by models.brain.port"]


def test_every_rig_field_is_documented_and_rig_doc_prints_it(capsys):
    from llamarig.cli import main
    from llamarig.shared.rig import field_docs

    rows = field_docs()
    assert {"models.<name>.port", "gpus.simulated[].memory_mib", "whisper.model_dir", "lifecycle.queue_size"} <= {
        path for path, _, _ in rows}
    assert [path for path, _, description in rows if not description] == []
    assert not any(path.startswith("source") for path, _, _ in rows)  # set by the loader
    assert main(["rig-doc"]) == 0
    out = capsys.readouterr().out
    assert "models.<name>.keep_alive_s  (default: -1)\n    Seconds idle before it is unloaded." in out
