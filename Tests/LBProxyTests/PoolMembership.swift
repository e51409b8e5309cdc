import LBProxy
import LBRuntime

extension RealServerPool {
    /// A health transition as the agent would hand it over: the server's membership by the one rule.
    func setHealthy(_ name: String, _ healthy: Bool, admin: AdminState = .online) {
        let servers = service.realServers.filter { $0.name == name }.map { server in
            (server, Membership.derive(server: server, in: service, healthy: healthy, admin: admin))
        }
        apply(ServiceMembership(service: service, servers: servers))
    }
}
