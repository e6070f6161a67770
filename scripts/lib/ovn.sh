# shellcheck shell=bash
# scripts/lib/ovn.sh: the OVN variant of the Incus 7.0 line (`scripts/test-cluster up --ovn`, or
# `--incus 7.0-ovn`, INCUS_LINE=7.0-ovn). Sourced by scripts/test-cluster after scripts/lib/incus7.sh with
# I7_OVN=1, which gives this variant its own state dir, lock, bridge (ic7obr0, 100.64.3.0/24), links, holders,
# registry ports (5453/5454), env file (.test-cluster/env-7.0-ovn) and root, so it runs beside the plain 7.0 line.
#
# This kernel has no Open vSwitch module, so Open vSwitch runs on its *userspace* datapath (netdev):
#   root      a copy of the Debian 13 root with openvswitch-switch, ovn-central and ovn-host (OVS 3.5, OVN 25.03:
#             OVS 3.1 of Debian 12 drops tunnelled packets that carry checksum offload flags, i.e. every TCP
#             packet a container sends through its veth; 3.5 fills the checksums in itself).
#   member K  in its own namespaces (as every 7.0 member): ovsdb-server, ovs-vswitchd, and ovn-controller with
#             `ovn-bridge-datapath-type=netdev` (so br-int is a netdev bridge), all under the member's private
#             /run/openvswitch and /run/ovn. Userspace tunnels need the tunnel endpoint address on an OVS bridge:
#             eth0 becomes a port of the netdev bridge `br-phy`, which takes the member's address 100.64.3.(10+K)
#             (Incus's API and cluster traffic go through it too). Geneve between members.
#   member 1  also the OVN central: northbound and southbound ovsdb-servers on tcp:100.64.3.11:6641/6642, ovn-northd.
#   host      the veth ends on ic7obr0 answer no ARP for other interfaces' addresses (arp_ignore=8) and compute
#             their checksums (tx offload off): the userspace datapath would forward partial checksums as they are.
#             A firewall table drops forwarded traffic from ic7obr0 to anything outside 100.64.0.0/10.
#   Incus     network.ovn.northbound_connection=tcp:100.64.3.11:6641; a `physical` uplink network UPLINK with
#             parent br-phy on every member, ipv4.gateway 100.64.3.1/24 (the host), ipv4.ovn.ranges
#             100.64.3.200-100.64.3.250 (the OVN routers' external addresses).
# Everything runs in the members' namespaces and dies with them on `down`; the host keeps only the caches.

I7_OVN_STAMP="incus-compose trixie root ovn v1: openvswitch-switch ovn-central ovn-host"
I7_OVN_PACKAGES=(openvswitch-switch ovn-central ovn-host)
I7_OVN_NFT_TABLE=incus_compose_test_ovn

# The root: the plain line's root (built or reused as usual), copied, with Open vSwitch and OVN added.
eval "$(declare -f i7_ensure_root | sed '1s/^i7_ensure_root/i7_ensure_base_root/')"
i7_ovn_root_ok() {
    local r=${1:-$I7_ROOT}
    [ "$(cat "$r/.incus-compose-root-ovn" 2>/dev/null || true)" = "$I7_OVN_STAMP" ] || return 1
    i7_root_ok "$r" || return 1
    # usr/sbin/ovs-vswitchd is an absolute symlink into the root's /etc/alternatives (Debian 13): test it
    # inside the root, where it resolves, not from the host, where it dangles.
    chroot "$r" /usr/bin/test -x /usr/sbin/ovs-vswitchd && [ -x "$r/usr/bin/ovn-controller" ] && [ -x "$r/usr/bin/ovn-northd" ]
}
i7_ensure_root() {
    local ovn_root=$I7_ROOT t0=$SECONDS
    I7_ROOT=$I7_BASE_ROOT i7_ensure_base_root
    if i7_ovn_root_ok "$ovn_root"; then return 0; fi
    local new="$ovn_root.new"
    i7_log "making the OVN root $ovn_root (a copy of $I7_BASE_ROOT with ${I7_OVN_PACKAGES[*]})"
    rm -rf --one-file-system "$new"
    cp -a "$I7_BASE_ROOT" "$new"
    rm -f "$new/.incus-compose-root-ovn"
    i7_chroot "$new" apt-get install -y -qq --no-install-recommends "${I7_OVN_PACKAGES[@]}" \
        >>"$I7_CACHE/trixie-root-ovn.log" 2>&1 || {
        # The root's package lists may be older than the mirror: refresh once.
        i7_chroot "$new" apt-get update -qq >>"$I7_CACHE/trixie-root-ovn.log" 2>&1 &&
            i7_chroot "$new" apt-get install -y -qq --no-install-recommends "${I7_OVN_PACKAGES[@]}" \
                >>"$I7_CACHE/trixie-root-ovn.log" 2>&1
    } || die "installing ${I7_OVN_PACKAGES[*]} in the OVN root failed (log: $I7_CACHE/trixie-root-ovn.log)"
    i7_chroot "$new" apt-get clean
    echo "$I7_OVN_STAMP" >"$new/.incus-compose-root-ovn"
    i7_ovn_root_ok "$new" || die "the OVN root at $new misses files it should have"
    rm -rf --one-file-system "$ovn_root"
    mv -T "$new" "$ovn_root"
    i7_log "OVN root made in $((SECONDS - t0)) s"
}

