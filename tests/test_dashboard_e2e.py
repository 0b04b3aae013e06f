"""The dashboard end to end: Debian's headless Chromium (driven by playwright-core) against the real API served by
uvicorn on 127.0.0.1, over a store filled by real collection (tests/apifixtures.py: TensorBoard event files read by a
Collector, W&B and log points through the store's writer). Screenshots are saved as artifacts
($TRAINSCOPE_TEST_ARTIFACTS, else a temporary folder; the path is printed)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from trainscope.api.app import ApiSettings
from trainscope.collector.health import Condition, HealthEvent
from trainscope.collector.points import Point
from trainscope.collector.store import Store

from apifixtures import SEED_NAME, SEED_NS, SEED_UID, STEPS, Expected, run_sync, seed_database
from browser import Browser, Page, UiServer

BIG_UID, BIG_POINTS = "big-run-uid", 20_000
LIVE_UID = "live-run-uid"

# Counts and labels the charts must show for the seed workload (see apifixtures.fill_seed_workload).
SEED_SERIES = {"train/loss": {"tensorflow": 120, "wandb run-a3b1799d": 120, "log": 120},
               "train/accuracy": {"tensorflow": 120, "wandb run-a3b1799d": 120},
               "train/learning_rate": {"tensorflow": 120, "log": 120},
               "train/grad_norm": {"tensorflow": 118}}  # NaN at step 50, +Infinity at 60: gaps, not points


async def _extra_workloads(url: str, t0: int) -> None:
    store = await Store.open(url)
    try:
        await store.register_workload(BIG_UID, "ml", "big-run", {"primaryMetric": "train/loss", "totalSteps": 50_000})
        pts = [Point("train/loss", s, t0 + s, 3.0 * math.exp(-s / 5000) + 0.1 * math.sin(s / 7)) for s in
               range(1, BIG_POINTS + 1)]
        await store.write(BIG_UID, "wandb", "wandb", pts, {"step": BIG_POINTS})
        await store.register_workload(LIVE_UID, "research", "live-run", {"totalSteps": 100})
        await store.write(LIVE_UID, "tb", "tensorboard",
                          [Point("loss", s, t0 + 10 * s, 1.0 / s) for s in range(1, 11)], None)
    finally:
        await store.close()


async def _write_live_point(url: str, step: int, ts: float) -> None:
    store = await Store.open(url, migrate=False)
    try:
        await store.write(LIVE_UID, "tb", "tensorboard", [Point("loss", step, ts, 1.0 / step)], None)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def seeded(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Expected]]:
    gen = seed_database(pg_url, tmp_path_factory.mktemp("dash-seed"))
    url, expected = next(gen)
    run_sync(_extra_workloads(url, expected.t0))
    yield url, expected
    next(gen, None)


@pytest.fixture(scope="module")
def server(seeded: tuple[str, Expected]) -> Iterator[UiServer]:
    with UiServer(ApiSettings(database_url=seeded[0], stream_interval=0.2)) as srv:
        yield srv


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("TRAINSCOPE_TEST_ARTIFACTS")
    path = Path(base) / "dashboard" if base else tmp_path_factory.mktemp("dashboard-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {path}")
    return path


@pytest.fixture
def page(browser: Browser, server: UiServer) -> Iterator[Page]:
    p = browser.page()
    try:
        yield p
        logs = p.logs()
        assert not logs["errors"], f"uncaught errors in the page: {logs['errors']}"
        outside = [r["url"] for r in p.requests() if not r["url"].startswith((server.url + "/", "data:"))]
        assert not outside, f"the page asked for something not served by the API (offline): {outside}"
    finally:
        p.close()


DOCS_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "images" / "dashboard"


def shot(page: Page, artifacts: Path, name: str, full_page: bool = True) -> None:
    """A screenshot as a test artifact; with TRAINSCOPE_DOCS_SCREENSHOTS=1 (`make screenshots`) also the picture
    docs/dashboard.md shows."""
    print(page.screenshot(artifacts / name, full_page=full_page))
    if os.environ.get("TRAINSCOPE_DOCS_SCREENSHOTS"):
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(DOCS_SHOTS / name, full_page=full_page)


# ---- helpers --------------------------------------------------------------------------------------------------

CHART_READY = """(a) => {
  const el = document.querySelector('#charts');
  return el && el.dataset.state === 'ready' && Number(el.dataset.loads) >= a.loads
    && document.querySelectorAll('figure.chart').length >= a.charts && Number(el.dataset.loads);
}"""

SERIES_COUNTS = """(metric) => {
  const fig = [...document.querySelectorAll('figure.chart')].find((f) => f.dataset.metric === metric);
  if (!fig) return null;
  const series = {};
  for (const li of fig.querySelectorAll('ul.legend li')) series[li.dataset.series] = Number(li.dataset.points);
  return {points: Number(fig.dataset.points), series, x: fig.dataset.x, log: fig.dataset.log,
          downsampled: fig.dataset.downsampled, markers: Number(fig.dataset.markers || 0)};
}"""


def open_workload(page: Page, server: UiServer, uid: str, charts: int = 1, query: str = "") -> int:
    page.goto(f"{server.url}/#/w/{uid}{query}")
    return page.wait(CHART_READY, {"loads": 1, "charts": charts})


def data_requests(page: Page) -> list[dict[str, list[str]]]:
    """The charts' reads of metrics/data (the list's ETA estimate reads the last 20 points: not a chart's)."""
    out = []
    for r in page.requests():
        u = urlsplit(r["url"])
        q = parse_qs(u.query)
        if u.path.endswith("/metrics/data") and "last" not in q:
            out.append(q)
    return out


