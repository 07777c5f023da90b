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

.PHONY: install proto demo-adapters serve test lint bench-engine bench-trainer loadgen soak embedded-model contact-sheet clean-cache

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

# --- benchmarks and builds (not part of `make test`) --------------------------------------
bench-engine: install
	$(BIN)/python loadtest/bench_engine.py --size 64

bench-trainer: install
	$(BIN)/python loadtest/bench_trainer.py --arch tiny

loadgen: install
	$(BIN)/python -m loadtest.loadgen --spawn-server --concurrency 16 --duration 20 --warmup 64 \
	  --repeat-fraction 1.0 --steps 4 --ceiling

soak: install
	$(BIN)/python -m loadtest.soak

# Rebuild the committed embedded regional model (single-threaded, reproducible; ~30 min here).
embedded-model: install
	rm -rf .cache/regional-build
	$(BIN)/python -m covergen.models.regional build --out .cache/regional-build/stage1
	rm -rf server/covergen/embedded/regional-v1
	$(BIN)/python -m covergen.models.regional refine --model .cache/regional-build/stage1 \
	  --out server/covergen/embedded/regional-v1

contact-sheet: install
	$(BIN)/python -m covergen.models.regional sheet --out docs/contact-sheet.png

clean-cache:
	rm -rf .cache
