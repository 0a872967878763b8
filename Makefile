# The two commands of the README's quick start. Both set everything up from nothing.
.PHONY: demo test bench
demo:   ## build the default bundle on first use, then run it
	@scripts/demo.sh
test:   ## install everything (Python packages, mosquitto, the Cython core) and run the whole suite
	@scripts/test.sh
bench:  ## the benchmarks (speed targets as ratios, one run)
	@scripts/bootstrap.sh --test && .venv/bin/python benchmarks/kernels.py
