"""The fleet view's speed in Debian's headless Chromium: time to first paint and to interactive at 10, 100 and 1,000
Workloads, for this dashboard and for the baseline, the previous dashboard's list (the bundle committed in git
`main`'s api/static, or --baseline-ref), served by the same API over the same store, in turns (ABAB...), medians.

- First paint: the browser's first-contentful-paint entry (ms after navigation start).
- Interactive: the table holds its rows — all N in the DOM for a table drawn whole (the baseline), the ones in and
  near the viewport for a windowed one (this dashboard: the rest are put in as the page scrolls) — with the
  table's row count saying N, and the frame after it has been painted (an init script observes the table from
  navigation start: the same measure for both bundles).
- Verified before a figure is kept: scrolled through a screen at a time, the table shows exactly the N workloads'
  uids (tests/fleetfixtures.py ALL_ROWS), each once.

One embedded PostgreSQL (pgserver, a temporary folder), filled by tests/fleetfixtures.py through the store. Prints
os.getloadavg() with every figure. Also prints the bundle's gzipped size. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from trainscope.api.app import ApiSettings  # noqa: E402
from trainscope.api.ui import STATIC_DIR, mount_ui  # noqa: E402

from apifixtures import ThreadedServer  # noqa: E402
from browser import Browser  # noqa: E402
from fleetfixtures import ALL_ROWS, fill_fleet  # noqa: E402

# Runs in the page before its scripts: when the table first holds its rows (`want` of them, or a window of them
# while its data-rows says `want`), note the time and the next painted frame (a rAF then a task: the frame with
# those rows has been produced).
OBSERVE = """
(() => {
  const want = Number(new URLSearchParams(location.search).get('n'));
  window.__fleet = {};
  const check = () => {
    const rows = document.querySelectorAll('#workloads tbody tr[data-uid]').length;
    const table = document.querySelector('#workloads');
    const windowed = table && table.classList.contains('windowed') && Number(table.dataset.rows) === want;
    if ((rows >= want || (windowed && rows > 0)) && window.__fleet.rows === undefined) {
      window.__fleet.rows = performance.now();
      requestAnimationFrame(() => setTimeout(() => { window.__fleet.painted = performance.now(); }, 0));
    }
  };
  new MutationObserver(check).observe(document, { childList: true, subtree: true });
})();
"""


def baseline_bundle(ref: str, into: Path) -> Path:
    """The committed api/static of `ref`, extracted with git."""
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", ref, "api/static"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        data = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{name}"], check=True,
                              capture_output=True).stdout
        out = into / Path(name).relative_to("api/static")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return into


class BaselineServer(ThreadedServer):
    """The same API with another dashboard bundle at `/`."""

    def __init__(self, settings: ApiSettings, bundle: Path):
        super().__init__(settings)
        self._bundle = bundle

    def __enter__(self) -> BaselineServer:
        import trainscope.api.server as server_mod

        real = server_mod.create_app

        def with_bundle(settings: ApiSettings):  # the API's app, its `/` and `/assets` from `bundle`
            app = real(settings)
            app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in ("/", "/assets")]
            mount_ui(app, self._bundle)
            return app

        server_mod.create_app = with_bundle
        try:
            return super().__enter__()  # type: ignore[return-value]
        finally:
            server_mod.create_app = real


async def create_database(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def measure(browser: Browser, url: str, n: int, uids: set[str],
            ours: bool = True) -> tuple[float, float, dict[str, int]]:
    page = browser.page(init_script=OBSERVE)
    try:
        page.goto(f"{url}/?n={n}#/")
        page.wait("() => window.__fleet && window.__fleet.painted !== undefined", timeout=120)
        if ours:  # the sparklines in too: a full first load
            page.wait("() => Number(document.querySelector('#workloads').dataset.loads || 0) >= 1", timeout=120)
        fcp, painted, api_ms = page.js("""() => [performance.getEntriesByName('first-contentful-paint')[0]?.startTime,
          window.__fleet.painted, Object.fromEntries(performance.getEntriesByType('resource')
            .filter((e) => e.name.includes('/api/v1/')).map((e) => [new URL(e.name).pathname.split('/').pop(),
              Math.round(e.duration)]))]""")
        api_ms["rows_to_painted"] = round(page.js("() => window.__fleet.painted - window.__fleet.rows"))
        if ours:
            t = page.js("() => document.querySelector('#workloads').dataset")
            api_ms = {**api_ms, "render_list": int(t["firstRenderMs"]), "render_with_sparklines": int(t["renderMs"])}
            api_ms["rows_in_dom"] = page.js("() => document.querySelectorAll('#workloads tbody tr[data-uid]').length")
        seen = [r["uid"] for r in page.js(ALL_ROWS)["rows"]]  # after the timings: scrolling changes the page
        assert len(seen) == n and set(seen) == uids, f"the table does not show the {n} workloads"
        return fcp, painted, api_ms
    finally:
        page.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline-ref", default="main")
    args = ap.parse_args()
    from trainscope.collector.store.embedded import start_embedded

    js = sum(len(gzip.compress(p.read_bytes(), 9)) for p in (STATIC_DIR / "assets").iterdir())
    print(f"bundle (api/static/assets, gzip -9): {js / 1024:.1f} KiB")
    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-dash-"))
    base = baseline_bundle(args.baseline_ref, tmp / "baseline")
    pg = start_embedded(tmp / "pgdata", cleanup_mode="delete")
    browser = Browser()
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            asyncio.run(create_database(pg.get_uri(), f"fleet{n}"))
            dburl = pg.get_uri(f"fleet{n}")
            t = time.perf_counter()
            uids = {m.uid for m in asyncio.run(fill_fleet(dburl, n))}
            print(f"\n{n} workloads stored in {time.perf_counter() - t:.1f}s")
            ours: list[tuple[float, float, dict[str, int]]] = []
            theirs: list[tuple[float, float, dict[str, int]]] = []
            settings = ApiSettings(database_url=dburl)
            with ThreadedServer(settings) as new, BaselineServer(settings, base) as old:
                measure(browser, new.url, n, uids)  # warm both (pool, caches) before the rounds
                measure(browser, old.url, n, uids, ours=False)
                for _ in range(args.rounds):
                    ours.append(measure(browser, new.url, n, uids))
                    theirs.append(measure(browser, old.url, n, uids, ours=False))
            for label, runs in (("this dashboard", ours), (f"baseline ({args.baseline_ref}'s list)", theirs)):
                fcp = statistics.median(r[0] for r in runs)
                tti = statistics.median(r[1] for r in runs)
                calls = {k: statistics.median(r[2].get(k, 0) for r in runs) for k in runs[0][2]}
                print(f"  {label:32s} first paint {fcp:7.0f} ms   interactive {tti:7.0f} ms   "
                      f"(medians of {len(runs)}; load {os.getloadavg()[0]:.2f}); API calls, ms: {calls}")
            ratio = statistics.median(r[1] for r in ours) / statistics.median(r[1] for r in theirs)
            print(f"  interactive, ours / baseline: {ratio:.2f}")
    finally:
        browser.close()
        pg.cleanup()


if __name__ == "__main__":
    main()