def plot_box(page: Page, metric: str) -> dict[str, float]:
    return page.box(f'figure[data-metric="{metric}"] .u-over')


def zoom_by_drag(page: Page, metric: str, left: float, right: float) -> None:
    box = plot_box(page, metric)
    y = box["y"] + box["height"] / 2
    page.drag((box["x"] + box["width"] * left, y), (box["x"] + box["width"] * right, y))


# ---- the list -------------------------------------------------------------------------------------------------

def test_list_shows_every_workload_with_progress_metric_and_eta(page: Page, server: UiServer,
                                                                 artifacts: Path) -> None:
    page.goto(server.url + "/")
    rows = page.wait("""(uid) => {
      const rows = document.querySelectorAll('#workloads tbody tr[data-uid]');
      const seed = document.querySelector(`tr[data-uid="${uid}"]`);
      return rows.length >= 3 && seed && seed.querySelector('svg.spark') &&
        [...rows].map((r) => ({uid: r.dataset.uid, cells: [...r.cells].map((c) => c.textContent.trim()),
                              progress: r.querySelector('progress')?.value ?? null,
                              spark: r.querySelector('svg.spark')?.getAttribute('aria-label') ?? null}));
    }""", SEED_UID)
    by_uid = {r["uid"]: r for r in rows}
    assert set(by_uid) == {SEED_UID, BIG_UID, LIVE_UID}, "the deleted workload is hidden by default"
    _, name, phase, health, progress, eta, rate, primary, sources, age = by_uid[SEED_UID]["cells"]
    assert name == f"{SEED_NS}/{SEED_NAME}"
    assert phase == "n/a"  # the API knows no phase outside local mode
    assert progress == f"60.0% {STEPS} / 200" and by_uid[SEED_UID]["progress"] == pytest.approx(0.6)
    assert primary.startswith("train/loss") and primary.endswith(f"@ {STEPS}")
    # one step a minute (the overview's pace), 80 steps to go
    assert rate == "0.0167" and eta == "~1h20m"
    assert health == "OK"  # the API reports the conditions; none is True for this workload
    # each source with the age of its newest point: the seed's points end when the module's fixture wrote them,
    # seconds before on a quiet machine, a minute or more on a slow one (seen in CI)
    assert re.fullmatch(r"log \d+[smh]tensorflow \d+[smh]wandb \d+[smh]", sources), sources
    assert re.fullmatch(r"\d+s|\d+m", age), age  # registered when the module's fixture ran
    assert by_uid[SEED_UID]["spark"] == f"train/loss over 32 points from step 1 to {STEPS}"
    assert by_uid[BIG_UID]["cells"][4].endswith(f"{BIG_POINTS} / 50000")

    page.check("#show-deleted")
    page.wait("() => document.querySelector('tr[data-uid=\"deleted-uid\"]') !== null")
    page.fill("#filter", "llama")
    assert page.wait("""() => { const r = document.querySelectorAll('#workloads tbody tr[data-uid]');
                        return r.length === 1 && r[0].dataset.uid; }""") == SEED_UID
    page.fill("#filter", "research/")
    assert page.wait("""() => { const r = document.querySelectorAll('#workloads tbody tr[data-uid]');
                        return r.length === 1 && r[0].dataset.uid; }""") == LIVE_UID
    page.fill("#filter", "no-such-thing")
    assert "No workload matches" in page.wait(
        "() => document.querySelector('#workloads tbody td.empty')?.textContent")
    page.fill("#filter", "")
    page.wait("() => document.querySelectorAll('#workloads tbody tr[data-uid]').length === 4")
    print(page.screenshot(artifacts / "list.png"))


