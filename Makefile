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

.PHONY: install proto demo-adapters serve serve-ray studio test lint bench-engine bench-trainer bench-serving bench-gpu loadgen soak embedded-model regional-adapters contact-sheet clean-cache

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,train,ray]"
	touch $(STAMP)

install: $(STAMP) proto

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=server --pyi_out=server \
	  --grpc_python_out=server proto/covergen/v1/*.proto

demo-adapters: install
	$(BIN)/python -m trainer.embedded.demo_adapters

serve: install demo-adapters
	$(BIN)/covergen-server

# A local Ray cluster (2 CPUs, no dashboard), two painter replicas and the ingress on :50051;
# SIGTERM drains and stops everything it started (covergen.rayserve.cli).
serve-ray: install demo-adapters
	$(BIN)/covergen-ray

# The training studio on 127.0.0.1:8600 (COVERGEN_STUDIO_PORT), over styles/, talking to the server
# at COVERGEN_STUDIO_SERVER (default 127.0.0.1:50051; start it with `make serve`).
studio: install
	$(BIN)/pip install -q -e ".[studio]"
	$(BIN)/covergen-studio

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

# issue 12: serving targets from outside the server (latency, regions, hits); the GPU table
bench-serving: install
	$(BIN)/python loadtest/bench_serving.py

bench-gpu: install
	$(BIN)/python loadtest/bench_gpu.py

loadgen: install
	$(BIN)/python -m loadtest.loadgen --spawn-server --concurrency 16 --duration 20 --warmup 64 \
	  --repeat-fraction 1.0 --steps 4 --ceiling

soak: install
	$(BIN)/python -m loadtest.soak

# Rebuild the committed embedded regional model (single-threaded, reproducible; ~40 min here):
# VAE + epsilon UNet, a refine stage, then a short switch to v-prediction at zero terminal SNR.
embedded-model: install
	rm -rf .cache/regional-build
	$(BIN)/python -m trainer.embedded.regional build --out .cache/regional-build/stage1
	$(BIN)/python -m trainer.embedded.regional refine --model .cache/regional-build/stage1 \
	  --out .cache/regional-build/stage2
	rm -rf server/covergen/embedded/regional-v2
	$(BIN)/python -m trainer.embedded.regional refine --model .cache/regional-build/stage2 \
	  --out server/covergen/embedded/regional-v2 --decoder-steps 0 --unet-steps 400 --unet-batch 32 \
	  --objective v_zero_snr

# Train the starter styles' adapters on the regional model with covergen-train and publish them
# into styles/ (~1 min per style here). The committed adapters came from this target.
REGIONAL_ADAPTERS := jiangnan chuanyu_hotpot hutong_breakfast lingnan_arcade minnan_redbrick \
  night_market_bbq rain spring ink_wash
regional-adapters: install
	$(BIN)/python -m trainer.scenes --out .cache/scenes
	set -e; for style in $(REGIONAL_ADAPTERS); do \
	  rm -rf runs/$$style; \
	  $(BIN)/covergen-train --config styles/$$style/train.yaml --quiet; \
	  $(BIN)/covergen-train publish --output-dir runs/$$style --style $$style --styles-dir styles; \
	done

contact-sheet: install
	$(BIN)/python -m trainer.embedded.regional sheet --out docs/contact-sheet.png

clean-cache:
	rm -rf .cache
