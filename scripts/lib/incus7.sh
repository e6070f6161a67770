# shellcheck shell=bash
# scripts/lib/incus7.sh: the Incus 7.0 line of scripts/test-cluster (sourced by it; uses its log/die/
# pid_alive/pkg_installed/apt_install/build_image). Selected with `scripts/test-cluster <cmd> --incus 7.0` or
# INCUS_LINE=7.0. Commands: up [--members N] [--env-file F], down, status, selftest, kill-member K, isolate-member K [J], reconnect-member K,
# revive-member K, add-member, remove-member, env, root (build the Debian 13 root only), compose-v2 (download
# Debian 13's docker compose v2, the `config` reference, into the cache).
#
# Incus 7.0 (API extension instance_oci) is in Debian trixie-backports and does not install on Debian 12,
# so it runs from a Debian 13 root (built with debootstrap, cached, rebuilt when missing or broken),
# entered with pivot_root (not chroot: the kernel refuses user namespaces to a chrooted process, and
# every container would fail with "Failed to clone a new set of namespaces").
#
# It lives alongside the 6.0 line and shares nothing with it (own state dir, lock, bridge, addresses, env file):
#   /var/cache/incus-compose-test/trixie-root   the Debian 13 root (kept across `down`; a stamp file marks it complete)
#   <root>/var/lib/incus-compose-test-images/   OCI image layout of the test images (cached with the root)
#   /var/lib/incus-compose-test7/               state (removed by `down`):
#     nodeK/      INCUS_DIR of member K (same path inside the root and on the host: bind-mounted into its namespace)
#     registry/   the registry's storage;   run/   pid files and logs;   members   the number of members
#   /run/incus-compose-test7.lock               serialises runs of the 7.0 line
# Members (`--members N`, default 1 = a single unclustered server; N > 1 = a cluster node1..nodeN, formed
#   as for the 6.0 line): per member a holder process `ic7-holder:<state>/nodeK` in new mount, network and
#   UTS namespaces whose root is the Debian 13 root (pivot_root); its incusd runs there. Host bridge `ic7br0`
#   100.64.2.1/24, veth `ic7vK` <-> eth0 100.64.2.(10+K)/24; incusd listens on 100.64.2.(10+K):8443.
# Registry: Debian's docker-registry (distribution 2.8) on https://127.0.0.1:5443 *inside member 1's
#   namespace* (incusd pulls from it there; the host's 127.0.0.1 is another loopback). socat (in the host's
#   network namespace, connecting through netns=ic7) forwards the host's 127.0.0.1:5443 to it, so tools on
#   the host reach the same address; on members K >= 2 a socat forwards their 127.0.0.1:5443 to 100.64.2.11.
#   Self-signed certificate with subjectAltName IP:127.0.0.1, trusted by the Debian 13 root
#   (update-ca-certificates); on the host, point SSL_CERT_FILE at INCUS_COMPOSE_TEST_REGISTRY_CA.
#   Members have no default route and no name server: nothing leaves the machine.
# Private registry: a second docker-registry on https://127.0.0.1:5444 over the same storage (same
#   images), which asks for a login (htpasswd, user ictest; bcrypt by `htpasswd -B` on the host), forwarded
#   like the first. INCUS_COMPOSE_TEST_PRIVATE_REGISTRY / INCUS_COMPOSE_TEST_PRIVATE_AUTH (user:password).
# System-container test images: the 6.0 line's testapp/v1, testapp/v2, testapp/broken, busybox (same aliases).
# OCI test images (built with umoci, pushed with skopeo), Docker-style entrypoint + cmd:
#   testapp:v1, testapp:v2  entrypoint ["/docker-entrypoint.sh"] (brings lo up, prints a line, exec "$@"),
#                           cmd ["httpd","-f","-v","-p","80","-h","/www"]; answers exactly v1 / v2 on :80;
#                           env TESTAPP_VERSION=v1|v2, TESTAPP_NAME=testapp, workdir /www.
#   testapp:broken          entrypoint ["/bin/sh","-c"], cmd ["echo testapp broken: exiting; exit 3"].
# Env file: <repo>/.test-cluster/env-7.0 (same keys as the 6.0 line's .test-cluster/env, plus
#   INCUS_COMPOSE_TEST_INCUS_LINE=7.0, INCUS_LINE=7.0 (harness calls from tests act on this line),
#   INCUS_COMPOSE_TEST_REGISTRY=127.0.0.1:5443, INCUS_COMPOSE_TEST_PRIVATE_REGISTRY=127.0.0.1:5444,
#   INCUS_COMPOSE_TEST_PRIVATE_AUTH=user:password,
#   INCUS_COMPOSE_TEST_REGISTRY_CA=<path of the CA certificate on the host>). It is not .test-cluster/env,
#   so the 6.0 cluster's env file stays as it is; pass --env-file to write .test-cluster/env instead.

# The OVN variant (`--incus 7.0-ovn`, scripts/lib/ovn.sh) is a second, independent instance of this line:
# its own state dir, lock, bridge, addresses (100.64.3.0/24), link and holder names, registry ports and root
# (a copy of the Debian 13 root with Open vSwitch and OVN), so both can run at once and neither's `down`
# touches the other.
I7_OVN=${I7_OVN:-0}
if [ "$I7_OVN" = 1 ]; then
    I7_TAG=ic7o I7_NET=100.64.3 I7_SUFFIX=-ovn I7_PORT_BASE=5453 I7_LINE_NAME=7.0-ovn
else
    I7_TAG=ic7 I7_NET=100.64.2 I7_SUFFIX="" I7_PORT_BASE=5443 I7_LINE_NAME=7.0
fi
I7_STATE=/var/lib/incus-compose-test7$I7_SUFFIX
I7_RUN="$I7_STATE/run"
I7_DIR="$I7_STATE/node1"
I7_CACHE=/var/cache/incus-compose-test
I7_BASE_ROOT="$I7_CACHE/trixie-root"
I7_ROOT="$I7_CACHE/trixie-root$I7_SUFFIX"
I7_LOCK=/run/incus-compose-test7$I7_SUFFIX.lock
I7_BRIDGE=${I7_TAG}br0
I7_HOST_ADDR=$I7_NET.1
I7_ADDR=$I7_NET.11
I7_HOLDER="$I7_TAG-holder:"
I7_REGISTRY_PORT=$I7_PORT_BASE
I7_REGISTRY="127.0.0.1:$I7_REGISTRY_PORT"
# The private registry: the same storage, served with htpasswd authentication (test credentials).
I7_PRIVATE_PORT=$((I7_PORT_BASE + 1))
I7_PRIVATE="127.0.0.1:$I7_PRIVATE_PORT"
I7_PRIVATE_AUTH="ictest:incus-compose-test-secret"
I7_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Bump when the root's contents change: a root with another stamp is rebuilt.
I7_ROOT_STAMP="incus-compose trixie root v2: incus-base incus-client skopeo umoci docker-registry busybox-static socat"
I7_ROOT_PACKAGES=(ca-certificates openssl iproute2 dnsmasq-base nftables xz-utils squashfs-tools busybox-static
    skopeo umoci docker-registry socat)
I7_ENV_FILE=""

i7_log() { printf 'test-cluster[%s]: %s\n' "$I7_LINE_NAME" "$*" >&2; }

