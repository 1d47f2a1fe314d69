"""Ray job entry point: the same job as `elmo-dist refresh` (the nightly incremental refresh).

    ray job submit --working-dir . -- python jobs/nightly_refresh.py INPUT... --output DIR \
        [--keep-versions N] [--lease-seconds S] [options]

Embeds only new and changed input files, publishes a new version of DIR, keeps the last N
versions. A second run while one is going exits with code 2 (the output's lease is held).
Run `python jobs/nightly_refresh.py --help` for the options; see docs/refresh.md.
"""

import sys

from elmo_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["refresh", *sys.argv[1:]] if "-h" not in sys.argv[1:2] and "--help" not in sys.argv[1:2]
                  else ["refresh", "--help"]))
