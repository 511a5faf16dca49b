"""The script `spark-submit` runs: `spark-submit [its options] .../spampots/analysis/spark_submit.py ARGS`
runs the installed package's `spampots report --engine spark ARGS`, so spark-submit's --master and
--conf apply to the report's session (see spark.py)."""

import sys

from spampots.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", "--engine", "spark", *sys.argv[1:]]))
