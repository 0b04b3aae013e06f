"""The fleet view with 1,000 Workloads, in Debian's headless Chromium against the real API over a real store
(tests/fleetfixtures.py): every row is in the table with the store's step, progress and pace (scrolled through: the
table is windowed, only the rows near the viewport are in the DOM); failed/stalled first; sort, namespace and
search; deep links; a refresh rebuilds only the rows whose data changed; live over the fleet stream, polling
without it; every phase styled; axe-core clean.
How fast it renders is measured in bench/bench_dashboard.py, not asserted here."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainscope.api.app import ApiSettings
from trainscope.collector.points import Point
from trainscope.collector.store import Store

from apifixtures import create_database, drop_database, run_sync
from browser import Browser, Page, UiServer
from fleetfixtures import ALL_ROWS, TOTAL, FleetMember, fill_fleet

N = 1000
AXE = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}}
DOCS_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "images" / "dashboard"

ROWS = """() => [...document.querySelectorAll('#workloads tbody tr[data-uid]')].map((r) => ({
  uid: r.dataset.uid, rank: Number(r.dataset.rank), name: r.cells[1].textContent,
  progress: r.querySelector('progress') ? Number(r.querySelector('progress').value) : null,
  steps: r.querySelector('.steps')?.textContent.trim() ?? null, rate: r.cells[6].textContent,
  spark: r.querySelector('svg.spark path')?.getAttribute('d') ?? null}))"""


@pytest.fixture(scope="module")
def fleet(pg_url: str) -> Iterator[tuple[str, list[FleetMember]]]:
    url = run_sync(create_database(pg_url))
    try:
        yield url, run_sync(fill_fleet(url, N))
    finally:
        run_sync(drop_database(pg_url, url))


@pytest.fixture(scope="module")
def server(fleet: tuple[str, list[FleetMember]]) -> Iterator[UiServer]:
    with UiServer(ApiSettings(database_url=fleet[0])) as srv:
        yield srv


@pytest.fixture
def page(browser: Browser, server: UiServer) -> Iterator[Page]:
    p = browser.page()
    try:
        yield p
        assert not p.logs()["errors"]
    finally:
        p.close()


def loaded(page: Page, loads: int = 1) -> None:
    page.wait("(n) => Number(document.querySelector('#workloads')?.dataset.loads || 0) >= n", loads, timeout=60)


def test_every_workload_is_a_row_with_the_stores_facts_and_failing_ones_first(
        page: Page, server: UiServer, fleet: tuple[str, list[FleetMember]]) -> None:
    page.goto(server.url + "/")
    loaded(page)
    assert page.js("() => document.querySelector('#workloads').getAttribute('aria-rowcount')") == str(N + 1)
    in_dom = page.js(ROWS)
    assert 10 <= len(in_dom) <= 100  # windowed: the rows near the viewport, not 1,000
    got = page.js(ALL_ROWS)
    rows = got["rows"]
    assert got["maxDom"] <= 100
    assert [r["index"] for r in rows] == list(range(2, N + 2))  # each row once, aria-rowindex counting the header
    assert [r["uid"] for r in rows[:len(in_dom)]] == [r["uid"] for r in in_dom]
    members = {m.uid: m for m in fleet[1]}
    assert len(rows) == N and {r["uid"] for r in rows} == set(members)
    for r in rows:
        m = members[r["uid"]]
        assert r["name"] == f"{m.namespace}/{m.name}"
        assert r["steps"] == f"{m.last_step} / {TOTAL}"
        assert r["progress"] == pytest.approx(min(1.0, m.last_step / TOTAL))
        assert float(r["rate"]) == pytest.approx(1 / m.seconds_per_step, rel=1e-2)  # shown in 3 digits
        assert r["spark"] and r["spark"].count("L") == 31  # 32 points, one line
    # needs attention first: the 30 with Stalled / NonFiniteMetric, then the rest, each by namespace and name
    bad = {m.uid for m in fleet[1] if m.condition}
    assert len(bad) == 30 and {r["uid"] for r in rows[:30]} == bad
    stalled = {m.uid for m in fleet[1] if m.condition == "Stalled"}
    assert stalled and all((r["eta"] == "\u2013") == (r["uid"] in stalled) for r in rows)  # no guess once stalled
    assert [r["rank"] for r in rows] == sorted(r["rank"] for r in rows)
    assert [r["name"] for r in rows[30:]] == sorted(r["name"] for r in rows[30:])
    if os.environ.get("TRAINSCOPE_DOCS_SCREENSHOTS"):  # make screenshots: the picture in docs/dashboard.md
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(DOCS_SHOTS / "fleet.png", full_page=False)


def test_sort_filter_search_and_deep_link(page: Page, server: UiServer, fleet: tuple[str, list[FleetMember]]) -> None:
    page.goto(server.url + "/")
    loaded(page)
    page.click('button.sort[data-sort="progress"]')
    page.wait("() => document.querySelector('#workloads').dataset.sort === 'progress'")
    prog = [r["progress"] for r in page.js(ALL_ROWS)["rows"]]
    assert len(prog) == N and prog == sorted(prog)
    page.click('button.sort[data-sort="progress"]')  # again: descending
    page.wait("() => document.querySelector('#workloads').dataset.sort === 'progress:desc'")
    prog = [r["progress"] for r in page.js(ALL_ROWS)["rows"]]
    assert prog == sorted(prog, reverse=True)
    assert page.js("() => document.querySelector('th[aria-sort]').getAttribute('aria-sort')") == "descending"

    page.js("() => { const s = document.querySelector('#namespace'); s.value = 'team-3'; "
            "s.dispatchEvent(new Event('input')); }")
    page.wait("() => document.querySelector('#workloads').dataset.rows === '100'")
    team = page.js(ALL_ROWS)["rows"]
    assert len(team) == 100 and all(r["name"].startswith("team-3/") for r in team)
    page.fill("#filter", "Stalled")  # a raised condition is searchable; team-3 has none (i % 50 == 7: team-7)
    assert "No workload matches" in page.wait("() => document.querySelector('#workloads tbody td.empty')?.textContent")
    page.js("() => { const s = document.querySelector('#namespace'); s.value = ''; "
            "s.dispatchEvent(new Event('input')); }")
    got = page.wait("() => { const r = document.querySelectorAll('#workloads tbody tr[data-uid]'); "
                    "return r.length === 20 && [...r].map((x) => x.dataset.uid); }")
    assert sorted(got) == sorted(m.uid for m in fleet[1] if m.condition == "Stalled")
    url = page.url()
    assert "q=Stalled" in url and "sort=progress" in url and "dir=desc" in url
    page.goto(server.url + "/#/w/none")
    page.goto(url)
    loaded(page)
    restored = page.js("() => [document.querySelector('#filter').value, "
                       "document.querySelector('#workloads').dataset.sort, "
                       "document.querySelectorAll('#workloads tbody tr[data-uid]').length]")
    assert restored == ["Stalled", "progress:desc", 20]


def test_a_refresh_rebuilds_only_the_rows_that_changed(page: Page, server: UiServer,
                                                      fleet: tuple[str, list[FleetMember]]) -> None:
    page.goto(server.url + "/#/?q=fleet-050")  # fleet-0500..0509: both rows in view
    loaded(page)
    moving, still = fleet[1][500], fleet[1][501]
    page.js("(uids) => uids.forEach((u) => { document.querySelector(`tr[data-uid='${u}']`).__mark = u; })",
            [moving.uid, still.uid])
    loads = page.js("() => Number(document.querySelector('#workloads').dataset.loads)")

    async def one_more_point() -> None:
        store = await Store.open(fleet[0], migrate=False)
        try:
            step = moving.last_step + moving.stride
            await store.write(moving.uid, "tb", "tensorboard", [Point("train/loss", step, 1e9 + step, 0.25)], None)
        finally:
            await store.close()

    run_sync(one_more_point())
    loaded(page, loads + 1)  # the 5-second refresh
    page.wait(f"() => document.querySelector(`tr[data-uid='{moving.uid}'] .steps`).textContent.trim() === "
              f"'{moving.last_step + moving.stride} / {TOTAL}'", timeout=20)
    marks = page.js("(uids) => uids.map((u) => document.querySelector(`tr[data-uid='${u}']`).__mark ?? null)",
                    [moving.uid, still.uid])
    assert marks == [None, still.uid]  # the changed row is new, the unchanged one is the same element


async def _write_point(url: str, m: FleetMember, step: int) -> None:
    store = await Store.open(url, migrate=False)
    try:
        await store.write(m.uid, "tb", "tensorboard", [Point("train/loss", step, 1e9 + step, 0.125)], None)
    finally:
        await store.close()


def _api_gets(page: Page, name: str) -> int:
    return sum(1 for r in page.requests() if r["url"].split("?")[0].endswith(f"/api/v1/{name}"))


def test_the_fleet_is_live_over_the_stream_without_polling(page: Page, server: UiServer,
                                                          fleet: tuple[str, list[FleetMember]]) -> None:
    page.goto(server.url + "/#/?q=fleet-060")
    loaded(page)
    page.wait("() => document.querySelector('#workloads').dataset.live === 'open'", timeout=30)
    assert "live" in page.js("() => document.querySelector('#workloads caption').textContent")
    polls = _api_gets(page, "workloads"), _api_gets(page, "overview")
    m = fleet[1][600]
    step = m.last_step + 2 * m.stride
    spark_js = "(uid) => document.querySelector(`tr[data-uid='${uid}'] svg.spark path`).getAttribute('d')"
    before = page.js(spark_js, m.uid)
    run_sync(_write_point(fleet[0], m, step))
    events = page.js("() => Number(document.querySelector('#workloads').dataset.streamEvents || 0)")
    page.wait(f"() => Number(document.querySelector('#workloads').dataset.streamEvents || 0) > {events}", timeout=30)
    page.wait(f"() => document.querySelector(`tr[data-uid='{m.uid}'] .steps`)?.textContent.trim() === "
              f"'{step} / {TOTAL}'", timeout=30)
    # the sparkline was redrawn with the new point: the overview item came too
    page.wait(f"() => document.querySelector(`tr[data-uid='{m.uid}'] svg.spark path`).getAttribute('d') !== "
              f"{json.dumps(before)}", timeout=30)
    assert page.js(spark_js, m.uid).count("L") == 31
    # no GET /workloads or /overview since the stream opened: the event brought both
    assert (_api_gets(page, "workloads"), _api_gets(page, "overview")) == polls
    assert _api_gets(page, "overview/stream") == 1


def test_without_the_stream_the_fleet_falls_back_to_polling(page: Page, server: UiServer,
                                                           fleet: tuple[str, list[FleetMember]]) -> None:
    """An API without the stream route (an older server): the view polls every 5 s and still shows new steps."""
    page.route("**/api/v1/overview/stream*", json.dumps({"code": "NotFound", "message": "no such route"}), status=404)
    page.goto(server.url + "/#/?q=fleet-060")
    loaded(page)
    page.wait("() => document.querySelector('#workloads').dataset.live === 'closed'", timeout=30)
    assert "refreshes every 5 s" in page.js("() => document.querySelector('#workloads caption').textContent")
    m = fleet[1][601]
    step = m.last_step + 3 * m.stride
    run_sync(_write_point(fleet[0], m, step))
    loads = page.js("() => Number(document.querySelector('#workloads').dataset.loads)")
    loaded(page, loads + 1)  # the next poll
    page.wait(f"() => document.querySelector(`tr[data-uid='{m.uid}'] .steps`)?.textContent.trim() === "
              f"'{step} / {TOTAL}'", timeout=30)
    assert _api_gets(page, "workloads") >= 2 and not page.js("() => document.querySelector('#workloads').dataset"
                                                             ".streamEvents")


def test_tab_goes_on_past_the_rows_in_the_dom(page: Page, server: UiServer) -> None:
    """A keyboard user tabbing down the windowed table is never dropped out of it: focusing a row scrolls it into
    view, the window moves on, and Tab reaches the next row, which was not in the DOM before."""
    page.goto(server.url + "/")
    loaded(page)
    last = page.js("() => { const r = [...document.querySelectorAll('#workloads tbody tr[data-uid]')].pop(); "
                   "r.querySelector('th a').focus(); return Number(r.getAttribute('aria-rowindex')); }")
    assert last < N + 1  # rows after it exist, but are not in the DOM yet
    page.wait(f"() => document.querySelector(`#workloads tr[aria-rowindex='{last + 1}']`)", timeout=15)
    page.press("Tab")
    got = page.js("() => [document.activeElement.className, "
                  "Number(document.activeElement.closest('tr')?.getAttribute('aria-rowindex'))]")
    assert got == ["pick", last + 1]  # the next row's compare checkbox


def test_axe_on_a_namespace_of_the_fleet(page: Page, server: UiServer) -> None:
    page.goto(server.url + "/#/?ns=team-7")
    page.wait("() => document.querySelector('#workloads').dataset.rows === '100' "
              "&& document.querySelectorAll('#workloads tbody tr[data-uid]').length > 10", timeout=60)
    result = page.axe(AXE)
    assert not result["violations"], json.dumps(result["violations"], indent=1)


PHASES = ("Pending", "Collecting", "Succeeded", "Failed", "Degraded", "Suspended", "Deleted")


def test_every_phase_the_api_answers_has_its_own_chip_style(browser: Browser,
                                                            fleet: tuple[str, list[FleetMember]]) -> None:
    """The phases of operator/status.py's Phase (and Deleted) on the first seven Workloads, as `trainscope local`'s
    API answers them from the running collectors: none is left as plain text, Suspended is not styled as running,
    and the chips pass axe's contrast checks."""
    from trainscope.operator.status import Phase

    assert set(PHASES) == {v for k, v in vars(Phase).items() if k.isupper()} | {"Deleted"}
    phase_of = {m.uid: p for m, p in zip(fleet[1], PHASES, strict=False)}
    settings = ApiSettings(database_url=fleet[0],
                           live=lambda uid: {"phase": phase_of[uid]} if uid in phase_of else None)
    with UiServer(settings) as srv:
        p = browser.page()
        try:
            p.goto(srv.url + "/#/?q=fleet-000")  # the ten fleet-000x: seven with a phase, three without
            p.wait("() => document.querySelectorAll('#workloads tbody tr[data-uid]').length === 10", timeout=60)
            chips = p.js("""() => Object.fromEntries([...document.querySelectorAll('#workloads .phase')].map((el) => {
              const cs = getComputedStyle(el);
              return [el.textContent, [el.className, cs.color, cs.borderTopStyle, cs.textDecorationLine]];
            }))""")
            plain = p.js("() => getComputedStyle(document.querySelector('#workloads tbody td')).color")
            p.wait("() => document.querySelectorAll('#workloads tbody tr[data-uid] svg.spark path').length === 10")
            pace = p.js("""() => Object.fromEntries([...document.querySelectorAll('#workloads tbody tr[data-uid]')]
              .filter((r) => r.querySelector('.phase'))
              .map((r) => [r.querySelector('.phase').textContent,
                           [r.cells[5].textContent, r.cells[6].textContent]]))""")
            result = p.axe(AXE)
            assert not p.logs()["errors"]
            if os.environ.get("TRAINSCOPE_DOCS_SCREENSHOTS"):  # make screenshots: the phase chips in docs/dashboard.md
                p.screenshot(DOCS_SHOTS / "fleet-phases.png", full_page=False)
        finally:
            p.close()
    assert set(chips) == set(PHASES)
    for phase, (cls, color, _border, _deco) in chips.items():
        assert cls == f"phase phase-{phase}" and color != plain, phase  # a rule of its own, not inherited text
    assert chips["Suspended"][1] not in (chips["Collecting"][1], chips["Failed"][1], chips["Degraded"][1])
    assert chips["Suspended"][2] == "dashed" and chips["Deleted"][3] == "line-through"
    # a run that ended or is held shows no pace and no ETA (its last points' pace says nothing now); running ones do
    for phase, (eta, rate) in pace.items():
        ended = phase in ("Succeeded", "Failed", "Deleted", "Suspended")
        assert (rate == "\u2013") == ended and (eta == "\u2013") == ended, (phase, eta, rate)
    assert not result["violations"], json.dumps(result["violations"], indent=1)
