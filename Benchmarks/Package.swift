// swift-tools-version:6.1
import PackageDescription

// Benchmarks of lb's own code paths with ordo-one/benchmark, kept out of the main package so that building and
// testing lb does not build the benchmark tooling. Run from this folder: `swift package benchmark`
// (or `scripts/bench/http-path` from the top, which prints the figures per request).
let package = Package(
    name: "lb-benchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "lb", path: ".."),
        // Only the malloc counters: the ARC runtime interposer of Swift 6.3 is not among the packages here.
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // The request, response and service both executables push through lb.
        .target(
            name: "HTTPPathWorkload",
            dependencies: [
                .product(name: "LBConfig", package: "lb"),
                .product(name: "LBProxy", package: "lb"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Sources/HTTPPathWorkload"
        ),
        // One l7-http request and response through lb's client and real-server pipelines, in process.
        .executableTarget(
            name: "HTTPPath",
            dependencies: [
                "HTTPPathWorkload",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "LBProxy", package: "lb"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Benchmarks/HTTPPath",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // The same exchange in a plain loop, for profilers (`perf record -e cpu-clock -g`):
        // `http-path-loop COUNT [viewer]`.
        .executableTarget(
            name: "http-path-loop",
            dependencies: [
                "HTTPPathWorkload",
                .product(name: "LBProxy", package: "lb"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Sources/HTTPPathLoop"
        ),
    ]
)
