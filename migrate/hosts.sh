#!/bin/sh
# Simulated hosts for live migration on one machine (iproute2 netns, unshare, nsenter).
#
# Each host is its own network, PID, IPC and mount namespace (with its own /proc), so a PID held on
# one host is free on another, as between real machines: clone3(set_tid) and
# /proc/sys/kernel/ns_last_pid act per PID namespace (and System V IPC ids per IPC namespace).
# Every host's mount namespace starts as a copy of this machine's, so the repo, node, /dev/shm
# and /run stay visible inside it.
#
# Network: host NAME gets a veth pair; its inside end is eth0 in netns "cts-NAME" with an address
# from 198.18.0.0/24 (198.18.0.0/15 is reserved for benchmarks and never routed off the machine);
# the outside end "cts-NAME" joins the bridge "cts-br0" (198.18.0.254/24) in this namespace. So
# hosts reach each other over veth + bridge, and a controller running here reaches every agent.
#
# A host lives as long as its init: a small reaper that is PID 1 of the host's PID namespace,
# started as `ip netns exec cts-NAME unshare --pid --ipc --fork --mount-proc`; later commands join all
# of its namespaces with `nsenter -t INIT -a`. Killing the init kills everything in the host.
#
# Usage:
#   hosts.sh up NAME...          create hosts (addresses round robin: .1, .2, ..., .253, .1)
#   hosts.sh exec NAME -- CMD... run CMD inside host NAME (all of its namespaces)
#   hosts.sh down [NAME...]      kill everything in the hosts, delete netns and veth (idempotent);
#                                with no NAME: every host of this script, and leftovers of crashes
#   hosts.sh addr NAME           print the host's address
#   hosts.sh pid NAME            print the host's init pid (as seen from here)
#   hosts.sh list                print the hosts that are up: NAME ADDR INIT-PID
#
# State lives in /run/criu-ts-hosts (tmpfs: gone after a reboot, like the namespaces). Changes
# are serialized with flock, so test files running in parallel can set up their own hosts.

set -eu

STATE=${CRIU_TS_HOSTS_STATE:-/run/criu-ts-hosts}
BRIDGE=cts-br0
PREFIX=198.18.0
BRIDGE_ADDR=$PREFIX.254

die() {
	echo "hosts.sh: $*" >&2
	exit 1
}

