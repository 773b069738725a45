# SAM2VideoX: `make demo` and `make test` work from a clean clone (they install into .venv first).
# Variables: CONFIG (a YAML under configs/), STORE (feature store folder or URL), OUT (run folder),
# ARGS (extra dotted overrides, e.g. ARGS="teacher.feature=backbone ray.num_workers=4").

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
CLI         := $(VENV)/bin/sam2videox
STAMP       := $(VENV)/.installed
TORCH_PIN   := torch==2.13.0
SAMPLE      := datasets/sample/clips

CONFIG ?= configs/extract/sample.yaml
STORE  ?= out/sample-store
OUT    ?= out/sample-run
ARGS   ?=
NPROC  ?= 1
# Several nodes: run the same `make distill` on every node with NNODES, its NODE_RANK (0..NNODES-1)
# and the address of node 0 (MASTER_ADDR, MASTER_PORT). torchrun then starts NPROC ranks per node.
NNODES      ?= 1
NODE_RANK   ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
# STUDENT=wan: the demo with a tiny Wan 2.1 T2V student (configs/*/sample_wan.yaml) instead of CogVideoX;
# STUDENT=ltx: a tiny LTX-Video image-to-video student (configs/*/sample_ltx.yaml)
STUDENT ?= cogvideox
SAMPLE_SUFFIX := $(if $(filter wan ltx,$(STUDENT)),_$(STUDENT),)
DEMO   ?= out/demo$(subst _,-,$(SAMPLE_SUFFIX))
DISTILL_CONFIG ?= configs/distill/sample$(SAMPLE_SUFFIX).yaml
# The CogVideoX demo runs on the miniature world's trained weights (weights/miniature: teacher, VAE, base student,
# judge; configs/*/demo.yaml); the Wan and LTX demos keep their tiny random-weight students.
DEMO_EXTRACT ?= configs/extract/$(if $(SAMPLE_SUFFIX),sample$(SAMPLE_SUFFIX),demo).yaml
DEMO_DISTILL ?= configs/distill/$(if $(SAMPLE_SUFFIX),sample$(SAMPLE_SUFFIX),demo).yaml
DEMO_JUDGE   ?= $(if $(SAMPLE_SUFFIX),,--judge-model tiny --judge-checkpoint weights/miniature/judge/judge.pt)

export TQDM_DISABLE ?=
export RAY_AUTH_MODE ?= disabled

.PHONY: install sample extract distill plan ablate evaluate score demo demo-grounded test clean help gpu-wheels vbench-env twins miniature miniature-weights miniature-table miniature-student miniature-judge miniature-vae miniature-teacher

help:
	@echo "make demo | test | install | sample | extract | distill | ablate | evaluate | score | miniature   (CONFIG=... STORE=... OUT=... VIDEOS=... ARGS=...)"

# Install order matters (see README "Install"): torch pinned first so nothing pulls a CUDA build;
# sam2 built against it without build isolation (isolation downloads a second torch); then the rest,
# constrained to the same torch; then cd-fvd (FVD's reference detectors) with --no-deps, as its metadata
# pulls torchvision and scipy, neither of which the modules used import. Re-runs are a no-op until
# pyproject.toml or this file changes.
install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	echo "$(TORCH_PIN)" > $(VENV)/constraints.txt
	$(PIP) install -q --upgrade pip setuptools wheel -c $(VENV)/constraints.txt
	$(PIP) install -q "$(TORCH_PIN)"
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-build-isolation --no-deps "sam2==1.1.0"
	$(PIP) install -q --no-build-isolation -c $(VENV)/constraints.txt -e ".[test,s3]"
	$(PIP) install -q --no-deps "cd-fvd==0.1.1"
	touch $(STAMP)

sample: install
	$(PY) datasets/sample/generate.py --out $(SAMPLE)

# Structure-broken twins of the first 3 sample clips with their true masks (ground truth for the
# structure metrics; not part of the corpus the demo and tests use).
twins: install
	$(PY) datasets/sample/generate.py --out $(SAMPLE) --twins datasets/sample/twins

# The miniature world's trained tiny CogVideoX VAE (issue 19): weights/miniature/encoders/, loadable as
# `encoders.model: weights/miniature/encoders`; the committed folder is its output (recipe v3: subject-centred
# crops, subject-weighted L1, the module's defaults, spelled out here): 49 min measured under load 2-11.
miniature-vae: install
	OMP_NUM_THREADS=1 nice -n 19 $(PY) -m miniature.train_vae --out weights/miniature/encoders --steps 1400 --seed 0 --subject-crop-p 0.8 --subject-weight 3

