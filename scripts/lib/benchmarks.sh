# shellcheck shell=bash
# Sourced by the benchmark scripts.
#
#   median_of "FIGURES"            the median of figures separated by spaces (none: "-")
#   write_bench_section KEY SECTION
#   in_worktree COMMIT COMMAND...  runs COMMAND in a worktree of COMMIT, then removes it
#   remove_worktree                (in the caller's EXIT trap) removes one left by a stop
#
# write_bench_section writes a section into BENCHMARKS.md between its
# markers, as the Rust benchmarks do (event_store::bench): it replaces what
# stands between `<!-- bench:KEY:start -->` and `<!-- bench:KEY:end -->`,
# or appends the section with its markers.

median_of() {
  tr ' ' '\n' <<<"$1" | { grep . || true; } | sort -g |
    awk '{v[NR] = $1} END {if (NR == 0) print "-"; else print v[int((NR + 1) / 2)]}'
}

write_bench_section() {
  python3 - "$1" "$2" <<'PY'
import re, sys
path, key, section = "BENCHMARKS.md", sys.argv[1], sys.argv[2].rstrip("\n")
start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
text = open(path).read()
block = f"{start}\n{section}\n{end}"
if start in text:
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
open(path, "w").write(text)
PY
}

# The worktree in_worktree made, until it is removed.
tree=""
in_worktree() {
  local commit=$1
  shift
  tree=$(mktemp -d)
  git worktree add --quiet --detach "$tree" "$commit"
  (cd "$tree" && "$@")
  remove_worktree
}
remove_worktree() {
  if [[ -n $tree ]]; then git worktree remove --force "$tree"; fi
  tree=""
}