i7_take_lock() {
    exec 8>>"$I7_LOCK"
    if ! flock -n 8; then
        i7_log "waiting for another 7.0 run to finish"
        flock -w 300 8 || die "another scripts/test-cluster --incus 7.0 run holds $I7_LOCK for more than 300 s"
    fi
}

# Runs a command inside the root, chrooted (only for building: apt, umoci, skopeo need no user namespaces),
# in a private mount namespace so that its /proc, /sys, /dev mounts vanish with it.
i7_chroot() {
    local root=$1
    shift
    unshare -m --propagation private -- sh -c '
        r=$1; shift
        mount -t proc proc "$r/proc"
        mount -t sysfs sysfs "$r/sys"
        mount --rbind /dev "$r/dev"
        mount -t tmpfs tmpfs "$r/tmp"
        exec chroot "$r" /usr/bin/env -i PATH='"$I7_PATH"' HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"' \
        i7-chroot "$root" "$@"
}

# The Debian mirror apt uses here (the URI of the `bookworm` entry).
i7_mirror() {
    local uri
    uri="$(awk '/^URIs:/ { u = $2 } /^Suites:/ && / bookworm( |$)/ { if (u != "") { print u; exit } }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list)"
    fi
    [ -n "$uri" ] || die "no Debian 'bookworm' entry found in /etc/apt/sources.list(.d): cannot tell which mirror to debootstrap trixie from"
    echo "$uri"
}

i7_root_ok() {
    local r=${1:-$I7_ROOT} f
    [ "$(cat "$r/.incus-compose-root" 2>/dev/null || true)" = "$I7_ROOT_STAMP" ] || return 1
    for f in usr/libexec/incus/incusd usr/bin/incus usr/bin/skopeo usr/bin/umoci usr/bin/docker-registry usr/bin/socat \
        bin/busybox usr/bin/openssl etc/ssl/certs/ca-certificates.crt etc/incus-compose-test/registry.crt \
        etc/incus-compose-test/registry.key; do
        [ -e "$r/$f" ] || return 1
    done
    # The certificate must be in the root's trust store.
    grep -qF "$(sed -n 2p "$r/etc/incus-compose-test/registry.crt")" "$r/etc/ssl/certs/ca-certificates.crt" || return 1
    return 0
}

# Builds the Debian 13 root when missing or broken (into a temporary directory, renamed when complete).
i7_ensure_root() {
    if i7_root_ok; then return 0; fi
    local t0=$SECONDS mirror new="$I7_ROOT.new"
    [ -e "$I7_ROOT" ] && i7_log "the Debian 13 root at $I7_ROOT is incomplete or outdated: rebuilding it"
    pkg_installed debootstrap || apt_install debootstrap
    mirror="$(i7_mirror)"
    rm -rf --one-file-system "$new"
    mkdir -p "$I7_CACHE"
    i7_log "debootstrap trixie from $mirror into $new"
    debootstrap --variant=minbase --include=ca-certificates trixie "$new" "$mirror" >"$I7_CACHE/trixie-root.debootstrap.log" 2>&1 ||
        die "debootstrap failed (log: $I7_CACHE/trixie-root.debootstrap.log)"
    i7_log "debootstrap done ($((SECONDS - t0)) s); installing Incus 7.0 from trixie-backports"
    cat >"$new/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: trixie trixie-updates trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -f "$new/etc/apt/sources.list"
    cp /etc/resolv.conf "$new/etc/resolv.conf" 2>/dev/null || true
    # No service may start inside the root while installing.
    printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
    chmod +x "$new/usr/sbin/policy-rc.d"
    i7_chroot "$new" apt-get update -qq >>"$I7_CACHE/trixie-root.debootstrap.log" 2>&1 || die "apt-get update in the trixie root failed"
    i7_chroot "$new" apt-get install -y -qq --no-install-recommends "${I7_ROOT_PACKAGES[@]}" \
        >>"$I7_CACHE/trixie-root.debootstrap.log" 2>&1 || die "apt-get install in the trixie root failed (log: $I7_CACHE/trixie-root.debootstrap.log)"
    i7_chroot "$new" apt-get install -y -qq --no-install-recommends -t trixie-backports incus-base incus-client \
        >>"$I7_CACHE/trixie-root.debootstrap.log" 2>&1 || die "installing incus from trixie-backports failed (log: $I7_CACHE/trixie-root.debootstrap.log)"
    i7_chroot "$new" apt-get clean
    # The registry's certificate: self-signed, for IP 127.0.0.1, trusted by the root.
    mkdir -p "$new/etc/incus-compose-test"
    i7_chroot "$new" openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=incus-compose-test-registry \
        -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:TRUE \
        -keyout /etc/incus-compose-test/registry.key -out /etc/incus-compose-test/registry.crt 2>/dev/null ||
        die "could not make the registry certificate"
    cp "$new/etc/incus-compose-test/registry.crt" "$new/usr/local/share/ca-certificates/incus-compose-test-registry.crt"
    i7_chroot "$new" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates in the trixie root failed"
    echo "$I7_ROOT_STAMP" >"$new/.incus-compose-root"
    i7_root_ok "$new" || die "the new trixie root at $new misses files it should have"
    rm -rf --one-file-system "$I7_ROOT"
    mv -T "$new" "$I7_ROOT"
    i7_log "Debian 13 root built in $((SECONDS - t0)) s ($(du -sh "$I7_ROOT" | cut -f1))"
}

# ---------------------------------------------------------------------------------------------
# Processes, links: find and remove everything the 7.0 line made (also debris of killed runs)

i7_read_pid() { # i7_read_pid holder|incusd|registry: the recorded pid, only if it still is ours
    local pid
    pid="$(cat "$I7_RUN/$1.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qE "$I7_STATE/|$I7_HOLDER" && echo "$pid"
    return 0
}

# Pids of the 7.0 line: command line names the state dir or the holder; in the holder's mount namespace
# (incusd, registry, anything started there); in another mount namespace whose mounts come from the
# state dir or the trixie root (containers, orphaned ones too); plus descendants. Never this script or its ancestors.
i7_pids() {
    local self_mnt pid cmd mnt d
    self_mnt="$(readlink /proc/self/ns/mnt)"
    local -A protect=() hit=()
    local p=$$
    while [ -n "$p" ] && [ "$p" != 0 ]; do
        protect[$p]=1
        p="$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)"
    done
    protect[1]=1
    protect[$BASHPID]=1
    for d in /proc/[0-9]*; do
        pid="${d#/proc/}"
        [ -n "${protect[$pid]:-}" ] && continue
        cmd="$(tr '\0' ' ' 2>/dev/null <"$d/cmdline" || true)"
        if [[ "$cmd" == *"$I7_STATE/"* || "$cmd" == *"$I7_STATE "* || "$cmd" == "$I7_HOLDER"* ]]; then hit[$pid]=1; continue; fi
        mnt="$(readlink "$d/ns/mnt" 2>/dev/null || true)"
        if [ -n "$mnt" ] && [ "$mnt" != "$self_mnt" ] &&
            grep -qsE " ($I7_STATE|$I7_ROOT)(/| )" "$d/mountinfo"; then
            hit[$pid]=1
        fi
    done
    [ "${#hit[@]}" -gt 0 ] || return 0
    local -A children=()
    local ppid c
    while read -r pid ppid; do children[$ppid]+=" $pid"; done < <(ps -e -o pid=,ppid=)
    local queue=("${!hit[@]}")
    while [ "${#queue[@]}" -gt 0 ]; do
        pid="${queue[0]}"
        queue=("${queue[@]:1}")
        for c in ${children[$pid]:-}; do
            if [ -z "${hit[$c]:-}" ] && [ -z "${protect[$c]:-}" ]; then hit[$c]=1; queue+=("$c"); fi
        done
    done
    printf '%s\n' "${!hit[@]}"
}

