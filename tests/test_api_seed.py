"""Seed 001's quick start, run as written against `trainscope api` (a real uvicorn process) over a store filled by
real collection: the curl requests, the 60-second polling script, the JavaScript fetch example (node), the Python
requests + pandas example and its CSV export. Answers are checked field by field against what was collected.

Only the host/port (the test server's) and the workload UID are substituted into the seed's text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, positive_data_acceptance

from apifixtures import SEED_NAME, SEED_NS, SEED_UID, STEPS, Expected, free_port, seed_database

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("trainscope", path=str(Path(sys.executable).parent)) or "trainscope"


@pytest.fixture(scope="module")
def seed_db(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Expected]]:
    yield from seed_database(pg_url, tmp_path_factory.mktemp("seed"))


@pytest.fixture(scope="module")
def server(seed_db: tuple[str, Expected]) -> Iterator[str]:
    """`trainscope api` in its own process, as its Deployment runs it."""
    url, _ = seed_db
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSCOPE_")}
    proc = subprocess.Popen([SCRIPT, "api", "--database-url", url, "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "trainscope api did not become ready"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)


def seed_text(text: str, base: str) -> str:
    return text.replace("http://localhost:8080", base).replace("YOUR_WORKLOAD_UID", SEED_UID)


def sh(script: str, **env: str) -> str:
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ---- step 1 and 2: available metrics, data of two metrics --------------------------------------------------------

def test_curl_available_metrics_has_the_seeds_shape(server: str, seed_db: tuple[str, Expected]) -> None:
    _, expected = seed_db
    out = json.loads(sh(seed_text(
        'curl -X GET "http://localhost:8080/api/v1/workloads/YOUR_WORKLOAD_UID/metrics/available"', server)))
    assert list(out) == ["workload_uid", "metrics", "total_count"]
    assert out["workload_uid"] == SEED_UID
    by_name = {m["name"]: m for m in out["metrics"]}
    assert out["total_count"] == len(out["metrics"]) == 4
    for m in out["metrics"]:
        assert list(m) == ["name", "data_source", "count"]
        assert isinstance(m["count"], int) and all(isinstance(d, str) for d in m["data_source"])
    assert by_name["train/loss"]["data_source"] == ["log", "tensorflow", "wandb"]
    assert by_name["train/accuracy"]["data_source"] == ["tensorflow", "wandb"]
    assert by_name["train/learning_rate"]["data_source"] == ["log", "tensorflow"]
    for name, m in by_name.items():  # count = the points /metrics/data returns for that metric
        assert m["count"] == len(expected.items({name})) == STEPS * len(m["data_source"])


def check_data(out: dict[str, Any], want: list[dict[str, Any]], data_source: str | None = None) -> None:
    """Field by field: envelope keys in the reference server's order, item keys and types, every value."""
    keys = ["workload_uid", *(["data_source"] if data_source else []), "data", "total_count"]
    assert list(out) == keys
    assert out["workload_uid"] == SEED_UID and out.get("data_source") == data_source
    assert out["total_count"] == len(out["data"])
    for item in out["data"]:
        assert list(item) == ["metric_name", "value", "timestamp", "iteration", "data_source"]
        assert isinstance(item["metric_name"], str) and isinstance(item["data_source"], str)
        assert isinstance(item["timestamp"], int) and len(str(item["timestamp"])) == 13
        assert isinstance(item["iteration"], int)
        assert item["value"] is None or isinstance(item["value"], float | int)
    assert out["data"] == want


def test_curl_metrics_data_of_two_metrics(server: str, seed_db: tuple[str, Expected]) -> None:
    _, expected = seed_db
    out = json.loads(sh(seed_text('curl -X GET "http://localhost:8080/api/v1/workloads/YOUR_WORKLOAD_UID/metrics/'
                                  'data?metrics=train/loss,train/accuracy"', server)))
    check_data(out, expected.items({"train/loss", "train/accuracy"}))
    assert out["total_count"] == STEPS * 5


# ---- step 3: filters ---------------------------------------------------------------------------------------------

