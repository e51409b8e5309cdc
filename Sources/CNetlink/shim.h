// libnl-3 and libnl-genl-3 (libnl-3-dev, libnl-genl-3-dev), the libraries keepalived and ipvsadm use to speak
// generic netlink. lb builds IPVS attributes itself; libnl carries them and collects the kernel's answers.
#ifndef LB_CNETLINK_SHIM_H
#define LB_CNETLINK_SHIM_H

#include <netlink/netlink.h>
#include <netlink/genl/genl.h>
#include <netlink/genl/ctrl.h>
#include <netlink/msg.h>
#include <linux/netlink.h>

/// The attribute bytes of a generic netlink message (after its genl header), for Swift to decode.
static inline const void *lb_genl_attributes(struct nl_msg *msg, int *length) {
    struct nlmsghdr *header = nlmsg_hdr(msg);
    struct genlmsghdr *genl = (struct genlmsghdr *)nlmsg_data(header);
    *length = genlmsg_attrlen(genl, 0);
    return genlmsg_attrdata(genl, 0);
}

/// The kernel's errno (positive) from an NLMSG_ERROR message.
static inline int lb_nlmsgerr_errno(struct nlmsgerr *error) {
    return -error->error;
}

#endif
