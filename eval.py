"""Evaluate a checkpoint: `python eval.py checkpoint=<run>/checkpoints/latest [n_test=50 ...]`.

See policylab/evaluate.py for every setting; installed, the same command is `policylab-eval`.
"""

import sys

from policylab.evaluate import main

if __name__ == "__main__":
    main(sys.argv[1:])