def test_curl_filter_by_data_source(server: str, seed_db: tuple[str, Expected]) -> None:
    _, expected = seed_db
    out = json.loads(sh(seed_text('curl -X GET "http://localhost:8080/api/v1/workloads/YOUR_WORKLOAD_UID/metrics/'
                                  'data?data_source=wandb"', server)))
    check_data(out, expected.items(data_source="wandb"), "wandb")
    assert out["total_count"] == STEPS * 2


LAST_HOUR = """
END_TIME=$(date +%s)000
START_TIME=$((END_TIME - 3600000))

echo "$START_TIME $END_TIME"
curl -X GET "http://localhost:8080/api/v1/workloads/YOUR_WORKLOAD_UID/metrics/data?start=${START_TIME}&end=${END_TIME}"
"""

COMBINED = """
END_TIME=$(date +%s)000
START_TIME=$((END_TIME - 3600000))

echo "$START_TIME $END_TIME"
curl -X GET "http://localhost:8080/api/v1/workloads/YOUR_WORKLOAD_UID/metrics/data?data_source=wandb&metrics=train/loss&start=${START_TIME}&end=${END_TIME}"
"""


def test_curl_last_hour(server: str, seed_db: tuple[str, Expected]) -> None:
    _, expected = seed_db
    bounds, body = sh(seed_text(LAST_HOUR, server)).split("\n", 1)
    start, end = map(int, bounds.split())
    want = expected.items(start=start, end=end)
    assert 0 < len(want) < len(expected.items())  # the run spans two hours: the filter really cuts
    check_data(json.loads(body), want)


def test_curl_combined_filters(server: str, seed_db: tuple[str, Expected]) -> None:
    _, expected = seed_db
    bounds, body = sh(seed_text(COMBINED, server)).split("\n", 1)
    start, end = map(int, bounds.split())
    want = expected.items({"train/loss"}, "wandb", start, end)
    assert 0 < len(want) < STEPS
    check_data(json.loads(body), want, "wandb")


# ---- Q1, Q5: the workload list, three metrics ------------------------------------------------------------------

def test_curl_list_workloads(server: str, seed_db: tuple[str, Expected]) -> None:
    out = json.loads(sh(seed_text('curl -X GET "http://localhost:8080/api/v1/workloads"', server)))
    assert out["total_count"] == len(out["workloads"]) == 2
    wl = next(w for w in out["workloads"] if w["uid"] == SEED_UID)
    assert (wl["namespace"], wl["name"], wl["deleted"], wl["phase"]) == (SEED_NS, SEED_NAME, False, None)
    assert (wl["step"], wl["total_steps"], wl["progress"]) == (STEPS, 200, STEPS / 200)
    assert wl["primary_metric"]["name"] == "train/loss" and wl["primary_metric"]["iteration"] == STEPS
    assert wl["data_sources"] == ["log", "tensorflow", "wandb"]
    old = next(w for w in out["workloads"] if w["uid"] != SEED_UID)
    assert old["deleted"] is True and old["phase"] == "Deleted"
    only = json.loads(sh(f'curl -s "{server}/api/v1/workloads?namespace=ml"'))
    assert [w["uid"] for w in only["workloads"]] == [SEED_UID]


def test_q5_three_metrics_one_unknown(server: str, seed_db: tuple[str, Expected]) -> None:
    _, expected = seed_db
    out = json.loads(sh(seed_text('curl -X GET "http://localhost:8080/api/v1/workloads/YOUR_WORKLOAD_UID/metrics/'
                                  'data?metrics=train/loss,train/accuracy,train/lr"', server)))
    check_data(out, expected.items({"train/loss", "train/accuracy"}))  # train/lr is not a metric here: no points


# ---- scenario 1: the polling script ----------------------------------------------------------------------------

MONITOR = r"""#!/bin/bash
# monitor_training.sh

WORKLOAD_UID=$1
INTERVAL=60  # 每 60 秒刷新一次

while true; do
  # 获取最新的 loss 值
  DATA=$(curl -s "http://localhost:8080/api/v1/workloads/${WORKLOAD_UID}/metrics/data?metrics=train/loss" | jq '.data | last')

  ITERATION=$(echo $DATA | jq '.iteration')
  LOSS=$(echo $DATA | jq '.value')

  echo "$(date) - Iteration: ${ITERATION}, Loss: ${LOSS}"

  sleep $INTERVAL
done
"""  # noqa: E501


