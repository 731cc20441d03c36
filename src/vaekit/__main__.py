"""`python -m vaekit ...`, which is what torchrun runs: `torchrun --nproc-per-node 2 -m vaekit train ...`."""

from vaekit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