# VBench in a virtual environment of its own (it pins transformers==4.33.2, timm<=1.0.12 and numpy<2,
# which clash with this project's). vbench's wheel names no torch, so torch and a torchvision of the
# same build come first (VBENCH_TORCH); DreamSim (VBench-I2V's i2v_background) with the peft and
# open_clip releases that still import next to transformers 4.33 / timm 1.0.12. Its weights are not
# downloaded here: put them under $$VBENCH_CACHE_DIR (default ~/.cache/vbench) and torch's hub dir, laid
# out as stages/evaluate/metrics/vbench_adapter.py REQUIRED_WEIGHTS / REQUIRED_TORCH_HUB list.
VBENCH_VENV ?= .venv-vbench
VBENCH_TORCH ?= torch==2.14.1 torchvision==0.29.1
vbench-env:
	test -x $(VBENCH_VENV)/bin/python || $(PYTHON_BOOT) -m venv $(VBENCH_VENV)
	$(VBENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(VBENCH_VENV)/bin/python -m pip install -q $(VBENCH_TORCH)
	$(VBENCH_VENV)/bin/python -m pip freeze | grep -i '^torch' > $(VBENCH_VENV)/constraints.txt
	$(VBENCH_VENV)/bin/python -m pip install -q -c $(VBENCH_VENV)/constraints.txt "vbench==0.1.5" "timm>=0.9,<=1.0.12" \
	  "dreamsim==0.2.1" "peft==0.10.0" "open_clip_torch==2.29.0"
	$(VBENCH_VENV)/bin/python -c "import vbench, vbench2_beta_i2v, dreamsim"

extract: sample
	$(CLI) extract --config $(CONFIG) --store $(STORE) $(ARGS)

# Stage two alone. CONFIG defaults to the sample distill config here; NPROC>1 (or NNODES>1) runs under
# torchrun: DDP by default, FSDP2 with ARGS="parallel.strategy=fsdp" (hsdp: sharded per node).
TORCHRUN := $(PY) -m torch.distributed.run --nproc_per_node $(NPROC) $(if $(filter 1,$(NNODES)),--standalone,\
  --nnodes $(NNODES) --node_rank $(NODE_RANK) --master_addr $(MASTER_ADDR) --master_port $(MASTER_PORT))
distill: install
	$(if $(and $(filter 1,$(NPROC)),$(filter 1,$(NNODES))),$(CLI),$(TORCHRUN) -m pipeline.cli) \
	  distill --config $(if $(filter configs/extract/%,$(CONFIG)),$(DISTILL_CONFIG),$(CONFIG)) --store $(STORE) --out $(OUT) $(ARGS)

# Memory plan of a distill config on NPROC x NNODES GPUs (the student built on the meta device).
plan: install
	$(CLI) plan --config $(if $(filter configs/extract/%,$(CONFIG)),configs/distill/default.yaml,$(CONFIG)) --gpus $$(( $(NPROC) * $(NNODES) )) $(ARGS)

# Every configs/ablations/*.yaml, a few steps each, on the same store (nothing is re-extracted).
ablate: install
	$(CLI) ablate --config $(DISTILL_CONFIG) --store $(STORE) --out $(OUT)/ablations $(ARGS)

# Caption-grounded prompts (teacher.prompt=grounded) on the sample corpus with the tiny, random Grounding DINO:
# clips whose best box scores under the threshold are not tracked; `inspect --failures` lists them and why.

demo-grounded: export OMP_NUM_THREADS ?= 1
demo-grounded: sample
	$(CLI) extract --config configs/extract/sample.yaml --store $(DEMO)/grounded columns=[teacher] teacher.prompt=grounded \
	  teacher.grounding.model=tiny teacher.grounding.box_threshold=0.8 allow_failures=true $(ARGS)
	$(CLI) inspect $(DEMO)/grounded --failures


# Score videos made elsewhere: VIDEOS = a folder with one sub-folder per method and the same file names in
# each (README "Scoring videos made elsewhere"). Without VIDEOS: the sample twins laid out as such a folder
# (intact vs each structure break, true masks beside them), scored against "intact".
SCORE_OUT ?= out/score
score: install
ifdef VIDEOS
	$(CLI) score --videos $(VIDEOS) --out $(SCORE_OUT) $(ARGS)
else
	$(PY) datasets/sample/generate.py --out $(SAMPLE) --score-folder out/score-twins
	$(CLI) score --videos out/score-twins --reference intact --out $(SCORE_OUT) $(ARGS)
endif

# Compare runs on the store's held-out clips: RUNS = run folders or a folder of runs (after `make ablate`:
# RUNS=$(OUT)/ablations gives the ablation table); EVAL = the report's folder; ARGS e.g. "--base --steps 20".
RUNS ?= $(OUT)
EVAL ?= $(OUT)-eval
evaluate: install
	$(CLI) evaluate --store $(STORE) --out $(EVAL) --runs $(RUNS) $(ARGS)

# The whole method on the sample corpus with tiny models: extract, distil, export, sample a video, and
# evaluate the run against the base model on a held-out clip (few steps; the report is linked from summary.md).
demo: export OMP_NUM_THREADS ?= 1
demo: sample
	$(CLI) extract --config $(DEMO_EXTRACT) --store $(DEMO)/store
	$(CLI) inspect $(DEMO)/store
	$(CLI) inspect $(DEMO)/store --pca @0 --out $(DEMO)/teacher_pca.mp4
	$(CLI) distill --config $(DEMO_DISTILL) --store $(DEMO)/store --out $(DEMO)/run
	$(CLI) generate --run $(DEMO)/run --store $(DEMO)/store --out $(DEMO)/sample.mp4
	$(CLI) evaluate --store $(DEMO)/store --runs $(DEMO)/run --base --out $(DEMO)/eval --steps 8 --clips 2 $(DEMO_JUDGE)
	$(CLI) report --store $(DEMO)/store --run $(DEMO)/run --out $(DEMO)/summary.md --evaluation $(DEMO)/eval \
	  $(DEMO)/sample.mp4 $(DEMO)/teacher_pca.mp4 $(DEMO)/run/loss_curve.png

# The miniature world's tiny SAM2 teacher (miniature/train_teacher.py): sam2's own SAM2Train and loss on the
# world's true masks, written in SAM2's checkpoint format with its held-out J&F. The committed
# weights/miniature/teacher/ came from this target; make demo never retrains it. One intra-op thread: two
# contending ones on the shared cores are many times slower.
TEACHER_STEPS ?= 700
miniature-teacher: export OMP_NUM_THREADS ?= 1
miniature-teacher: install
	nice -n 19 $(PY) -m miniature.train_teacher --out weights/miniature/teacher --steps $(TEACHER_STEPS) --seed 0

# The miniature world's judge: a second tiny SAM2, another seed and the judge part's clips, that tracks
# evaluate's samples so no structure score rewards agreeing with the teacher (weights/miniature/judge/).
miniature-judge: export OMP_NUM_THREADS ?= 1
miniature-judge: install
	nice -n 19 $(PY) -m miniature.train_teacher --part judge --out weights/miniature/judge --steps $(TEACHER_STEPS) --seed 1

# The base student (miniature/student.py): the base part as a corpus folder, its encodings through the trained
# VAE, a random-weight CogVideoX I2V trained from scratch with L_diff (configs/miniature/base.yaml), published
# to weights/miniature/student/ (a `student.model` folder).
MINI ?= out/miniature
miniature-student: export OMP_NUM_THREADS ?= 1
miniature-student: install
	$(PY) -m miniature.world --part base --out $(MINI)/corpus-base
	$(CLI) extract --config configs/miniature/extract_base.yaml --store $(MINI)/store-base
	$(PY) -m miniature.student init --out $(MINI)/student-init
	$(CLI) distill --config configs/miniature/base.yaml --store $(MINI)/store-base --out $(MINI)/base-run
	$(PY) -m miniature.student publish --run $(MINI)/base-run --init $(MINI)/student-init --out weights/miniature/student

# Every committed weight of the miniature world, in dependency order (the student's encodings need the VAE).
miniature-weights: miniature-teacher miniature-judge miniature-vae
	$(MAKE) miniature-student

# The ablation table (README "The miniature world"): the tune part extracted with the trained teacher, every
# arm of configs/miniature/arms x 3 training seeds (miniature/arms.py), evaluate on the held-out clips with the
# judge, the table pooled over seeds (miniature/table.py) and a contact sheet of base vs +LGF samples.
EVAL_CLIPS ?= 12
miniature-table: export OMP_NUM_THREADS ?= 1
miniature-table: install
	$(PY) -m miniature.world --part tune --out $(MINI)/corpus-tune
	$(CLI) extract --config configs/miniature/extract_tune.yaml --store $(MINI)/store-tune
	$(CLI) extract --config configs/miniature/extract_tune.yaml --store $(MINI)/store-tune columns=[teacher] teacher.feature=backbone
	$(PY) -m miniature.arms --out $(MINI)/arms
	$(CLI) evaluate --store $(MINI)/store-tune --runs $(MINI)/arms --base --out $(MINI)/eval --clips $(EVAL_CLIPS) \
	  --judge-model tiny --judge-checkpoint weights/miniature/judge/judge.pt --no-vbench
	$(PY) -m miniature.table --report $(MINI)/eval/report.json --out $(MINI)/table
	$(PY) -m miniature.contact_sheet --eval $(MINI)/eval --models base lgf-s0 --real $(MINI)/corpus-tune \
	  --out $(MINI)/table/contact_sheet.png

miniature: miniature-weights miniature-table

# Every test runs on one intra-op thread (OMP_NUM_THREADS=1: tiny models on shared cores), so one pytest
# process keeps one core busy: TEST_WORKERS xdist processes use the others. --dist loadfile keeps a test
# file on one worker, so its module fixtures (a tiny SAM2, a store built once) are built once.
TEST_WORKERS ?= 2
test: install
	TQDM_DISABLE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# For tests/benchmarks/gpu_suite.sh on a lent GPU box (no package index there): the packages it lacks,
# as cp312 wheels and unpacked sources, into the ignored .whl/ (<= 64 MiB; carry it with the run).
gpu-wheels:
	bash tests/benchmarks/gpu_wheels.sh

clean:
	rm -rf out $(SAMPLE)
