# yume-data: every user-facing command. `make demo` and `make test` work on a fresh clone
# with only python3 and make: they build .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    ?= ./data
SEKAI   ?=
CLIPS   ?= 8

.PHONY: setup demo test test-all test-slow lint bench gpu-check vbench-env mutants sekai-actions sample-sekai clips train-base encode-latents shards-verify distill sample clean

setup: $(STAMP)

# torch is pinned to the local CPU build first, so nothing pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Every stage end to end on generated sample data (tiny-random models), then a short training run.
# Sample inputs are made once: rewriting them would change the inputs of finished stages,
# which a rerun refuses (delete $(DATA) to start over).
demo: setup
	test -d $(DATA)/sample-sekai/videos || $(BIN)/yume-data sample-sekai --out $(DATA)/sample-sekai --clips $(CLIPS) --video
	$(BIN)/yume-data sekai-actions --sekai $(DATA)/sample-sekai --root $(DATA)
	$(BIN)/yume-data clips --videos $(DATA)/sample-sekai/videos --root $(DATA)
	$(BIN)/yume-data shards verify --root $(DATA)
	$(BIN)/yume-data shards stats --root $(DATA)
	$(BIN)/yume-data encode-latents --preset tiny --root $(DATA)
	$(BIN)/yume-data recaption --preset tiny --root $(DATA) --window-seconds 10
	$(BIN)/python -m curation.sample_openvid $(DATA)/sample-openvid/OpenVid-sample.csv 400 0
	$(BIN)/yume-data dedup-captions --captions $(DATA)/sample-openvid/OpenVid-sample.csv --n 4 --root $(DATA) || test $$? -eq 3  # 3: the sample rows without a caption are rejects
	$(BIN)/yume-data synth --t2v tiny-random --resolution 32x32 --frames 9 --steps 2 --top-k 3 --root $(DATA) || test $$? -eq 3  # 3: the videos below the top k are rejects
	test -d $(DATA)/sample-images || $(BIN)/python -m curation.sample_images $(DATA)/sample-images 4
	$(BIN)/yume-data events --preset tiny --images $(DATA)/sample-images --root $(DATA)
	$(BIN)/yume-data screening export --root $(DATA) --screener demo --batch-size 1000 --out $(DATA)/screening/demo.csv
	$(BIN)/python -m curation.screening.fill $(DATA)/screening/demo.csv --keep-share 0.6 --seed 0  # a person filling the sheet
	$(BIN)/yume-data screening import $(DATA)/screening/demo.csv --root $(DATA)
	$(BIN)/yume-data screening status --root $(DATA)
	$(BIN)/yume-data shards verify --root $(DATA) --decode none
	$(BIN)/yume-train base --preset tiny --root $(DATA) --dataset sekai-real-captioned=1 --dataset synthetic:t2v=0.5 --dataset event=0.5 --out $(DATA)/runs/tiny-demo --steps 20 --overwrite
	$(BIN)/yume-train base --preset tiny --root $(DATA) --latents --out $(DATA)/runs/tiny-demo-latents --steps 20 --overwrite
	$(BIN)/yume-train distill --preset tiny --base $(DATA)/runs/tiny-demo --root $(DATA) --dataset sekai-real-captioned=1 --out $(DATA)/runs/distill-tiny-demo --steps 4 --critic-updates 2 --overwrite
	$(BIN)/yume-train sample --preset tiny --weights $(DATA)/runs/distill-tiny-demo --actions 'W,W,W+A|a dragon flies overhead,←' --out $(DATA)/samples/distill-tiny-demo.mp4

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

# Only the slow end-to-end runs (SIGKILL of the clips job, the two-node Ray cluster, Ray Train DDP).
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# VBench 0.1.5 in its own venv (numpy<2, transformers 4.33): the `vbench:.venv-vbench/bin/python` scorer.
VBENCH_VENV := .venv-vbench
vbench-env: setup
	$(BIN)/python -m model.backends.vbench_env $(VBENCH_VENV)

# Plant each kept one-line bug (tests/mutants/mutations.py) in a copy of the repository and run
# its tests; fails if a mutant survives that is not listed as equivalent (15-40 min on 2 cores).
mutants: setup
	$(BIN)/python -m tests.mutants.run

bench: setup
	$(BIN)/python -m tests.bench.run_all

# On a GPU machine, with its own CUDA torch (not .venv): gpu-marked tests + the 5B sampler bench.
gpu-check:
	bash scripts/gpu_check.sh

sample-sekai: setup
	test -d $(DATA)/sample-sekai/videos || $(BIN)/yume-data sample-sekai --out $(DATA)/sample-sekai --clips $(CLIPS) --video

# SEKAI=<release dir>; without it, the job runs on generated sample data.
sekai-actions: setup
ifeq ($(SEKAI),)
	test -f $(DATA)/sample-sekai/ground_truth.parquet || $(BIN)/yume-data sample-sekai --out $(DATA)/sample-sekai --clips $(CLIPS)
	$(BIN)/yume-data sekai-actions --sekai $(DATA)/sample-sekai --root $(DATA)
else
	$(BIN)/yume-data sekai-actions --sekai $(SEKAI) --root $(DATA)
endif

# VIDEOS=<folder of Sekai videos> after `make sekai-actions SEKAI=...`; without it, sample data.
clips: setup
ifeq ($(VIDEOS),)
	test -d $(DATA)/sample-sekai/videos || $(BIN)/yume-data sample-sekai --out $(DATA)/sample-sekai --clips $(CLIPS) --video
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

# Self-forcing DMD distillation of a base run into a 4-step TSCM generator (DISTILL_ARGS: e.g. --steps 600 --latents).
DISTILL_BASE ?= $(DATA)/runs/$(TRAIN_CONFIG)
DISTILL_ARGS ?=
distill: setup
	$(BIN)/yume-train distill --preset $(TRAIN_CONFIG) --base $(DISTILL_BASE) --root $(DATA) --out $(DATA)/runs/distill-$(TRAIN_CONFIG) $(DISTILL_ARGS)

# Block-by-block generation under keyboard actions (SAMPLE_ARGS: e.g. --image first.png --blocks 16).
ACTIONS     ?= W,W,W+A,←
SAMPLE_ARGS ?=
sample: setup
	$(BIN)/yume-train sample --preset $(TRAIN_CONFIG) --weights $(DATA)/runs/distill-$(TRAIN_CONFIG) --actions '$(ACTIONS)' --out $(DATA)/samples/$(TRAIN_CONFIG).mp4 $(SAMPLE_ARGS)

# Pre-encode clip shards into latent shards (<data>/latents/) for `--latents` training.
encode-latents: setup
	$(BIN)/yume-data encode-latents --preset $(TRAIN_CONFIG) --root $(DATA)

# Check every shard under $(DATA)/shards: members, sha256 vs index, json schema, mp4 frames.
shards-verify: setup
	$(BIN)/yume-data shards verify --root $(DATA)
	$(BIN)/yume-data shards stats --root $(DATA)

clean:
	rm -rf $(DATA) bench-out
