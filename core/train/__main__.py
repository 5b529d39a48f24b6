"""``python -m core.train CONFIG.yaml [--resume RUN_DIR] [--run-dir DIR]``: one LoRA fine-tuning run."""

import os
import sys

from core.train.runner import main

code = main()
# The run is over and its files are closed: skip the interpreter's teardown of torch and transformers (seconds on a
# busy CPU), because the job manager reports the run ended (and its adapter ready) only once this process is gone.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