# ---- a workload -----------------------------------------------------------------------------------------------

def test_workload_page_draws_every_point_of_the_known_series(page: Page, server: UiServer, artifacts: Path) -> None:
    page.goto(server.url + "/")
    page.wait(f"() => document.querySelector('tr[data-uid=\"{SEED_UID}\"] a')")
    page.click(f'tr[data-uid="{SEED_UID}"] a')
    page.wait(CHART_READY, {"loads": 1, "charts": 4})
    assert page.js("() => document.querySelector('h1').textContent") == f"{SEED_NS}/{SEED_NAME}"
    for metric, series in SEED_SERIES.items():
        got = page.js(SERIES_COUNTS, metric)
        assert got["series"] == series, metric
        assert got["points"] == sum(series.values()), metric
        assert got["x"] == "step" and got["log"] == "false"
    # log vs wandb overlay on one chart, each its own line: three canvases would be three charts
    assert page.js("() => document.querySelectorAll('figure[data-metric=\"train/loss\"] canvas').length") == 1
    # the charts never ask for a whole series: every read is downsampled
    reqs = data_requests(page)
    assert reqs and all("downsample" in q and q["buckets"] == ["aligned"] for q in reqs)
    assert page.js("() => document.querySelector('#health').dataset.available") == "true"  # served, none yet
    print(page.screenshot(artifacts / "workload.png"))


def test_zoom_asks_the_api_for_a_downsampled_range(page: Page, server: UiServer, seeded: tuple[str, Expected],
                                                   artifacts: Path) -> None:
    loads = open_workload(page, server, SEED_UID, charts=4)
    page.clear_requests()
    zoom_by_drag(page, "train/loss", 0.25, 0.6)
    loads = page.wait(CHART_READY, {"loads": loads + 1, "charts": 4})
    (q,) = data_requests(page)
    assert "downsample" in q and int(q["downsample"][0]) >= 64
    lo, hi = int(q["from_step"][0]), int(q["to_step"][0])
    assert 1 < lo < hi < STEPS
    got = page.js(SERIES_COUNTS, "train/loss")
    n = hi - lo + 1  # every step of the range exists in each of the three sources
    assert got["series"] == {"tensorflow": n, "wandb run-a3b1799d": n, "log": n}
    assert f"from={lo}" in page.url() and f"to={hi}" in page.url()
    print(page.screenshot(artifacts / "workload-zoomed.png"))

    # keyboard-reachable zoom: the same request shape
    page.clear_requests()
    page.click("#zoom-in")
    loads = page.wait(CHART_READY, {"loads": loads + 1, "charts": 4})
    (q,) = data_requests(page)
    lo2, hi2 = int(q["from_step"][0]), int(q["to_step"][0])
    assert "downsample" in q and lo <= lo2 < hi2 <= hi and hi2 - lo2 < hi - lo

    page.click("#zoom-reset")
    loads = page.wait(CHART_READY, {"loads": loads + 1, "charts": 4})
    assert page.js(SERIES_COUNTS, "train/loss")["points"] == 3 * STEPS

    # time axis: the zoom becomes a start/end range in milliseconds
    page.check("#x-time")
    loads = page.wait(CHART_READY, {"loads": loads + 1, "charts": 4})
    assert page.js(SERIES_COUNTS, "train/loss")["x"] == "time"
    page.clear_requests()
    zoom_by_drag(page, "train/loss", 0.5, 0.9)
    page.wait(CHART_READY, {"loads": loads + 1, "charts": 4})
    (q,) = data_requests(page)
    assert "downsample" in q and "from_step" not in q
    start, end = int(q["start"][0]), int(q["end"][0])
    t0 = seeded[1].t0
    expected_steps = [s for s in range(1, STEPS + 1) if start <= (t0 + 60 * s) * 1000 <= end]
    assert expected_steps and page.js(SERIES_COUNTS, "train/loss")["series"]["tensorflow"] == len(expected_steps)


