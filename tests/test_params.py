import copy
import subprocess
import sys

import pytest
import yaml

from text4point import params
from text4point.errors import InputError

from conftest import ROOT, TINY


def test_default_and_tiny_params_are_valid():
    cfg = params.load(ROOT / "params.yaml")
    assert cfg["data"]["source"] == "world"
    assert cfg["data"]["world"]["scenes"] == {"clip": 24, "train": 16, "val": 8}
    tiny = params.load(TINY)
    # defaults from the schema are filled in where the file is silent
    assert tiny["data"]["world"]["room_size"] == [[3.5, 5.0], [3.0, 4.5], [2.5, 2.8]]
    assert tiny["data"]["scannet"]["frame_skip"] == 10 and tiny["data"]["scannet"]["path"] is None
    assert tiny["correspondences"]["overlap_threshold"] == 0.3


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["data"]["world"].update(frames_per_scen=3),
     "params.yaml: data.world.frames_per_scen: unknown key; expected one of the known keys"),
    (lambda c: c["data"]["world"].update(frames_per_scene="many"),
     "params.yaml: data.world.frames_per_scene: expected a value of type integer, got 'many'"),
    (lambda c: c["data"]["world"].update(frames_per_scene=1),
     "params.yaml: data.world.frames_per_scene: expected a value >= 2 and <= 5000, got 1"),
    (lambda c: c["data"].update(source="scanet"),
     "params.yaml: data.source: expected one of ['world', 'scannet', 's3dis', 'sunrgbd'], got 'scanet'"),
    (lambda c: c["correspondences"].update(overlap_threshold=1.5),
     "params.yaml: correspondences.overlap_threshold: expected a value >= 0.0 and <= 1.0, got 1.5"),
    (lambda c: c.pop("clip"), "params.yaml: clip: missing; it is required"),
])
def test_bad_params_give_one_line_naming_the_key(mutate, message):
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(cfg)
    with pytest.raises(InputError) as e:
        params.validate(cfg)
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith(message), text


def test_unknown_key_lists_allowed_keys():
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg["pretrain"]["epoch"] = 3
    with pytest.raises(InputError, match=r"pretrain.epoch: unknown key; expected one of the known keys \[") as e:
        params.validate(cfg)
    assert "'epochs'" in str(e.value) and "'backbone'" in str(e.value) and "\n" not in str(e.value)


def test_sections_json_is_validated_section_by_section():
    cfg = params.from_json('{"seed": 3, "data": {"source": "world"}}')
    assert cfg["seed"] == 3 and cfg["data"]["world"]["frames_per_scene"] == 30  # default filled
    with pytest.raises(InputError, match="--params-json: seed: expected a value >= 0"):
        params.from_json('{"seed": -3}')


def test_params_hash_is_stable_and_sensitive():
    a = params.load(TINY)
    b = copy.deepcopy(a)
    assert params.params_hash(a) == params.params_hash(b)
    b["data"]["world"]["frames_per_scene"] += 1
    assert params.params_hash(a) != params.params_hash(b)


def test_cli_reports_bad_params_in_one_line(tmp_path):
    bad = yaml.safe_load(TINY.read_text())
    bad["data"]["world"]["color_size"] = [96]
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(bad))
    r = subprocess.run([sys.executable, "-m", "text4point.cli", "validate-params", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith(f"error: {p}: data.world.color_size: expected a list of 2 to 2 items")