def test_polling_script_reports_the_latest_loss(server: str, seed_db: tuple[str, Expected],
                                                tmp_path: Path) -> None:
    _, expected = seed_db
    script = tmp_path / "monitor_training.sh"
    script.write_text(MONITOR.replace("http://localhost:8080", server))
    # One round instead of forever: a `sleep` that ends the script (the script itself is unchanged).
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sleep").write_text("#!/bin/sh\nkill -TERM $PPID\n")
    (fake / "sleep").chmod(0o755)
    proc = subprocess.run(["bash", str(script), SEED_UID], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    line = proc.stdout.strip().splitlines()[-1]
    last = expected.items({"train/loss"})[-1]  # the last item of the answer: wandb's newest step
    head, loss = line.rsplit(", Loss: ", 1)
    assert head.endswith(f" - Iteration: {STEPS}"), line
    assert float(loss) == pytest.approx(last["value"], rel=1e-15), line


# ---- the JavaScript fetch example (node) -------------------------------------------------------------------------

JS_EXAMPLE = """
// 1. 获取可用指标
async function getAvailableMetrics(workloadUid) {
  const response = await fetch(
    `/api/v1/workloads/${workloadUid}/metrics/available`
  );
  return await response.json();
}

// 2. 获取指标数据
async function getMetricsData(workloadUid, options = {}) {
  const params = new URLSearchParams();

  if (options.dataSource) {
    params.append('data_source', options.dataSource);
  }

  if (options.metrics) {
    params.append('metrics', options.metrics.join(','));
  }

  if (options.start && options.end) {
    params.append('start', options.start);
    params.append('end', options.end);
  }

  const response = await fetch(
    `/api/v1/workloads/${workloadUid}/metrics/data?${params}`
  );
  return await response.json();
}

// 3. 使用示例
const workloadUid = 'YOUR_WORKLOAD_UID';

// 获取所有可用指标
const available = await getAvailableMetrics(workloadUid);
console.log('可用指标:', available.metrics.map(m => m.name));

// 获取 loss 数据
const lossData = await getMetricsData(workloadUid, {
  metrics: ['train/loss'],
  dataSource: 'wandb'
});

// 绘制图表（使用 Chart.js）
const chartData = {
  labels: lossData.data.map(d => d.iteration),
  datasets: [{
    label: 'Training Loss',
    data: lossData.data.map(d => d.value),
    borderColor: 'rgb(75, 192, 192)',
    tension: 0.1
  }]
};
"""  # noqa: RUF001


def test_javascript_example_under_node(server: str, seed_db: tuple[str, Expected], tmp_path: Path) -> None:
    _, expected = seed_db
    node = shutil.which("node")
    assert node, "node is needed to run the seed's JavaScript example"
    # The browser resolves the example's relative URLs against the page; node needs the origin said once.
    shim = f"const __f = globalThis.fetch; globalThis.fetch = (u, o) => __f(new URL(u, {json.dumps(server)}), o);\n"
    tail = "\nconsole.log(JSON.stringify({names: available.metrics.map(m => m.name), chartData}));\n"
    (tmp_path / "example.mjs").write_text(shim + seed_text(JS_EXAMPLE, server) + tail)
    proc = subprocess.run([node, str(tmp_path / "example.mjs")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    want = expected.items({"train/loss"}, "wandb")
    assert out["names"] == ["train/accuracy", "train/grad_norm", "train/learning_rate", "train/loss"]
    assert out["chartData"]["labels"] == [p["iteration"] for p in want]
    assert out["chartData"]["datasets"][0]["data"] == [p["value"] for p in want]


# ---- the Python example (requests + pandas) and scenario 3 (CSV export) ------------------------------------------

PY_EXAMPLE = '''
import requests
import pandas as pd
import matplotlib.pyplot as plt

BASE_URL = "http://localhost:8080/api/v1"
WORKLOAD_UID = "YOUR_WORKLOAD_UID"

# 1. 获取可用指标
def get_available_metrics(workload_uid):
    url = f"{BASE_URL}/workloads/{workload_uid}/metrics/available"
    response = requests.get(url)
    return response.json()

# 2. 获取指标数据
def get_metrics_data(workload_uid, **kwargs):
    url = f"{BASE_URL}/workloads/{workload_uid}/metrics/data"
    response = requests.get(url, params=kwargs)
    return response.json()

# 3. 使用示例
# 查看所有可用指标
available = get_available_metrics(WORKLOAD_UID)
print("可用指标:")
for metric in available['metrics']:
    print(f"  - {metric['name']} (来源: {', '.join(metric['data_source'])})")

# 获取 loss 数据
data = get_metrics_data(
    WORKLOAD_UID,
    metrics='train/loss',
    data_source='wandb'
)

# 转换为 DataFrame
df = pd.DataFrame(data['data'])

# 绘制图表
plt.figure(figsize=(10, 6))
plt.plot(df['iteration'], df['value'], marker='o')
plt.xlabel('Iteration')
plt.ylabel('Loss')
plt.title('Training Loss')
plt.grid(True)
plt.show()
'''

PY_EXPORT = '''
import pandas as pd

# 获取所有数据
data = get_metrics_data(WORKLOAD_UID)
df = pd.DataFrame(data['data'])

# 导出为 CSV
df.to_csv('training_metrics.csv', index=False)
print(f"导出了 {len(df)} 条数据到 training_metrics.csv")
'''

# matplotlib is not a dependency: a stand-in records what the example plots (the example itself is unchanged).
FAKE_PYPLOT = '''
import json, os
calls = []
def _record(name):
    def call(*args, **kwargs):
        calls.append([name, [list(a) if hasattr(a, "tolist") else a for a in args]])
    return call
for _n in ("figure", "plot", "xlabel", "ylabel", "title", "grid", "legend"):
    globals()[_n] = _record(_n)
def show():
    with open(os.environ["PLOT_LOG"], "w") as f:
        json.dump(calls, f, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
'''


def test_python_example_and_csv_export(server: str, seed_db: tuple[str, Expected], tmp_path: Path) -> None:
    _, expected = seed_db
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "pyplot.py").write_text(FAKE_PYPLOT)
    (tmp_path / "example.py").write_text(seed_text(PY_EXAMPLE, server) + PY_EXPORT)
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "fake"),
                               "PLOT_LOG": str(tmp_path / "plot.json")})
    assert proc.returncode == 0, proc.stderr
    assert "  - train/loss (来源: log, tensorflow, wandb)" in proc.stdout
    everything = expected.items()
    assert f"导出了 {len(everything)} 条数据到 training_metrics.csv" in proc.stdout
    plotted = {name: args for name, args in json.loads((tmp_path / "plot.json").read_text())}
    want = expected.items({"train/loss"}, "wandb")
    assert plotted["plot"][0] == [p["iteration"] for p in want]
    assert plotted["plot"][1] == [p["value"] for p in want]
    exported = pd.read_csv(tmp_path / "training_metrics.csv")
    assert list(exported.columns) == ["metric_name", "value", "timestamp", "iteration", "data_source"]
    assert len(exported) == len(everything)
    want_df = pd.DataFrame(everything)
    pd.testing.assert_frame_equal(exported, want_df.astype(exported.dtypes.to_dict()), check_exact=True)


