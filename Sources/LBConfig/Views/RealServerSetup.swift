/// What the real servers of a virtual service need from their own administrators, by mode: the part of a
/// deployment lb cannot do for them. `lbctl config real-servers` prints it.
public enum RealServerSetup {
    public static func text(for service: VirtualService) -> String {
        let servers = service.realServers.map { "\($0.name) (\($0.address))" }.joined(separator: ", ")
        var lines = ["# \(service.name): \(service.mode.rawValue), VIP \(service.address), real servers \(servers)"]
        let family = service.address.family == .ipv4
        switch service.mode {
        case .l4DirectRouting:
            lines += [
                "# Direct routing: the load balancer only rewrites the Ethernet destination, so each real server",
                "# must accept packets addressed to the VIP, must never answer ARP for it (or clients would bypass the",
                "# load balancer), and answers clients directly. It must share a link (layer 2) with the load balancer.",
                "# Run on every real server, and make it permanent (e.g. /etc/sysctl.d and the network configuration):",
            ]
            if family {
                lines += [
                    "sysctl -w net.ipv4.conf.all.arp_ignore=1",
                    "sysctl -w net.ipv4.conf.all.arp_announce=2",
                    "ip addr add \(service.address)/32 dev lo",
                ]
            } else {
                lines += ["ip -6 addr add \(service.address)/128 dev lo nodad"]
            }
            lines.append("# The service must listen on the VIP port(s) \(service.ports.map(\.description).joined(separator: ", ")) (direct routing cannot translate ports).")
        case .l4NAT:
            lines += [
                "# NAT: the load balancer rewrites the destination; replies must pass back through it to be rewritten.",
                "# Each real server's default route (or its route to the client networks) must point to the load",
                "# balancer's address on the real servers' network, e.g.:",
                "ip route replace default via LB-ADDRESS-ON-SERVER-NETWORK",
                "# The real servers see each client's own address.",
            ]
        case .l4SNAT:
            lines += [
                "# SNAT: nothing to change. Connections arrive from the load balancer's own address, so replies return",
                "# to it by ordinary routing; the real servers do not see the client address.",
            ]
        case .l7HTTP:
            lines += [
                "# Layer 7 HTTP: nothing to change. Connections come from the load balancer's address;"
                    + (service.forwardedFor ? " the client address is in the X-Forwarded-For header." : " forwarded_for is off, so the client address is not passed on."),
            ]
        case .l7TCP:
            lines += [
                "# Layer 7 TCP: nothing to change. Connections come from the load balancer's address; the real servers",
                "# do not see the client address.",
            ]
        }
        return lines.joined(separator: "\n")
    }
}