i7_kill_all() {
    local pids killed=""
    for _ in $(seq 1 30); do
        pids="$(i7_pids)"
        [ -n "$pids" ] || break
        killed+=" $pids"
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
        sleep 0.2
    done
    pids="$(i7_pids)"
    # shellcheck disable=SC2086
    [ -z "$pids" ] || die "processes of the 7.0 server survive kill -9: $(tr "\n" " " <<<"$pids")"
    # Wait until they are reaped (no zombie left).
    local p left
    for _ in $(seq 1 50); do
        left=""
        for p in $killed; do [ -e "/proc/$p" ] && left+=" $p"; done
        [ -n "$left" ] || return 0
        sleep 0.2
    done
}

i7_has_debris() {
    [ -e "$I7_STATE" ] && return 0
    ip link show "$I7_BRIDGE" >/dev/null 2>&1 && return 0
    ip -o link show 2>/dev/null | grep -qE "^[0-9]+: ${I7_TAG}v[0-9]+" && return 0
    [ -n "$(i7_pids)" ] && return 0
    return 1
}

# Hooks for variants of the line (scripts/lib/ovn.sh overrides them): after member K's holder is up (before its
# incusd starts), and once the cluster has formed (also when `up` reuses a running one).
i7_after_holder() { :; }
i7_after_cluster() { :; }
# Extra member_config entries (YAML list items) a joining member needs (the OVN uplink's parent).
i7_join_extra() { :; }

i7_inc() { INCUS_DIR="$I7_DIR" incus "$@"; }
# Member K (1..N): INCUS_DIR, address, client.
i7_members() { cat "$I7_STATE/members" 2>/dev/null || echo 0; }
i7_dir() { echo "$I7_STATE/node$1"; }
i7_ip() { echo "$I7_NET.$((10 + $1))"; }
i7_inc_k() { local k=$1; shift; INCUS_DIR="$(i7_dir "$k")" incus "$@"; }
# The 7.0 client of the root, inside the namespace (the host's 6.0 client talks to the 7.0 daemon over the
# unix socket but knows no `oci` remotes). Client config in $I7_STATE/client (not the user's).
i7_inc7() { i7_in INCUS_DIR="$I7_DIR" INCUS_CONF="$I7_STATE/client" incus "$@"; }

i7_teardown() {
    # Instances first (killing incusd leaves them running), then daemons and the namespace.
    if pid_alive "$(i7_read_pid node1.incusd)"; then
        local proj name status
        while IFS=, read -r proj name status; do
            [ -n "$name" ] || continue
            case "$status" in RUNNING | FROZEN | ERROR)
                i7_inc stop --force --project "$proj" "$name" >/dev/null 2>&1 8>&- 9>&- &
                ;;
            esac
        done < <(timeout 20 env INCUS_DIR="$I7_DIR" incus list --all-projects -f csv -c ens 2>/dev/null || true)
        wait
    fi
    i7_kill_all
    local l
    for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^(${I7_TAG}v[0-9]+|$I7_BRIDGE)\$" || true); do
        ip link del "$l" 2>/dev/null || true
    done
    # Empty cgroups LXC left for our containers/monitors (rmdir removes only empty ones).
    local d
    for d in /sys/fs/cgroup/*/lxc.payload.* /sys/fs/cgroup/*/lxc.monitor.* /sys/fs/cgroup/lxc.payload.* /sys/fs/cgroup/lxc.monitor.*; do
        [ -d "$d" ] || continue
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    # All mounts lived in the holder's private mount namespace, gone with it; only the directory is left.
    if [ -d "$I7_STATE" ]; then
        if findmnt -rn -o TARGET | grep -qE "^$I7_STATE(/|$)"; then
            findmnt -rn -o TARGET | grep -E "^$I7_STATE(/|$)" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        fi
        rm -rf --one-file-system "$I7_STATE"
    fi
}

# ---------------------------------------------------------------------------------------------
# The namespace (holder), incusd, registry

i7_setup_network() {
    ip link show "$I7_BRIDGE" >/dev/null 2>&1 || ip link add "$I7_BRIDGE" type bridge
    ip link set "$I7_BRIDGE" up
    ip addr replace "$I7_HOST_ADDR/24" dev "$I7_BRIDGE"
}

# Member K's holder: new mount, network and UTS namespaces whose root is the Debian 13 root (pivot_root), with
# its own /proc, /sys (for the new network namespace), the host's cgroup tree and /dev, tmpfs /run and
# /tmp (the cached root stays clean), /lib/modules read-only, and the state dir at the same path.
# Wired to the bridge through veth ic7vK as eth0 with 100.64.2.(10+K); no default route, no DNS.
i7_start_holder() {
    local k=$1
    mkdir -p "$(i7_dir "$k")" "$I7_RUN" "$I7_STATE/registry"
    chmod 711 "$I7_STATE"
    setsid unshare -m -n -u --propagation private -- bash -c '
        set -e
        root=$1 state=$2 name=$3
        hostname "$name"
        mount --rbind "$root" "$root"
        mount -t proc proc "$root/proc"
        mount -t sysfs sysfs "$root/sys"
        mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs -o mode=755 tmpfs "$root/run"
        mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
        if [ -d /lib/modules ]; then mkdir -p "$root/lib/modules"; mount --rbind -o ro /lib/modules "$root/lib/modules"; fi
        mkdir -p "$root$state"
        mount --bind "$state" "$root$state"
        mkdir -p "$root/.oldroot"
        cd "$root"
        pivot_root . .oldroot
        umount -l /.oldroot
        ip link set lo up
        # No name server: nothing in the namespace may look up or reach anything outside this machine
        # (the root keeps the resolv.conf it was built with, for apt).
        echo "# incus-compose test namespace: no DNS" >/run/resolv.conf
        mount --bind /run/resolv.conf /etc/resolv.conf
        # This network namespace by name, for socat netns=ic7 (the forwarder); /run is private to the namespace.
        mkdir -p /run/netns
        touch /run/netns/ic7
        mount --bind /proc/self/ns/net /run/netns/ic7
        exec -a "$4$state/$name" sleep infinity' i7-holder "$I7_ROOT" "$I7_STATE" "node$k" "$I7_HOLDER" \
        </dev/null >>"$I7_RUN/node$k.holder.log" 2>&1 8>&- 9>&- &
    local pid=$!
    echo "$pid" >"$I7_RUN/node$k.holder.pid"
    for _ in $(seq 1 400); do
        tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "^$I7_HOLDER" && break
        pid_alive "$pid" || die "the namespace holder of 7.0 member node$k exited; see $I7_RUN/node$k.holder.log"
        sleep 0.05
    done
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "^$I7_HOLDER" || die "the namespace holder of 7.0 member node$k is not ready after 20 s; see $I7_RUN/node$k.holder.log"
    i7_setup_network
    ip link del "${I7_TAG}v$k" 2>/dev/null || true
    ip link add "${I7_TAG}v$k" type veth peer name "${I7_TAG}p$k"
    ip link set "${I7_TAG}v$k" master "$I7_BRIDGE" up
    ip link set "${I7_TAG}p$k" netns "$pid"
    nsenter -t "$pid" -n ip link set "${I7_TAG}p$k" name eth0
    nsenter -t "$pid" -n ip addr add "$(i7_ip "$k")/24" dev eth0
    nsenter -t "$pid" -n ip link set eth0 up
    # No default route: the bridge's /24 is all a member reaches (no traffic can leave this machine);
    # the guard drops forwarded traffic leaving 100.64.0.0/10 all the same (see guard_script).
    guard_script out eth0 | i7_in_k "$k" nft -f -
    guard_host
    i7_after_holder "$k"
}

