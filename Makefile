# zosci: `make demo` and `make test` install what is missing (and only that), then run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zosci-installed
# Debian's FEniCSx (dolfinx 0.5.2 for /usr/bin/python3), Debian's h5py (same libhdf5 as dolfinx, for
# meshio's XDMF writer; a pip h5py clashes with it), and what the JIT and gmsh's wheel need.
APT_PACKAGES := python3-dolfinx-real python3-h5py python3-venv python3-dev gcc libc6-dev \
	libglu1-mesa libxcursor1 libxft2 libxinerama1 libxrender1 libxext6 libgl1
PYTEST_ARGS ?=

.PHONY: demo test install apt clean bench

demo: install
	$(PY) -m zosci run cases/naca0012_mesh_adaptation.toml  # prints the run folder; plots (*.png) are in it

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

install: apt $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "apt: installing$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -c "import dolfinx, torch, torch_geometric, numpy; assert numpy.__version__.startswith('1.24'), numpy.__version__"
	touch $(STAMP)

bench: install
	$(PY) -m zosci.bench estimators

clean:
	rm -rf $(VENV) *.egg-info
