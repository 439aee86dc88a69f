#!/usr/bin/env bash
# The Debian package end to end, on a CI machine as root (systemd need not
# run): builds it with .ci/package, installs it, checks what docs/systemd.md
# ("Install the Debian package") promises, runs the daemon as the service
# user the way the unit would, removes the package (data and user kept),
# purges it (both gone) and checks nothing is left.
#
#   tests/package.sh                   build qu (release) and the package
#   tests/package.sh --prebuilt PATH   package an already built qu
#
# Every failed expectation prints one `FAIL: ...` line; the exit status is
# non-zero if any did. It refuses to run where quptime is already installed
# or a quptime user or /etc/quptime exists: a purge would delete them.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
esac

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
pass() {
  echo "ok: $*" >&2
}
# check DESCRIPTION COMMAND...: the command's success is the expectation.
check() {
  local what="$1"
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
# quiet COMMAND...: the command, its output discarded.
quiet() {
  "$@" >/dev/null 2>&1
}
# absent COMMAND...: the command fails (e.g. a lookup finds nothing).
absent() {
  ! "$@" >/dev/null 2>&1
}
die() {
  echo "error: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root: it installs and purges a package (sudo tests/package.sh)"
for tool in dpkg dpkg-deb systemd-analyze getcap setpriv; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (.ci/setup installs what this test needs)"
done
if dpkg-query -W -f='${Status}' quptime 2>/dev/null | grep -q 'installed\|config-files'; then
  die "the quptime package is already on this machine; this test would purge it"
fi
getent passwd quptime >/dev/null && die "a user quptime exists; this test would delete it"
getent group quptime >/dev/null && die "a group quptime exists; this test would delete it"
[ -e /etc/quptime ] && die "/etc/quptime exists; this test would delete it"

unit=/usr/lib/systemd/system/quptime.service
daemon=""
serve_log="$(mktemp /tmp/quptime-package-test.XXXXXX)"
cleanup() {
  if [ "$failures" -eq 0 ]; then rm -f "$serve_log"; else echo "the daemon's log: $serve_log" >&2; fi
  if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
  fi
  if dpkg-query -W -f='${Status}' quptime 2>/dev/null | grep -q 'installed\|config-files'; then
    echo "cleaning up: dpkg --purge quptime" >&2
    dpkg --purge quptime >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# --- build -------------------------------------------------------------
deb="$(.ci/package "$@")" || die ".ci/package failed"
[ -f "$deb" ] || die ".ci/package printed '$deb', which is not a file"
echo "package: $deb" >&2
check "the package is named quptime" test "$(dpkg-deb -f "$deb" Package)" = quptime
depends="$(dpkg-deb -f "$deb" Depends)"
check "the package depends on libcap2-bin (setcap in postinst): '$depends'" grep -qw libcap2-bin <<<"$depends"
version="$(dpkg-deb -f "$deb" Version)"
upstream="${version%-*}"

# --- install -----------------------------------------------------------
if ! dpkg -i "$deb" >&2; then
  fail "dpkg -i $deb"
  exit 1
fi
check "dpkg reports quptime installed" \
  test "$(dpkg-query -W -f='${Status}' quptime)" = "install ok installed"

# The binary.
check "/usr/bin/qu is an executable" test -x /usr/bin/qu
qu_version="$(/usr/bin/qu version 2>&1 || true)"
check "qu version ('$qu_version') is the package's $upstream" grep -q "^qu $upstream\b" <<<"$qu_version"
caps="$(getcap /usr/bin/qu 2>&1 || true)"
check "/usr/bin/qu has the file capability cap_net_raw=ep (getcap: '$caps')" grep -q 'cap_net_raw[+=]ep' <<<"$caps"

# The service user and its directory.
passwd="$(getent passwd quptime || true)"
check "the user quptime exists" test -n "$passwd"
IFS=: read -r _ _ uid gid _ home shell <<<"$passwd"
check "quptime is a system user (uid $uid < 1000)" test "${uid:-1000}" -lt 1000
check "quptime's primary group is quptime" test "$(getent group "${gid:-x}" | cut -d: -f1)" = quptime
check "quptime's home is /etc/quptime (is '$home')" test "$home" = /etc/quptime
check "quptime's shell is /usr/sbin/nologin (is '$shell')" test "$shell" = /usr/sbin/nologin
check "/etc/quptime is a directory" test -d /etc/quptime
dir_stat="$(stat -c '%U:%G %a' /etc/quptime 2>/dev/null || true)"
check "/etc/quptime is quptime:quptime 700 (is '$dir_stat')" test "$dir_stat" = "quptime:quptime 700"

# The unit: present, valid, hardened, not enabled, not started.
check "the unit is installed at $unit" test -f "$unit"
if command -v man >/dev/null 2>&1; then
  check "systemd-analyze verify $unit (Documentation=man:qu(1) resolves)" systemd-analyze verify "$unit"
else
  check "systemd-analyze verify --man=no $unit" systemd-analyze verify --man=no "$unit"
fi
exposure_line="$(systemd-analyze security --offline=true "$unit" 2>/dev/null | grep 'Overall exposure level' || true)"
exposure="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p' <<<"$exposure_line")"
check "the unit's exposure is at most 2.0 (systemd-analyze security: '${exposure:-no number}')" \
  awk -v e="${exposure:-99}" 'BEGIN { exit !(e + 0 <= 2.0) }'
check "the unit is not enabled on install" \
  test ! -e /etc/systemd/system/multi-user.target.wants/quptime.service
for key in Type=notify WatchdogSec=30s Restart=on-failure User=quptime Group=quptime \
  ExecStart=/usr/bin/qu AmbientCapabilities=CAP_NET_RAW CapabilityBoundingSet=CAP_NET_RAW; do
  check "the unit sets $key" grep -q "^$key" "$unit"
done
check "the unit does not set MemoryDenyWriteExecute=yes (wasmtime's JIT)" \
  absent grep '^MemoryDenyWriteExecute=yes' "$unit"

# Man pages, completions, docs.
check "the man page qu(1) is installed gzipped" test -s /usr/share/man/man1/qu.1.gz
check "a subcommand's man page is installed (qu-init(1))" test -s /usr/share/man/man1/qu-init.1.gz
if command -v man >/dev/null 2>&1; then
  check "man -w qu finds it" test "$(man -w qu 2>/dev/null)" = /usr/share/man/man1/qu.1.gz
fi
check "the man page is roff with a .TH line" grep -q '^\.TH' <(zcat /usr/share/man/man1/qu.1.gz)
bash_completion=/usr/share/bash-completion/completions/qu
check "bash completion registers for qu" \
  quiet bash -c "source $bash_completion && complete -p qu"
check "zsh completion is installed (#compdef qu)" grep -q '^#compdef qu' /usr/share/zsh/vendor-completions/_qu
check "fish completion is installed (complete -c qu)" grep -q 'complete -c qu' /usr/share/fish/vendor_completions.d/qu.fish
check "README.md is in /usr/share/doc/quptime" test -s /usr/share/doc/quptime/README.md
check "docs/systemd.md is in /usr/share/doc/quptime/docs" test -s /usr/share/doc/quptime/docs/systemd.md
# shellcheck disable=SC2013 # the words of Documentation=, one URI each
for doc in $(sed -n 's|^Documentation=||p' "$unit"); do
  case "$doc" in
    file://*) check "the unit's Documentation $doc exists" test -f "${doc#file://}" ;;
  esac
done

# --- the service user, as docs/systemd.md tells it ---------------------
# `sudo -u quptime qu init`: no variables, the service user's defaults.
as_quptime=(setpriv --reuid=quptime --regid=quptime --init-groups env -i PATH=/usr/bin:/bin HOME=/etc/quptime)
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 47901)"
check "the service user runs qu init with no variables set" \
  "${as_quptime[@]}" /usr/bin/qu init --advertise "127.0.0.1:$port" --bind 127.0.0.1 >/dev/null
node_stat="$(stat -c '%U %a' /etc/quptime/node.yaml 2>/dev/null || true)"
check "qu init wrote /etc/quptime/node.yaml owned by quptime, mode 600 (is '$node_stat')" \
  test "$node_stat" = "quptime 600"
# The daemon as the unit starts it (no systemd here): the unit's user,
# variables, no-new-privileges, capability bounding and ambient sets.
install -d -o quptime -g quptime -m 0700 /run/quptime
setpriv --reuid=quptime --regid=quptime --init-groups --no-new-privs \
  --inh-caps +net_raw --ambient-caps +net_raw --bounding-set -all,+net_raw \
  env -i PATH=/usr/bin:/bin HOME=/etc/quptime QUPTIME_DIR=/etc/quptime QUPTIME_SOCKET=/run/quptime/quptime.sock \
  /usr/bin/qu serve >"$serve_log" 2>&1 &
daemon=$!
for _ in $(seq 100); do
  [ -S /run/quptime/quptime.sock ] && break
  kill -0 "$daemon" 2>/dev/null || break
  sleep 0.1
done
check "qu serve as quptime opens /run/quptime/quptime.sock" test -S /run/quptime/quptime.sock
[ -S /run/quptime/quptime.sock ] || sed 's/^/  qu serve: /' "$serve_log" >&2
cap_eff="$(sed -n 's/^CapEff:[[:space:]]*//p' "/proc/$daemon/status" 2>/dev/null || true)"
check "the daemon has CAP_NET_RAW effective and nothing else (CapEff $cap_eff)" test "$cap_eff" = 0000000000002000
check "the service user's qu status reaches the daemon with no variables set" \
  quiet "${as_quptime[@]}" /usr/bin/qu status
check "root's qu status reaches it too" quiet env -u QUPTIME_DIR -u QUPTIME_SOCKET /usr/bin/qu status
kill -TERM "$daemon" 2>/dev/null || true
status=0
wait "$daemon" || status=$?
daemon=""
check "SIGTERM stops it with status 0 (got $status)" test "$status" -eq 0
rm -rf /run/quptime

# --- remove: data and user stay ----------------------------------------
if ! dpkg --remove quptime >&2; then
  fail "dpkg --remove quptime"
fi
check "remove deletes /usr/bin/qu" test ! -e /usr/bin/qu
check "remove deletes the unit" test ! -e "$unit"
check "remove keeps /etc/quptime/node.yaml (the node's identity)" test -f /etc/quptime/node.yaml
check "remove keeps the user quptime" quiet getent passwd quptime

# --- purge: nothing left -----------------------------------------------
if ! dpkg --purge quptime >&2; then
  fail "dpkg --purge quptime"
fi
check "purge: dpkg knows no quptime" absent dpkg-query -W quptime
check "purge deletes /etc/quptime" test ! -e /etc/quptime
check "purge deletes the user quptime" absent getent passwd quptime
check "purge deletes the group quptime" absent getent group quptime
check "purge leaves no /usr/bin/qu" test ! -e /usr/bin/qu
check "purge leaves no unit" test ! -e "$unit"
check "purge leaves no man page" test ! -e /usr/share/man/man1/qu.1.gz
check "purge leaves no /usr/share/doc/quptime" test ! -e /usr/share/doc/quptime
check "purge leaves no mask of the unit" test ! -e /etc/systemd/system/quptime.service
leftovers="$(find /var/lib/systemd -name 'quptime*' 2>/dev/null || true)"
check "purge leaves no deb-systemd-helper state ($leftovers)" test -z "$leftovers"

if [ "$failures" -gt 0 ]; then
  echo "tests/package.sh: $failures expectation(s) failed" >&2
  exit 1
fi
echo "tests/package.sh: all expectations met" >&2
