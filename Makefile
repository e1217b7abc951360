.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv/bin

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

install: ## Create .venv and install fraudpipe with its dev tools
	test -x $(VENV)/python || python3 -m venv .venv
	$(VENV)/python -m pip install -q -e ".[dev]"

system: ## Install redis-server, Java and Maven with the system's package manager if missing (scripts/system-packages.sh)
	bash scripts/system-packages.sh

demo: system install ## The whole pipeline on this machine with a live summary (ARGS="--duration 60 --sasl": stop by itself, Kafka with SASL)
	$(VENV)/fraudpipe demo $(ARGS)

test: ## Run every test against real Kafka and Redis (sets everything up; ARGS="-k faust" to select)
	bash scripts/test.sh $(ARGS)

unit: ## Run the unit tests only (no services needed)
	$(VENV)/python -m pytest tests/unit $(ARGS)

lint: ## ruff (lint + format check), mypy strict, and the import layers (import-linter, pyproject.toml)
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/lint-imports --no-cache

docs: ## Serve the documentation (docs/, mkdocs.yml) on 127.0.0.1:8000 while you edit it
	NO_MKDOCS_2_WARNING=1 $(VENV)/mkdocs serve

docs-build: ## Build the documentation into var/site, failing on any warning (broken links, missing pages)
	NO_MKDOCS_2_WARNING=1 $(VENV)/mkdocs build --strict --quiet

format: ## Format and fix what ruff can
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix .

services-start: ## Start local Kafka and Redis (scripts/services.sh); Redis logins in .services/redis/users/*.env
	scripts/services.sh start

services-stop: ## Stop the local Kafka and Redis this checkout started
	scripts/services.sh stop

services-status: ## Show whether local Kafka and Redis run
	scripts/services.sh status

topics: ## Create fraudpipe's topics on the configured broker
	$(VENV)/fraudpipe topics create

.PHONY: help system install demo test unit lint docs docs-build format services-start services-stop services-status topics
