"""Screenshot the real Ray dashboard during a real notebook-3-like run, for notebook 3's
*The dashboard* section: ``notebooks/images/ray_dashboard.png``.

    .venv/bin/python tools/dashboard_screenshot.py [--output notebooks/images/ray_dashboard.png]

What it does (about 3 minutes on 2 CPUs):

1. Starts a local Ray the way the notebooks do (``ray_start.init_options()``: 127.0.0.1 only,
   dashboard on, token authentication), under a temporary HOME and ``RAY_TMPDIR``, so that its
   token and session files touch nothing of yours and no other Ray on the machine.
2. Starts Prometheus on 127.0.0.1, scraping Ray's metrics every 2 s: the dashboard's Ray Data
   view takes each operator's *Rows Outputted* from Prometheus (without one they read 0).
3. Runs notebook 3's plain pipeline in a background thread: ``read_binary_files``,
   ``map(preprocess)``, ``map_batches(Classifier)`` on a pool of 2 actors, ``write_parquet`` into
   a temporary folder, on the sample images copied ``--copies`` times (8: 4,056 images).
4. Once the dashboard counts ``--share`` of the rows classified, headless Chromium, logged in
   with the token's cookie (``ray-authentication-token``, what the dashboard's login page sets),
   opens *Jobs -> the job*, opens its *Ray Data Overview* and the dataset's row (one row per
   operator: blocks, state, rows, queued blocks, memory, CPUs), and saves the page from its top
   to the end of that section, reduced to 256 colours (Pillow) to stay small.
5. Lets the run finish, then stops Ray and Prometheus.

What it needs, beyond the project's venv (none of it is in ``requirements.txt``):

- Chromium: Debian's ``chromium`` package (``apt-get install -y chromium``), at
  ``/usr/bin/chromium`` (``--chromium`` for another path). Playwright's own browser download
  (``playwright install``) is not needed.
- Prometheus: Debian's ``prometheus`` package (``apt-get install -y --no-install-recommends
  prometheus``), at ``/usr/bin/prometheus`` (``--prometheus``). Its service need not run.
- Python's playwright: ``.venv/bin/pip install playwright``.

Grafana is not needed, and not used: the dashboard's *Metrics* charts (rows per second and
the like) stay empty without it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = PROJECT_ROOT / "notebooks" / "images" / "ray_dashboard.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL_NAME = "efficientnet_lite0"
SHARE = 0.5  # of a CPU, for every task and actor, as in notebook 3
# The operators' names as the dashboard shows them (map fused into the actors: same reservation).
OPERATORS = ("ReadBinary", "Map(preprocess)->MapBatches(Classifier)")


def start_run(images: Path, output: Path, num_actors: int, batch_size: int) -> tuple[threading.Thread, list]:
    """Notebook 3's plain pipeline over ``images``, written as Parquet into ``output``, running in
    a background thread; the list gets the exception if it fails."""
    import numpy as np
    import ray
    import torch

    from helpers import data, labels, models

    preprocessing = models.preprocessing(MODEL_NAME)
    blank = np.zeros((3, preprocessing.crop_size, preprocessing.crop_size), np.uint8)
    root = str(images)

    def preprocess(row: dict) -> dict:
        try:
            image = data.decode_image(row["bytes"], at_least=preprocessing.resize_size)
            pixels, error = preprocessing.resize_and_crop(image), ""
        except data.UnreadableImage as unreadable:
            pixels, error = blank, str(unreadable)
        return {"path": row["path"], "label": data.class_folder(row["path"], root), "pixels": pixels, "error": error}

    class Classifier:
        def __init__(self, model_name: str):
            torch.set_num_threads(1)  # one core per model copy
            self.model = models.efficientnet_lite0().eval()
            self.preprocessing = models.preprocessing(model_name)

        def __call__(self, batch: dict[str, np.ndarray]):
            ok = batch["error"] == ""
            with torch.inference_mode():
                logits = self.model(self.preprocessing.normalize(torch.from_numpy(batch["pixels"][ok])))
            scores, indices = torch.softmax(logits.float(), dim=1).topk(5, dim=1)
            return labels.top_k_table(scores.numpy(), indices.numpy(), ok,
                                      path=batch["path"], label=batch["label"], error=batch["error"])

    paths = sorted(str(path) for path in images.glob("*/*") if path.is_file())
    predictions = (
        ray.data.read_binary_files(paths, include_paths=True, num_cpus=SHARE)
        .map(preprocess, num_cpus=SHARE)
        .map_batches(Classifier, fn_constructor_kwargs={"model_name": MODEL_NAME},
                     compute=ray.data.ActorPoolStrategy(size=num_actors), batch_size=batch_size, num_cpus=SHARE)
    )
    failures: list = []

    def write() -> None:
        try:
            predictions.write_parquet(str(output), ray_remote_args={"num_cpus": SHARE})
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    thread = threading.Thread(target=write, name="pipeline", daemon=True)
    thread.start()
    print(f"pipeline started: {len(paths)} images, {num_actors} actors", flush=True)
    return thread, failures


def datasets(dashboard_url: str, token: str, job_id: str) -> list[dict]:
    """What the dashboard's Ray Data view shows for the job: its ``api/data/datasets`` answer."""
    request = urllib.request.Request(f"{dashboard_url}/api/data/datasets/{job_id}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)["datasets"]


def classified_share(found: list[dict]) -> float:
    """The share of the rows that the classifying operator has put out, by Prometheus's count."""
    for dataset in found:
        for operator in dataset["operators"]:
            if "Classifier" in operator["name"] and operator.get("total_rows"):
                return float(operator["ray_data_output_rows"]["max"]) / operator["total_rows"]
    return 0.0


def wait_for_rows(dashboard_url: str, token: str, job_id: str, share: float, timeout_s: float,
                  run: threading.Thread) -> None:
    """Return once the classifier has put out ``share`` of the rows, by the dashboard's account,
    or once the run has ended."""
    deadline = time.monotonic() + timeout_s
    while (done := classified_share(datasets(dashboard_url, token, job_id))) < share:
        if not run.is_alive():
            print("the run ended first: the shot shows it just after", flush=True)
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the dashboard counted {done:.0%} of the rows classified after {timeout_s:g} s")
        time.sleep(2)
    print(f"the dashboard counts {done:.0%} of the rows classified", flush=True)


def screenshot(dashboard_url: str, token: str, job_id: str, output: Path, chromium: str, width: int) -> None:
    """Open the job's page in headless Chromium, open its Ray Data section and the dataset's row,
    and save the page from its top to the end of that section."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": 900}, device_scale_factor=1)
        try:
            # What the dashboard's login page sets once it has checked the token.
            browser.add_cookies([{"name": "ray-authentication-token", "value": token, "url": dashboard_url}])
            page = browser.new_page()
            page.goto(f"{dashboard_url}/#/jobs/{job_id}", wait_until="load")
            page.get_by_text("Ray Data Overview", exact=True).click(timeout=60_000)  # the section starts closed
            page.locator("tr", has_text="dataset_").first.locator("td").first.locator("svg").click(timeout=30_000)
            for name in OPERATORS:
                page.get_by_text(name).first.wait_for(timeout=30_000)
            time.sleep(6)  # the page asks for the numbers every 5 s
            section = page.locator("div", has=page.get_by_text("Ray Data Overview", exact=True)).filter(
                has=page.get_by_text(OPERATORS[0])).last
            box = section.bounding_box()
            png = page.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": width,
                                                        "height": box["y"] + box["height"] + 16})
        except Exception:
            page.screenshot(path=str(output.with_suffix(".debug.png")), full_page=True)
            print(f"the page as it was: {output.with_suffix('.debug.png')}", flush=True)
            raise
        finally:
            browser.close()
    save_small(png, output)


def crop(png: bytes, top: float, bottom: float) -> bytes:
    from PIL import Image
    with Image.open(io.BytesIO(png)) as image:
        region = image.crop((0, int(top), image.width, min(image.height, int(bottom))))
        buffer = io.BytesIO()
        region.save(buffer, "PNG")
        return buffer.getvalue()


def save_small(png: bytes, output: Path) -> None:
    """Save ``png`` with at most 256 colours, which keeps a screenshot's text sharp."""
    from PIL import Image
    output.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            output, "PNG", optimize=True)
    with Image.open(output) as saved:
        print(f"wrote {output} ({saved.width}x{saved.height}, {output.stat().st_size // 1024} KB)", flush=True)


