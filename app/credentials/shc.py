"""A person's vaccinations and last nucleic-acid test as a SMART Health Card: a FHIR R4 bundle in a
verifiable credential, minimised as the specification asks (no ids, no narrative, `resource:N` urls).

The card names the person as the holder gives their name (the service stores names only masked), with
a birth date from the resident number or, for other documents, as given; none of it is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from app.db import Conn
from app.rules.ruleset import RuleSet

CARD_TYPE: Final = "https://smarthealth.cards#health-card"
IMMUNIZATION_TYPE: Final = "https://smarthealth.cards#immunization"
LABORATORY_TYPE: Final = "https://smarthealth.cards#laboratory"
CVX: Final = "http://hl7.org/fhir/sid/cvx"
CVX_UNKNOWN_NON_US: Final = "500"
LOINC: Final = "http://loinc.org"
SARS_COV_2_RNA_NAA: Final = "94500-6"  # SARS-CoV-2 RNA, respiratory specimen, NAA with probe detection
SNOMED: Final = "http://snomed.info/sct"
RESULTS: Final = {"negative": "260385009", "positive": "10828004"}

_VACCINATIONS = """
    SELECT v.product, v.dose, v.vaccinated_on, coalesce(v.source_agency, c.name, '') AS agency
    FROM vaccinations v LEFT JOIN batches b ON b.id = v.batch_id LEFT JOIN api_clients c ON c.id = b.client_id
    WHERE v.pseudonym = $1 ORDER BY v.vaccinated_on, v.dose"""
_LAST_TEST = """SELECT sampled_at, result, lab FROM nucleic_tests WHERE pseudonym = $1
    ORDER BY sampled_at DESC LIMIT 1"""


@dataclass(frozen=True, slots=True)
class Holder:
    family: str
    given: tuple[str, ...]
    birth_date: date


async def card_payload(
    conn: Conn, subject: bytes, holder: Holder, ruleset: RuleSet, issuer: str, now: int
) -> dict[str, Any] | None:
    """The card's JWS payload, or None when the person has neither a vaccination nor a test here."""
    vaccinations = await conn.fetch(_VACCINATIONS, subject)
    test = await conn.fetchrow(_LAST_TEST, subject)
    if not vaccinations and test is None:
        return None
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": holder.family, "given": list(holder.given)}],
        "birthDate": holder.birth_date.isoformat(),
    }
    entries: list[dict[str, Any]] = [{"fullUrl": "resource:0", "resource": patient}]
    for v in vaccinations:
        immunization: dict[str, Any] = {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {
                "coding": [{"system": CVX, "code": ruleset.vaccine_cvx.get(v["product"], CVX_UNKNOWN_NON_US)}]
            },
            "patient": {"reference": "resource:0"},
            "occurrenceDateTime": v["vaccinated_on"].isoformat(),
        }
        if v["agency"]:
            immunization["performer"] = [{"actor": {"display": v["agency"]}}]
        entries.append({"fullUrl": f"resource:{len(entries)}", "resource": immunization})
    types = [CARD_TYPE]
    if vaccinations:
        types.append(IMMUNIZATION_TYPE)
    if test is not None:
        types.append(LABORATORY_TYPE)
        sampled: datetime = test["sampled_at"]
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": SARS_COV_2_RNA_NAA}]},
            "subject": {"reference": "resource:0"},
            "effectiveDateTime": sampled.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "performer": [{"display": test["lab"]}],
            "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": RESULTS[test["result"]]}]},
        }
        entries.append({"fullUrl": f"resource:{len(entries)}", "resource": observation})
    return {
        "iss": issuer,
        "nbf": now,
        "vc": {
            "type": types,
            "credentialSubject": {
                "fhirVersion": "4.0.1",
                "fhirBundle": {"resourceType": "Bundle", "type": "collection", "entry": entries},
            },
        },
    }