def test_log_scale_and_selected_metrics(page: Page, server: UiServer) -> None:
    loads = open_workload(page, server, SEED_UID, charts=4)
    page.check("#log-scale")
    page.wait("() => document.querySelector('figure[data-metric=\"train/loss\"]').dataset.log === 'true'")
    assert "log=1" in page.url()
    # choose metrics: untick all but train/accuracy
    for metric in ("train/grad_norm", "train/learning_rate", "train/loss"):
        page.click(f'.metric-boxes input[value="{metric}"]')
    page.wait("() => document.querySelectorAll('figure.chart').length === 1")
    loads = page.wait(CHART_READY, {"loads": loads + 1, "charts": 1})
    assert page.js(SERIES_COUNTS, "train/accuracy")["points"] == 240
    assert "metrics=train%2Faccuracy" in page.url() or "metrics=train/accuracy" in page.url()


def test_big_series_is_never_read_whole(page: Page, server: UiServer, artifacts: Path) -> None:
    open_workload(page, server, BIG_UID)
    (q,) = data_requests(page)
    n = int(q["downsample"][0])
    got = page.js(SERIES_COUNTS, "train/loss")
    assert got["downsampled"] == "true" and 0 < got["points"] <= n < BIG_POINTS
    assert page.js("() => document.querySelector('#charts').dataset.sourcePoints") == str(BIG_POINTS)
    page.clear_requests()
    zoom_by_drag(page, "train/loss", 0.4, 0.45)
    page.wait("() => document.querySelector('#charts').dataset.loads === '2' "
              "&& document.querySelector('#charts').dataset.state === 'ready'")
    (q,) = data_requests(page)
    lo, hi = int(q["from_step"][0]), int(q["to_step"][0])
    got = page.js(SERIES_COUNTS, "train/loss")
    # finer detail where zoomed: the window's every point when they fit in n, else at most n of them
    assert int(q["downsample"][0]) == n and lo < hi
    if hi - lo + 1 <= n:
        assert got["points"] == hi - lo + 1
    else:
        assert got["downsampled"] == "true" and got["points"] <= n
    print(page.screenshot(artifacts / "big-zoomed.png"))


def test_a_new_point_arrives_live(page: Page, server: UiServer, seeded: tuple[str, Expected],
                                  artifacts: Path) -> None:
    open_workload(page, server, LIVE_UID)
    assert page.js(SERIES_COUNTS, "loss")["points"] == 10
    page.wait("() => document.querySelector('#live-state').dataset.state === 'open'")
    run_sync(_write_live_point(seeded[0], 11, seeded[1].t0 + 110))
    page.wait("() => document.querySelector('figure[data-metric=\"loss\"]').dataset.points === '11'")
    assert page.js("() => document.querySelector('[data-field=\"step\"]').textContent") == "11"
    # no reload: the one data request is the first load; the point came through the stream
    assert len(data_requests(page)) == 1
    assert any(urlsplit(r["url"]).path.endswith("/metrics/stream") for r in page.requests())
    print(page.screenshot(artifacts / "live.png"))
    # the list refreshes by itself too
    page.click("#back")
    page.wait(f"""() => {{ const r = document.querySelector('tr[data-uid="{LIVE_UID}"]');
                          return r && r.cells[4].textContent.endsWith('11 / 100'); }}""")
    run_sync(_write_live_point(seeded[0], 12, seeded[1].t0 + 120))
    page.wait(f"""() => {{ const r = document.querySelector('tr[data-uid="{LIVE_UID}"]');
                          return r && r.cells[4].textContent.endsWith('12 / 100'); }}""", timeout=20)