def start_ray(ray, init_options, attempts: int = 3):
    """``ray.init``, again where the node timed out during startup: on a busy machine the raylet
    gives its dashboard agent 15 s, and the agent takes longer where another Ray holds its port."""
    for attempt in range(1, attempts + 1):
        try:
            return ray.init(**init_options())
        except Exception as error:
            if "timed out during startup" not in str(error) or attempt == attempts:
                raise
            print(f"Ray did not start ({error}); trying again", flush=True)
            ray.shutdown()
            time.sleep(10)


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 2s
  evaluation_interval: 2s
scrape_configs:
- job_name: ray
  file_sd_configs:
  - files: ['{targets}']
    refresh_interval: 2s
"""


def start_prometheus(prometheus: str, folder: Path, port: int, ray_temp_dir: Path) -> subprocess.Popen:
    """Prometheus on 127.0.0.1:``port``, scraping the Ray nodes that Ray lists in its temp folder
    every 2 s, its data in ``folder``: the dashboard's Ray Data view takes its row counts from it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(targets=ray_temp_dir / "prom_metrics_service_discovery.json"))
    return subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.tsdb.path={folder / 'data'}"],
        stdout=open(folder / "prometheus.log", "wb"), stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--prometheus", default="/usr/bin/prometheus")
    parser.add_argument("--width", type=int, default=1400, help="browser window width, px")
    parser.add_argument("--copies", type=int, default=8, help="copies of the sample (504 images): the run must last")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--share", type=float, default=0.4,
                        help="the shot is taken once the classifier has put out this share of the rows")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for that")
    args = parser.parse_args(argv)
    output = args.output.resolve()
    for program, flag, package in ((args.chromium, "--chromium", "chromium"), (args.prometheus, "--prometheus", "prometheus")):
        if not Path(program).is_file():
            sys.exit(f"no {package} at {program}: apt-get install -y {package}, or pass {flag}")

    with tempfile.TemporaryDirectory(prefix="dashboard-shot-") as scratch:
        scratch = Path(scratch)
        os.environ["HOME"] = str(scratch / "home")  # Ray's token and session files go here
        os.environ["RAY_TMPDIR"] = str(scratch)  # its session folder: apart from any other Ray's
        os.environ.pop("RAY_ADDRESS", None)  # a local Ray, with the dashboard on 127.0.0.1
        (scratch / "home").mkdir()
        sys.path.insert(0, str(PROJECT_ROOT))
        import ray

        from helpers.machinery import ray_start
        from helpers.machinery.auth_token import auth_token_path
        from helpers.sample import ensure_sample
        from support.folders import replicate

        prometheus_port = ray_start.free_port()
        os.environ["RAY_PROMETHEUS_HOST"] = f"http://127.0.0.1:{prometheus_port}"  # for the dashboard
        images = replicate(ensure_sample(), scratch / "images", args.copies)
        context = start_ray(ray, ray_start.init_options)
        prometheus = start_prometheus(args.prometheus, scratch / "prometheus", prometheus_port, scratch / "ray")
        try:
            dashboard_url = f"http://{context.dashboard_url}"
            token = auth_token_path().read_text().strip()
            job_id = ray.get_runtime_context().get_job_id()
            print(f"Ray dashboard: {dashboard_url}, job {job_id}", flush=True)
            run, failures = start_run(images, scratch / "predictions", args.actors, args.batch_size)
            wait_for_rows(dashboard_url, token, job_id, args.share, args.timeout, run)
            screenshot(dashboard_url, token, job_id, output, args.chromium, args.width)
            print("waiting for the run to finish", flush=True)
            run.join()
            if failures:
                raise failures[0]
        finally:
            ray.shutdown()
            prometheus.terminate()
            prometheus.wait(timeout=30)


if __name__ == "__main__":
    main()
