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


def _with_variation(**v) -> dict:
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg["variations"] = {"v": v}
    return cfg


def test_a_variation_merges_its_overrides_and_scales():
    cfg = params.validate(_with_variation(table="paper_ablation", set={"finetune": {"tqm": False}}))
    v = params.variation(cfg, "v")
    assert v["finetune"]["tqm"] is False and cfg["finetune"]["tqm"] is True and "variations" not in v
    cfg = params.validate(_with_variation(table="convergence", scale={"finetune.steps": 3}, inits=["scratch"]))
    assert params.variation(cfg, "v")["finetune"]["steps"] == 3 * cfg["finetune"]["steps"]
    assert cfg["variations"]["v"]["tasks"] == ["semseg"] and cfg["variations"]["v"]["label_fractions"] is None


@pytest.mark.parametrize("variation, message", [
    ({"table": "paper_ablation", "set": {"finetune": {"tqmm": False}}},
     "params.yaml: variations.v.set: finetune.tqmm: unknown key"),
    ({"table": "paper_ablation", "set": {"finetune": {"seeds": [5]}}},
     "params.yaml: variations.v: finetune.seeds: a variation cannot change the dataset or the lists of jobs"),
    ({"table": "paper_ablation", "set": {"data": {"source": "scannet"}}},
     "params.yaml: variations.v: data.source: a variation cannot change the dataset or the lists of jobs"),
    ({"table": "convergence", "scale": {"clip.model": 2}},
     "params.yaml: variations.v.scale: clip.model: expected a numeric param, got 't4p-tiny'"),
    ({"table": "paper_ablation", "inits": ["scratch", "mystery"]},
     "params.yaml: variations.v.inits.1: expected one of ['scratch', 'text4point', 'image_contrast', 'pointcontrast']"),
    ({"table": "paper_ablation", "label_fractions": [0.5]},
     "params.yaml: variations.v.label_fractions: 0.5 is not in finetune.label_fractions"),
    ({"set": {}}, "params.yaml: variations.v.table: missing; it is required"),
])
def test_a_bad_variation_is_one_line(variation, message):
    with pytest.raises(InputError) as e:
        params.validate(_with_variation(**variation))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_variation_reruns_the_rules_its_params_change_and_what_reads_them():
    from text4point import dag

    def varied(**v):
        return dag.varied_rules(params.validate(_with_variation(**v)), "v")

    assert varied(table="paper_ablation", set={"finetune": {"tqm": False}}) == {"finetune"}
    assert varied(table="paper_ablation", set={"pretrain": {"loss_weights": {"decoder": 0.0}}}) == {
        "pretrain", "finetune"}
    assert varied(table="teacher", set={"clip": {"bootstrap": {"epochs": 3}}}) == {
        "clip_bootstrap", "clip_features", "pretrain", "finetune"}
    assert varied(table="paper_ablation", set={"correspondences": {"overlap_threshold": 0.5}}) == {
        "correspondences", "pretrain", "finetune"}


def test_the_shipped_overlays_validate_on_top_of_params_yaml():
    """configs/*.yaml are read as Snakemake reads them (--configfile: merged over params.yaml, then validated)."""
    from text4point.params import _merge, read_file, validate

    root = ROOT
    base = read_file(root / "params.yaml")
    scannet = validate(_merge(base, read_file(root / "configs" / "scannet.yaml")), source="configs/scannet.yaml")
    assert scannet["data"]["source"] == "scannet" and scannet["clip"]["model"] == "ViT-B-16"
    assert scannet["correspondences"]["voxel_size"] == 0.025 and scannet["finetune"]["steps"] == 20000
    conv = validate(_merge(base, read_file(root / "configs" / "convergence.yaml")), source="configs/convergence.yaml")
    assert set(conv["variations"]) == set(base["variations"]) | {"steps_x3"}
    assert conv["variations"]["steps_x3"]["scale"] == {"finetune.steps": 3}
    cross = validate(_merge(base, read_file(root / "configs" / "cross_frame.yaml")), source="configs/cross_frame.yaml")
    assert set(cross["variations"]) == set(base["variations"]) | {"cross_frame"}
    assert cross["variations"]["cross_frame"]["set"] == {"pretrain": {"cross_frame": True}}
    assert cross["pretrain"]["cross_frame"] is False  # the overlay varies it; the default stays as measured
    long = validate(_merge(base, read_file(root / "configs" / "long.yaml")), source="configs/long.yaml")
    assert long["finetune"]["steps"] == 900 and long["finetune"]["seeds"] == base["finetune"]["seeds"]
    assert long["finetune"]["batch_size"] == 16 and base["finetune"]["batch_size"] == 12  # long: as measured
    both = validate(_merge(long, read_file(root / "configs" / "convergence.yaml")), source="configs/convergence.yaml")
    assert params.variation(both, "steps_x3")["finetune"]["steps"] == 2700
