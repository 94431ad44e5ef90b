# Both targets create and use .venv in the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean-demo

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: this pair lies on the local disk of our machines (others download gigabytes)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m attentive.demo --out demo_out

bench: venv
	$(PY) bench/supernet_speed.py
	$(PY) bench/train_speed.py
	$(PY) bench/search_speed.py