# Runs a command inside member K's namespaces (root = the Debian 13 root); i7_in: member 1.
i7_in_k() {
    local k=$1 holder
    shift
    holder="$(i7_read_pid "node$k.holder")"
    pid_alive "$holder" || die "the namespace holder of 7.0 member node$k is not running; run: scripts/test-cluster down --incus 7.0 && scripts/test-cluster up --incus 7.0"
    nsenter -t "$holder" -n -m -u -r -w -- /usr/bin/env -i PATH="$I7_PATH" HOME=/root LC_ALL=C.UTF-8 "$@"
}
i7_in() { i7_in_k 1 "$@"; }

# i7_spawn K NAME CMD...: starts CMD in member K's namespaces as a daemon (own session, output to
# $I7_RUN/NAME.out); records its pid in $I7_RUN/NAME.pid (nsenter, env and setsid exec: $! is the daemon).
i7_spawn() {
    local k=$1 name=$2 holder
    shift 2
    holder="$(i7_read_pid "node$k.holder")"
    pid_alive "$holder" || die "the namespace holder of 7.0 member node$k is not running"
    nsenter -t "$holder" -n -m -u -r -w -- /usr/bin/env -i PATH="$I7_PATH" HOME=/root LC_ALL=C.UTF-8 \
        setsid "$@" </dev/null >>"$I7_RUN/$name.out" 2>&1 8>&- 9>&- &
    echo $! >"$I7_RUN/$name.pid"
}

i7_start_daemon() {
    local k=$1
    i7_spawn "$k" "node$k.incusd" env INCUS_DIR="$(i7_dir "$k")" INCUS_SKIP_INSTANCE_TYPES=1 \
        /usr/libexec/incus/incusd --group root --logfile "$I7_RUN/node$k.log"
}

i7_wait_ready() {
    local k=$1
    if ! i7_inc_k "$k" admin waitready --timeout=60 >/dev/null 2>&1; then
        tail -n 20 "$I7_RUN/node$k.log" "$I7_RUN/node$k.incusd.out" >&2 2>/dev/null || true
        die "incusd 7.0 of node$k did not become ready within 60 s (logs: $I7_RUN/node$k.log)"
    fi
}

i7_bootstrap() { # i7_bootstrap N: member 1 alone, or the first member of a cluster of N
    local cluster_part=""
    if [ "$1" -gt 1 ]; then
        cluster_part="cluster:
  server_name: node1
  enabled: true"
    fi
    i7_inc admin init --preseed >/dev/null <<EOT
config:
  core.https_address: "$I7_ADDR:8443"
  images.auto_update_interval: "0"
storage_pools:
- name: data
  driver: dir
networks:
- name: incusbr0
  type: bridge
  config:
    ipv4.address: none
    ipv6.address: none
profiles:
- name: default
  devices:
    root:
      path: /
      pool: data
      type: disk
$cluster_part
EOT
    if [ "$1" -gt 1 ]; then i7_inc config set cluster.offline_threshold 11; fi
}

i7_join() {
    local k=$1 token
    token="$(i7_inc cluster add "node$k" --quiet)" || die "could not get a join token for node$k"
    i7_inc_k "$k" admin init --preseed >/dev/null <<EOT || die "7.0 member node$k could not join the cluster (log: $I7_RUN/node$k.log)"
cluster:
  enabled: true
  server_name: node$k
  server_address: "$(i7_ip "$k"):8443"
  cluster_token: "$token"
  member_config:
  - entity: storage-pool
    name: data
    key: source
    value: ""
$(i7_join_extra "$k")
EOT
}

# Member K >= 2 reaches the registry (which runs in member 1's namespace) at its own 127.0.0.1:5443:
# socat there forwards to member 1's address on the bridge (the registry listens on all of member 1's
# addresses; TLS is end to end, so the certificate for 127.0.0.1 still verifies).
i7_start_member_forwarder() { # K [PORT NAME]: PORT (default the registry's) as pid file nodeK.NAME
    local k=$1 port=${2:-$I7_REGISTRY_PORT} name=${3:-regfwd}
    i7_spawn "$k" "node$k.$name" bash -c 'exec -a "socat[ic7-regfwd $0]" socat "TCP-LISTEN:$1,bind=127.0.0.1,reuseaddr,fork" "TCP:$2:$1"' \
        "$I7_STATE/" "$port" "$I7_ADDR"
    for _ in $(seq 1 100); do
        if i7_in_k "$k" openssl s_client -connect "127.0.0.1:$port" -verify_return_error -verify_ip 127.0.0.1 </dev/null >/dev/null 2>&1; then
            return 0
        fi
        pid_alive "$(i7_read_pid "node$k.$name")" || break
        sleep 0.1
    done
    die "node$k does not reach the registry at its 127.0.0.1:$port (log: $I7_RUN/node$k.$name.out)"
}

# The host's 127.0.0.1:5443 forwards to the registry in the namespace (socat in the holder's mount namespace
# but the host's network namespace, connecting through netns=ic7), so that tools on the host (incus-compose
# reading an image's config) reach the same https://127.0.0.1:5443 as incusd does.
i7_start_forwarder() { # [PORT NAME]: PORT (default the registry's) as pid file NAME
    local holder port=${1:-$I7_REGISTRY_PORT} name=${2:-forward}
    holder="$(i7_read_pid node1.holder)"
    nsenter -t "$holder" -m -r -w -- /usr/bin/env -i PATH="$I7_PATH" \
        setsid bash -c 'exec -a "socat[ic7-forward $0]" socat --experimental "TCP-LISTEN:$1,bind=127.0.0.1,reuseaddr,fork" "TCP:127.0.0.1:$1,netns=ic7"' \
        "$I7_STATE/" "$port" </dev/null >>"$I7_RUN/$name.out" 2>&1 8>&- 9>&- &
    echo $! >"$I7_RUN/$name.pid"
    for _ in $(seq 1 100); do
        # From the host, verifying the certificate against the registry's CA.
        if openssl s_client -connect "127.0.0.1:$port" -CAfile "$I7_ROOT/etc/incus-compose-test/registry.crt" \
            -verify_return_error </dev/null >/dev/null 2>&1; then
            return 0
        fi
        pid_alive "$(i7_read_pid "$name")" || break
        sleep 0.1
    done
    tail -n 20 "$I7_RUN/$name.out" >&2 2>/dev/null || true
    die "the forwarder from the host's 127.0.0.1:$port to the registry did not start (log: $I7_RUN/$name.out)"
}

