"""The OpenAPI document describes every route, its filters and examples."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

ROUTES = {
    ("get", "/v1/audit"),
    ("post", "/v1/units"),
    ("get", "/v1/units"),
    ("get", "/v1/units/{code}"),
    ("patch", "/v1/units/{code}"),
    ("post", "/v1/units:merge"),
    ("post", "/v1/units/{code}:split"),
    ("post", "/v1/units/{code}:close"),
    ("post", "/v1/teams"),
    ("get", "/v1/teams"),
    ("get", "/v1/teams/{code}"),
    ("patch", "/v1/teams/{code}"),
    ("post", "/v1/teams/{code}:deactivate"),
    ("post", "/v1/teams/{code}/members"),
    ("get", "/v1/teams/{code}/members"),
    ("delete", "/v1/teams/{code}/members/{volunteer_id}"),
    ("post", "/v1/volunteers"),
    ("post", "/v1/volunteers:import"),
    ("post", "/v1/volunteers:import-file"),
    ("get", "/v1/volunteers"),
    ("get", "/v1/volunteers/{volunteer_id}"),
    ("patch", "/v1/volunteers/{volunteer_id}"),
    ("post", "/v1/volunteers/{volunteer_id}:leave"),
    ("post", "/v1/campaigns"),
    ("get", "/v1/campaigns"),
    ("get", "/v1/campaigns/{code}"),
    ("put", "/v1/campaigns/{code}/targets"),
}


async def test_openapi_documents_every_route_with_summary_examples_and_described_filters(client) -> None:
    doc = (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]

    def resolve(schema: dict) -> dict:
        if "$ref" in schema:
            return schemas[schema["$ref"].rsplit("/", 1)[-1]]
        if "anyOf" in schema:
            return resolve(next(s for s in schema["anyOf"] if s.get("type") != "null"))
        return schema

    found = {(m, p) for p, ops in doc["paths"].items() if p.startswith("/v1") for m in ops}
    assert ROUTES <= found
    assert found - ROUTES <= {("get", "/v1/events/catalog")}  # served by shared for every service
    for method, path in ROUTES:
        op = doc["paths"][path][method]
        assert op.get("summary"), (method, path)
        ok = "201" if "201" in op["responses"] else "200"
        response = resolve(op["responses"][ok]["content"]["application/json"]["schema"])
        assert response.get("properties"), (method, path)
        for code in ("401", "403", "422"):
            assert code in op["responses"], (method, path, code)
        if "requestBody" in op:
            content = op["requestBody"]["content"]
            if "application/json" in content:
                assert resolve(content["application/json"]["schema"]).get("examples"), (method, path)
            else:  # a file upload: each media type has a schema, and one an example
                assert all(c.get("schema") for c in content.values()), (method, path)
                assert any(c.get("examples") for c in content.values()), (method, path)
        for param in op.get("parameters", []):
            assert param.get("description"), (method, path, param["name"])
        if method == "get" and not path.endswith("}"):
            names = {p["name"] for p in op["parameters"]}
            assert {"limit", "cursor"} <= names
            assert set(response["properties"]) == {"items", "next_cursor"}
    teams = {p["name"] for p in doc["paths"]["/v1/teams"]["get"]["parameters"]}
    assert {"unit", "kind", "active"} <= teams
    volunteers = {p["name"] for p in doc["paths"]["/v1/volunteers"]["get"]["parameters"]}
    assert {"unit", "skill", "team"} <= volunteers
    assert {p["name"] for p in doc["paths"]["/v1/units"]["get"]["parameters"]} >= {"parent_code", "kind", "status"}
    assert set(schemas["UnitOut"]["properties"]) >= {"status", "successor_code", "successors", "closed_on"}
    assert schemas["VolunteerOut"]["examples"]
    indicator = resolve(schemas["TargetIn"]["properties"]["indicator"])
    assert "households_visited" in indicator["enum"]
    roster_file = doc["paths"]["/v1/volunteers:import-file"]["post"]
    assert set(roster_file["requestBody"]["content"]) == {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "text/csv",
    }
    csv_example = roster_file["requestBody"]["content"]["text/csv"]["examples"]["roster"]["value"]
    assert csv_example.startswith("STT,Mã tham chiếu,Họ và tên,Năm sinh")
    assert "415" in roster_file["responses"]
    assert "| `full_name` | Họ và tên" in roster_file["description"]
    assert "row" in schemas["RosterItemOut"]["properties"]
