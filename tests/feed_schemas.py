"""Validators of the official feed schemas, for the feeds' and the API's tests.

GBFS v3.0: MobilityData's draft-07 JSON Schemas. MDS 2.0: the OpenAPI 3.1 models (YAML, JSON
Schema 2020-12 inside), their relative $refs resolved from the files. The schemas are reference
data kept beside the project, not in it: FLEETGATE_GBFS_SCHEMA_DIR / FLEETGATE_MDS_SCHEMA_DIR,
else shared/gbfs/v3.0 and shared/mds next to the checkout; a test skips where they are absent.

One liberty with MDS, stated here: each model ends in a `oneOf` over the four modes (car-share,
delivery robots, micromobility, passenger services) whose schemas are all permissive, so a
plain micromobility object matches several and fails `oneOf`. MDS serves a mode per endpoint;
`mds_validator(model, mode)` replaces that `oneOf` by the one mode the object is served in.
And one repair: the mode event schemas write `contains: [trip_start, ...]`, a list where JSON
Schema wants a schema (jsonschema cannot run it); it is read as the evident
`contains: {enum: [...]}` ("the event types include one of these: then trip_ids is required").
"""

from __future__ import annotations

import copy
import json
import os
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests import REPO

MODES = ("car-share", "delivery-robots", "micromobility", "passenger-services")


def _folder(env: str, *parts: str) -> Path | None:
    candidates = [Path(os.environ[env])] if os.environ.get(env) else []
    candidates += [REPO.parent.joinpath("shared", *parts), Path("/work/shared").joinpath(*parts)]
    return next((c for c in candidates if c.is_dir()), None)


def gbfs_validator(name: str) -> jsonschema.Draft7Validator:
    """The official GBFS v3.0 schema of file `name` (e.g. "vehicle_status")."""
    folder = _folder("FLEETGATE_GBFS_SCHEMA_DIR", "gbfs", "v3.0")
    if folder is None or not (folder / f"{name}.json").is_file():
        pytest.skip(f"the official GBFS v3.0 schema {name}.json is not here")
    schema = json.loads((folder / f"{name}.json").read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def assert_gbfs_valid(name: str, document: dict) -> None:
    errors = sorted(gbfs_validator(name).iter_errors(document), key=lambda e: list(e.path))
    assert not errors, f"{name}.json: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5]
    )


@cache
def _mds_registry(root: str) -> Registry:
    """Every YAML file under the MDS folder, by its file URI (relative $refs resolve)."""
    resources = []
    for path in Path(root).rglob("*.yaml"):
        contents = _repaired(yaml.safe_load(path.read_text()))
        resources.append((path.as_uri(), Resource.from_contents(contents, DRAFT202012)))
    return Registry().with_resources(resources)


def _repaired(node):
    """`contains: [a, b]` (not a schema) as `contains: {enum: [a, b]}` (see the module's note)."""
    if isinstance(node, dict):
        out = {k: _repaired(v) for k, v in node.items()}
        if isinstance(out.get("contains"), list):
            out["contains"] = {"enum": out["contains"]}
        return out
    if isinstance(node, list):
        return [_repaired(v) for v in node]
    return node


def _one_mode(schema: dict, mode: str) -> dict:
    """The model with its oneOf over the modes narrowed to `mode` (see the module's note)."""
    schema = copy.deepcopy(schema)
    for part in schema.get("allOf", []):
        options = part.get("oneOf", [])
        refs = [o.get("$ref", "") for o in options]
        if refs and all(any(f"/modes/{m}/" in r for m in MODES) for r in refs):
            part["oneOf"] = [o for o in options if f"/modes/{mode}/" in o["$ref"]]
    return schema


def mds_validator(model: str, mode: str = "micromobility") -> jsonschema.Draft202012Validator:
    """A validator of MDS 2.0 `models/{model}.yaml` (vehicle, vehicle-status, trip, telemetry,
    event) in `mode`, or of a Provider response from `reference/provider.yaml` when model is
    "provider:/path" (e.g. "provider:/trips"): the 200 response body's schema."""
    folder = _folder("FLEETGATE_MDS_SCHEMA_DIR", "mds")
    if folder is None:
        pytest.skip("the MDS 2.0 OpenAPI folder is not here")
    registry = _with_modes(str(folder), mode)
    if model.startswith("provider:"):
        spec_path = folder / "reference" / "provider.yaml"
        spec = yaml.safe_load(spec_path.read_text())
        path = model.removeprefix("provider:")
        schema = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        schema = {**schema["schema"], "$id": spec_path.as_uri()}
    else:
        path = folder / "models" / f"{model}.yaml"
        schema = _repaired(_one_mode(yaml.safe_load(path.read_text()), mode))
        schema = {**schema, "$id": path.as_uri()}
    return jsonschema.Draft202012Validator(
        schema, registry=registry, format_checker=jsonschema.FormatChecker()
    )


@cache
def _with_modes(root: str, mode: str) -> Registry:
    """The registry with vehicle, event and trip narrowed to `mode`."""
    folder, registry = Path(root), _mds_registry(root)
    narrowed = []
    for model in ("vehicle", "event", "trip"):
        path = folder / "models" / f"{model}.yaml"
        contents = _repaired(_one_mode(yaml.safe_load(path.read_text()), mode))
        narrowed.append((path.as_uri(), Resource.from_contents(contents, DRAFT202012)))
    return registry.with_resources(narrowed)


def assert_mds_valid(model: str, document: dict, mode: str = "micromobility") -> None:
    errors = sorted(mds_validator(model, mode).iter_errors(document), key=lambda e: list(e.path))
    assert not errors, f"MDS {model} ({mode}): " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5]
    )
