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

# The main job on the tiny model, on CPU: synthetic streams, SFT warm-start, GRPO, and an eval
# of the random, SFT and GRPO policies on held-out streams (table + runs/demo/report.png).
RECIPE := recipes/tiny_synthetic.yaml
SR     := $(BIN)/streamreason
demo: install
	rm -rf $(RUN)
	$(SR) model tiny models/tiny
	$(SR) data synth data/synth/train --n 256 --seed 0 --min-seconds 6 --max-seconds 10
	$(SR) data synth data/synth/eval --n 48 --seed 1 --min-seconds 6 --max-seconds 10
	$(SR) eval $(RECIPE) --model models/tiny --name "random init" --out $(RUN)/evals/init.json trainer.eval_samples=2
	$(SR) sft $(RECIPE) trainer.run_dir=$(RUN)/sft
	$(SR) eval $(RECIPE) --model $(RUN)/sft/final --name "after SFT" --out $(RUN)/evals/sft.json trainer.eval_samples=8
	$(SR) train $(RECIPE) model=$(RUN)/sft/final trainer.run_dir=$(RUN)/grpo
	$(SR) eval $(RECIPE) --model $(RUN)/grpo/final --name "after GRPO" --out $(RUN)/evals/grpo.json trainer.eval_samples=8
	$(SR) report $(RUN)/grpo --png $(RUN)/report.png \
		--evals $(RUN)/evals/init.json $(RUN)/evals/sft.json $(RUN)/evals/grpo.json

clean:
	rm -rf $(VENV) runs models data *.egg-info
