"""`python -m vaekit ...`, which is what torchrun runs: `torchrun --nproc-per-node 2 -m vaekit train ...`."""

import os
import sys

from vaekit.cli import main

if __name__ == "__main__":
    rc = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun rank, its process group already left and every file written and closed: skip the
        # interpreter's teardown, where a rank was seen to abort ("terminate called without an active
        # exception": C++ threads of the communication library destroyed late) after finishing its work.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    raise SystemExit(rc)
