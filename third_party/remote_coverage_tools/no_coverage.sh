#!/bin/sh
echo "edgepipe: 'bazel coverage' is not supported (the coverage tools are not available offline)" >&2
exit 1
