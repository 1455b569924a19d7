# Two commands for a fresh machine: `make demo` (set up, answer a question) and `make test`.
VENV ?= .venv
BERTRT = $(VENV)/bin/bertrt
CONTEXT = TensorRT is a high performance deep learning inference platform that delivers low latency and high throughput for apps such as recommenders, speech and image/video on NVIDIA GPUs. It includes parsers to import models, and plugins to support novel ops and layers before applying optimizations for inference. Today NVIDIA is open-sourcing parsers and plugins in TensorRT so that the deep learning community can customize and extend these components to take advantage of powerful TensorRT optimizations for your apps.

.PHONY: setup demo test
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

demo: setup
	$(BERTRT) qa --context "$(CONTEXT)" --question "What is TensorRT?"

test: setup
	$(VENV)/bin/python -m pytest -q
