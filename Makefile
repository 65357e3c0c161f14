# Two commands on a fresh machine:  make demo   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ICTUS := $(VENV)/bin/ictus
# torch==2.13.0 (CPU) lies in /opt/wheels on our machines; elsewhere pip takes it from PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
SHARED ?= $(abspath ../shared)
export ICTUS_SHARED_DIR ?= $(SHARED)
# Debian packages the test suite drives (real PACS, DICOM tools, validator, browser).
SYSDEPS ?= dcmtk dicom3tools chromium fonts-dejavu-core orthanc
DEMO_DIR := build/demo

.PHONY: demo test typecheck install install-dev sysdeps clean bench

$(VENV)/.runtime: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(FIND_LINKS) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) install -q $(FIND_LINKS) -e '.[dev,train,distributed,research]'
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

sysdeps:
	@missing=""; for p in $(SYSDEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

# The demo: the BLAST-CT weights and the stroke-atlas and blast-ct-atlas assets fetched
# (from ../shared when it is there, else from the pinned upstream URLs) and verified; a
# synthetic ischaemic-stroke study rendered from the CT template (left MCA early ischaemia
# in M2, insula and lentiform nucleus, 6 HU; a hyperdense left M1 of 60 HU; 2.5 mm slices)
# written as DICOM; then the full triage. `ictus phantom OUT --haemorrhage IPH` makes a
# haemorrhage study instead.
BLAST_MIRROR := $(wildcard $(SHARED)/models/blast-ct/saved_models_v1)
STROKE_MIRROR := $(wildcard $(SHARED)/models/stroke-atlas/template)
BLAST_ATLAS_MIRROR := $(wildcard $(SHARED)/models/blast-ct/localisation_files)
demo: $(VENV)/.runtime
	rm -rf $(DEMO_DIR)
	$(ICTUS) models verify blast-ct >/dev/null 2>&1 || \
	  $(ICTUS) models pull blast-ct $(if $(BLAST_MIRROR),--from $(SHARED)/models/blast-ct,)
	$(ICTUS) models verify stroke-atlas >/dev/null 2>&1 || \
	  $(ICTUS) models pull stroke-atlas $(if $(STROKE_MIRROR),--from $(SHARED)/models/stroke-atlas,)
	$(ICTUS) models verify blast-ct-atlas >/dev/null 2>&1 || \
	  $(ICTUS) models pull blast-ct-atlas $(if $(BLAST_ATLAS_MIRROR),--from $(SHARED)/models/blast-ct,)
	$(ICTUS) phantom $(DEMO_DIR)/study --stroke --ischaemia-regions M2,IC,LN --ischaemia-side left \
	  --ischaemia-drop-hu 6 --dense-artery left --dense-artery-hu 60 --slice-thickness-mm 2.5
	$(ICTUS) series $(DEMO_DIR)/study
	$(ICTUS) triage $(DEMO_DIR)/study --out $(DEMO_DIR)/out

test: $(VENV)/.dev sysdeps
	$(PY) -m pytest -n 2 --dist loadfile -q

# mypy on the installed names: build/typecheck/ictus/{imaging,models,pipelines} link to the
# source folders, so imports of ictus.* resolve as they do after `pip install`.
typecheck: $(VENV)/.dev
	mkdir -p build/typecheck/ictus
	touch build/typecheck/ictus/__init__.py
	for p in imaging models pipelines; do ln -sfn ../../../$$p build/typecheck/ictus/$$p; done
	cd build/typecheck && ../../$(PY) -m mypy --config-file ../../setup.cfg -p ictus

bench: $(VENV)/.dev
	$(PY) scripts/bench_ingest.py

clean:
	rm -rf $(VENV) build *.egg-info