i7_start_registry() { # [private]: the second registry, with authentication
    local private=${1:-} name=registry port=$I7_REGISTRY_PORT auth=""
    if [ -n "$private" ]; then
        name=registry-private port=$I7_PRIVATE_PORT
        htpasswd -nbB "${I7_PRIVATE_AUTH%%:*}" "${I7_PRIVATE_AUTH#*:}" >"$I7_STATE/registry-private.htpasswd" ||
            die "htpasswd could not make the private registry's password file"
        auth="auth:
  htpasswd:
    realm: incus-compose-test
    path: $I7_STATE/registry-private.htpasswd"
    fi
    cat >"$I7_STATE/$name.yml" <<EOT
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $I7_STATE/registry
  delete:
    enabled: true
http:
  addr: :$port
  tls:
    certificate: /etc/incus-compose-test/registry.crt
    key: /etc/incus-compose-test/registry.key
$auth
EOT
    i7_spawn 1 "$name" /usr/bin/docker-registry serve "$I7_STATE/$name.yml"
    for _ in $(seq 1 100); do
        # A TLS handshake that verifies the certificate against the root's trust store.
        if i7_in openssl s_client -connect "127.0.0.1:$port" -verify_return_error -verify_ip 127.0.0.1 </dev/null >/dev/null 2>&1; then
            return 0
        fi
        pid_alive "$(i7_read_pid "$name")" || break
        sleep 0.1
    done
    tail -n 20 "$I7_RUN/$name.out" >&2 2>/dev/null || true
    die "the registry did not answer on https://127.0.0.1:$port/v2/ (log: $I7_RUN/$name.out)"
}

# ---------------------------------------------------------------------------------------------
# Test images: an OCI layout inside the root (cached with it), built with umoci, pushed with skopeo

I7_IMAGES_DIR=/var/lib/incus-compose-test-images
I7_IMAGE_TAGS=(v1 v2 broken)

# The build script (runs inside the namespace; $1 = layout dir). Its text is part of the cache key.
I7_IMAGE_BUILD='
set -eu
L=$1
rm -rf "$L.new"
umoci init --layout "$L.new"
for tag in v1 v2 broken; do
    b=/tmp/bundle-$tag
    rm -rf "$b"
    umoci new --image "$L.new:$tag"
    umoci unpack --image "$L.new:$tag" "$b" >/dev/null
    r=$b/rootfs
    mkdir -p "$r/bin" "$r/sbin" "$r/usr/bin" "$r/usr/sbin" "$r/etc" "$r/www" "$r/tmp" "$r/root" "$r/proc" "$r/sys" "$r/dev" "$r/run"
    chmod 1777 "$r/tmp"
    cp /bin/busybox "$r/bin/busybox"
    for a in $(busybox --list-full); do
        [ "$a" = bin/busybox ] && continue
        mkdir -p "$r/${a%/*}"
        ln -sf /bin/busybox "$r/$a"
    done
    echo "root:x:0:0:root:/root:/bin/sh" >"$r/etc/passwd"
    echo "root:x:0:" >"$r/etc/group"
    echo "app:x:1000:1000:app:/www:/bin/sh" >>"$r/etc/passwd"
    echo "app:x:1000:" >>"$r/etc/group"
    cat >"$r/docker-entrypoint.sh" <<EOS
#!/bin/sh
# Like the entrypoint scripts of Docker images: prepare, then run the command (cmd) as PID 1.
ip link set lo up 2>/dev/null || true
echo "testapp \$TESTAPP_VERSION: starting \$*"
exec "\$@"
EOS
    chmod 755 "$r/docker-entrypoint.sh"
    case $tag in
        v1 | v2)
            printf %s "$tag" >"$r/www/index.html"
            umoci repack --image "$L.new:$tag" "$b"
            umoci config --image "$L.new:$tag" --os linux --architecture amd64 \
                --config.entrypoint /docker-entrypoint.sh \
                --config.cmd httpd --config.cmd -f --config.cmd -v --config.cmd -p --config.cmd 80 --config.cmd -h --config.cmd /www \
                --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin --config.env TESTAPP_VERSION=$tag \
                --config.env TESTAPP_NAME=testapp --config.workingdir /www --config.exposedports 80/tcp \
                --config.label org.opencontainers.image.title=testapp --config.label org.opencontainers.image.version=$tag
            ;;
        broken)
            umoci repack --image "$L.new:$tag" "$b"
            umoci config --image "$L.new:$tag" --os linux --architecture amd64 \
                --config.entrypoint /bin/sh --config.entrypoint -c \
                --config.cmd "echo testapp broken: exiting; exit 3" \
                --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin --config.env TESTAPP_VERSION=broken
            ;;
    esac
    rm -rf "$b"
done
umoci gc --layout "$L.new"
rm -rf "$L"
mv "$L.new" "$L"
'

i7_ensure_images() {
    local key layout="$I7_IMAGES_DIR/oci" t0=$SECONDS
    key="$(printf '%s\n%s\n' "$I7_IMAGE_BUILD" "$(sha256sum "$I7_ROOT/bin/busybox")" | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$I7_ROOT$I7_IMAGES_DIR/inputs" 2>/dev/null || true)" != "$key" ] || [ ! -f "$I7_ROOT$layout/index.json" ]; then
        i7_log "building the OCI test images (umoci)"
        i7_in mkdir -p "$I7_IMAGES_DIR"
        i7_in sh -c "$I7_IMAGE_BUILD" i7-images "$layout" >>"$I7_RUN/images.log" 2>&1 ||
            die "building the OCI test images failed (log: $I7_RUN/images.log)"
        echo "$key" >"$I7_ROOT$I7_IMAGES_DIR/inputs"
        i7_log "OCI test images built ($((SECONDS - t0)) s)"
    fi
    local tag
    for tag in "${I7_IMAGE_TAGS[@]}"; do
        i7_in skopeo copy -q "oci:$layout:$tag" "docker://$I7_REGISTRY/testapp:$tag" >>"$I7_RUN/images.log" 2>&1 ||
            die "skopeo could not push testapp:$tag to $I7_REGISTRY (log: $I7_RUN/images.log)"
    done
}

# The 6.0 line's system-container test images (testapp/v1, testapp/v2, testapp/broken, busybox: built by
# scripts/test-cluster's build_image, cached), imported under the same aliases, so that suites written for
# the 6.0 line run on the 7.0 line too.
i7_ensure_system_images() {
    local name dir fp current aliases
    aliases="$(i7_inc image alias list -f csv 2>/dev/null || true)"
    for name in "${IMAGE_NAMES[@]}"; do
        dir="$(build_image "$name")"
        fp="$(cat "$dir/meta.tar.xz" "$dir/rootfs.tar.xz" | sha256sum | cut -d' ' -f1)"
        current="$(awk -F, -v a="$name" '$1 == a { print $2 }' <<<"$aliases")"
        if [ -n "$current" ] && [ "${fp#"$current"}" != "$fp" ]; then continue; fi
        if ! i7_inc image info "$fp" >/dev/null 2>&1; then
            i7_inc image import "$dir/meta.tar.xz" "$dir/rootfs.tar.xz" >/dev/null || die "could not import image $name into the 7.0 server"
        fi
        if [ -n "$current" ]; then i7_inc image alias delete "$name" >/dev/null 2>&1 || true; fi
        i7_inc image alias create "$name" "$fp" >/dev/null || die "could not create image alias $name on the 7.0 server"
    done
}

# ---------------------------------------------------------------------------------------------
# Env file, health