def test_health_events_from_the_store_are_marked_on_the_curves(page: Page, server: UiServer,
                                                               seeded: tuple[str, Expected], artifacts: Path) -> None:
    """Transitions stored in health_events (as the collector writes them) reach the page through the API."""
    t = seeded[1].t0 + 60 * 70
    events = [HealthEvent(t, Condition("MetricSpike", "True", "SpikeAboveBand", "train/loss jumped", "train/loss",
                                       70, 9.5)),
              HealthEvent(t + 600, Condition("MetricSpike", "False", "Normal", "back in band", None, None, None)),
              HealthEvent(t + 3000, Condition("Stalled", "True", "NoNewStep", "no step for 20m", None, 120, None))]

    async def store_events() -> None:
        store = await Store.open(seeded[0], migrate=False)
        try:
            await store.add_health_events(SEED_UID, events)
        finally:
            await store.close()

    run_sync(store_events())
    open_workload(page, server, SEED_UID, charts=4)
    assert page.js(SERIES_COUNTS, "train/loss")["markers"] == 3
    # a transition naming no metric (Stalled; a cleared condition, as the collector writes it) marks every curve
    assert page.js(SERIES_COUNTS, "train/accuracy")["markers"] == 2
    assert page.js("() => document.querySelector('#health').dataset.available") == "true"
    assert page.js("() => document.querySelectorAll('#health ol.events li').length") == 3
    shot(page, artifacts, "health-markers.png")


def test_csv_download(page: Page, server: UiServer, seeded: tuple[str, Expected]) -> None:
    open_workload(page, server, SEED_UID, charts=1, query="?metrics=train/loss")
    href = page.js("() => document.querySelector('#csv').href")
    q = parse_qs(urlsplit(href).query)
    assert q["format"] == ["csv"] and q["metrics"] == ["train/loss"]
    text = page.js("(u) => fetch(u).then((r) => r.text())", href)
    lines = text.strip().splitlines()
    assert lines[0] == "metric_name,value,timestamp,iteration,data_source,run,source"
    assert len(lines) - 1 == len(seeded[1].items(metrics={"train/loss"})) == 3 * STEPS


# ---- accessibility --------------------------------------------------------------------------------------------

AXE = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}}


def test_accessibility_axe_and_keyboard(page: Page, server: UiServer) -> None:
    page.goto(server.url + "/")
    page.wait("() => document.querySelectorAll('#workloads tbody tr[data-uid]').length >= 3")
    result = page.axe(AXE)
    assert not result["violations"], json.dumps(result["violations"], indent=1)
    assert {"color-contrast", "label"} <= set(result["passes"])

    # keyboard only: Tab from the top reaches the skip link, the filter and a workload's link; Enter opens it
    focus = "() => { const e = document.activeElement; return {tag: e.tagName, id: e.id, cls: e.className, " \
            "text: e.textContent.trim().slice(0, 40), outline: getComputedStyle(e).outlineStyle}; }"
    # a new view focuses its heading (screen readers announce it); Tab goes on from there, Shift+Tab goes back
    assert page.js(focus)["tag"] == "H1"
    for _ in range(3):
        page.press("Shift+Tab")
    assert page.js(focus)["cls"] == "skip"
    page.press("Enter")  # the skip link moves focus to the content, not the router's hash
    assert page.js(focus)["id"] == "main" and "#main" not in page.url()
    seen = []
    for _ in range(30):
        page.press("Tab")
        seen.append(page.js(focus))
        if seen[-1]["text"] == SEED_NAME:
            break
    assert seen[0]["id"] == "filter", seen
    assert seen[-1]["text"] == SEED_NAME and seen[-1]["outline"] != "none", seen
    page.press("Enter")
    page.wait(CHART_READY, {"loads": 1, "charts": 4})
    assert page.js("() => document.activeElement.tagName") == "H1"

    result = page.axe(AXE)
    assert not result["violations"], json.dumps(result["violations"], indent=1)
    # every control of the page has an accessible name; the charts describe themselves
    assert page.js("""() => [...document.querySelectorAll('input, select, button')].filter((e) =>
        !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()).length""") == 0
    label = page.js("() => document.querySelector('figure[data-metric=\"train/loss\"] canvas')"
                    ".getAttribute('aria-label')")
    assert label.startswith("train/loss: 3 series, 360 points drawn")

    # zoom from the keyboard: focus "Zoom in" and press Enter
    page.clear_requests()
    for _ in range(40):
        page.press("Tab")
        if page.js("() => document.activeElement.id") == "zoom-in":
            break
    page.press("Enter")
    page.wait(CHART_READY, {"loads": 2, "charts": 4})
    (q,) = data_requests(page)
    assert {"from_step", "to_step", "downsample"} <= set(q)