i7_ovn_wait_socket() { # K PATH WHAT
    local k=$1 path=$2 what=$3
    for _ in $(seq 1 100); do
        i7_in_k "$k" test -S "$path" && return 0
        sleep 0.1
    done
    die "node$k: $what did not open $path (logs in $I7_RUN/)"
}

# The host's firewall: nothing forwarded from this variant's bridge may leave 100.64.0.0/10 (the OVN routers
# route their default traffic to the host, 100.64.3.1).
i7_ovn_host_firewall() {
    command -v nft >/dev/null || apt_install nftables
    command -v ethtool >/dev/null || apt_install ethtool
    nft -f - <<EOT || die "could not load the host firewall table $I7_OVN_NFT_TABLE"
table inet $I7_OVN_NFT_TABLE
delete table inet $I7_OVN_NFT_TABLE
table inet $I7_OVN_NFT_TABLE {
    chain forward {
        type filter hook forward priority -10; policy accept;
        iifname "$I7_BRIDGE" ip daddr != 100.64.0.0/10 drop
        iifname "$I7_BRIDGE" meta nfproto ipv6 drop
    }
}
EOT
}

# OVN central in member 1: northbound and southbound databases, northd.
i7_ovn_start_central() {
    local d="$I7_STATE/ovn-central"
    mkdir -p "$d"
    i7_in_k 1 mkdir -p /run/ovn
    local db
    for db in nb sb; do
        [ -f "$d/$db.db" ] || i7_in_k 1 ovsdb-tool create "$d/$db.db" "/usr/share/ovn/ovn-$db.ovsschema" ||
            die "could not create the OVN $db database"
    done
    i7_spawn 1 ovn-nb ovsdb-server --no-chdir --log-file="$I7_RUN/ovn-nb.log" --pidfile=/run/ovn/ovnnb_db.pid \
        --unixctl=/run/ovn/ovnnb_db.ctl --remote=punix:/run/ovn/ovnnb_db.sock --remote="ptcp:6641:$I7_ADDR" "$d/nb.db"
    i7_spawn 1 ovn-sb ovsdb-server --no-chdir --log-file="$I7_RUN/ovn-sb.log" --pidfile=/run/ovn/ovnsb_db.pid \
        --unixctl=/run/ovn/ovnsb_db.ctl --remote=punix:/run/ovn/ovnsb_db.sock --remote="ptcp:6642:$I7_ADDR" "$d/sb.db"
    i7_ovn_wait_socket 1 /run/ovn/ovnnb_db.sock "the OVN northbound database"
    i7_ovn_wait_socket 1 /run/ovn/ovnsb_db.sock "the OVN southbound database"
    i7_in_k 1 ovn-nbctl --db=unix:/run/ovn/ovnnb_db.sock init >/dev/null || die "ovn-nbctl init failed"
    i7_in_k 1 ovn-sbctl --db=unix:/run/ovn/ovnsb_db.sock init >/dev/null || die "ovn-sbctl init failed"
    i7_spawn 1 ovn-northd ovn-northd --no-chdir --log-file="$I7_RUN/ovn-northd.log" --pidfile=/run/ovn/ovn-northd.pid \
        --ovnnb-db=unix:/run/ovn/ovnnb_db.sock --ovnsb-db=unix:/run/ovn/ovnsb_db.sock
}