# ---- the reference server's other endpoints ------------------------------------------------------------------------

def test_sources_and_iteration_times(server: str, seed_db: tuple[str, Expected]) -> None:
    _, expected = seed_db
    out = httpx.get(f"{server}/api/v1/workloads/{SEED_UID}/metrics/sources").json()
    assert out == {"workload_uid": SEED_UID, "total_count": 3, "data_sources": [
        {"name": "log", "count": 2 * STEPS}, {"name": "tensorflow", "count": 4 * STEPS},
        {"name": "wandb", "count": 2 * STEPS}]}
    times = httpx.get(f"{server}/api/v1/workloads/{SEED_UID}/metrics/iteration-times").json()
    assert times["total_count"] == len(times["data"]) == 2 * STEPS  # iteration + target_iteration per step
    first = [p for p in times["data"] if p["iteration"] == 1]
    tb_first = expected.series[("train/loss", "tensorflow")][1][0]  # TensorBoard's wall time is the earliest
    assert first == [
        {"metric_name": "iteration", "value": 1, "timestamp": tb_first, "iteration": 1, "data_source": "tensorflow"},
        {"metric_name": "target_iteration", "value": 200, "timestamp": tb_first, "iteration": 1,
         "data_source": "tensorflow"}]


def test_errors_have_the_seeds_shape(server: str) -> None:
    base = f"{server}/api/v1/workloads"
    cases = [
        (f"{base}/{SEED_UID}/metrics/data?start=yesterday", 400, "start"),
        (f"{base}/{SEED_UID}/metrics/data?data_source=neptune", 400, "data_source"),
        (f"{base}/{SEED_UID}/metrics/data?start=20&end=10", 400, "end"),
        (f"{base}/{SEED_UID}/metrics/data?limit=0", 400, "limit"),
        (f"{base}/{SEED_UID}/metrics/data?limit=5&cursor=bogus", 400, "cursor"),
        (f"{base}/{SEED_UID}/metrics/data?downsample=1", 400, "downsample"),
        (f"{base}/{SEED_UID}/metrics/data?from_step=99999999999999999999", 400, "from_step"),
        (f"{base}/{SEED_UID}/metrics/data?format=xml", 400, "format"),
        (f"{base}/{SEED_UID}/metrics/data?metrics=a%00b", 400, "metrics"),  # PostgreSQL text cannot hold NUL
        (f"{server}/api/v1/workloads?namespace=%00", 400, "namespace"),
        (f"{base}/no-such-uid/metrics/available", 404, None),
        (f"{server}/api/v1/namespaces/ml/workloads/nobody/metrics/data", 404, None),
    ]
    for url, status, param in cases:
        r = httpx.get(url)
        assert r.status_code == status, (url, r.text)
        body = r.json()
        assert list(body) == ["code", "message"], body
        if param:
            assert body["code"] == "RequestParameterInvalid" and body["message"].startswith(f"{param}: "), body
        else:
            assert body["code"] == "WorkloadNotFound"


