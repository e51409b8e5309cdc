import Foundation
import LBConfig
import LBProxy
import NIOCore

/// What the benchmark and the profiling loop push through lb: a viewer's request as browsers send it and a small
/// response, so lb's per-request HTTP work dominates, as it does for the small keep-alive requests of
/// `scripts/bench/l7`.
public enum HTTPPathWorkload {
    /// The request; `cookie` is put in front of the browser's own cookie (e.g. "LBSRV=…; ").
    public static func request(cookie: String = "") -> String { """
        GET /viewer/studies/1.2.840.113619/series?limit=50 HTTP/1.1\r
        Host: viewer.hospital.example\r
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r
        Accept: application/json, text/plain, */*\r
        Accept-Encoding: gzip, deflate, br\r
        Accept-Language: en-GB,en;q=0.9\r
        Connection: keep-alive\r
        Cookie: \(cookie)session=0123456789abcdef\r
        \r

        """ }

    public static let response =
        "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"

    /// Service options: none, the viewer's (cookie persistence and X-Forwarded-For), or the viewer's over HTTPS
    /// (TLS terminated with the bundled demo certificate, as `scripts/bench/l7` (e) serves it).
    public enum Options: String, CaseIterable, Sendable {
        case plain
        case viewer = "viewer: cookie persistence and X-Forwarded-For"
        case viewerHTTPS = "viewer over HTTPS"

        /// The command-line name (`http-path-loop`).
        public static func named(_ name: String) -> Options? {
            switch name {
            case "plain": .plain
            case "viewer": .viewer
            case "https": .viewerHTTPS
            default: nil
            }
        }

        var yaml: String {
            let viewer = "    forwarded_for: true\n    persistence: {type: http-cookie, cookie: LBSRV}\n"
            switch self {
            case .plain: return ""
            case .viewer: return viewer
            case .viewerHTTPS:
                let certificates = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                    .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("examples/certs")
                return viewer + "    tls: {certificate: \(certificates.appendingPathComponent("demo-viewer.pem").path), "
                    + "key: \(certificates.appendingPathComponent("demo-viewer.key").path)}\n"
            }
        }
    }

    /// The l7-http service with one real server, through lb's own loader.
    public static func service(_ options: Options) throws -> VirtualService {
        let yaml = """
            virtual_services:
              - name: viewer
                vip: 192.0.2.10
                ports: [80]
                mode: l7-http
            \(options.yaml)    real_servers: [{name: web1, address: 192.0.2.20}]
            """
        let report = ConfigurationLoader.check(yaml: yaml, file: "bench.yaml")
        guard let service = report.configuration?.virtualServices.first else {
            throw WorkloadError(description: "the benchmark's config was rejected: \(report.diagnostics)")
        }
        return service
    }

    /// An exchange ready to be repeated: a returning browser (for the viewer's options it sends back the
    /// persistence cookie lb set on its first visit), warmed once so the kept-alive real-server connection and
    /// lazy state exist. Throws if lb does not recognise the cookie.
    public static func returningBrowserExchange(_ options: Options) throws -> InProcessExchange {
        let service = try service(options)
        let first = try InProcessExchange(service: service, request: request(), response: response)
        try first.exchange()
        let setCookie = String(buffer: first.lastResponseAtClient).split(separator: "\r\n")
            .first { $0.hasPrefix("Set-Cookie: ") }.map { String($0.dropFirst(12).prefix { $0 != ";" }) + "; " }
        first.finish()
        let exchange = try InProcessExchange(service: service, request: request(cookie: setCookie ?? ""), response: response)
        try exchange.exchange()
        if setCookie != nil, String(buffer: exchange.lastResponseAtClient).contains("Set-Cookie") {
            exchange.finish()
            throw WorkloadError(description: "the returning browser's cookie was not recognised")
        }
        // What reaches the peers is dropped from here on, as a socket drops bytes it has sent.
        exchange.keepsLastMessages = false
        return exchange
    }

    /// For new connections (`InProcessExchange.newConnectionExchange`): the request with `Connection: close`, plain
    /// options, as `scripts/bench/l7` (b) sends it; the real-server connection is kept alive, warmed once.
    public static func newConnectionsExchange() throws -> InProcessExchange {
        let closing = request().replacingOccurrences(of: "Connection: keep-alive", with: "Connection: close")
        let exchange = try InProcessExchange(service: service(.plain), request: closing, response: response)
        try exchange.newConnectionExchange()
        guard String(buffer: exchange.lastResponseAtClient).contains("Connection: close") else {
            exchange.finish()
            throw WorkloadError(description: "lb did not answer the closing request with Connection: close")
        }
        exchange.keepsLastMessages = false
        return exchange
    }

    public struct WorkloadError: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }
}
