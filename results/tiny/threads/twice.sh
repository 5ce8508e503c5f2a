#!/bin/bash
# The same two conversions one after the other, two torch threads each (as the pipeline runs them).
here="$(dirname "$0")"
bash "$here/one.sh" 2 0 && bash "$here/one.sh" 2 1
