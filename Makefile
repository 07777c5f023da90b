# covergen: every set-up step lives here. `make serve` and `make test` work on a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DIFFUSERS_OFFLINE := 1
# CPU installs pin torch to the wheel on disk; CUDA installs: see README ("GPU install").
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install proto demo-adapters serve test lint bench clean-cache

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) proto

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=server --pyi_out=server \
	  --grpc_python_out=server proto/covergen/v1/*.proto

demo-adapters: install
	$(BIN)/python -m covergen.demo_adapters

serve: install demo-adapters
	$(BIN)/covergen-server

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check server trainer tests loadtest
	$(BIN)/mypy server/covergen trainer

clean-cache:
	rm -rf .cache