# veth names are at most 15 bytes: "cts-" + 11.
check_name() {
	case $1 in
	'' | -* | *[!a-z0-9-]*) die "Invalid host name \"$1\": use a-z, 0-9 and -" ;;
	esac
	[ ${#1} -le 11 ] || die "Invalid host name \"$1\": at most 11 characters"
}

lock() {
	mkdir -p "$STATE"
	chmod 0700 "$STATE"
	exec 9>"$STATE/.lock"
	flock 9
}

# The init pid of NAME if it is alive (and really is our init: its netns is cts-NAME).
init_pid() {
	[ -f "$STATE/$1/init.pid" ] || return 1
	pid=$(cat "$STATE/$1/init.pid")
	[ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
	[ "$(ip netns identify "$pid" 2>/dev/null)" = "cts-$1" ] || return 1
	echo "$pid"
}

ensure_bridge() {
	if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
		ip link add "$BRIDGE" type bridge
		ip addr add "$BRIDGE_ADDR/24" dev "$BRIDGE"
	fi
	ip link set "$BRIDGE" up
}

# The next free address after the last one handed out (round robin, under the lock): an address
# is given again only after every other one, not a moment after its host went down, when some
# cache (a neighbour entry, a connection attempt in flight) may still lead to the old host.
free_index() {
	last=$(cat "$STATE/.last" 2>/dev/null || echo 0)
	case $last in '' | *[!0-9]*) last=0 ;; esac
	n=0
	while [ $n -lt 253 ]; do
		i=$(((last + n) % 253 + 1))
		if ! grep -qx "$PREFIX.$i" "$STATE"/*/addr 2>/dev/null; then
			echo "$i" >"$STATE/.last"
			echo $i
			return 0
		fi
		n=$((n + 1))
	done
	die "No free address left in $PREFIX.0/24"
}

up_one() {
	name=$1
	ns=cts-$name
	if [ -e "/run/netns/$ns" ] || [ -d "$STATE/$name" ] || ip link show "$ns" >/dev/null 2>&1; then
		die "Cannot set up host \"$name\": it exists (run 'hosts.sh down $name' first)"
	fi
	addr=$PREFIX.$(free_index)
	mkdir -m 0700 "$STATE/$name"
	echo "$addr" >"$STATE/$name/addr"
	ensure_bridge
	ip netns add "$ns"
	ip link add "$ns" type veth peer name eth0 netns "$ns"
	ip link set "$ns" master "$BRIDGE" up
	ip -n "$ns" link set lo up
	ip -n "$ns" addr add "$addr/24" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" route add default via "$BRIDGE_ADDR" dev eth0
	# The address may have been another host's a moment ago: this namespace's neighbour entry
	# would still name that host's MAC, and connections to the new one would time out until it
	# went stale (seen with test files setting up hosts in parallel).
	ip neigh flush to "$addr" dev "$BRIDGE" 2>/dev/null || true

	# The init: PID 1 of the new PID namespace reaps every orphan (a restored task left by
	# `criu restore -d` is one); perl is there on every Debian. With no child it sleeps, and the
	# death of an orphan it got meanwhile (SIGCHLD) wakes it: else the orphan would stay a zombie,
	# seen in /proc, for up to a second. Its launcher leaves the caller's
	# session (a Ctrl-C meant for the caller must not take the host down) and closes every fd
	# it inherited (our lock, the caller's pipes), then becomes unshare, the init's parent.
	perl -e '
		use POSIX ();
		my ($pidfile, $ns, $name) = @ARGV;
		unless (defined POSIX::setsid()) { exit 0 if fork(); POSIX::setsid(); }
		opendir(my $d, "/proc/self/fd") or die;
		my @fds = grep { /^\d+$/ && $_ > 2 } readdir($d);
		closedir($d);
		POSIX::close($_) for @fds;
		open(my $f, ">", $pidfile) or die; print $f "$$\n"; close($f);
		my $init = q{$0 = "criu-ts-host-init $ARGV[0]"; $SIG{CHLD} = sub {}; while (1) { sleep 1 if wait() == -1 }};
		exec("ip", "netns", "exec", $ns, "unshare", "--pid", "--ipc", "--fork", "--mount-proc", "--kill-child",
			"perl", "-e", $init, $name) or die;
	' "$STATE/$name/unshare.pid" "$ns" "$name" </dev/null >/dev/null 2>&1 9>&- &
	n=0
	pid=
	while [ $n -lt 200 ]; do
		if [ -s "$STATE/$name/unshare.pid" ]; then
			upid=$(cat "$STATE/$name/unshare.pid")
			pid=$(cat "/proc/$upid/task/$upid/children" 2>/dev/null | tr -d ' ' || true)
			# The child is ours once it has left unshare's PID namespace.
			if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/ns/pid" 2>/dev/null)" != "$(readlink /proc/self/ns/pid)" ]; then
				break
			fi
			pid=
		fi
		n=$((n + 1))
		sleep 0.05
	done
	[ -n "$pid" ] || die "Cannot set up host \"$name\": its init did not start"
	echo "$pid" >"$STATE/$name/init.pid"
}

down_one() {
	name=$1
	ns=cts-$name
	# First the init: SIGKILL to PID 1 of a PID namespace kills every task in it (the agent,
	# page servers, restored tasks). Only while it still is in the host's netns: after a crash
	# the pid may have been reused by someone else.
	if [ -f "$STATE/$name/init.pid" ]; then
		p=$(cat "$STATE/$name/init.pid")
		if [ -n "$p" ] && [ "$(ip netns identify "$p" 2>/dev/null)" = "$ns" ]; then
			kill -9 "$p" 2>/dev/null || true
			# Let unshare reap it before the sweep below kills unshare too (else the init
			# would linger as a zombie until this machine's init reaps it).
			n=0
			while [ -d "/proc/$p" ] && [ $n -lt 40 ]; do
				n=$((n + 1))
				sleep 0.05
			done
		fi
	fi
	# Then whatever else joined the netns without its PID namespace (ip netns exec from here).
	if [ -e "/run/netns/$ns" ]; then
		n=0
		while pids=$(ip netns pids "$ns" 2>/dev/null) && [ -n "$pids" ] && [ $n -lt 100 ]; do
			for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
			n=$((n + 1))
			sleep 0.05
		done
		ip netns del "$ns" 2>/dev/null || true
	fi
	ip link del "$ns" 2>/dev/null || true
	rm -rf "${STATE:?}/$name"
}

drop_bridge_if_unused() {
	if [ -z "$(ls "$STATE" 2>/dev/null)" ] && ! ip -o link show master "$BRIDGE" 2>/dev/null | grep -q .; then
		ip link del "$BRIDGE" 2>/dev/null || true
	fi
}

# Names of every host this script may have left: state dirs, netns and links named cts-*.
all_names() {
	{
		ls "$STATE" 2>/dev/null || true
		ip netns list 2>/dev/null | sed -n 's/^cts-\([a-z0-9-]*\).*/\1/p'
		ip -o link show 2>/dev/null | sed -n 's/^[0-9]*: cts-\([a-z0-9-]*\)[@:].*/\1/p' | grep -vx br0 || true
	} | sort -u
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
up)
	[ $# -gt 0 ] || die "up: name at least one host"
	for name in "$@"; do check_name "$name"; done
	lock
	for name in "$@"; do
		if ! up_one "$name"; then
			down_one "$name"
			exit 1
		fi
	done
	;;
down)
	lock
	if [ $# -eq 0 ]; then
		set -- $(all_names)
	fi
	for name in "$@"; do
		check_name "$name"
		down_one "$name"
	done
	drop_bridge_if_unused
	;;
exec)
	[ $# -ge 1 ] || die "exec: name a host"
	name=$1
	shift
	check_name "$name"
	[ "${1:-}" = "--" ] && shift
	[ $# -gt 0 ] || die "exec: give a command after --"
	pid=$(init_pid "$name") || die "Cannot run in host \"$name\": it is not up"
	exec nsenter -t "$pid" -a --wd="$(pwd)" -- "$@"
	;;
addr)
	check_name "${1:-}"
	init_pid "$1" >/dev/null || die "Host \"$1\" is not up"
	cat "$STATE/$1/addr"
	;;
pid)
	check_name "${1:-}"
	init_pid "$1" || die "Host \"$1\" is not up"
	;;
list)
	for d in "$STATE"/*/; do
		[ -d "$d" ] || continue
		name=$(basename "$d")
		if pid=$(init_pid "$name"); then echo "$name $(cat "$d/addr") $pid"; fi
	done
	;;
*)
	sed -n 's/^# \{0,1\}//; /^Usage:/,/^$/p' "$0" >&2
	exit 2
	;;
esac