i7_healthy() {
    local n k
    n="$(i7_members)"
    [ "$n" -ge 1 ] 2>/dev/null || return 1
    for k in $(seq 1 "$n"); do
        pid_alive "$(i7_read_pid "node$k.holder")" && pid_alive "$(i7_read_pid "node$k.incusd")" || return 1
        [ "$k" = 1 ] || { pid_alive "$(i7_read_pid "node$k.regfwd")" && pid_alive "$(i7_read_pid "node$k.regfwd-private")"; } || return 1
        i7_inc_k "$k" query /1.0 >/dev/null 2>&1 || return 1
    done
    if [ "$n" -gt 1 ]; then
        [ "$(i7_inc cluster list -f csv 2>/dev/null | grep -c ',ONLINE,' || true)" = "$n" ] || return 1
    fi
    pid_alive "$(i7_read_pid registry-private)" && pid_alive "$(i7_read_pid forward-private)" || return 1
    pid_alive "$(i7_read_pid registry)" && pid_alive "$(i7_read_pid forward)" &&
        openssl s_client -connect "$I7_REGISTRY" -CAfile "$I7_ROOT/etc/incus-compose-test/registry.crt" \
            -verify_return_error </dev/null >/dev/null 2>&1
}

i7_write_env() {
    local file=${I7_ENV_FILE:-$REPO_ROOT/.test-cluster/env-$I7_LINE_NAME} n k names="" clustered=0
    n="$(i7_members)"
    [ "$n" -gt 1 ] && clustered=1
    for k in $(seq 1 "$n"); do names="${names:+$names,}node$k"; done
    local vars=(INCUS_DIR INCUS_COMPOSE_TEST_INCUS_LINE INCUS_LINE INCUS_COMPOSE_TEST_MEMBERS INCUS_COMPOSE_TEST_CLUSTERED
        INCUS_COMPOSE_TEST_MEMBER_NAMES INCUS_COMPOSE_TEST_STATE INCUS_COMPOSE_TEST_HARNESS INCUS_COMPOSE_TEST_REGISTRY
        INCUS_COMPOSE_TEST_REGISTRY_CA INCUS_COMPOSE_TEST_PRIVATE_REGISTRY INCUS_COMPOSE_TEST_PRIVATE_AUTH
        INCUS_COMPOSE_TEST_CPU_LIMITS INCUS_COMPOSE_TEST_OVN)
    mkdir -p "$(dirname "$file")"
    {
        echo "# Written by scripts/test-cluster (--incus 7.0) for the running Incus 7.0 test server; \`source\` this file."
        echo "INCUS_DIR=$I7_DIR"
        echo "INCUS_COMPOSE_TEST_INCUS_LINE=7.0"
        # Makes INCUS_COMPOSE_TEST_HARNESS (kill-member, revive-member...) act on this line, never on 6.0.
        echo "INCUS_LINE=$I7_LINE_NAME"
        echo "INCUS_COMPOSE_TEST_MEMBERS=$n"
        echo "INCUS_COMPOSE_TEST_CLUSTERED=$clustered"
        echo "INCUS_COMPOSE_TEST_MEMBER_NAMES=$names"
        echo "INCUS_COMPOSE_TEST_STATE=$I7_STATE"
        echo "INCUS_COMPOSE_TEST_HARNESS=$SCRIPT_PATH"
        echo "INCUS_COMPOSE_TEST_REGISTRY=$I7_REGISTRY"
        echo "INCUS_COMPOSE_TEST_REGISTRY_CA=$I7_ROOT/etc/incus-compose-test/registry.crt"
        echo "INCUS_COMPOSE_TEST_PRIVATE_REGISTRY=$I7_PRIVATE"
        echo "INCUS_COMPOSE_TEST_PRIVATE_AUTH=$I7_PRIVATE_AUTH"
        # 1 on the OVN variant (7.0-ovn): networks are OVN networks on the uplink UPLINK.
        echo "INCUS_COMPOSE_TEST_OVN=$I7_OVN"
        # 1 when the daemon found the CPU cgroup controller (limits are enforced), else 0.
        if grep -q "Couldn't find the CGroup CPU controller" "$I7_RUN/node1.log" 2>/dev/null; then
            echo "INCUS_COMPOSE_TEST_CPU_LIMITS=0"
        else
            echo "INCUS_COMPOSE_TEST_CPU_LIMITS=1"
        fi
        for k in $(seq 1 "$n"); do
            echo "INCUS_COMPOSE_TEST_NODE${k}_DIR=$(i7_dir "$k")"
            echo "INCUS_COMPOSE_TEST_NODE${k}_ADDRESS=$(i7_ip "$k"):8443"
            vars+=("INCUS_COMPOSE_TEST_NODE${k}_DIR" "INCUS_COMPOSE_TEST_NODE${k}_ADDRESS")
        done
        echo "export ${vars[*]}"
    } >"$file.tmp"
    mv "$file.tmp" "$file"
    grep -qxF "$file" "$I7_STATE/env-files" 2>/dev/null || echo "$file" >>"$I7_STATE/env-files"
}

i7_remove_env_files() {
    local f
    while read -r f; do
        if [ -f "$f" ] && head -n1 "$f" | grep -qF '# Written by scripts/test-cluster (--incus 7.0)'; then rm -f "$f"; fi
    done < <(cat "$I7_STATE/env-files" 2>/dev/null || true)
}

# ---------------------------------------------------------------------------------------------
# Commands

