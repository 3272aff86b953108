"""params.yaml: loading, validation against workflow/schemas/params.schema.yaml, defaults, hashing.

Validation errors are one line naming the key and what is allowed, e.g.
``params.yaml: data.world.frames_per_scene: expected an integer >= 2, got 0``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import InputError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "params.schema.yaml"


@lru_cache(maxsize=1)
def schema() -> dict:
    """The params schema, with the enums of task, variant and initialisation names filled from the package's
    registries (:mod:`text4point.names`), so that the YAML does not restate them."""
    from .names import INITS, VARIANTS, task_names

    sch = yaml.safe_load(SCHEMA_PATH.read_text())
    props = sch["properties"]
    props["pretrain"]["properties"]["variants"]["items"]["enum"] = list(VARIANTS)
    props["finetune"]["properties"]["tasks"]["items"]["enum"] = list(task_names())
    props["finetune"]["properties"]["inits"]["items"]["enum"] = list(INITS)
    var = props["variations"]["additionalProperties"]["properties"]
    var["tasks"]["items"]["enum"] = list(task_names())
    var["inits"]["items"]["enum"] = list(INITS)
    return sch


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _allowed(err: jsonschema.ValidationError) -> str:
    s, v = err.schema, err.validator
    if v == "additionalProperties":
        allowed = sorted(s.get("properties", {}))
        return f"one of the known keys {allowed}"
    if v == "enum":
        return f"one of {s['enum']}"
    if v == "type":
        t = s["type"]
        return "a value of type " + (" or ".join(t) if isinstance(t, list) else t)
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        parts = []
        for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if k in s:
                parts.append(f"{op} {s[k]}")
        return "a value " + " and ".join(parts)
    if v in ("minItems", "maxItems"):
        return f"a list of {s.get('minItems', 0)} to {s.get('maxItems', 'any number of')} items"
    if v == "required":
        return f"the keys {s['required']}"
    if v == "uniqueItems":
        return "a list without repeated items"
    if v == "pattern":
        return f"a string matching {s['pattern']}"
    if v == "minLength":
        return "a non-empty string"
    return f"a value satisfying '{v}: {err.validator_value}'"


class ParamsError(InputError):
    """A params file that does not validate; ``key`` is the dotted key it names (to tell which file set it)."""

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key


def _one_line(err: jsonschema.ValidationError, source: str) -> ParamsError:
    path = list(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        key = _key(path + [extra[0]]) if extra else _key(path)
        return ParamsError(f"{source}: {key}: unknown key; expected {_allowed(err)}", key)
    if err.validator == "required":
        missing = [k for k in err.schema["required"] if k not in err.instance]
        key = _key(path + missing[:1])
        return ParamsError(f"{source}: {key}: missing; it is required", key)
    return ParamsError(f"{source}: {_key(path)}: expected {_allowed(err)}, got {err.instance!r}", _key(path))


def _fill_defaults(node: dict, sch: dict, create_sections: bool = True) -> None:
    """Fill schema defaults in place; missing sub-sections are created and filled as well."""
    for key, sub in sch.get("properties", {}).items():
        if key not in node:
            if "default" in sub:
                node[key] = copy.deepcopy(sub["default"])
            elif sub.get("type") == "object" and create_sections:
                node[key] = {}
        if isinstance(node.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(node[key], sub)


def validate(cfg: dict, source: str = "params.yaml", sections_only: bool = False) -> dict:
    """Validate ``cfg`` and return a copy with schema defaults filled in.

    ``sections_only``: ``cfg`` holds only some top-level sections (as Snakemake passes a rule the
    sections it reads); each present section is validated, missing ones are not required.
    """
    if not isinstance(cfg, dict):
        raise InputError(f"{source}: expected a mapping of parameter sections, got {type(cfg).__name__}")
    cfg = copy.deepcopy(cfg)
    sch = schema()
    if sections_only:
        sch = dict(sch, required=[])
    errors = sorted(jsonschema.Draft202012Validator(sch).iter_errors(cfg),
                    key=lambda e: (len(list(e.absolute_path)), list(map(str, e.absolute_path))))
    if errors:
        # The deepest, most specific error names the offending key best; report the first one.
        deepest = max(errors, key=lambda e: len(list(e.absolute_path)))
        raise _one_line(deepest, source)
    _fill_defaults(cfg, sch, create_sections=not sections_only)
    if not sections_only:
        _check_jobs(cfg, source)
    for name, v in (cfg.get("variations") or {}).items():
        _fill_defaults(v, sch["properties"]["variations"]["additionalProperties"])
        if not sections_only:
            variation(cfg, name, source)  # every variation must give valid params
    return cfg


def _check_jobs(cfg: dict, source: str) -> None:
    """Params that contradict each other: an initialisation whose pre-training variant is not run, pre-training on
    a dataset without RGB-D frames."""
    from .names import FRAME_SOURCES, SCRATCH

    data = cfg["data"]
    pre = data["pretrain_source"] or data["source"]
    if cfg["pretrain"]["variants"] and pre not in FRAME_SOURCES:
        key = "data.pretrain_source" if data["pretrain_source"] else "data.source"
        raise ParamsError(f"{source}: {key}: {pre} has no RGB-D frames to pre-train on; set data.pretrain_source to "
                          f"one of {list(FRAME_SOURCES)} (fine-tuning and evaluation stay on data.source) or "
                          f"pretrain.variants to []", key)

    variants = cfg["pretrain"]["variants"]
    lists = [("finetune.inits", cfg["finetune"]["inits"])]
    lists += [(f"variations.{n}.inits", v.get("inits") or []) for n, v in (cfg.get("variations") or {}).items()]
    for key, inits in lists:
        for init in inits:
            if init != SCRATCH and init not in variants:
                raise ParamsError(f"{source}: {key}: {init!r} starts from the {init} pre-training, but "
                                  f"pretrain.variants {variants} does not run it (add it there or drop the init)",
                                  key)


# keys a variation may not change: the dataset, and the lists that only say which jobs exist
FIXED_KEYS = ("data", "variations", "finetune.tasks", "finetune.inits", "finetune.seeds", "finetune.label_fractions",
              "pretrain.variants")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _paths(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _paths(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def variation(cfg: dict, name: str, source: str = "params.yaml") -> dict:
    """The params of variation ``name`` of the validated ``cfg``: its ``set`` merged in, its ``scale`` applied,
    validated again (one-line errors name ``variations.<name>``); without the ``variations`` section."""
    where = f"{source}: variations.{name}"
    try:
        v = cfg["variations"][name]
    except KeyError:
        raise InputError(f"{where}: unknown variation; expected one of {sorted(cfg.get('variations') or {})}") from None
    ft = cfg["finetune"]
    for key, values, allowed in (("tasks", v["tasks"], ft["tasks"]), ("inits", v["inits"], ft["inits"]),
                                 ("label_fractions", v["label_fractions"] or [], ft["label_fractions"])):
        extra = [x for x in values if x not in allowed]
        if extra:
            raise InputError(f"{where}.{key}: {extra[0]!r} is not in finetune.{key} {allowed}: the variation's jobs "
                             f"are compared with the default jobs")
    if v["table"] == "teacher" and "scratch" not in ft["inits"]:
        raise InputError(f"{where}: a teacher variation's gains are over the default scratch jobs, but finetune.inits "
                         f"{ft['inits']} has no scratch")
    for key in _paths(v["set"]) + list(v["scale"]):
        if any(key == f or key.startswith(f + ".") for f in FIXED_KEYS):
            raise InputError(f"{where}: {key}: a variation cannot change the dataset or the lists of jobs")
    base = {k: val for k, val in cfg.items() if k != "variations"}
    merged = _merge(base, v["set"])
    for key, factor in v["scale"].items():
        *parents, leaf = key.split(".")
        node = merged
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(leaf), (int, float)) or isinstance(node[leaf], bool):
            got = node.get(leaf) if isinstance(node, dict) else None
            raise InputError(f"{where}.scale: {key}: expected a numeric param, got {got!r}")
        value = node[leaf] * factor
        node[leaf] = int(round(value)) if isinstance(node[leaf], int) else value
    # a job's params (from_json) hold only the sections its rule reads: validated section by section, as there
    partial = any(k not in cfg for k in schema().get("required", []))
    out = validate(merged, f"{where}.set", sections_only=partial)
    out.pop("variations", None)
    return out


def read_file(path: str | os.PathLike) -> dict:
    """A params file as written (not validated): a mapping, or a one-line error (missing, not YAML, not a
    mapping)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"{p}: not valid YAML{where}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InputError(f"{p}: expected a mapping of parameter sections, got {type(raw).__name__}")
    return raw


def load(path: str | os.PathLike = "params.yaml") -> dict:
    return validate(read_file(path), str(path))


def from_json(text: str) -> dict:
    """Sections passed by a Snakemake rule as JSON (validated section by section)."""
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"--params-json: not valid JSON ({e.msg})") from None
    return validate(cfg, "--params-json", sections_only=True)


def params_hash(cfg: Any) -> str:
    """Short stable hash of (a part of) the resolved parameters, recorded with every output."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
