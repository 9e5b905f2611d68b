"""The OpenAPI document is valid, covers every route of the app, and its examples and live answers fit it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.http.app import create_app
from app.http.appkeys import SIGNER
from app.http.handlers.meta import openapi_document
from app.identity import Identity, pseudonym
from app.settings import Settings
from signing.encoding import b64url_encode
from tests.conftest import AppFactory
from tests.support import bearer

Api = TestClient[web.Request, web.Application]
DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "app" / "http" / "openapi.json"
DOCUMENT: dict[str, Any] = orjson.loads(DOCUMENT_PATH.read_bytes())
BASE = "urn:healthcode:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(
    BASE, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
)
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
NUMBER = "11010519491231002X"


def pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def validator_at(*parts: str) -> Draft202012Validator:
    """A validator for the schema at this place in the document, its $refs resolved within the document."""
    return Draft202012Validator({"$ref": f"{BASE}#/{pointer(*parts)}"}, registry=REGISTRY)


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = DOCUMENT
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def app_routes() -> set[tuple[str, str]]:
    settings = Settings(
        database_url="postgresql://unused",
        redis_url="redis://unused",
        pepper=b"p" * 32,
        keys_dir=Path("."),
        handle_key=b"h" * 32,
    )
    app = create_app(settings, background=False)
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def documented_operations() -> set[tuple[str, str]]:
    return {(method, path) for path, item in DOCUMENT["paths"].items() for method in item if method in HTTP_METHODS}


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def examples() -> Iterator[tuple[str, tuple[str, ...], Any]]:
    """(where, path to the schema, example value) for every example in the document."""

    def walk(node: Any, at: tuple[str, ...]) -> Iterator[tuple[str, tuple[str, ...], Any]]:
        if isinstance(node, dict):
            if "schema" in node:
                schema_at = (*at, "schema")
                if "example" in node:
                    yield "/".join(at), schema_at, node["example"]
                for name, example in node.get("examples", {}).items():
                    yield "/".join((*at, name)), schema_at, resolve(example)["value"]
            for key, value in node.items():
                yield from walk(value, (*at, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from walk(value, (*at, str(index)))

    yield from walk(DOCUMENT["paths"], ("paths",))
    yield from walk(DOCUMENT["components"]["responses"], ("components", "responses"))
    for name, schema in DOCUMENT["components"]["schemas"].items():
        for prop, sub in schema.get("properties", {}).items():
            for index, example in enumerate(sub.get("examples", [])):
                yield f"{name}.{prop}[{index}]", ("components", "schemas", name, "properties", prop), example


# --- the document ----------------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    validate_spec(DOCUMENT)


def test_the_app_serves_this_document() -> None:
    assert openapi_document() == DOCUMENT


def test_every_route_of_the_app_is_documented() -> None:
    missing = app_routes() - documented_operations()
    assert not missing, f"routes missing from app/http/openapi.json: {sorted(missing)}"


def test_every_documented_operation_exists() -> None:
    extra = documented_operations() - app_routes()
    assert not extra, f"app/http/openapi.json documents routes the app lacks: {sorted(extra)}"


def test_the_issue_routes_are_there() -> None:
    assert {
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/.well-known/jwks.json"),
        ("get", "/openapi.json"),
        ("post", "/v1/status"),
        ("post", "/v1/verify"),
        ("get", "/v1/qr.png"),
        ("get", "/v1/qr.svg"),
    } <= documented_operations()


def test_bearer_security_scheme_guards_the_client_endpoints() -> None:
    assert DOCUMENT["components"]["securitySchemes"]["clientKey"]["type"] == "http"
    assert DOCUMENT["components"]["securitySchemes"]["clientKey"]["scheme"] == "bearer"
    guarded = {path for path, _, op in operations() if op.get("security") == [{"clientKey": []}]}
    assert {"/v1/status", "/v1/verify", "/v1/qr.png", "/v1/qr.svg"} <= guarded
    for path, method, operation in operations():
        if path in guarded:
            assert {"401", "403"} <= operation["responses"].keys(), (method, path)


def test_every_error_answer_is_a_problem_with_the_shared_schema() -> None:
    problem_ref = "#/components/schemas/Problem"
    for path, method, operation in operations():
        for status, response in operation["responses"].items():
            if int(status) < 400 or resolve(response).get("x-answered-by") == "http-layer":
                continue  # answers of the HTTP parser, before any handler or middleware runs
            content = resolve(response)["content"]
            assert list(content) == ["application/problem+json"], (method, path, status)
            schema = content["application/problem+json"]["schema"]
            chain = [schema["$ref"], *(part["$ref"] for part in resolve(schema).get("allOf", []))]
            assert problem_ref in chain, (method, path, status)


def test_every_request_body_and_json_answer_has_a_schema_and_an_example() -> None:
    for path, method, operation in operations():
        for media, content in operation.get("requestBody", {}).get("content", {}).items():
            assert "schema" in content and content.get("examples"), (method, path, media)
        for status, response in operation["responses"].items():
            for media, content in resolve(response).get("content", {}).items():
                assert "schema" in content, (method, path, status, media)
                if "json" in media and path != "/openapi.json":
                    assert content.get("examples"), (method, path, status, media)


def test_there_are_examples_to_check() -> None:
    assert len(list(examples())) > 40


@pytest.mark.parametrize(
    ("where", "schema_at", "value"), [pytest.param(*example, id=example[0]) for example in examples()]
)
def test_every_example_validates_against_its_schema(where: str, schema_at: tuple[str, ...], value: Any) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator_at(*schema_at).iter_errors(value)
    ]
    assert not errors, f"{where}: {errors}"


def test_a_wrong_example_would_be_caught() -> None:
    status_schema = validator_at("components", "schemas", "StatusAnswer")
    good = resolve(
        DOCUMENT["paths"]["/v1/status"]["post"]["responses"]["200"]["content"]["application/json"]["examples"]["green"]
    )["value"]
    assert status_schema.is_valid(good)
    assert not status_schema.is_valid({**good, "colour": "blue"})
    assert not status_schema.is_valid({k: v for k, v in good.items() if k != "token"})


# --- live answers fit the documented schemas --------------------------------------------------------------


def response_validator(path: str, method: str, status: int, media: str) -> Draft202012Validator:
    response = DOCUMENT["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[1]
        return validator_at("components", "responses", name, "content", media, "schema")
    return validator_at("paths", path, method, "responses", str(status), "content", media, "schema")


async def assert_documented(r: Any, path: str, method: str) -> dict[str, Any]:
    media = r.content_type
    assert media in resolve(DOCUMENT["paths"][path][method]["responses"][str(r.status)])["content"]
    body: dict[str, Any] = orjson.loads(await r.read())
    errors = [e.message for e in response_validator(path, method, r.status, media).iter_errors(body)]
    assert not errors, (path, method, r.status, body, errors)
    return body


async def test_live_answers_fit_their_documented_schemas(
    api: Api, db: asyncpg.Connection, settings: Settings, client_keys: dict[str, str]
) -> None:
    subject = pseudonym(Identity("resident", NUMBER), settings.pepper)
    await db.execute(
        "INSERT INTO subjects (pseudonym, id_type, masked_name, masked_number) VALUES ($1, 'resident', '李*', $2)",
        subject,
        "11**************2X",
    )
    await db.execute(
        """INSERT INTO statuses (pseudonym, colour, reasons, popup, vaccine_doses, vaccine_complete, last_test_at,
               last_test_result, ruleset, computed_at, valid_until)
           VALUES ($1, 'yellow', '{risk_area_arrival}', true, 2, true, now() - interval '1 day', 'negative',
                   'default-2022', now(), now() + interval '1 hour')""",
        subject,
    )
    citizen, scanner = bearer(client_keys["citizen-backend"]), bearer(client_keys["scanner"])

    r = await api.post("/v1/status", json={"id_type": "resident", "id_number": NUMBER}, headers=citizen)
    assert r.status == 200, await r.text()
    status = await assert_documented(r, "/v1/status", "post")
    assert "subject" not in status

    r = await api.post("/v1/verify", json={"token": status["token"], "checkpoint": "gate-1"}, headers=scanner)
    assert r.status == 200, await r.text()
    assert (await assert_documented(r, "/v1/verify", "post"))["valid"] is True
    gate = {"token": status["token"], "checkpoint": "gate-1", "policy": {"max_test_age_hours": 12}}
    r = await api.post("/v1/verify", json=gate, headers=scanner)
    assert (await assert_documented(r, "/v1/verify", "post"))["failed_rules"] == ["test_age"]

    signer = api.app[SIGNER].signer
    assert signer is not None
    expired = signer.sign_status(b64url_encode(subject), "Y", 1, 1, int(time.time()) - 3600, ver=1)
    r = await api.post("/v1/verify", json={"token": expired, "checkpoint": "gate-1"}, headers=scanner)
    assert (await assert_documented(r, "/v1/verify", "post"))["reason"] == "expired"
    bare = signer.sign_status(b64url_encode(subject), "Y", 1, 1, int(time.time()), ver=1)  # the old `sub`
    r = await api.post("/v1/verify", json={"token": bare, "checkpoint": "gate-1", "policy": {}}, headers=scanner)
    assert (await assert_documented(r, "/v1/verify", "post"))["reason"] == "bad_handle"

    problems = [
        ("/v1/status", await api.post("/v1/status", json={"id_number": "440305200002294564"}, headers=citizen)),
        ("/v1/status", await api.post("/v1/status", json={"id_number": NUMBER[:-1] + "1"}, headers=citizen)),
        ("/v1/status", await api.post("/v1/status", json={"id_number": NUMBER})),
        ("/v1/status", await api.post("/v1/status", json={"id_number": NUMBER}, headers=scanner)),
        ("/v1/verify", await api.post("/v1/verify", json={"checkpoint": "gate-1"}, headers=scanner)),
        (
            "/v1/verify",
            await api.post(
                "/v1/verify", json={"token": "a.b.c", "checkpoint": "g", "policy": {"x": 1}}, headers=scanner
            ),
        ),
        (
            "/v1/status",
            await api.post("/v1/status", data=b"{", headers={**citizen, "Content-Type": "application/json"}),
        ),
        ("/v1/status", await api.post("/v1/status", data=b"{}", headers={**citizen, "Content-Type": "text/plain"})),
        ("/v1/status", await api.get("/v1/status")),
    ]
    assert [r.status for _, r in problems] == [404, 422, 401, 403, 422, 422, 400, 415, 405]
    for path, r in problems:
        await assert_documented(r, path, "post")

    for path in ("/healthz", "/readyz", "/.well-known/jwks.json"):
        r = await api.get(path)
        assert r.status == 200, await r.text()
        await assert_documented(r, path, "get")


async def test_readyz_failure_fits_its_documented_schema(make_client: AppFactory) -> None:
    api = await make_client(redis_url="redis://127.0.0.1:1/0")
    r = await api.get("/readyz")
    assert r.status == 503, await r.text()
    await assert_documented(r, "/readyz", "get")
