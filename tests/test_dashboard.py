"""`rsi serve` in a real headless Chromium (Debian's chromium and chromium-driver, driven by selenium), over a
ledger made by a real short research; and `rsi export` to TSV, CSV, JSON and a local MLflow store."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import create_task, rsi

from rsi.ledger import Ledger
from rsi.program import original_text
from rsi.status import experiment_status

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TRAIN = """\
import os, random
lr = 0.5
DEPTH = 3
if DEPTH > 8:
    raise SystemExit("too deep: out of memory")
random.seed(int(os.environ["RSI_SEED"]))
loss = (lr - 0.12) ** 2 * 10 + 0.1 * (DEPTH - 7) ** 2
print(f"loss: {loss + random.gauss(0, 0.01):.6f}")
open("out.txt", "w").write(str(loss))
"""
HOLDOUT = """\
import os, random
random.seed(int(os.environ["RSI_SEED"]) + 1)
print(f"test_loss: {float(open('out.txt').read()) * 1.05 + random.gauss(0, 0.01):.6f}")
"""
HOLDOUT_TOML = f"""
[holdout]
command = "{sys.executable} holdout.py"
pattern = '^test_loss:\\s*(\\S+)'
"""
FIRST = 10  # experiments of the research the pages are tested on


@pytest.fixture(scope="module")
def researched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A task with a held-out check and candidates that crash, researched for real. Whether a crash comes within
    the first experiments depends on the proposals, so the research uses the frozen original program (whose
    proposals here reach DEPTH > 8), not the shipped default that rsi meta may change."""
    folder = tmp_path_factory.mktemp("dash")
    root = create_task(folder / "task", TRAIN, HOLDOUT_TOML, {"holdout.py": HOLDOUT})
    (folder / "original.py").write_text(original_text())
    done = rsi("run", str(root), "--max-experiments", str(FIRST), "--program", str(folder / "original.py"))
    assert done.returncode == 0, done.stderr
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(
    root: Path, *extra: str, context: ssl.SSLContext | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`rsi serve` on a free port, once it answers (over HTTPS with `context`, the client's trust)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsi", "serve", str(root), "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"{'https' if context else 'http'}://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "favicon.ico", timeout=2, context=context)
                break
            except urllib.error.HTTPError:  # answered (a token is asked): it is up
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "rsi serve did not come up"
                time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
def browser(chrome: Any) -> Iterator[Any]:
    """The browser on a blank page, with the console of the tests before forgotten; blank again afterwards,
    so a page of this test does not poll a server that is gone when the next one starts."""
    chrome.get("about:blank")
    chrome.get_log("browser")
    yield chrome
    chrome.get("about:blank")


def wait_for(browser: Any, script: str, timeout: float = 30) -> Any:
    """Polls a JavaScript expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = browser.execute_script(f"return ({script});")
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.2)


def errors(browser: Any) -> list[dict[str, Any]]:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


PAGES = ("#/", "#/experiments", "#/experiment/0", "#/experiment/1", "#/lineage", "#/proposers", "#/noise")


@pytest.mark.slow
def test_every_page_loads_without_console_errors_and_shows_the_research(researched: Path, browser: Any) -> None:
    ledger = Ledger(researched / ".rsi" / "ledger.sqlite", readonly=True)
    exps = ledger.experiments()
    measured = [e for e in exps if e.mean() is not None and e.status in (None, "ok")]
    failed = [e for e in exps if e.state == "done" and e.mean() is None]
    assert failed, "the task was meant to have crashing candidates"
    with served(researched) as (base, _):
        browser.get(base)
        wait_for(browser, "document.querySelectorAll('#chart circle.point').length > 0")
        for page in PAGES:
            browser.execute_script(f"location.hash = '{page}';")
            wait_for(
                browser,
                "document.querySelector('#main').children.length > 0 && !document.body.innerText.includes('loading…')",
            )
            time.sleep(0.3)
            assert errors(browser) == [], page
            assert "rsi · quad · loss" in browser.find_element("id", "title").text
        browser.execute_script("location.hash = '#/';")
        points = wait_for(browser, "document.querySelectorAll('#chart circle.point').length")
        assert points == len(measured)
        assert browser.execute_script("return document.querySelectorAll('#chart .crash').length") == len(failed)
        assert browser.execute_script("return document.querySelectorAll('#chart .line-metric').length") == 1
        assert browser.execute_script("return document.querySelectorAll('#chart .line-holdout').length") == 1
        browser.execute_script("location.hash = '#/experiments';")
        ids = wait_for(browser, "[...document.querySelectorAll('#experiments tbody tr')].map(r => +r.dataset.id)")
        assert sorted(ids) == [e.id for e in exps]
        # the filters narrow the table to what the ledger says
        browser.find_element("id", "f-status").send_keys("crash")
        shown = wait_for(browser, "[...document.querySelectorAll('#experiments tbody tr')].map(r => +r.dataset.id)")
        assert sorted(shown) == [e.id for e in exps if experiment_status(e) == "crash"]
        browser.execute_script("location.hash = '#/lineage';")
        lineage_ids = wait_for(browser, "[...document.querySelectorAll('#tree li')].map(li => +li.dataset.id)")
        assert sorted(lineage_ids) == [e.id for e in exps]
        assert errors(browser) == []


@pytest.mark.slow
def test_a_diff_renders_with_its_runs_and_reasoning(researched: Path, browser: Any) -> None:
    ledger = Ledger(researched / ".rsi" / "ledger.sqlite", readonly=True)
    kept = next(e for e in ledger.experiments() if e.verdict == "keep")
    with served(researched) as (base, _):
        browser.get(f"{base}#/experiment/{kept.id}")
        added = wait_for(browser, "[...document.querySelectorAll('.diff .add')].map(s => s.textContent)")
        removed = browser.execute_script("return [...document.querySelectorAll('.diff .del')].map(s => s.textContent)")
        want = [line for line in kept.diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
        assert added == want and removed
        seeds = browser.execute_script(
            "return [...document.querySelectorAll('#runs tbody tr')].map(r => +r.cells[2].textContent)"
        )
        assert sorted(seeds) == sorted(r.seed for r in kept.runs)
        assert browser.find_element("id", "reason").text == kept.reason
        assert errors(browser) == []


def test_held_out_figures_only_where_the_report_shows_them(researched: Path) -> None:
    with served(researched) as (base, _):
        _, state = get(base + "api/state")
        for row in state["experiments"]:
            if row["group"] != "champion":
                assert row["holdout"] is None, row
                _, one = get(base + f"api/experiments/{row['id']}")
                assert all(r["kind"] != "holdout" for r in one["runs"]), row
        assert any(r["holdout"] is not None for r in state["experiments"])
        assert get(base + "api/experiments/999")[0] == 404
        assert "env" not in json.dumps(state)


@pytest.mark.slow
def test_an_experiment_added_while_the_page_is_open_appears_without_a_reload(researched: Path, browser: Any) -> None:
    with served(researched) as (base, _):
        browser.get(base + "#/experiments")
        before = wait_for(browser, "document.querySelectorAll('#experiments tbody tr').length")
        browser.execute_script("window.stillTheSamePage = 42;")
        more = rsi("run", str(researched), "--max-experiments", str(before + 3))
        assert more.returncode == 0, more.stderr
        wait_for(browser, f"document.querySelectorAll('#experiments tbody tr').length === {before + 3}")
        assert browser.execute_script("return window.stillTheSamePage") == 42  # no reload happened
        assert errors(browser) == []


def test_off_loopback_every_request_needs_the_token(researched: Path) -> None:
    with served(researched, "--host", "0.0.0.0", "--token", "s3cret") as (base, _):
        assert get(base + "api/state")[0] == 401
        assert get(base + "api/state?token=wrong")[0] == 401
        assert get(base + "api/state?token=s3cret")[0] == 200
        assert get(base + "api/state", {"Authorization": "Bearer s3cret"})[0] == 200
        with urllib.request.urlopen(base + "?token=s3cret", timeout=10) as page:
            cookie = page.headers["set-cookie"]
            assert "rsi_token=s3cret" in cookie and "secure" not in cookie.lower()  # a browser keeps it over HTTP
    with served(researched, "--host", "0.0.0.0") as (base, proc):
        assert get(base + "api/state")[0] == 401
        proc.terminate()
        printed, _ = proc.communicate(timeout=20)
        token = printed.split("?token=", 1)[1].split()[0]
        assert len(token) >= 20 and "in clear" in printed  # it says the token travels in clear
    with served(researched) as (base, _):  # loopback: none needed
        assert get(base + "api/state")[0] == 200


def self_signed(folder: Path, name: str = "rsi") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command (.ci/run installs it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed (.ci/run installs it)")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    names = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    made = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", *names, *made], check=True)
    return cert, key


@pytest.mark.slow
def test_with_a_certificate_it_serves_https_and_the_token_cookie_is_secure(researched: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trusted = ssl.create_default_context(cafile=str(cert))
    tls = ["--host", "0.0.0.0", "--token", "s3cret", "--cert", str(cert), "--key", str(key)]
    with served(researched, *tls, context=trusted) as (base, proc):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "api/state", timeout=10, context=trusted)
        assert refused.value.code == 401
        refused.value.close()  # an open answer would keep the server from stopping
        with urllib.request.urlopen(base + "?token=s3cret", timeout=10, context=trusted) as page:
            cookie = page.headers["set-cookie"]
            assert "rsi_token=s3cret" in cookie and "secure" in cookie.lower()
        with urllib.request.urlopen(base + "api/state?token=s3cret", timeout=10, context=trusted) as r:
            assert r.status == 200 and "experiments" in json.loads(r.read())
        plain = base.replace("https://", "http://")
        with pytest.raises((OSError, http.client.HTTPException)):  # plain HTTP gets no answer from it
            urllib.request.urlopen(plain + "api/state?token=s3cret", timeout=10)
        proc.terminate()
        printed, _ = proc.communicate(timeout=20)
    port = base.rsplit(":", 1)[1].strip("/")
    assert f"at https://0.0.0.0:{port}/?token=s3cret" in printed and "in clear" not in printed


def test_serve_refuses_a_half_or_wrong_certificate_in_one_line(tmp_path: Path) -> None:
    task = tmp_path / "task"
    task.mkdir()
    (task / "rsi.toml").write_text("")  # the certificate is checked before anything is read
    cert, key = self_signed(tmp_path)
    other_cert, other_key = self_signed(tmp_path, "other")
    locked = tmp_path / "locked.key"
    openssl = shutil.which("openssl")
    assert openssl is not None
    subprocess.run([openssl, "pkey", "-in", str(key), "-out", str(locked), "-aes256", "-passout", "pass:x"], check=True)
    cases = [
        (["--cert", str(cert)], "go together"),
        (["--cert", str(tmp_path / "none.pem"), "--key", str(key)], "no such file"),
        (["--cert", str(tmp_path), "--key", str(key)], "not a file"),
        (["--cert", str(cert), "--key", str(other_key)], "does not belong to the certificate"),
        (["--cert", str(key), "--key", str(key)], "not a PEM certificate"),
        (["--cert", str(cert), "--key", str(locked)], "is encrypted"),
    ]
    for extra, says in cases:
        done = rsi("serve", str(task), "--port", str(free_port()), *extra)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert says in done.stderr, (extra, done.stderr)
    assert other_cert.exists()


def test_serve_without_a_task_or_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    done = rsi("serve", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "Traceback" not in done.stderr and "does not exist" in done.stderr
    done = rsi("serve", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr and "no rsi task" in done.stderr
    (tmp_path / "rsi.toml").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = rsi("serve", str(tmp_path), "--port", str(taken.getsockname()[1]))
    # one line, and no line before it saying where the dashboard is
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done
    assert "cannot serve on 127.0.0.1" in done.stderr


def test_exports_in_autoresearch_shape_and_as_tables(researched: Path, tmp_path: Path) -> None:
    exps = Ledger(researched / ".rsi" / "ledger.sqlite", readonly=True).experiments()
    tsv = rsi("export", str(researched), "--format", "tsv")
    assert tsv.returncode == 0, tsv.stderr
    lines = tsv.stdout.splitlines()
    assert lines[0] == "commit\tloss\tmemory_gb\tstatus\tdescription"
    rows = [line.split("\t") for line in lines[1:]]
    ran = [e for e in exps if e.commit_sha or e.kept_commit]
    assert len(rows) == len(ran) and all(len(r) == 5 for r in rows)
    assert rows[0][3] == "keep" and rows[0][4] == "baseline"
    by_status = {s: sum(1 for r in rows if r[3] == s) for s in ("keep", "discard", "crash")}
    assert by_status["keep"] == 1 + sum(1 for e in exps if e.verdict == "keep")
    assert by_status["crash"] >= 1 and all(r[1] == "0.000000" for r in rows if r[3] == "crash")
    out = tmp_path / "all.csv"
    assert rsi("export", str(researched), "--format", "csv", "--out", str(out)).returncode == 0
    assert len(out.read_text().splitlines()) == len(exps) + 1
    as_json = json.loads(rsi("export", str(researched), "--format", "json").stdout)
    assert [r["id"] for r in as_json] == [e.id for e in exps]
    bad = rsi("export", str(researched), "--format", "xlsx")
    assert bad.returncode == 2 and "tsv, csv or json" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_export_to_a_local_mlflow_store_reads_back(researched: Path, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    exps = Ledger(researched / ".rsi" / "ledger.sqlite", readonly=True).experiments()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = rsi("export", str(researched), "--mlflow", uri)
    assert done.returncode == 0, done.stderr
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    tag = Ledger(researched / ".rsi" / "ledger.sqlite", readonly=True).get("tag")
    assert tag is not None
    exp = client.get_experiment_by_name("rsi/quad/" + tag)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == len([e for e in exps if e.state == "done"])
    kept = next(e for e in exps if e.verdict == "keep")
    mine = next(r for r in runs if r.data.tags["rsi.experiment"] == str(kept.id))
    assert mine.data.tags["rsi.verdict"] == "keep" and mine.data.metrics["loss"] == pytest.approx(kept.mean())
    assert set(mine.data.params) >= {"proposer", *kept.params}
    diff = Path(
        mlflow.artifacts.download_artifacts(
            run_id=mine.info.run_id, artifact_path="diff.patch", tracking_uri=uri, dst_path=str(tmp_path / "a")
        )
    )
    assert diff.read_text() == kept.diff
    again = rsi("export", str(researched), "--mlflow", uri)
    assert again.returncode == 0 and "logged 0 experiment" in again.stdout
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == len(runs)
    both = rsi("export", str(researched), "--mlflow", uri, "--format", "csv")
    assert both.returncode == 2 and "takes no --format or --out" in both.stderr


def test_export_to_an_mlflow_server_that_does_not_answer_is_one_line_at_once(researched: Path) -> None:
    pytest.importorskip("mlflow")
    with socket.socket() as s:  # a port of 127.0.0.1 nothing listens on once this is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    direct = {"http_proxy": "", "HTTP_PROXY": ""}  # (through a proxy, the probe leaves it to MLflow's client)
    p = rsi("export", str(researched), "--mlflow", f"http://127.0.0.1:{port}", env=direct)
    # (MLflow's own client retries such a server for minutes before it says anything)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"rsi: cannot reach the MLflow server at http://127.0.0.1:{port}: Connection refused"
