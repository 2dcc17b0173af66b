# Two commands do all set-up on a fresh machine:  `make demo` (the main job)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# OpenOOD v1.5 is not on PyPI. `make test` installs it, at this commit, from OPENOOD_SOURCE: a URL or a local
# .tar.gz of the repository (CI points it at ../shared/vendor/openood-3c35632.tar.gz).
OPENOOD_COMMIT := 3c35632ee91b54b09d1f085d04f94744cece7d0b
OPENOOD_SOURCE ?= https://github.com/Jingkang50/OpenOOD/archive/$(OPENOOD_COMMIT).tar.gz
OPENOOD_DIR := .deps/OpenOOD
OPENOOD_STAMP := $(VENV)/.openood-$(OPENOOD_COMMIT)
# What OpenOOD imports (its setup.py asks for faiss-gpu, which has no wheel: faiss-cpu serves; libmr is stubbed).
OPENOOD_DEPS := scikit-learn scipy pandas tqdm pyyaml faiss-cpu gdown opencv-python-headless imgaug diffdist \
	statsmodels timm foolbox json5

# The package is installed editable, which leaves out its start-up hook (openood_diffood.pth: registers diffood with
# OpenOOD and provides `python -m openood.main`): HOOK copies it next to the editable install. Python reads .pth
# files in name order, so setuptools' __editable__.*.pth (which makes the package importable) comes first.
HOOK := $(VENV)/.startup-hook

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

$(HOOK): $(STAMP) openood_diffood.pth
	$(MAKE) startup-hook
	touch $(HOOK)

$(OPENOOD_STAMP): $(STAMP)
	rm -rf $(OPENOOD_DIR) && mkdir -p $(OPENOOD_DIR)
	case "$(OPENOOD_SOURCE)" in \
	  http://*|https://*) curl -fsSL "$(OPENOOD_SOURCE)" | tar xz -C $(OPENOOD_DIR) --strip-components=1 ;; \
	  *) tar xzf "$(OPENOOD_SOURCE)" -C $(OPENOOD_DIR) --strip-components=1 ;; \
	esac
	$(BIN)/python -m pip install -q --no-deps -e $(OPENOOD_DIR)
	$(BIN)/python -m pip install -q $(OPENOOD_DEPS)
	touch $(OPENOOD_STAMP)

.PHONY: install startup-hook demo test
install: $(HOOK)

startup-hook:
	cp openood_diffood.pth "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/"

demo: $(HOOK)
	$(BIN)/python -m openood_diffood demo

# pytest exits 5 when it collects no test: for this project that is a failure, said plainly
test: $(OPENOOD_STAMP) $(HOOK)
	$(BIN)/python -m pytest -q tests || { rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no tests" >&2; exit $$rc; }
