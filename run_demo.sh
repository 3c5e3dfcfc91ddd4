#!/usr/bin/env bash
# Set up the environment if needed, then run the demo: the node in its own process, a sequence
# played into it over DDS, outputs written to output/demo (see README). Extra arguments go to the
# demo, e.g. ./run_demo.sh --kitti-drive ../shared/data/kitti_raw_seq/2011_09_26/2011_09_26_drive_0000_sync
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
exec .venv/bin/python -m depth_completion_ros.tools.demo "$@"
