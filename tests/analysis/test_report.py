"""``caetune report``: the page, its figures in a real browser, S3 runs and bad input."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from caetune import cli
from caetune.analysis._report import top_trials, write_report
from tests.analysis.conftest import TRIALS
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401  (fixtures)

PER_TRIAL_FIGURES = ("mse", "reconstructions") + tuple(
    f"{layer}-{kind}" for layer in ("layer3", "layer4") for kind in ("map", "histogram", "entropy")
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class _Links(HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        if attrs.get("src"):
            self.srcs.append(attrs["src"])
        if attrs.get("href"):
            self.hrefs.append(attrs["href"])


def _links(index: Path) -> _Links:
    parser = _Links()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _best_ids(run: Path, k: int) -> list[str]:
    """The K best completed trials, straight from the results table (the test's own ranking)."""
    results = pd.read_csv(run / "results.csv", dtype={"trial_id": str})
    done = results[results["status"] == "complete"]
    return list(done.sort_values("objective")["trial_id"][:k])


def test_report_has_every_figure_config_and_the_formula(finished_run, tmp_path):
    out = tmp_path / "report"
    where = write_report(finished_run, top=2, out=out)

    assert where == out
    index = out / "index.html"
    page = index.read_text(encoding="utf-8")
    best = _best_ids(finished_run, 2)
    for trial_id in best:
        assert f'id="{trial_id}"' in page
        assert (out / "configs" / f"{trial_id}.yaml").is_file()
        for name in PER_TRIAL_FIGURES:
            assert (out / "figures" / f"{trial_id}-{name}.png").stat().st_size > 1000
    third = [t for t, status, *_ in TRIALS if status == "complete" and t not in best][0]
    assert f'id="{third}"' not in page and not (out / "configs" / f"{third}.yaml").exists()
    assert "objective = val_mse * (1 + 0.5 * (1 - U))" in page
    assert "still running" in page  # the fixture has a running trial
    for name in ("summary", "study-history", "study-importances"):
        assert (out / "figures" / f"{name}.png").is_file()
    assert not (out / "figures" / "study-pareto.png").exists()  # single objective

    links = _links(index)
    assert len(links.srcs) == 2 * len(PER_TRIAL_FIGURES) + 3
    for ref in links.srcs + [h for h in links.hrefs if not h.startswith("#")]:
        assert "://" not in ref and not ref.startswith("/"), (
            ref
        )  # self-contained: relative links only
        assert (out / ref).is_file(), ref
    assert {"results.csv", "experiment.yaml"} <= set(links.hrefs)


def test_top_trials_ranks_by_objective_and_falls_back_to_val_mse(finished_run):
    results = pd.read_csv(finished_run / "results.csv", dtype={"trial_id": str})
    assert list(top_trials(results, 5)["trial_id"]) == _best_ids(
        finished_run, 5
    )  # only the 3 complete ones
    no_objective = results.drop(columns="objective")
    by_mse = results[results["status"] == "complete"].sort_values("val_mse")["trial_id"]
    assert list(top_trials(no_objective, 1)["trial_id"]) == [by_mse.iloc[0]]


@pytest.fixture
def browser():
    """Chromium driven by Playwright; skipped only outside CI when Chromium is not installed."""
    missing = (
        "chromium is not installed (apt-get install -y chromium)" if CHROMIUM is None else None
    )
    try:
        from playwright import sync_api
    except ImportError:
        missing = missing or "the playwright package is not installed (pip install playwright)"
    if missing:
        if os.environ.get("CI") == "true":  # CI must run it: a skip there would hide a broken page
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def served(tmp_path):
    """Serves a folder over HTTP on 127.0.0.1 (a random port); yields folder -> base URL."""
    servers = []

    def serve(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_page_loads_in_a_real_browser_with_no_missing_image(
    finished_run, tmp_path, browser, served
):
    out = tmp_path / "report"
    write_report(finished_run, top=2, out=out)
    base = served(out)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    failures: list[str] = []
    page.on("requestfailed", lambda request: failures.append(f"{request.url}: {request.failure}"))
    page.on("response", lambda r: r.status >= 400 and failures.append(f"{r.url}: {r.status}"))
    page.goto(f"{base}/index.html", wait_until="load")
    images = page.evaluate(
        "Array.from(document.images).map(i => ("
        "{src: i.getAttribute('src'), done: i.complete, w: i.naturalWidth}))"
    )
    assert failures == []
    assert len(images) == 2 * len(PER_TRIAL_FIGURES) + 3
    assert [i["src"] for i in images if not (i["done"] and i["w"] > 0)] == []
    for href in ("results.csv", "experiment.yaml", f"configs/{_best_ids(finished_run, 1)[0]}.yaml"):
        assert page.request.get(f"{base}/{href}").status == 200
    assert "caetune report: tiny-run" in page.title()
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_cli_writes_into_the_run_by_default_and_replaces_an_old_report(run_copy, capsys):
    assert cli.main(["report", str(run_copy), "--top-k", "1"]) == 0
    index = run_copy / "report" / "index.html"
    assert capsys.readouterr().out.strip() == f"{run_copy / 'report'}/index.html"
    stale = run_copy / "report" / "figures" / "stale.png"
    stale.write_bytes(b"left over")
    assert cli.main(["report", str(run_copy), "--top-k", "2"]) == 0
    assert index.is_file() and not stale.exists()  # the old report was swapped out whole
    assert len(list((run_copy / "report" / "configs").iterdir())) == 2
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".")]  # no staging folders left