# ---- schemathesis against the served OpenAPI schema ---------------------------------------------------------------

@pytest.fixture(scope="module")
def api_schema(server: str) -> Any:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    # An over-long invalid value can make the URL or request head exceed the server's documented size limits: the
    # refusal is then 414/431, a rejection as good as a 400.
    schema.config.checks.negative_data_rejection.expected_statuses += ["414", "431"]
    # endless responses: tested in test_api_stream.py and test_api_fleetstream.py
    return schema.exclude(path_regex=r".*/(metrics|overview)/stream$")


# Path parameters name the seed workload, so generated queries reach real data (404s are tested above).
PINNED = {"uid": SEED_UID, "namespace": SEED_NS, "name": SEED_NAME}


def test_openapi_contract(api_schema: Any) -> None:
    """Generated requests for every operation: never a 5xx, every answer as documented (status, type, body).

    Invalid values (negative mode) go to the metrics data endpoints, which take the most parameters; they must be
    refused with a 4xx. Left out: "schema-valid requests are accepted" — the schema cannot say that `end` must not
    precede `start`, that `cursor` needs `limit` and must be one the API issued, or that text cannot hold NUL, and
    the API answers those with a 400 naming the parameter; and, for invalid requests, the content type — uvicorn's
    HTTP parser answers an over-long request line itself (text/plain 400, before the app runs).
    """
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 19  # health events add one per address form; the fleet overview one
    runs = [(op, GenerationMode.POSITIVE) for op in operations]
    runs += [(op, GenerationMode.NEGATIVE) for op in operations if op.path.endswith("/metrics/data")]
    for operation, mode in runs:
        check_case(operation, mode)


def check_case(operation: Any, mode: GenerationMode) -> None:
    excluded = [positive_data_acceptance]
    if mode is GenerationMode.NEGATIVE:
        excluded.append(content_type_conformance)
    pinned = {k: v for k, v in PINNED.items() if "{" + k + "}" in operation.path}

    @given(case=operation.as_strategy(mode, path_parameters=pinned or None))
    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: Any) -> None:
        case.call_and_validate(excluded_checks=excluded)

    check()
