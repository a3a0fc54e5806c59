#!/bin/bash
# Rebuild one fixture bundle from a bare mirror of a public repository.
#
#   make_bundle.sh SRC_GIT_DIR BRANCH N OUT_BUNDLE PATHSPEC...
#
# Keeps the newest N commits of BRANCH's first-parent line (N=all: the whole line) that touch PATHSPEC
# (git pathspecs; ":(exclude)..." drops binary assets), each with its full tree restricted to PATHSPEC and its
# real author, committer, dates and message, as a fresh linear history on branch "main". Merge commits of
# the source become ordinary commits (their first-parent diff). Then checks that HEAD's files and blob ids
# equal the source tip's under PATHSPEC, and that every commit's metadata equals the source's.
set -euo pipefail
src=$1 branch=$2 n=$3 out=$(realpath -m "$4")
shift 4
range=("refs/heads/$branch")
[ "$n" = all ] || range=("^refs/heads/$branch~$n" "refs/heads/$branch")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git init -q -b main "$work/repo"
# "-- --": fast-export's option parser eats the first "--"; the second one separates revisions from paths.
git -C "$src" fast-export --full-tree --first-parent --signed-tags=strip --tag-of-filtered-object=drop \
    "${range[@]}" -- -- "$@" \
  | sed "s#^commit refs/heads/$branch\$#commit refs/heads/main#; s#^reset refs/heads/$branch\$#reset refs/heads/main#" \
  | git -C "$work/repo" fast-import --quiet
git -C "$work/repo" gc --quiet --aggressive --prune=now
rm -f "$out"
git -C "$work/repo" bundle create "$out" HEAD refs/heads/main 2>/dev/null

# Verify: a clone of the bundle has the source tip's files (same blob ids) and the source's commit metadata.
git clone -q "$out" "$work/check"
empty=$(git -C "$src" hash-object -t tree /dev/null)
git -C "$src" diff-tree -r --no-renames "$empty" "refs/heads/$branch" -- "$@" \
  | awk '{split($0,x,"\t"); split(x[1],y," "); print y[2], y[4], x[2]}' | sort > "$work/src.files"
git -C "$work/check" ls-tree -r HEAD \
  | awk '{split($0,x,"\t"); split(x[1],y," "); print y[1], y[3], x[2]}' | sort > "$work/bundle.files"
cmp -s "$work/src.files" "$work/bundle.files" || { echo "HEAD's tree differs from the source's" >&2; exit 1; }
fmt='%an|%ae|%ad|%cn|%ce|%cd|%B'
cmp -s <(git -C "$src" log --first-parent --format="$fmt" "${range[@]}" -- "$@") \
       <(git -C "$work/check" log --format="$fmt") || { echo "commit metadata differs from the source's" >&2; exit 1; }
root=$(git -C "$work/check" rev-list --max-parents=0 HEAD)
echo "$(basename "$out"): $(stat -c %s "$out") bytes, $(git -C "$work/check" rev-list --count HEAD) commits" \
     "($(git -C "$work/check" log -1 --format=%ad --date=short "$root") .. $(git -C "$work/check" log -1 --format=%ad --date=short HEAD))," \
     "$(wc -l < "$work/bundle.files") files at HEAD, first commit has $(git -C "$work/check" ls-tree -r --name-only "$root" | wc -l) files;" \
     "source tip $(git -C "$src" rev-parse "refs/heads/$branch")"
