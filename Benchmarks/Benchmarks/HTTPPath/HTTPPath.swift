import Benchmark
import HTTPPathWorkload
import LBProxy
import NIOCore

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        scalingFactor: .one,
        maxDuration: .seconds(5),
        maxIterations: 10_000)

    for options in HTTPPathWorkload.Options.allCases {
        Benchmark("l7-http request+response, \(options.rawValue)") { benchmark in
            let service = try HTTPPathWorkload.service(options)
            // A returning browser: it sends back the persistence cookie lb set on its first visit.
            let first = try InProcessExchange(service: service, request: HTTPPathWorkload.request(),
                                              response: HTTPPathWorkload.response)
            try first.exchange()
            let setCookie = String(buffer: first.lastResponseAtClient).split(separator: "\r\n")
                .first { $0.hasPrefix("Set-Cookie: ") }.map { String($0.dropFirst(12).prefix { $0 != ";" }) + "; " }
            first.finish()
            let exchange = try InProcessExchange(service: service, request: HTTPPathWorkload.request(cookie: setCookie ?? ""),
                                                 response: HTTPPathWorkload.response)
            defer { exchange.finish() }
            try exchange.exchange()  // warm: the idle connection and lazy state exist from here on
            if setCookie != nil, String(buffer: exchange.lastResponseAtClient).contains("Set-Cookie") {
                throw HTTPPathWorkload.WorkloadError(description: "the returning browser's cookie was not recognised")
            }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { try exchange.exchange() }
            benchmark.stopMeasurement()
        }
    }
}
