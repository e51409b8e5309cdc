import LBConfig

/// Why the proxy could not serve a client or start a service.
public enum ProxyError: Error, CustomStringConvertible, Sendable {
    /// Every real server (and the fallback) is down or refused the connection.
    case noServerAvailable(service: String)
    case bindFailed(service: String, address: String, reason: String)
    case connectionLimit(service: String, limit: Int)
    case tlsSetup(service: String, reason: String)

    public var description: String {
        switch self {
        case .noServerAvailable(let service):
            return "virtual service \"\(service)\": no real server available"
        case .bindFailed(let service, let address, let reason):
            return "virtual service \"\(service)\": cannot listen on \(address): \(reason)"
        case .connectionLimit(let service, let limit):
            return "virtual service \"\(service)\": \(limit) connections already open (limits.max_connections)"
        case .tlsSetup(let service, let reason):
            return "virtual service \"\(service)\": TLS: \(reason)"
        }
    }
}