# Member K: Open vSwitch (netdev datapath), br-phy with eth0 and the member's address, ovn-controller.
i7_after_holder() {
    local k=$1 d="$I7_STATE/node$k.ovs" ip
    ip="$(i7_ip "$k")"
    [ "$k" = 1 ] && { i7_ovn_host_firewall; i7_ovn_start_central; }
    mkdir -p "$d"
    i7_in_k "$k" mkdir -p /run/openvswitch /run/ovn
    [ -f "$d/conf.db" ] || i7_in_k "$k" ovsdb-tool create "$d/conf.db" /usr/share/openvswitch/vswitch.ovsschema ||
        die "node$k: could not create the Open vSwitch database"
    i7_spawn "$k" "node$k.ovsdb" ovsdb-server --no-chdir --log-file="$I7_RUN/node$k.ovsdb.log" \
        --pidfile=/run/openvswitch/ovsdb-server.pid --remote=punix:/run/openvswitch/db.sock "$d/conf.db"
    i7_ovn_wait_socket "$k" /run/openvswitch/db.sock "ovsdb-server"
    i7_in_k "$k" ovs-vsctl --no-wait init
    # Userspace TSO: the netdev datapath takes the veths' offload metadata instead of dropping such packets.
    i7_in_k "$k" ovs-vsctl --no-wait set open_vswitch . other_config:userspace-tso-enable=true
    i7_spawn "$k" "node$k.vswitchd" ovs-vswitchd --no-chdir --log-file="$I7_RUN/node$k.vswitchd.log" \
        --pidfile=/run/openvswitch/ovs-vswitchd.pid unix:/run/openvswitch/db.sock
    i7_in_k "$k" ovs-vsctl --timeout=20 --may-exist add-br br-phy -- set bridge br-phy datapath_type=netdev ||
        die "node$k: could not create the netdev bridge br-phy (log: $I7_RUN/node$k.vswitchd.log)"
    i7_in_k "$k" ovs-vsctl --timeout=20 --may-exist add-port br-phy eth0 || die "node$k: could not add eth0 to br-phy"
    i7_in_k "$k" ip addr flush dev eth0
    i7_in_k "$k" ip addr replace "$ip/24" dev br-phy
    i7_in_k "$k" ip link set br-phy up
    sysctl -qw "net.ipv4.conf.${I7_TAG}v$k.arp_ignore=8"
    ethtool -K "${I7_TAG}v$k" tx off >/dev/null 2>&1 || die "ethtool could not turn tx offload off on ${I7_TAG}v$k"
    i7_in_k "$k" ovs-vsctl set open_vswitch . external_ids:system-id="node$k" \
        external_ids:ovn-remote="tcp:$I7_ADDR:6642" external_ids:ovn-encap-type=geneve \
        external_ids:ovn-encap-ip="$ip" external_ids:ovn-bridge-datapath-type=netdev
    i7_spawn "$k" "node$k.ovn-controller" ovn-controller --no-chdir --log-file="$I7_RUN/node$k.ovn-controller.log" \
        --pidfile=/run/ovn/ovn-controller.pid unix:/run/openvswitch/db.sock
    # The member reaches the host (and the others) through br-phy now.
    local reached=0
    for _ in $(seq 1 50); do
        if i7_in_k "$k" busybox ping -c1 -W1 "$I7_HOST_ADDR" >/dev/null 2>&1; then reached=1; break; fi
        sleep 0.2
    done
    [ "$reached" = 1 ] || die "node$k does not reach $I7_HOST_ADDR through br-phy (log: $I7_RUN/node$k.vswitchd.log)"
    [ "$k" = 1 ] || return 0
    # Once its address is on br-phy: the uplink's name server (what OVN's DHCP hands out): a stub in member 1 that answers NXDOMAIN for every
    # name OVN itself does not answer (OVN answers its instances' A records; a resolver whose AAAA query got a
    # port-unreachable instead would fail the whole lookup). Nothing is forwarded anywhere.
    i7_spawn 1 ovn-dns dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-dhcp-interface=eth0 \
        --listen-address="$I7_ADDR" --bind-interfaces --address=/#/ --pid-file="$I7_RUN/ovn-dns.dnsmasq.pid" \
        --log-facility=-
}

i7_join_extra() {
    # Once UPLINK exists, a joining member must name its parent.
    if i7_inc network show UPLINK >/dev/null 2>&1; then
        printf '  - entity: network\n    name: UPLINK\n    key: parent\n    value: br-phy\n'
    fi
}

