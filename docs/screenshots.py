"""Screenshots of a finished run for the docs: MLflow's model-version, logged-model and run pages and
Prefect's flow-run graph, taken with headless Chromium (Debian: ``apt-get install -y chromium``).

    python docs/screenshots.py PROJECT [--model mergeline-demo@champion] [--out docs/img]

PROJECT is the folder ``mergeline run`` ran in (``mlflow.db``, ``.prefect/``). The script starts an
MLflow server on that store and a Prefect server on that Prefect home, both on 127.0.0.1 at free
ports, opens each page, writes ``<out>/mlflow-model-version.png``, ``mlflow-logged-model.png``,
``mlflow-run.png`` and ``prefect-flow-run.png``, and stops the servers (by PID).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
SIZE = "1440,1000"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{url}: not up after {timeout} s")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise SystemExit("headless Chromium not found: apt-get install -y chromium")


def _shoot(browser: str, url: str, path: Path, wait_ms: int = 20000) -> None:
    # --virtual-time-budget lets the single-page apps fetch their data before the picture is taken.
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={SIZE}", f"--virtual-time-budget={wait_ms}", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=180)
    print(f"{path}  <-  {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--model", default="mergeline-demo@champion")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    project = args.project.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    browser = _chromium()
    mlflow_port, prefect_port = _port(), _port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true", "PREFECT_HOME": str(project / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    servers = [
        subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
                          "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        # The UI asks the API at PREFECT_UI_API_URL, which otherwise names port 4200 whatever --port says.
        subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                         env={**env, "PREFECT_UI_API_URL": f"http://127.0.0.1:{prefect_port}/api"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        mlflow_url, prefect_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}"
        _wait(f"{mlflow_url}/health", servers[0])
        _wait(f"{prefect_url}/api/health", servers[1])
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=mlflow_url)
        name, _, alias = args.model.partition("@")
        version = client.get_model_version_by_alias(name, alias or "champion")
        register_run = client.get_run(version.run_id)
        experiment = register_run.info.experiment_id
        parent = register_run.data.tags["mlflow.parentRunId"]
        model_id = version.source.removeprefix("models:/")
        flow_run = version.tags["mergeline.prefect_flow_run_id"]
        pages = {
            "mlflow-model-version.png": f"{mlflow_url}/#/models/{name}/versions/{version.version}",
            "mlflow-logged-model.png": f"{mlflow_url}/#/experiments/{experiment}/models/{model_id}",
            "mlflow-run.png": f"{mlflow_url}/#/experiments/{experiment}/runs/{parent}",
            "prefect-flow-run.png": f"{prefect_url}/runs/flow-run/{flow_run}",
        }
        for file, url in pages.items():
            _shoot(browser, url, args.out / file)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