i7_cmd_up() {
    local n=$1 t0=$SECONDS k existing
    i7_take_lock
    # incus-compose on the host reads OCI image configs with skopeo (as the incus CLI does for OCI remotes).
    pkg_installed skopeo || apt_install skopeo
    # The private registry's bcrypt password file.
    pkg_installed apache2-utils || apt_install apache2-utils
    i7_ensure_root
    existing="$(i7_members)"
    # A member left isolated (isolate-member) takes connections again.
    for k in $(seq 1 "$existing"); do
        if pid_alive "$(i7_read_pid "node$k.holder")"; then
            isolate_script off | i7_in_k "$k" nft -f -
            guard_script out eth0 | i7_in_k "$k" nft -f -
            guard_host
        fi
    done
    if [ "$existing" -ge 1 ] && [ "$existing" != "$n" ] && i7_healthy; then
        die "an Incus 7.0 test server with $existing member(s) is running; run 'scripts/test-cluster down --incus 7.0' first"
    fi
    if i7_healthy; then
        i7_ensure_images
        i7_ensure_system_images
        i7_after_cluster "$n"
        i7_write_env
        i7_log "Incus 7.0 with $n member(s) is up (reused; $((SECONDS - t0)) s); env: ${I7_ENV_FILE:-$REPO_ROOT/.test-cluster/env-$I7_LINE_NAME}"
        return 0
    fi
    if i7_has_debris; then
        i7_log "cleaning what an earlier 7.0 run left behind"
        i7_teardown
    fi
    mkdir -p "$I7_STATE" "$I7_RUN"
    for k in $(seq 1 "$n"); do i7_start_holder "$k"; done
    echo "$n" >"$I7_STATE/members"
    for k in $(seq 1 "$n"); do i7_start_daemon "$k"; done
    for k in $(seq 1 "$n"); do i7_wait_ready "$k"; done
    i7_bootstrap "$n"
    for k in $(seq 2 "$n"); do i7_join "$k"; done
    i7_start_registry
    i7_start_registry private
    i7_start_forwarder
    i7_start_forwarder "$I7_PRIVATE_PORT" forward-private
    for k in $(seq 2 "$n"); do
        i7_start_member_forwarder "$k"
        i7_start_member_forwarder "$k" "$I7_PRIVATE_PORT" regfwd-private
    done
    i7_ensure_images
    i7_ensure_system_images
    i7_after_cluster "$n"
    i7_healthy || die "the Incus 7.0 test server did not come up healthy; see logs in $I7_RUN/"
    i7_write_env
    i7_log "Incus $(i7_inc query /1.0 | sed -n 's/.*"server_version": *"\([^"]*\)".*/\1/p' | head -n1) ($n member(s)) and registry https://$I7_REGISTRY are up in $((SECONDS - t0)) s; env: ${I7_ENV_FILE:-$REPO_ROOT/.test-cluster/env-$I7_LINE_NAME}"
}

i7_cmd_down() {
    local t0=$SECONDS
    i7_take_lock
    i7_remove_env_files
    if i7_has_debris; then
        i7_log "stopping the Incus 7.0 server"
        i7_teardown
    fi
    i7_log "down ($((SECONDS - t0)) s): no process, link or state of the 7.0 server is left (caches kept: $I7_ROOT)"
}

# docker compose v2 (Debian 13's `docker-compose` package: the compose-go CLI plugin), the reference the
# `config` tests compare with (crates/compose/tests/compose_v2.rs). Downloaded with the root's apt (Debian 12
# has no v2), extracted with dpkg-deb, cached as $I7_COMPOSE_V2 with its version beside it; the binary is
# static and runs on Debian 12 as it is (`config` needs no daemon). Nothing is installed in the root or the host.
I7_COMPOSE_V2_DIR="$I7_CACHE/compose-v2"
I7_COMPOSE_V2="$I7_COMPOSE_V2_DIR/docker-compose"

i7_compose_v2_ok() {
    [ -x "$I7_COMPOSE_V2" ] && [ -s "$I7_COMPOSE_V2_DIR/version" ] && "$I7_COMPOSE_V2" version >/dev/null 2>&1
}

i7_cmd_compose_v2() {
    if i7_compose_v2_ok; then
        i7_log "docker compose v2 $(cat "$I7_COMPOSE_V2_DIR/version") is at $I7_COMPOSE_V2"
        return 0
    fi
    i7_take_lock
    i7_ensure_root
    local out="$I7_COMPOSE_V2_DIR.new"
    rm -rf --one-file-system "$out"
    mkdir -p "$out"
    # In the root's own mount namespace: the output directory bound at /mnt, apt's download in /tmp (a tmpfs).
    # The root's package lists are refreshed only when the download fails (they may be older than the mirror).
    unshare -m --propagation private -- sh -c '
        r=$1 out=$2
        mount -t proc proc "$r/proc"
        mount --rbind /dev "$r/dev"
        mount -t tmpfs tmpfs "$r/tmp"
        mount --bind "$out" "$r/mnt"
        exec chroot "$r" /usr/bin/env -i PATH='"$I7_PATH"' HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive sh -euc "
            cd /tmp
            apt-get download -qq docker-compose 2>/dev/null || { apt-get update -qq && apt-get download -qq docker-compose; }
            deb=\$(ls docker-compose_*.deb)
            dpkg-deb -f \"\$deb\" Version >/mnt/version
            dpkg-deb -x \"\$deb\" x
            cp x/usr/libexec/docker/cli-plugins/docker-compose /mnt/docker-compose
        "' i7-compose-v2 "$I7_ROOT" "$out" >"$I7_CACHE/compose-v2.log" 2>&1 ||
        die "could not download docker-compose (v2) in the trixie root (log: $I7_CACHE/compose-v2.log)"
    chmod 755 "$out/docker-compose"
    "$out/docker-compose" version >/dev/null 2>&1 || die "the downloaded docker-compose at $out/docker-compose does not run"
    rm -rf --one-file-system "$I7_COMPOSE_V2_DIR"
    mv -T "$out" "$I7_COMPOSE_V2_DIR"
    i7_log "docker compose v2 $(cat "$I7_COMPOSE_V2_DIR/version") cached at $I7_COMPOSE_V2"
}

i7_cmd_status() {
    if [ ! -e "$I7_STATE" ]; then
        echo "no Incus 7.0 test server (state dir $I7_STATE absent)"
        i7_has_debris && echo "debris of an earlier run exists: run 'scripts/test-cluster down --incus 7.0'"
        return 1
    fi
    local what pid st k
    local whats=()
    for k in $(seq 1 "$(i7_members)"); do
        whats+=("node$k.holder" "node$k.incusd")
        [ "$k" = 1 ] || whats+=("node$k.regfwd")
    done
    for what in "${whats[@]}" registry forward; do
        pid="$(i7_read_pid "$what")"
        st=dead; pid_alive "$pid" && st=alive
        printf '%-14s pid %-8s %s\n' "$what" "$pid" "$st"
    done
    echo "INCUS_DIR=$I7_DIR   address $I7_ADDR:8443   registry https://$I7_REGISTRY (in the server's network namespace; the host's $I7_REGISTRY forwards to it)"
    i7_inc query /1.0 2>/dev/null | grep -E '"(server_version|api_status)"' | tr -d ' ,' || { echo "incusd does not answer"; return 1; }
    i7_healthy
}

# Launches testapp:v1 and testapp:broken from the registry; checks the page and the exit; cleans up.
i7_cmd_selftest() {
    local t0=$SECONDS body state
    i7_healthy || die "no healthy Incus 7.0 test server: run scripts/test-cluster up --incus 7.0"
    i7_st_cleanup() {
        i7_inc delete --force ic7-st-v1 ic7-st-broken >/dev/null 2>&1 || true
        i7_inc7 remote remove ic7-st-reg >/dev/null 2>&1 || true
    }
    i7_st_cleanup
    trap i7_st_cleanup EXIT
    i7_inc7 remote add ic7-st-reg "https://$I7_REGISTRY" --protocol=oci --public >/dev/null
    local target=()
    [ "$(i7_members)" -gt 1 ] && target=(--target node2)
    i7_inc7 launch ic7-st-reg:testapp:v1 ic7-st-v1 "${target[@]}" -q || die "selftest: cannot launch testapp:v1 from the registry"
    i7_inc7 launch ic7-st-reg:testapp:broken ic7-st-broken -q || die "selftest: cannot launch testapp:broken"
    for _ in $(seq 1 40); do
        body="$(i7_inc exec ic7-st-v1 -- wget -qO- http://127.0.0.1/ 2>/dev/null || true)"
        [ "$body" = v1 ] && break
        sleep 0.25
    done
    [ "$body" = v1 ] || die "selftest: testapp:v1 answered '$body' instead of 'v1'"
    for _ in $(seq 1 40); do
        state="$(i7_inc list ic7-st-broken -f csv -c s)"
        [ "$state" = STOPPED ] && break
        sleep 0.25
    done
    [ "$state" = STOPPED ] || die "selftest: testapp:broken is $state instead of STOPPED"
    echo "selftest ok ($((SECONDS - t0)) s): testapp:v1 (on $(i7_inc list ic7-st-v1 -f csv -c L)) from https://$I7_REGISTRY answers v1 (oci.entrypoint: $(i7_inc config get ic7-st-v1 oci.entrypoint)); testapp:broken stopped by itself"
}

i7_member_arg() {
    local k=${1:-} n
    n="$(i7_members)"
    [[ "$k" =~ ^[0-9]+$ ]] && [ "$k" -ge 1 ] && [ "$k" -le "$n" ] || die "member must be a number between 1 and $n (got '$k')"
    echo "$k"
}

# Member K refuses (or, with off, takes again) new connections to its API port, from member J only when
# given; see isolate-member in scripts/test-cluster. i7_cmd_isolate_member K on [J] | K off
i7_cmd_isolate_member() {
    local k pid from=""
    k="$(i7_member_arg "${1:-}")"
    pid="$(i7_read_pid "node$k.holder")"
    pid_alive "$pid" || die "node$k has no namespace holder"
    if [ -n "${3:-}" ]; then from="$(i7_ip "$(i7_member_arg "$3")")"; fi
    isolate_script "$2" "$from" | i7_in_k "$k" nft -f -
    if [ "$2" = on ]; then i7_log "node$k refuses new connections to :8443${3:+ from node$3}"; else i7_log "node$k takes connections again"; fi
}

# kill -9 member K's incusd (its containers live on).
i7_cmd_kill_member() {
    local k pid
    k="$(i7_member_arg "${1:-}")"
    pid="$(i7_read_pid "node$k.incusd")"
    if pid_alive "$pid"; then
        kill -9 "$pid"
        for _ in $(seq 1 100); do pid_alive "$pid" || break; sleep 0.05; done
        i7_log "node$k: incusd (pid $pid) killed"
    else
        i7_log "node$k: incusd was not running"
    fi
}

# Start member K's incusd again; wait until it answers (and, in a cluster, is ONLINE).
i7_cmd_revive_member() {
    local k
    i7_take_lock
    k="$(i7_member_arg "${1:-}")"
    if ! pid_alive "$(i7_read_pid "node$k.incusd")"; then
        i7_start_daemon "$k"
        i7_wait_ready "$k"
    fi
    if [ "$(i7_members)" -gt 1 ]; then
        local via=1 state=""
        [ "$k" = 1 ] && via=2
        for _ in $(seq 1 180); do
            state="$(i7_inc_k "$via" cluster list -f csv 2>/dev/null | awk -F, -v n="node$k" '$1 == n { for (i = 2; i <= NF; i++) if ($i ~ /^(ONLINE|OFFLINE|EVACUATED|BLOCKED)$/) { print $i; exit } }')"
            [ "$state" = ONLINE ] && break
            sleep 0.5
        done
        [ "$state" = ONLINE ] || die "node$k did not come back ONLINE"
    fi
    i7_log "node$k is up"
}

# Member N+1 joins the cluster (N >= 2); the env file is rewritten.
i7_cmd_add_member() {
    local n k
    i7_take_lock
    n="$(i7_members)"
    [ "$n" -ge 2 ] || die "add-member needs a running 7.0 cluster of at least 2 members; run: scripts/test-cluster up --incus 7.0 --members 3"
    pid_alive "$(i7_read_pid node1.incusd)" || die "node1 of the 7.0 cluster is not running"
    k=$((n + 1))
    i7_start_holder "$k"
    echo "$k" >"$I7_STATE/members"
    i7_start_daemon "$k"
    i7_wait_ready "$k"
    i7_join "$k"
    i7_start_member_forwarder "$k"
    local state=""
    for _ in $(seq 1 120); do
        state="$(i7_inc cluster list -f csv 2>/dev/null | awk -F, -v n="node$k" '$1 == n { for (i = 2; i <= NF; i++) if ($i ~ /^(ONLINE|OFFLINE|EVACUATED|BLOCKED)$/) { print $i; exit } }')"
        [ "$state" = ONLINE ] && break
        sleep 0.5
    done
    [ "$state" = ONLINE ] || die "node$k joined but is not ONLINE"
    i7_write_env
    i7_log "node$k joined; env rewritten"
}

# The last member (of 3 or more) leaves, its instances deleted first; undoes add-member.
i7_cmd_remove_member() {
    local n k proj name loc pid
    i7_take_lock
    n="$(i7_members)"
    [ "$n" -ge 3 ] || die "remove-member removes the last member of a 7.0 cluster of 3 or more (there are $n)"
    k=$n
    while IFS=, read -r proj name loc; do
        [ "$loc" = "node$k" ] || continue
        i7_inc delete --force --project "$proj" "$name" >/dev/null 2>&1 || true
    done < <(i7_inc list --all-projects -f csv -c enL 2>/dev/null || true)
    if pid_alive "$(i7_read_pid "node$k.incusd")"; then
        i7_inc cluster remove "node$k" >/dev/null 2>&1 || i7_inc cluster remove "node$k" --force --yes >/dev/null
    else
        i7_inc cluster remove "node$k" --force --yes >/dev/null
    fi
    for pid in "$(i7_read_pid "node$k.regfwd")" "$(i7_read_pid "node$k.incusd")" "$(i7_read_pid "node$k.holder")"; do
        if pid_alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    done
    # Whatever else ran in that member's namespaces (its containers' processes, monitors).
    local p
    for p in /proc/[0-9]*; do
        if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF "$(i7_dir "$k")/"; then kill -9 "${p#/proc/}" 2>/dev/null || true; fi
    done
    ip link del "${I7_TAG}v$k" 2>/dev/null || true
    sleep 0.5
    rm -rf --one-file-system "$(i7_dir "$k")"
    rm -f "$I7_RUN/node$k".*
    echo $((n - 1)) >"$I7_STATE/members"
    i7_write_env
    local t0=$SECONDS
    until i7_healthy; do
        [ $((SECONDS - t0)) -lt 60 ] || die "the 7.0 cluster is not healthy 60 s after removing node$k"
        sleep 0.5
    done
    i7_log "node$k removed; env rewritten"
}

# Entry point from scripts/test-cluster: incus7_main CMD [ARGS...]
incus7_main() {
    local cmd=${1:-} members=1 pos=()
    [ $# -gt 0 ] && shift
    while [ $# -gt 0 ]; do
        case "$1" in
            [0-9]*) pos+=("$1"); shift ;;
            --env-file) [ $# -ge 2 ] || die "--env-file needs a path"; I7_ENV_FILE=$2; shift 2 ;;
            --env-file=*) I7_ENV_FILE="${1#--env-file=}"; shift ;;
            --members) [ $# -ge 2 ] || die "--members needs a number"; members=$2; shift 2 ;;
            --members=*) members=${1#--members=}; shift ;;
            *) die "$cmd --incus 7.0: unknown argument $1" ;;
        esac
    done
    case "$cmd" in
        up)
            [[ "$members" =~ ^[1-9]$ ]] || die "--members must be between 1 and 9 for the 7.0 line, got $members"
            i7_cmd_up "$members"
            ;;
        down) i7_cmd_down ;;
        status) i7_cmd_status ;;
        selftest) i7_cmd_selftest ;;
        kill-member) i7_cmd_kill_member "${pos[0]:-}" ;;
        revive-member) i7_cmd_revive_member "${pos[0]:-}" ;;
        isolate-member) i7_cmd_isolate_member "${pos[0]:-}" on "${pos[1]:-}" ;;
        reconnect-member) i7_cmd_isolate_member "${pos[0]:-}" off ;;
        add-member) i7_cmd_add_member ;;
        remove-member) i7_cmd_remove_member ;;
        env) i7_healthy || die "no Incus 7.0 test server is running"; i7_write_env ;;
        root) i7_take_lock; i7_ensure_root ;;
        compose-v2) i7_cmd_compose_v2 ;;
        *) die "the 7.0 line supports: up [--members N], down, status, selftest, kill-member K, revive-member K, isolate-member K [J], reconnect-member K, add-member, remove-member, env, root (build the Debian 13 root only), compose-v2 (cache docker compose v2); not: $cmd" ;;
    esac
}
