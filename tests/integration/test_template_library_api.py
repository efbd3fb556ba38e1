"""The template library through POST /v1/generate on the embedded stack: every structured template
answers schema-valid output from the simulated provider, and CRM enrichment never sends an
excluded field to the provider (a placeholder naming one is refused before any call).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from aigateway.llm.simulated import SimulatedProvider
from aigateway.prompts.registry import TemplateRegistry
from infra.local.runtime import LocalStack
from tests.conftest import Client, record_provider_bodies
from tests.template_inputs import LIBRARY, valid_input

REGISTRY = TemplateRegistry(Path(__file__).resolve().parents[2] / "prompts")


def test_each_library_template_answers_schema_valid_output(
    client: Client, stack: LocalStack, simulator: SimulatedProvider
) -> None:
    # One stack for all templates: a stack per template would cost the suite ~2 s each.
    answered = []
    for name in LIBRARY:
        # Given the template's required variables only (distinct per run, so no cache hit)
        template = REGISTRY.get(name)
        variables = valid_input(template, uuid.uuid4().hex[:8], minimal=True)
        # When it is generated through the API
        reply = client.post("/v1/generate", {"template": name, "variables": variables})
        # Then the primary (simulated) model answered with output valid under the template's schema
        assert reply.status == 200, (name, reply.body)
        body = reply.body
        assert (body["template"], body["version"]) == (name, template.version)
        assert body["provider"] == "simulated" and body["served_by"] == "primary" and body["fallback"] is False, name
        assert template.output_model is not None
        template.output_model.model_validate(body["output"])
        answered.append(name)
    print(f"\n{len(answered)} templates answered schema-valid output: {', '.join(answered)}")
    assert simulator.stats()["requests"] == len(LIBRARY) >= 12


# Values that must never reach the provider: excluded by the template (email, phone, contact.*),
# by the request (budget, contact.name), or repeated elsewhere in the record.
SECRETS = {
    "email": "ceo@northwind-secret.example",
    "phone": "+44 20 7946 0321",
    "contact.email": "maria.anders@northwind-secret.example",
    "contact.mobile": "07700 900456",
    "contact.name": "Maria Anders",
    "budget": "GBP 480k approved",
}


def crm_request(instructions: str) -> dict[str, Any]:
    return {
        "template": "crm_enrichment",
        "variables": {
            "record": {
                "company": f"Northwind Traders {uuid.uuid4().hex[:6]}",
                "website": "https://northwind.example",
                "email": SECRETS["email"],
                "phone": SECRETS["phone"],
                "budget": SECRETS["budget"],
                "notes": f"Procurement confirmed {SECRETS['budget']}; Maria Anders prefers calls on 07700 900456.",
                "contact": {
                    "name": SECRETS["contact.name"],
                    "title": "Head of Procurement",
                    "email": SECRETS["contact.email"],
                    "mobile": SECRETS["contact.mobile"],
                },
            },
            "instructions": instructions,
            "fields": [
                {"name": "industry", "description": "one of wholesale, retail, logistics, other"},
                {"name": "buyer_seniority", "description": "one of c_level, vp, head, manager, other"},
            ],
            "exclude": ["budget", "contact.name"],
        },
    }


def test_crm_enrichment_never_sends_an_excluded_value_to_the_provider(
    client: Client, stack: LocalStack, simulator: SimulatedProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given every body the provider receives is recorded
    bodies = record_provider_bodies(simulator, monkeypatch)
    # When a record with excluded fields is enriched with {*} and a {field} placeholder
    reply = client.post("/v1/generate", crm_request("Enrich {company}, whose buyer is a {contact.title}.\n{*}"))
    # Then the answer is schema-valid output, from one provider call
    assert reply.status == 200, reply.body
    template = REGISTRY.get("crm_enrichment")
    assert template.output_model is not None
    template.output_model.model_validate(reply.body["output"])
    assert len(bodies) == 1
    # And the prompt carried the shareable fields but no excluded value, even where the notes repeat them
    sent = bodies[0]
    assert "Northwind Traders" in sent and "Head of Procurement" in sent and "https://northwind.example" in sent
    leaked = [field for field, secret in SECRETS.items() if secret in sent]
    assert leaked == [], leaked
    assert "[excluded]" in sent and "[phone]" in sent


@pytest.mark.parametrize(
    ("instructions", "code", "placeholder"),
    [
        ("Enrich {company}; write to {contact.email}.", "excluded_field", "contact.email"),
        ("Budget: {budget}", "excluded_field", "budget"),
        ("Enrich {company} in {region}.", "unknown_field", "region"),
    ],
    ids=["template-exclusion", "request-exclusion", "unknown"],
)
def test_placeholder_naming_an_excluded_or_unknown_field_is_422_before_any_provider_call(
    client: Client, stack: LocalStack, simulator: SimulatedProvider, instructions: str, code: str, placeholder: str
) -> None:
    # Given an instruction naming an excluded (or a missing) field
    # When it is sent for enrichment
    reply = client.post("/v1/generate", crm_request(instructions))
    # Then 422 with the machine-readable code naming the placeholder, and the provider was never called
    assert reply.status == 422, reply.body
    error = reply.body["error"]
    assert (error["code"], error["field"], error["placeholder"]) == (code, "variables.instructions", placeholder)
    assert simulator.stats()["requests"] == 0
