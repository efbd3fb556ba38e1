# Two commands matter: `make run` and `make test`. Everything else is a step they use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt layers/deps/requirements.txt | sha256sum | cut -c1-12)
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PYTHONPATH := layers/shared/python:functions:.

.PHONY: install run test unit lint typecheck bench export score eval bootstrap synth layers deploy clean

$(STAMP): requirements-dev.txt layers/deps/requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## Serve the whole stack locally on the embedded runtime (PORT=8000, DEMO_API_KEY optional).
run: install
	$(PY) -m infra.local serve

## Lint, type-check, then the whole suite (unit, integration, infra, e2e).
test: install lint typecheck
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy layers/shared/python/aigateway functions infra app.py bench cli

## Benchmarks: gateway-added latency, cold start, DynamoDB calls per request; then resilience
## (/v1/generate with 20 % provider faults, with and without fallback models: $(PY) -m bench resilience);
## then lead scoring (1,000 leads end to end, AWS calls and cost per lead: $(PY) -m bench leads [--leads N]);
## then features (OpenAI-compatible endpoint, batch vs sequential, long conversations: $(PY) -m bench features).
bench: install
	$(PY) -m bench
	$(PY) -m bench resilience
	$(PY) -m bench leads
	$(PY) -m bench features

## A month's usage export to a local file: make export MONTH=YYYY-MM [FORMAT=jsonl] [TENANT=id|*] [OUT=path]
## (key from $AIG_API_KEY, server from $AIG_BASE_URL, default the `make run` one).
export: install
	@test -n "$(MONTH)" || { echo "usage: make export MONTH=YYYY-MM [FORMAT=csv|jsonl] [TENANT=id|*] [OUT=path]"; exit 2; }
	$(PY) -m cli export --month $(MONTH) $(if $(FORMAT),--format $(FORMAT)) $(if $(TENANT),--tenant '$(TENANT)') $(if $(OUT),--out $(OUT))

## Score a CSV of sales leads through the API: make score CSV=path [OUT=path] (results in INPUT.scored.csv by
## default; rerun the same command to resume an interrupted run; key and server as for export).
score: install
	@test -n "$(CSV)" || { echo "usage: make score CSV=path [OUT=path]"; exit 2; }
	$(PY) -m cli score '$(CSV)' $(if $(OUT),--out '$(OUT)')

## After a deploy, the first operator (admin) key, printed once: make bootstrap TABLE=<StateTableName output>
## (writes with your AWS credentials; creates tenant `ops`; every later key goes through the API).
bootstrap: install
	@test -n "$(TABLE)" || { echo "usage: make bootstrap TABLE=<StateTableName stack output>"; exit 2; }
	$(PY) -m cli bootstrap --table '$(TABLE)'

## Prompt evaluation: skill_assessment v1 against v2 over docs/examples/eval/skill_assessment.jsonl (schema
## validity, keyword coverage, latency, cost per case), straight to the provider: OpenAI if OPENAI_API_KEY is set
## (billed to it), else the simulator; no tenant budget or ledger. EVAL_ARGS adds options, e.g. --json out.json.
eval: install
	$(PY) -m cli eval --template skill_assessment --version 1 --compare 2 \
		--dataset docs/examples/eval/skill_assessment.jsonl $(EVAL_ARGS)

layers: install
	$(PY) -c "from infra.layers import build_deps_layer, build_shared_layer; print(build_deps_layer()); print(build_shared_layer())"

synth: install
	$(PY) -m infra.local synth

## Deploy to the AWS account in your environment (needs credentials and a bootstrapped account).
deploy: install layers
	npm ci --no-audit --no-fund
	npx cdk deploy --app "$(PY) app.py" --require-approval broadening

clean:
	rm -rf build cdk.out .pytest_cache .mypy_cache .ruff_cache