def test_list_shows_conditions_and_eta_when_the_api_reports_them(page: Page, server: UiServer) -> None:
    """An API that reports a live phase and an ETA of its own (eta_seconds): the list shows them as given."""
    item = {"uid": "u1", "namespace": "ml", "name": "stuck", "deleted": False, "phase": "Collecting", "step": 50,
            "total_steps": 100, "progress": 0.5, "eta_seconds": 3600, "data_sources": ["wandb"],
            "primary_metric": {"name": "loss", "value": None, "iteration": 50, "timestamp": 0, "data_source": "wandb"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Collecting", "message": ""},
                           {"type": "Stalled", "status": "True", "reason": "NoNewStep", "message": "no step for 2h"},
                           {"type": "MetricSpike", "status": "False", "reason": "InBand", "message": ""}],
            "created_at": 0, "updated_at": 0, "deleted_at": None}
    page.route("**/api/v1/workloads?*", json.dumps({"workloads": [item], "total_count": 1}))
    # the fleet stream would bring the real server's fleet (without u1): this API has none, the view polls
    page.route("**/api/v1/overview/stream*", json.dumps({"code": "NotFound", "message": "no such route"}), status=404)
    page.goto(server.url + "/")
    cells = page.wait("""() => { const r = document.querySelector('tr[data-uid="u1"]');
                        return r && [...r.cells].map((c) => c.textContent.trim()); }""")
    assert cells[2] == "Collecting" and cells[7] == "loss non-finite @ 50" and cells[5] == "1h"
    assert cells[3] == "Stalled"  # only True health conditions; Ready is not a health condition


def test_behind_a_bearer_token(browser: Browser, seeded: tuple[str, Expected]) -> None:
    """With a token on the API the page asks for it, then lists, charts and streams with the header."""
    with UiServer(ApiSettings(database_url=seeded[0], token="s3cret-token", stream_interval=0.2)) as srv:
        p = browser.page()
        try:
            p.goto(srv.url + "/")
            p.wait("() => document.querySelector('#token')")
            p.fill("#token", "s3cret-token")
            p.press("Enter")
            p.wait(f"() => document.querySelector('tr[data-uid=\"{LIVE_UID}\"] a')")
            p.click(f'tr[data-uid="{LIVE_UID}"] a')
            p.wait(CHART_READY, {"loads": 1, "charts": 1})
            assert int(p.js(SERIES_COUNTS, "loss")["points"]) >= 10
            p.wait("() => document.querySelector('#live-state').dataset.state === 'open'")
            assert not p.logs()["errors"]
        finally:
            p.close()


# ---- curves people compare ------------------------------------------------------------------------------------

DRAWN = """(metric) => {
  const fig = [...document.querySelectorAll('figure.chart')].find((f) => f.dataset.metric === metric);
  const c = fig && fig._chart;
  if (!c || !c.data) return null;
  return {xs: c.data[0], columns: c.layout.map((l, i) => ({label: l.series.label || null, key: l.key,
          data_source: l.series.data_source, run: l.series.run, role: l.role, ys: c.data[i + 1]}))};
}"""