# Once the cluster has formed: Incus's northbound connection and the uplink network (idempotent).
i7_after_cluster() {
    local n=$1 k
    i7_inc config set network.ovn.northbound_connection "tcp:$I7_ADDR:6641" ||
        die "could not set network.ovn.northbound_connection"
    if ! i7_inc network show UPLINK >/dev/null 2>&1; then
        if [ "$n" -gt 1 ]; then
            for k in $(seq 1 "$n"); do
                i7_inc network create UPLINK --type=physical parent=br-phy --target "node$k" >/dev/null ||
                    die "could not create the uplink UPLINK on node$k"
            done
        fi
        local parent=()
        [ "$n" -gt 1 ] || parent=(parent=br-phy)
        i7_inc network create UPLINK --type=physical "${parent[@]}" ipv4.gateway="$I7_HOST_ADDR/24" \
            ipv4.ovn.ranges="$I7_NET.200-$I7_NET.250" dns.nameservers="$I7_ADDR" >/dev/null || die "could not create the uplink UPLINK"
    fi
    # Every member's chassis registered with the southbound database.
    local chassis=0
    for _ in $(seq 1 100); do
        chassis="$(i7_in_k 1 ovn-sbctl --db=unix:/run/ovn/ovnsb_db.sock --bare --columns=name list chassis | grep -c . || true)"
        [ "$chassis" -ge "$n" ] && break
        sleep 0.2
    done
    [ "$chassis" -ge "$n" ] || die "only $chassis of $n OVN chassis registered (logs: $I7_RUN/node*.ovn-controller.log)"
}

# Healthy: the plain line's checks, plus the Open vSwitch and OVN daemons.
eval "$(declare -f i7_healthy | sed '1s/^i7_healthy/i7_base_healthy/')"
i7_healthy() {
    i7_base_healthy || return 1
    local n k
    n="$(i7_members)"
    for k in $(seq 1 "$n"); do
        pid_alive "$(i7_read_pid "node$k.ovsdb")" && pid_alive "$(i7_read_pid "node$k.vswitchd")" &&
            pid_alive "$(i7_read_pid "node$k.ovn-controller")" || return 1
    done
    pid_alive "$(i7_read_pid ovn-nb)" && pid_alive "$(i7_read_pid ovn-sb)" && pid_alive "$(i7_read_pid ovn-northd)" &&
        pid_alive "$(i7_read_pid ovn-dns)"
}

# Down: the plain line's teardown (every daemon lived in the members' namespaces), then the host firewall table.
eval "$(declare -f i7_teardown | sed '1s/^i7_teardown/i7_base_teardown/')"
i7_teardown() {
    i7_base_teardown
    nft delete table inet "$I7_OVN_NFT_TABLE" 2>/dev/null || true
}

# Selftest on OVN: an `ovn` network on UPLINK, one container on each of two members: they reach each other over
# Geneve (ping and HTTP), and the host through the OVN router (the uplink).
eval "$(declare -f i7_cmd_selftest | sed '1s/^i7_cmd_selftest/i7_base_selftest/')"
i7_cmd_selftest() {
    i7_base_selftest
    local t0=$SECONDS n net=ic7o-st-net a=ic7o-st-a b=ic7o-st-b
    n="$(i7_members)"
    cleanup_ovn_selftest() {
        i7_inc delete --force "$a" "$b" >/dev/null 2>&1 || true
        i7_inc network delete "$net" >/dev/null 2>&1 || true
    }
    cleanup_ovn_selftest
    i7_inc network create "$net" --type=ovn network=UPLINK ipv4.address=100.66.0.1/24 ipv4.nat=true \
        ipv6.address=none >/dev/null || die "selftest: cannot create an OVN network on UPLINK"
    local tb=() ta=()
    if [ "$n" -gt 1 ]; then ta=(--target node1); tb=(--target node2); fi
    i7_inc launch testapp/v1 "$a" --network "$net" "${ta[@]}" -q || { cleanup_ovn_selftest; die "selftest: cannot launch on the OVN network"; }
    i7_inc launch testapp/v1 "$b" --network "$net" "${tb[@]}" -q || { cleanup_ovn_selftest; die "selftest: cannot launch on the OVN network"; }
    local addr="" body=""
    for _ in $(seq 1 100); do
        addr="$(i7_inc list "$b" -f csv -c 4 | awk '{print $1}')"
        [ -n "$addr" ] && body="$(i7_inc exec "$a" -- timeout 5 wget -O- "http://$addr/" 2>/dev/null || true)"
        [ "$body" = v1 ] && break
        sleep 0.3
    done
    if [ "$body" != v1 ]; then
        cleanup_ovn_selftest
        die "selftest: a container on node1 does not reach one on node2 over the OVN network (address '$addr')"
    fi
    i7_inc exec "$a" -- ping -c1 -W2 "$I7_HOST_ADDR" >/dev/null 2>&1 || {
        cleanup_ovn_selftest
        die "selftest: a container on the OVN network does not reach the host $I7_HOST_ADDR through the uplink"
    }
    cleanup_ovn_selftest
    echo "OVN selftest ok ($((SECONDS - t0)) s): testapp/v1 on node1 fetched a page from node2 over Geneve ($addr); the host answers through the uplink"
}
