# The two Quickstart commands: each sets up what is missing (scripts/setup.sh), then runs.
.PHONY: setup pipeline test test-fast check lint bench

export HF_HUB_OFFLINE ?= 1
export DVC_NO_ANALYTICS ?= 1

setup:
	bash scripts/setup.sh

pipeline: setup
	. .venv/bin/activate && snakemake --profile workflow/profiles/default all && \
	  bash scripts/report.sh results/report.html

# Three pytest-xdist workers on 2 cores, a test module at a time on each (its module fixtures are made once; the
# Slurm module's one cluster stays on one worker): the slow end-to-end tests spend much of their time waiting
# (Slurm's polling backs off by 10 s a check, servers starting), so the third worker's modules run meanwhile
# (420.6 s against 514.9 s with two workers on this machine); they share the session's tiny reference run
# (conftest.py). --no-loadscope-reorder keeps conftest.py's module order (the end-to-end modules first) instead
# of xdist's most-tests-first order, which started the long Slurm and team modules last.
test: setup
	. .venv/bin/activate && python -m pytest -q -n 3 --dist loadscope --no-loadscope-reorder tests

# Everything but the end-to-end pipeline tests (@pytest.mark.slow).
test-fast: setup
	. .venv/bin/activate && python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder -m "not slow" tests

# Style and consistency: ruff (pyproject.toml), Snakemake's linter, and dvc.yaml generated from the package.
check: setup
	. .venv/bin/activate && ruff check src tests benchmarks && snakemake --lint && text4point dvc-yaml --check

lint: check

# Speed/memory benchmarks (results in results/benchmarks/); the CLIP and pre-training ones read the
# default world and the bootstrap checkpoint when the pipeline has made them.
bench: setup
	. .venv/bin/activate && python benchmarks/bench_world.py
	. .venv/bin/activate && python benchmarks/bench_correspondences.py
	. .venv/bin/activate && python benchmarks/bench_clip_features.py
	. .venv/bin/activate && python benchmarks/bench_pretrain.py --data data/world --corr data/correspondences \
	  --feat data/clip_features/t4p-tiny --clip-checkpoint models/clip/bootstrap.pt
	. .venv/bin/activate && python benchmarks/bench_pipeline.py
