"""`python -m infra.local serve`: the whole stack on http://127.0.0.1:$PORT (DESIGN §7).

`python -m infra.local schedule <name>` fires a schedule (reservation-sweeper,
monthly-usage-export) in the running stack.

Environment: PORT (default 8000), DEMO_API_KEY (fix the demo tenant's key), OPENAI_API_KEY and
OPENAI_BASE_URL (use a real OpenAI-compatible provider instead of the simulated one),
SIM_FAULTS (fault plan for the simulated provider, JSON).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from infra.local.apigateway import LocalApiGateway
from infra.local.runtime import LocalStack, synthesize
from infra.local.server import LocalHttpServer


def serve(port: int) -> None:
    template = synthesize()
    overrides: dict[str, str] = {}
    simulator = None
    if not os.environ.get("OPENAI_API_KEY"):
        from aigateway.llm.simulated import SimulatedProvider, SimulatedProviderServer

        simulator = SimulatedProviderServer(SimulatedProvider())
        overrides["SIMULATOR_URL"] = simulator.start()
        overrides["PROVIDER"] = "simulated"
    stack = LocalStack(template, env_overrides=overrides).start()
    from infra.local.seed import seed_demo_tenant

    demo = seed_demo_tenant(os.environ.get("DEMO_API_KEY") or None)
    server = LocalHttpServer(LocalApiGateway(stack), port=port)
    url = server.start()
    provider = (
        f"simulated ({overrides['SIMULATOR_URL']})"
        if simulator
        else f"OpenAI-compatible ({os.environ.get('OPENAI_BASE_URL') or 'api.openai.com'})"
    )
    print(_banner(url, demo.api_key, provider, overrides.get("SIMULATOR_URL")), flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        stack.stop()
        if simulator is not None:
            simulator.stop()


def fire_schedule(name: str, port: int) -> None:
    """Asks the running `serve` process to run one schedule (EventBridge has no clock locally)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/_local/schedules/{name}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - loopback only
            print(response.read().decode())
    except urllib.error.HTTPError as exc:
        sys.exit(f"schedule {name!r}: {exc.code} {exc.read().decode()}")
    except urllib.error.URLError as exc:
        sys.exit(f"no local stack on port {port} ({exc.reason}); start it with `make run`")


