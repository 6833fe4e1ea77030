# yume-data: every user-facing command. `make demo` and `make test` work on a fresh clone
# with only python3 and make: they build .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    ?= ./data
SEKAI   ?=
CLIPS   ?= 8

.PHONY: setup demo test test-all lint bench sekai-actions sample-sekai clips train-base encode-latents shards-verify clean

setup: $(STAMP)

# torch is pinned to the local CPU build first, so nothing pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Every stage end to end on generated sample data (tiny-random models), then a short training run.
demo: setup
	$(BIN)/yume-data sample-sekai --out $(DATA)/sample-sekai --clips $(CLIPS) --video
	$(BIN)/yume-data sekai-actions --sekai $(DATA)/sample-sekai --root $(DATA)
	$(BIN)/yume-data clips --videos $(DATA)/sample-sekai/videos --root $(DATA)
	$(BIN)/yume-data shards verify --root $(DATA)
	$(BIN)/yume-data shards stats --root $(DATA)
	$(BIN)/yume-data encode-latents --preset tiny --root $(DATA)
	$(BIN)/yume-data recaption --preset tiny --root $(DATA) --window-seconds 10
	$(BIN)/yume-data shards verify --root $(DATA) --decode none
	$(BIN)/yume-train base --preset tiny --root $(DATA) --out $(DATA)/runs/tiny-demo --steps 20 --overwrite
	$(BIN)/yume-train base --preset tiny --root $(DATA) --latents --out $(DATA)/runs/tiny-demo-latents --steps 20 --overwrite

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m tests.bench.run_all

sample-sekai: setup
	$(BIN)/yume-data sample-sekai --out $(DATA)/sample-sekai --clips $(CLIPS) --video

# SEKAI=<release dir>; without it, the job runs on generated sample data.
sekai-actions: setup
ifeq ($(SEKAI),)
	$(BIN)/yume-data sample-sekai --out $(DATA)/sample-sekai --clips $(CLIPS)
	$(BIN)/yume-data sekai-actions --sekai $(DATA)/sample-sekai --root $(DATA)
else
	$(BIN)/yume-data sekai-actions --sekai $(SEKAI) --root $(DATA)
endif

# VIDEOS=<folder of Sekai videos> after `make sekai-actions SEKAI=...`; without it, sample data.
clips: setup
ifeq ($(VIDEOS),)
	$(BIN)/yume-data sample-sekai --out $(DATA)/sample-sekai --clips $(CLIPS) --video
	$(BIN)/yume-data sekai-actions --sekai $(DATA)/sample-sekai --root $(DATA)
	$(BIN)/yume-data clips --videos $(DATA)/sample-sekai/videos --root $(DATA)
else
	$(BIN)/yume-data clips --videos $(VIDEOS) --root $(DATA)
endif

# Base training of the TSCM model. TRAIN_CONFIG=wan22-5b needs local Wan2.2 weights and GPUs;
# TRAIN_ARGS passes more options (e.g. --steps 100 --resume --latents --workers 8 --gpus-per-worker 1).
TRAIN_CONFIG ?= tiny
TRAIN_ARGS   ?=
train-base: setup
	$(BIN)/yume-train base --preset $(TRAIN_CONFIG) --root $(DATA) --out $(DATA)/runs/$(TRAIN_CONFIG) $(TRAIN_ARGS)

# Pre-encode clip shards into latent shards (<data>/latents/) for `--latents` training.
encode-latents: setup
	$(BIN)/yume-data encode-latents --preset $(TRAIN_CONFIG) --root $(DATA)

# Check every shard under $(DATA)/shards: members, sha256 vs index, json schema, mp4 frames.
shards-verify: setup
	$(BIN)/yume-data shards verify --root $(DATA)
	$(BIN)/yume-data shards stats --root $(DATA)

clean:
	rm -rf $(DATA) bench-out
