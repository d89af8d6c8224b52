"""Screenshots of the MLflow UI for docs/screenshots/ (a developer tool: not part of the package, not run in CI).

    python docs/screenshots/take.py --store runs --experiment quickstart [--runs RUN_NAME RUN_NAME]

--store is a local runs folder (the one holding mlflow.db), an mlflow.db file, a `sqlite:///...` URI, or the
`http(s)://` address of a running tracking server (then no server is started). The tool starts
`mlflow server` on that store on a free local port (127.0.0.1, one worker), opens the UI in headless
Chromium at 1600x1100 and writes, overwriting what is there:

    mlflow_runs_table.png        the experiment's runs table, run names in full
    mlflow_run_eval_curves.png   the first run's "Model metrics" tab filtered to "eval": accuracy, ECE and
                                 confidence per step (step 0 = the baseline)
    mlflow_run_figures.png       the first run's Artifacts tab with a figure shown (--figure, default the
                                 last iteration's plots/iter_NN/accuracy.png)
    mlflow_compare_two_runs.png  the two runs in the experiment's chart view, filtered to "eval": both
                                 runs' curves on the same axes, their names in each legend

--runs names the two runs (MLflow run names); by default the two most recent FINISHED runs of the
experiment (with only one finished run, the comparison is skipped). --out picks another folder.

Needs Debian's chromium and chromium-driver, and Selenium (not a project dependency):

    apt-get install -y chromium chromium-driver && pip install selenium

Exit 2 with one line on bad input (no such store, experiment or run; no finished run).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT = 1600, 1100
WAIT_S = 60  # longest wait for one element of the single-page app (a 2-core machine under load is slow)


class BadInput(Exception):
    """A store, experiment, run or figure that is not there: reported as one line, exit 2."""


def store_uri(store: str) -> str:
    """The tracking URI of --store: a URI as given; a folder -> sqlite:///<folder>/mlflow.db; a file -> sqlite."""
    if store.startswith("sqlite:///"):
        if not Path(store[len("sqlite:///"):]).is_file():  # MLflow would create an empty store there
            raise BadInput(f"{store}: no such file")
        return store
    if "://" in store:
        return store
    path = Path(store).resolve()
    if path.is_dir():
        path = path / "mlflow.db"
    if not path.is_file():
        raise BadInput(f"{store}: no MLflow store there (expected a runs folder with mlflow.db, an mlflow.db file or a URI)")
    return f"sqlite:///{path}"


