"""``python -m core.train CONFIG.yaml [--resume RUN_DIR] [--run-dir DIR]``: one LoRA fine-tuning run."""

import sys

from core.train.runner import main

sys.exit(main())
