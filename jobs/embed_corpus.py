"""Ray job entry point: the same job as `elmo-dist embed`.

    ray job submit --working-dir . -- python jobs/embed_corpus.py INPUT... --output DIR [options]

Run `python jobs/embed_corpus.py --help` for the options.
"""

import sys

from elmo_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]] if "-h" not in sys.argv[1:2] and "--help" not in sys.argv[1:2]
                  else ["embed", "--help"]))
