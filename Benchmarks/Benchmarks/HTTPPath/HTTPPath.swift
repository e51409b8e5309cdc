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

    // Over HTTPS the counts include the browser's end (its OpenSSL); scripts/bench/http-path-instructions counts
    // lb's side alone.
    for options in HTTPPathWorkload.Options.allCases {
        Benchmark("l7-http request+response, \(options.rawValue)") { benchmark in
            let exchange = try HTTPPathWorkload.returningBrowserExchange(options)
            defer { exchange.finish() }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { try exchange.exchange() }
            benchmark.stopMeasurement()
        }
    }
}