def test_pareto_study_gets_a_pareto_front_and_ranks_by_val_mse(pareto_run):
    run = pareto_run
    out = write_report(run, top=1)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert (out / "figures" / "study-pareto.png").is_file()
    assert "Pareto" in page
    results = pd.read_csv(run / "results.csv", dtype={"trial_id": str})
    best = results[results["status"] == "complete"].sort_values("val_mse")["trial_id"].iloc[0]
    assert f'id="{best}"' in page


def test_report_of_a_run_on_s3(finished_run, s3_bucket, s3_env, tmp_path):
    prefix = f"runs/{finished_run.name}"
    client = s3_env.client()
    for path in finished_run.rglob("*"):
        if path.is_file():
            client.upload_file(
                str(path), s3_bucket, f"{prefix}/{path.relative_to(finished_run).as_posix()}"
            )

    local = write_report(f"s3://{s3_bucket}/{prefix}", top=1, out=tmp_path / "report")
    assert (local / "index.html").is_file()
    assert len(list((local / "figures").glob("*.png"))) == len(PER_TRIAL_FIGURES) + 3

    remote = write_report(f"s3://{s3_bucket}/{prefix}", top=1)
    assert remote == f"s3://{s3_bucket}/{prefix}/report"
    keys = s3_env.keys(s3_bucket, f"{prefix}/report/")
    assert f"{prefix}/report/index.html" in keys
    assert sorted(k.split("/report/", 1)[1] for k in keys) == sorted(
        p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()
    )


# -- bad input: one line, exit 2, nothing written -------------------------------------


def _bad_checkpoint(run: Path) -> str:
    target = run / "trials" / _best_ids(run, 1)[0] / "model.pt"
    target.write_bytes(b"this is not a torch checkpoint")
    return str(target)


def _not_a_run(run: Path) -> str:
    (run / "results.csv").unlink()
    return "is not a search run"


@pytest.mark.parametrize(
    "spoil, extra, expected",
    [
        (_not_a_run, [], None),
        (lambda run: "--top-k", ["--top-k", "0"], None),
        (_bad_checkpoint, [], "unreadable checkpoint"),
        (lambda run: "holds other files", ["--out", "{run}/trials"], None),
    ],
    ids=["not-a-run", "k-below-1", "unreadable-checkpoint", "out-not-a-report"],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    run_copy, tmp_path, capsys, spoil, extra, expected
):
    needle = spoil(run_copy)
    before = _snapshot(tmp_path)
    args = ["report", str(run_copy), *[a.format(run=run_copy) for a in extra]]

    assert cli.main(args) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("caetune report: error: ")
    assert needle in err and (expected is None or expected in err)
    assert _snapshot(tmp_path) == before


def test_a_folder_that_is_not_there_and_an_out_that_is_a_file(tmp_path, run_copy, capsys):
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert cli.main(["report", str(run_copy), "--out", str(blocker / "report")]) == 2
    assert "--out" in capsys.readouterr().err
    assert not (run_copy / "report").exists()