def tb_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's debiased EMA (tensorboard/webapp/widgets/line_chart_v2/data_transformer.ts), in Python."""
    if all(v == values[0] for v in values):
        return list(values)
    last, n, out = 0.0, 0, []
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        n += 1
        out.append(last / (1 - weight**n if weight != 1 else 1))
    return out


def test_smoothing_draws_tensorboards_debiased_ema(page: Page, server: UiServer, seeded: tuple[str, Expected],
                                                   artifacts: Path) -> None:
    open_workload(page, server, SEED_UID, charts=1, query="?metrics=train/loss")
    before = page.js(DRAWN, "train/loss")
    assert [c["role"] for c in before["columns"]] == ["line", "line", "line"]  # off by default: the raw lines
    page.fill("#smoothing", "0.9")  # the slider (an <input type=range>)
    page.wait("() => document.querySelector('figure[data-metric=\"train/loss\"]').dataset.smooth === '0.9'")
    assert "smooth=0.9" in page.url()
    got = page.js(DRAWN, "train/loss")
    roles = [(c["data_source"], c["role"]) for c in got["columns"]]
    assert roles == [("log", "raw"), ("log", "smooth"), ("tensorflow", "raw"), ("tensorflow", "smooth"),
                     ("wandb", "raw"), ("wandb", "smooth")]
    xs = got["xs"]
    for ds in ("tensorflow", "wandb", "log"):
        stored = sorted(seeded[1].items(metrics={"train/loss"}, data_source=ds), key=lambda p: p["iteration"])
        raw_col, smooth_col = (c for c in got["columns"] if c["data_source"] == ds)
        drawn_raw = {x: y for x, y in zip(xs, raw_col["ys"], strict=True) if y is not None}
        drawn_smooth = [y for x, y in zip(xs, smooth_col["ys"], strict=True) if x in drawn_raw]
        assert drawn_raw == {p["iteration"]: pytest.approx(p["value"]) for p in stored}, ds
        expected = tb_ema([p["value"] for p in stored], 0.9)
        assert drawn_smooth == pytest.approx(expected, rel=1e-12), ds
        assert drawn_smooth != pytest.approx([p["value"] for p in stored])  # it did change the path
    shot(page, artifacts, "workload-smoothed.png", full_page=False)

    # the deep link restores the view: smoothing, relative time
    page.check("#x-relative")
    page.wait("() => document.querySelector('figure[data-metric=\"train/loss\"]').dataset.x === 'relative'")
    url = page.url()
    assert "x=relative" in url and "smooth=0.9" in url
    page.goto(server.url + "/#/")
    page.goto(url)
    page.wait(CHART_READY, {"loads": 1, "charts": 1})
    restored = "() => [document.querySelector('#smoothing').value, document.querySelector('#x-relative').checked]"
    assert page.js(restored) == ["0.9", True]
    rel = page.js(DRAWN, "train/loss")
    assert rel["xs"][0] == 0 and rel["xs"][-1] == 60 * (STEPS - 1)  # seconds since each series' first point