def _banner(url: str, key: str, provider: str, simulator_url: str | None = None) -> str:
    month = time.strftime("%Y-%m", time.gmtime())
    body = (
        '{"template":"skill_assessment","variables":{"skill":"SQL",'
        '"question":"What does a LEFT JOIN return?",'
        '"answer":"All rows from the left table and matching rows from the right, with NULLs where nothing matches."}}'
    )
    faults = ""
    if simulator_url:  # make the simulated provider fail, watch the chain end in the static answer, heal it
        sim = simulator_url.removesuffix("/v1")
        unseen = body.replace("What does a LEFT JOIN return?", "What does GROUP BY do?")  # not in the cache
        faults = f"""Break the simulated provider (every call answers 500), see a degraded answer, then heal it:
  curl -s -X POST {sim}/_sim/faults -d '{{"rate":1,"kinds":["500"]}}'
  curl -s {url}/v1/generate -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \\
       -d '{unseen}'
  # "served_by": "static_answer": every model in the chain failed; the template's static answer, labelled
  curl -s -X DELETE {sim}/_sim/faults

"""
    lead = (
        '{"company":"Acme Corp","title":"VP of Sales","industry":"SaaS","size":250,"source":"referral",'
        '"events":[{"type":"demo_request","at":"2026-11-01"}],"notes":"Budget approved for Q1"}'
    )
    return f"""
Serverless AI Gateway is running on the embedded runtime at {url}
  model provider : {provider}
  demo tenant    : demo (role admin: may also change budgets and limits, export across tenants)
  demo API key   : {key}

Try it:
  curl -s {url}/v1/health
  curl -s {url}/v1/generate -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \\
       -d '{body}'
  # the same request again is a cache hit ("cached": true, cost 0); add
  #   -H 'Idempotency-Key: order-42'   and a retry is the first answer again, not billed twice
  curl -s {url}/v1/jobs -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \\
       -d '{body}'
  # 202 {{"job_id": …}}; poll it: curl -s {url}/v1/jobs/<job_id> -H 'Authorization: Bearer {key}'
  curl -s {url}/v1/budget -H 'Authorization: Bearer {key}'
  curl -s "{url}/v1/usage/export?month={month}&format=csv" -H 'Authorization: Bearer {key}'
  curl -s {url}/v1/admin/tenants/demo/governance -H 'Authorization: Bearer {key}'
  curl -s {url}/v1/admin/tenants/demo/keys -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \\
       -d '{{"user_id":"alice","role":"tenant_admin"}}'
  # 201: alice's key, shown once; list with GET on the same path, revoke: DELETE …/keys/<key_id>;
  # onboard a customer: POST {url}/v1/admin/tenants {{"tenant_id":"acme","name":"Acme"}}, then its keys
  curl -s {url}/v1/openapi.json | head -c 400

OpenAI-compatible (any OpenAI SDK: base_url={url}/v1, api_key=the key above):
  curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \\
       -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Say hello"}}]}}'
  # add "stream":true for server-sent events; models: curl -s {url}/v1/models -H 'Authorization: Bearer {key}'
  curl -s {url}/v1/batch -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \\
       -d '{{"requests":[{body},{{"template":"nope"}}]}}'
  # 200 with one status per item: the good one answered, the bad one 404 unknown_template
  curl -s {url}/v1/conversations -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \\
       -d '{{"system":"You are a concise SQL tutor.","token_budget":8000}}'
  # then: curl -s {url}/v1/conversations/<conversation_id>/messages -H 'Authorization: Bearer {key}' \\
  #         -H 'content-type: application/json' -d '{{"content":"What is an index?"}}'
  curl -s -X PUT {url}/v1/admin/tenants/demo/experiments/skill_assessment -H 'Authorization: Bearer {key}' \\
       -H 'content-type: application/json' \\
       -d '{{"variants":[{{"name":"control","version":1,"weight":50}},{{"name":"concise","version":2,"weight":50}}]}}'
  # generate calls now split sticky per user; rate one: POST /v1/feedback {{"request_id":…,"rating":4}}
  curl -s {url}/v1/experiments/skill_assessment/report -H 'Authorization: Bearer {key}'

Lead scoring (asynchronous: SQS → Step Functions → LLM scorer, fallback model, rules scorer):
  curl -s -X PUT {url}/v1/leads/acme-1 -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \\
       -d '{lead}'
  # 201 {{"job_id": …}}: the new lead is queued for scoring; a second later its score and explanation:
  curl -s {url}/v1/leads/acme-1 -H 'Authorization: Bearer {key}'
  curl -s "{url}/v1/leads?tier=hot" -H 'Authorization: Bearer {key}'
  # a lead file dropped in the imports bucket (what `aws s3 cp` does on AWS), bad rows reported by line:
  curl -s -X PUT {url}/_local/imports/demo/leads.csv --data-binary @docs/examples/leads.csv
  # or score a CSV end to end from your machine, resumable: make score CSV=docs/examples/leads.csv
  # schedules do not tick locally; fire one: python -m infra.local schedule lead-rescore

{faults}Ctrl-C stops it (state lives in memory and starts fresh next time).
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.local")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="serve the stack on loopback")
    serve_cmd.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    sub.add_parser("synth", help="synthesize the CDK template into build/cdk.out")
    schedule_cmd = sub.add_parser("schedule", help="fire a schedule of the running stack now")
    schedule_cmd.add_argument("name", help="e.g. reservation-sweeper, lead-rescore, monthly-usage-export")
    schedule_cmd.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port)
    elif args.command == "schedule":
        fire_schedule(args.name, args.port)
    elif args.command == "synth":
        print(synthesize(force=True))
    else:  # pragma: no cover - argparse enforces the choices
        sys.exit(2)


if __name__ == "__main__":
    main()
