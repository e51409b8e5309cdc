import Benchmark
import LBConfig
import LBProxy
import NIOCore

/// A viewer's request as browsers send it, and a small response: the per-request work of lb's HTTP layer
/// dominates here, as it does for the small keep-alive requests of `scripts/bench/l7`.
func request(cookie: String) -> String { """
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
let response = "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"

func service(_ options: String) -> VirtualService? {
    let yaml = """
        virtual_services:
          - name: viewer
            vip: 192.0.2.10
            ports: [80]
            mode: l7-http
        \(options)
            real_servers: [{name: web1, address: 192.0.2.20}]
        """
    let report = ConfigurationLoader.check(yaml: yaml, file: "bench.yaml")
    if report.configuration == nil { print(yaml, report.diagnostics) }
    return report.configuration?.virtualServices.first
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        scalingFactor: .one,
        maxDuration: .seconds(5),
        maxIterations: 10_000)

    let cases: [(String, String)] = [
        ("plain", ""),
        ("viewer: cookie persistence and X-Forwarded-For",
         "    forwarded_for: true\n    persistence: {type: http-cookie, cookie: LBSRV}"),
    ]
    for (name, options) in cases {
        Benchmark("l7-http request+response, \(name)") { benchmark in
            guard let service = service(options) else { fatalError("benchmark config rejected") }
            // A returning browser: it sends back the persistence cookie lb set on its first visit.
            let first = try InProcessExchange(service: service, request: request(cookie: ""), response: response)
            try first.exchange()
            let setCookie = String(buffer: first.lastResponseAtClient).split(separator: "\r\n")
                .first { $0.hasPrefix("Set-Cookie: ") }.map { String($0.dropFirst(12).prefix { $0 != ";" }) + "; " }
            first.finish()
            let exchange = try InProcessExchange(service: service, request: request(cookie: setCookie ?? ""),
                                                 response: response)
            defer { exchange.finish() }
            try exchange.exchange()  // warm: the idle connection and lazy state exist from here on
            if setCookie != nil, String(buffer: exchange.lastResponseAtClient).contains("Set-Cookie") {
                fatalError("the returning browser's cookie was not recognised")
            }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { try exchange.exchange() }
            benchmark.stopMeasurement()
        }
    }
}