def test_metric_groups_run_table_and_csv_of_the_view(page: Page, server: UiServer, seeded: tuple[str, Expected],
                                                     artifacts: Path) -> None:
    open_workload(page, server, SEED_UID, charts=4)
    assert page.js("() => [...document.querySelectorAll('#charts h2.group')].map((e) => e.dataset.group)") == ["train"]
    assert page.js("() => [...document.querySelectorAll('.metric-group')].map((e) => e.dataset.group)") == ["train"]
    runs = page.wait("() => document.querySelector('#runs-table') && "
                     "[...document.querySelectorAll('#runs-table tbody tr')]"
                     ".map((r) => [...r.cells].map((c) => c.textContent))")
    assert ["wandb", "run-a3b1799d", "Qwen2.5-7B/20250321-1130-16bed2e2", "running"] in [r[:4] for r in runs]
    # hide the log line of train/loss, zoom to steps 30..60, then take the CSV of what is shown
    page.click('figure[data-metric="train/loss"] li[data-series="log"] input')
    page.fill("#range-from", "30")
    page.fill("#range-to", "60")
    page.click("#apply-range")
    page.wait(CHART_READY, {"loads": 2, "charts": 4})
    got = page.download("#csv-shown")
    assert got["name"] == f"{SEED_UID}-shown.csv"
    lines = got["text"].strip().split("\r\n")
    assert lines[0] == "metric,series,data_source,source,run,step,time,value,smoothed"
    rows = [line.split(",") for line in lines[1:]]
    loss = [r for r in rows if r[0] == "train/loss"]
    assert {r[2] for r in loss} == {"tensorflow", "wandb"}  # the hidden series is not in it
    assert sorted({int(r[5]) for r in rows}) == list(range(30, 61))
    assert len(loss) == 2 * 31
    expected = {(p["data_source"], p["iteration"]): p["value"] for p in seeded[1].items(metrics={"train/loss"})}
    for r in loss:
        assert float(r[7]) == pytest.approx(expected[(r[2], int(r[5]))])
    shot(page, artifacts, "workload-groups-runs.png")


def test_band_when_downsampled(page: Page, server: UiServer) -> None:
    open_workload(page, server, BIG_UID)
    got = page.js(DRAWN, "train/loss")
    assert [c["role"] for c in got["columns"]] == ["hi", "lo", "line"]
    line, lo, hi = got["columns"][2]["ys"], got["columns"][1]["ys"], got["columns"][0]["ys"]
    assert all(a <= v <= b for a, v, b in zip(lo, line, hi, strict=True) if v is not None)
    assert any(a < b for a, b in zip(lo, hi, strict=True) if a is not None)
    page.click("#band")
    page.wait("() => document.querySelector('figure[data-metric=\"train/loss\"]').dataset.band === 'false'")
    assert "band=0" in page.url()


def test_compare_overlays_one_metric_across_workloads(page: Page, server: UiServer, seeded: tuple[str, Expected],
                                                      artifacts: Path) -> None:
    page.goto(server.url + "/")
    page.wait(f"() => document.querySelector('tr[data-uid=\"{SEED_UID}\"] input.pick')")
    page.check(f'tr[data-uid="{SEED_UID}"] input.pick')
    page.check(f'tr[data-uid="{BIG_UID}"] input.pick')
    assert page.js("() => document.querySelector('#compare').textContent") == "Compare selected (2)"
    page.click("#compare")
    page.wait("() => document.querySelector('#charts').dataset.state === 'ready' && "
              "Number(document.querySelector('#charts').dataset.loads) >= 1")
    assert "metric=train%2Floss" in page.url() or "metric=train/loss" in page.url()
    got = page.js(DRAWN, "train/loss")
    labels = sorted(c["label"] for c in got["columns"] if c["role"] == "line")
    # only the downsampled workload's line has a min/max band
    assert [c["label"] for c in got["columns"] if c["role"] == "hi"] == ["ml/big-run"]
    assert labels == ["ml/big-run", "ml/llama-sft \u00b7 log", "ml/llama-sft \u00b7 tensorflow",
                      "ml/llama-sft \u00b7 wandb run-a3b1799d"]
    seed_tf = next(c for c in got["columns"] if c["label"] == "ml/llama-sft \u00b7 tensorflow")
    assert sum(y is not None for y in seed_tf["ys"]) == STEPS
    # the same choices as a Workload page, in the URL
    page.fill("#smoothing", "0.5")
    page.wait("() => document.querySelector('figure.chart').dataset.smooth === '0.5'")
    csv = page.download("#csv-shown")["text"].strip().split("\r\n")
    series = {line.split(",")[1] for line in csv[1:]}
    assert series == set(labels)
    assert all(line.split(",")[8] != "" for line in csv[1:])  # the smoothed column is filled
    shot(page, artifacts, "compare.png", full_page=False)
    result = page.axe(AXE)
    assert not result["violations"], json.dumps(result["violations"], indent=1)
