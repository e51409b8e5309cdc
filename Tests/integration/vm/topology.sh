# Sourced by the scripts that run inside scripts/ipvs-vm: the load balancer is the VM's own namespace, with a
# client bridge (br-c, 10.0.0.1/24) and a server bridge (br-s, 10.0.1.1/24); `attach` adds a namespace to one.
export PATH=$PATH:/usr/sbin:/sbin
ns() { ip netns exec "$@"; }
# wait_for CONDITION: true once the shell condition holds, checked every 0.1 s for at most 15 s. A caller that gives
# up prints "wait timed out: …", which fails the host-side test.
wait_for() { for _ in $(seq 150); do eval "$1" && return 0; sleep 0.1; done; return 1; }
modprobe ip_vs 2>/dev/null
ip link set lo up   # lbd's metrics endpoint and the checks use 127.0.0.1
ip link add br-c type bridge && ip addr add 10.0.0.1/24 dev br-c && ip link set br-c up
ip link add br-s type bridge && ip addr add 10.0.1.1/24 dev br-s && ip link set br-s up
attach() {  # NAMESPACE BRIDGE ADDRESS [GATEWAY]
    ip netns add "$1"
    ip link add "v-$1" type veth peer name eth0 netns "$1"
    ip link set "v-$1" master "$2" up
    ns "$1" ip addr add "$3/24" dev eth0
    ns "$1" ip link set eth0 up; ns "$1" ip link set lo up
    [ -n "${4:-}" ] && ns "$1" ip route add default via "$4"
}