def pick_runs(client: MlflowClient, experiment: str, names: list[str] | None, figure: str | None) -> tuple[str, list, list, str]:
    """(experiment id, [first run, second run or nothing], all its runs, figure artifact path of the first run)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise BadInput(f"experiment {experiment!r}: not in the store")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000)
    if names:
        by_name = {r.info.run_name: r for r in reversed(runs)}  # the latest run of a repeated name wins
        missing = [n for n in names if n not in by_name]
        if missing:
            raise BadInput(f"experiment {experiment!r}: no run named {', '.join(missing)}")
        chosen = [by_name[n] for n in names]
    else:
        chosen = [r for r in runs if r.info.status == "FINISHED"][:2]
        if not chosen:
            raise BadInput(f"experiment {experiment!r}: no FINISHED run yet (give --runs to use unfinished ones)")
    return found.experiment_id, chosen, runs, figure or default_figure(client, chosen[0].info.run_id)


def default_figure(client: MlflowClient, run_id: str) -> str:
    """The last iteration's plots/iter_NN/accuracy.png, else the last PNG under plots/."""
    try:
        iters = sorted(f.path for f in client.list_artifacts(run_id, "plots") if f.is_dir)
    except Exception as exc:  # an artifact location this machine cannot read
        raise BadInput(f"run {run_id}: cannot list its artifacts ({exc}); for a copied runs folder run "
                       "`python -m drivers.tracking relocate RUNS_DIR` first") from None
    pngs = []
    for folder in iters:
        pngs += [f.path for f in client.list_artifacts(run_id, folder) if f.path.endswith(".png")]
    if not pngs:
        raise BadInput(f"run {run_id}: no figure under plots/ in its artifacts (give --figure PATH)")
    accuracy = [p for p in pngs if p.endswith("/accuracy.png")]
    return (accuracy or pngs)[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(uri: str):
    """Yield the UI's base URL: `uri` itself for a server, else a local `mlflow server` on that store,
    stopped (its whole process group) on exit. Its log goes to a temporary folder, also its cwd, so
    that nothing is written in the current directory; the folder is removed unless something failed."""
    if uri.startswith(("http://", "https://")):
        yield uri.rstrip("/")
        return
    port, workdir = free_port(), tempfile.mkdtemp(prefix="mlflow-ui-")
    log = open(Path(workdir) / "server.log", "w")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base, ok = f"http://127.0.0.1:{port}", False
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise BadInput(f"mlflow server exited with {proc.returncode}; see {log.name}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(base + "/health", timeout=5).status == 200:
                    break
            if time.monotonic() > deadline:
                raise BadInput(f"mlflow server not up after 180 s; see {log.name}")
            time.sleep(1)
        print(f"mlflow server on {base} (log {log.name})")
        yield base
        ok = True
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)


def browser():
    """Headless Chromium with a 1600x1100 viewport (the page, not the window, has that size)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BadInput("selenium is not installed: pip install selenium") from None
    for path in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(path).is_file():
            raise BadInput(f"{path}: missing; apt-get install -y chromium chromium-driver")

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    return driver


class UI:
    """The pages of the MLflow 3 UI that the screenshots need, with explicit waits on their elements."""

    ASSISTANT_CLOSE = 'button[data-component-id="mlflow.assistant.chat_panel.close"]'
    CHART_SEARCH = 'input[placeholder="Search metric charts"]'
    CHART_CARD = '[data-testid="experiment-view-compare-runs-card"]'
    SIDEBAR_TOGGLE = 'button[data-component-id="mlflow_header.toggle_sidebar_button"]'

    def __init__(self, driver, base: str, experiment_id: str):
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.base, self.exp = driver, base, experiment_id
        self.wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.25, ignored_exceptions=[StaleElementReferenceException])

    def prepare(self) -> None:
        """Open the UI once and store its preferences in the browser (MLflow 3 keeps them in localStorage):
        the "Model training" side bar (runs, models) rather than the GenAI one, and the MLflow Assistant
        panel closed. Keys MLflow no longer reads do no harm: tidy() still closes the panel."""
        self.open("/")
        self.d.execute_script("""
            localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'));
            localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
            localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
        """)

    def open(self, fragment: str) -> None:
        self.d.get(f"{self.base}/#{fragment}")
        self.wait.until(lambda d: d.execute_script("return document.readyState") == "complete")

    def css(self, selector: str):
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.common.by import By

        return self.wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, selector)))

    def tidy(self) -> None:
        """Close the MLflow Assistant side panel (open by default in MLflow 3) when it is there."""
        from selenium.webdriver.common.by import By

        for button in self.d.find_elements(By.CSS_SELECTOR, self.ASSISTANT_CLOSE):
            with contextlib.suppress(Exception):
                button.click()
        self.wait.until(lambda d: not [b for b in d.find_elements(By.CSS_SELECTOR, self.ASSISTANT_CLOSE) if b.is_displayed()])

    def settle(self) -> None:
        """Let the last layout and chart transitions finish: two animation frames and 300 ms."""
        self.d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(done, 300)));")

    def shot(self, path: Path) -> None:
        self.d.execute_script("document.activeElement && document.activeElement.blur()")  # no text cursor
        self.settle()
        self.d.save_screenshot(str(path))
        print(f"wrote {path}")

    def filter_charts(self, text: str, expect: list[str]) -> None:
        """Type `text` in the chart search box; wait until every card shown mentions it (in its title or
        legend), there is a card titled with each of `expect` (the eval metric names) and every card in view
        has drawn its lines (plotly draws a chart only once it scrolls into view)."""
        box = self.css(self.CHART_SEARCH)
        box.clear()
        box.send_keys(text)

        def ready(d):  # one script, so that a card re-rendered meanwhile cannot go stale under us
            return d.execute_script("""
                const [text, expect, height] = arguments;
                const cards = [...document.querySelectorAll('%s')].filter(c => c.offsetParent !== null);
                const titles = cards.map(c => c.innerText.split('\\n')[0]).join(' ');
                if (!cards.length || !expect.every(e => titles.includes(e))) return false;
                if (!cards.every(c => c.innerText.toLowerCase().includes(text))) return false;
                return cards.filter(c => c.getBoundingClientRect().top + 100 < height)
                            .every(c => c.querySelector('.js-plotly-plot .scatterlayer .trace path.js-line'));
            """ % self.CHART_CARD, text.lower(), expect, HEIGHT)

        self.wait.until(ready)

    def columns(self, hide: list[str], show: list[str]) -> None:
        """Untick the attribute columns `hide` and tick the columns `show` (ag-grid column ids, e.g.
        metrics.`eval/test_accuracy`) in the table's Columns menu; wait until the table has them."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        def has(d, col_id):
            return bool(d.find_elements(By.CSS_SELECTOR, f'.ag-header-cell[col-id="{col_id}"]'))

        for name in hide + show:
            title = name.split("`")[1] if "`" in name else name
            self.css('[data-testid="column-selection-dropdown"]').click()
            search = self.css('input[placeholder="Search columns"]')
            search.send_keys(Keys.CONTROL, "a")
            search.send_keys(title)
            self.wait.until(lambda d: d.find_elements(By.XPATH, f"//span[contains(@class,'tree-title') and normalize-space(.)='{title}']"))
            self.d.find_element(By.XPATH, f"//span[contains(@class,'tree-title') and normalize-space(.)='{title}']").click()
            search.send_keys(Keys.ESCAPE)
            if name in show:
                self.wait.until(lambda d: has(d, name))
            else:
                self.wait.until(lambda d: not d.find_elements(By.XPATH, f"//div[contains(@class,'ag-header-cell')]//span[normalize-space(.)='{title}']"))

    def widen(self, header: str, width: int) -> None:
        """Drag the resize handle of the table column whose header cell `header` (CSS, or XPath when it
        starts with //) finds, until the column is `width` pixels wide (never narrower than it is)."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        cell = self.wait.until(lambda d: d.find_element(By.XPATH if header.startswith("//") else By.CSS_SELECTOR, header))
        extra = width - cell.size["width"]
        if extra > 0:
            handle = cell.find_element(By.CSS_SELECTOR, ".ag-header-cell-resize")
            ActionChains(self.d).click_and_hold(handle).move_by_offset(extra // 2, 0).move_by_offset(extra - extra // 2, 0).release().perform()
            self.wait.until(lambda d: cell.size["width"] >= width - 2)

    def runs_table(self, run_names: list[str], chosen: list[str], columns: list[str], path: Path) -> None:
        """run_names: all the experiment's runs (the Run Name column is made as wide as the longest); chosen:
        the runs that must be seen in full; columns: eval/* keys to add as columns."""
        from selenium.webdriver.common.by import By

        self.open(f"/experiments/{self.exp}/runs?compareRunsMode=TABLE&workflowType=machine_learning")
        self.css('[data-testid="sort-header-Run Name"]')
        self.tidy()
        self.wait.until(lambda d: all(d.find_elements(By.XPATH, f"//a[contains(., '{n[:12]}')]") for n in chosen))
        self.columns(hide=["Dataset", "Models"], show=[f"metrics.`eval/{k}`" for k in columns])
        # ag-grid cuts names at the column's width (Run Name: 190 px): widen the columns to their text.
        self.widen('.ag-header-cell[col-id="attributes.`Run Name`"]', 8 * max(len(n) for n in run_names) + 60)
        self.widen("//div[contains(@class,'ag-header-cell')][.//span[normalize-space(.)='Source']]", 360)
        for key in columns:
            self.widen(f'.ag-header-cell[col-id="metrics.`eval/{key}`"]', 8 * len(f"eval/{key}") + 40)
        self.wait.until(lambda d: all(d.find_elements(By.XPATH, f"//a[normalize-space(.)='{n}']") for n in chosen))
        self.shot(path)

    def run_eval_curves(self, run_id: str, expect: list[str], path: Path) -> None:
        self.open(f"/experiments/{self.exp}/runs/{run_id}/model-metrics")
        self.css(self.CHART_SEARCH)
        self.tidy()
        self.filter_charts("eval", expect)
        self.shot(path)

    def run_figure(self, run_id: str, figure: str, path: Path) -> None:
        self.open(f"/experiments/{self.exp}/runs/{run_id}/artifacts/{figure}")
        self.css('[data-testid="artifact-tree-node"]')
        self.tidy()
        # The viewer titles the artifact with its path and shows it as an <img> of a blob: URL.
        self.wait.until(lambda d: d.execute_script("""
            const [figure] = arguments;
            return document.body.innerText.includes(figure) &&
                   [...document.images].some(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 100);
        """, figure))
        self.shot(path)

    def compare_two(self, run_ids: list[str], expect: list[str], path: Path) -> None:
        from selenium.webdriver.common.by import By

        # MLflow's search accepts IN for run ids only, not for run names.
        ids = ", ".join(f"'{i}'" for i in run_ids)
        query = urllib.parse.urlencode({"searchFilter": f"attributes.run_id IN ({ids})", "compareRunsMode": "CHART",
                                        "workflowType": "machine_learning"},
                                       quote_via=urllib.parse.quote)
        self.open(f"/experiments/{self.exp}/runs?{query}")
        self.css(self.CHART_SEARCH)
        self.tidy()
        # Fold the side bar: wider charts, so that each legend shows both run names in full.
        self.css(self.SIDEBAR_TOGGLE).click()
        self.wait.until(lambda d: not d.find_elements(By.XPATH, "//nav//a[normalize-space(.)='Models']"))
        self.filter_charts("eval", expect)
        self.shot(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="runs folder, mlflow.db, sqlite:/// URI or http(s):// server")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--runs", nargs="+", metavar="RUN_NAME", help="one or two run names (default: the two latest finished)")
    parser.add_argument("--figure", help="artifact path of the figure to show (default: last plots/iter_NN/accuracy.png)")
    parser.add_argument("--out", default=str(HERE), help="folder for the PNGs (default: docs/screenshots)")
    args = parser.parse_args(argv)
    try:
        if args.runs and len(args.runs) > 2:
            raise BadInput(f"--runs: one or two run names, got {len(args.runs)}")
        uri = store_uri(args.store)
        client = MlflowClient(tracking_uri=uri)
        experiment_id, runs, every_run, figure = pick_runs(client, args.experiment, args.runs, args.figure)
        names = [r.info.run_name for r in runs]
        eval_keys = sorted({k.split("/", 1)[1] for r in runs for k in r.data.metrics if k.startswith("eval/")})
        if not eval_keys:
            raise BadInput(f"run {names[0]}: no eval/* metrics")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        print(f"runs: {', '.join(names)}; figure: {figure}")
        with mlflow_server(uri) as base:
            driver = browser()
            from selenium.common.exceptions import TimeoutException

            try:
                ui = UI(driver, base, experiment_id)
                ui.prepare()
                ui.runs_table([r.info.run_name for r in every_run], names, [k for k in ("val_accuracy", "test_accuracy") if k in eval_keys], out / "mlflow_runs_table.png")
                ui.run_eval_curves(runs[0].info.run_id, eval_keys, out / "mlflow_run_eval_curves.png")
                ui.run_figure(runs[0].info.run_id, figure, out / "mlflow_run_figures.png")
                if len(runs) == 2:
                    ui.compare_two([r.info.run_id for r in runs], eval_keys, out / "mlflow_compare_two_runs.png")
                else:
                    print("one run only: no comparison screenshot")
            except TimeoutException:
                failed = Path(tempfile.mkdtemp(prefix="mlflow-ui-")) / "timed_out.png"
                driver.save_screenshot(str(failed))
                print(f"error: the page did not show what was waited for within {WAIT_S} s: {driver.current_url} "
                      f"(as it was: {failed})", file=sys.stderr)
                return 1
            finally:
                driver.quit()
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
