"""The layout's import rules, read off the source: each folder keeps to its job."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports(folder: str) -> dict[str, set[str]]:
    """Every module under `folder` and the top two levels of what it imports (`app.http`, `aiohttp`)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = {".".join(n.split(".")[:2]) for n in names}
    return found


def offenders(folder: str, *forbidden: str) -> dict[str, set[str]]:
    bad = {}
    for module, names in imports(folder).items():
        hits = {n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden)}
        if hits:
            bad[module] = hits
    return bad


def test_cache_and_signing_import_nothing_of_ours_nor_aiohttp() -> None:
    assert offenders("cache", "app", "aiohttp", "signing") == {}
    assert offenders("signing", "app", "aiohttp", "cache") == {}


def test_statuses_and_ingest_raise_domain_errors_not_http_ones() -> None:
    assert offenders("app/statuses", "aiohttp", "app.http", "app.cli") == {}
    assert offenders("app/ingest", "aiohttp", "app.http", "app.cli") == {}
    assert offenders("app/appeals", "aiohttp", "app.http", "app.cli") == {}


def test_dev_tooling_stays_out_of_the_production_import_graph() -> None:
    production = ("app/http", "app/statuses", "app/ingest", "app/keys", "app/rules", "app/appeals")
    for folder in production:
        assert offenders(folder, "app.dev") == {}, folder


def test_load_tests_import_app_only_in_the_benchmarks() -> None:
    bad = offenders("loadtests", "app")
    assert {m for m in bad if not m.startswith("loadtests/bench/")} == set()
