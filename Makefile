# Both targets create and use .venv in the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench fashion-mnist

CONSTRAINTS := configs/pip-constraints.txt

$(STAMP): setup.py $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: this pair lies on the local disk of our machines (others download gigabytes)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	# every other package at the version the tests and figures were run with (README, Reproducibility)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m pytest -q tests

FMNIST_DEB := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

# Fashion-MNIST: Debian's package when we are root, else torchvision's download (attentive/data.py).
fashion-mnist:
	@if [ ! -f $(FMNIST_DEB) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; fi

demo: venv fashion-mnist
	$(PY) -m attentive.demo --out demo_out

bench: venv
	$(PY) bench/supernet_speed.py
	$(PY) bench/train_speed.py
	$(PY) bench/search_speed.py
	$(PY) bench/depthwise_grad.py
