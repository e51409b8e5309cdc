// libnl-route-3 (libnl-route-3-dev): rtnetlink address requests, the way iproute2's `ip addr add/del` makes them.
#ifndef LB_CNETLINKROUTE_SHIM_H
#define LB_CNETLINKROUTE_SHIM_H

#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/addr.h>
#include <sys/socket.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <net/if.h>
#include <netinet/in.h>

/// Adds (add != 0) or deletes an address given as text ("10.0.0.40/32") on an interface; returns 0 or a
/// negative libnl error (-NLE_EXIST when it is already there, -NLE_NOADDR when a deleted one is absent).
static inline int lb_address_change(struct nl_sock *socket, int ifindex, const char *address, int add) {
    struct nl_addr *local = NULL;
    int status = nl_addr_parse(address, AF_UNSPEC, &local);
    if (status < 0) return status;
    struct rtnl_addr *request = rtnl_addr_alloc();
    if (!request) { nl_addr_put(local); return -NLE_NOMEM; }
    rtnl_addr_set_ifindex(request, ifindex);
    status = rtnl_addr_set_local(request, local);
    if (status == 0) {
        // IPv6: no duplicate address detection, so the VIP is usable (and announceable) at once.
        if (nl_addr_get_family(local) == AF_INET6) rtnl_addr_set_flags(request, IFA_F_NODAD);
        status = add ? rtnl_addr_add(socket, request, NLM_F_EXCL) : rtnl_addr_delete(socket, request, 0);
    }
    rtnl_addr_put(request);
    nl_addr_put(local);
    return status;
}

#endif
