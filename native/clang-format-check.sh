#!/bin/sh
# Checks that native/*.cc and native/*.h are clang-formatted (native/.clang-format).
# Skips with a note when clang-format is not installed, so `npm run lint` works without it.
cd "$(dirname "$0")/.." || exit 1
if ! command -v clang-format >/dev/null 2>&1; then
  echo "clang-format not installed: skipping the native/ format check"
  exit 0
fi
exec clang-format --dry-run --Werror native/*.cc native/*.h
