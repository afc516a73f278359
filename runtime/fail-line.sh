# Sourced by runtime/'s bash scripts (after `set -Eeuo pipefail`): a script that fails ends with
# one line on stderr naming the command and line that failed, even where the command printed
# nothing (grep's exit 2 inside a command substitution did, under set -e). A script's own
# `exit N` says why itself first, so only a failed command is named. A script's clean-up goes
# through at_exit, not a trap of its own (which would replace this one).
_fail_line="" _at_exit=""
at_exit() { _at_exit="$_at_exit $1;"; }
trap '_rc=$?; [ -n "$_fail_line" ] || _fail_line="line $LINENO: \`$BASH_COMMAND\` exited $_rc"' ERR
trap '_rc=$?; eval "$_at_exit"; [ "$_rc" = 0 ] || [ -z "$_fail_line" ] || echo "${0##*/}: failed at $_fail_line" >&2
      exit "$_rc"' EXIT
