#!/bin/bash
# The two conversions at once, one torch thread each.
here="$(dirname "$0")"
bash "$here/one.sh" 1 0 & bash "$here/one.sh" 1 1 & wait
