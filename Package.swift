// swift-tools-version:6.0
import PackageDescription

// The proxy's per-request code (LBProxy, and LBTLS for HTTPS) runs without Swift's run-time exclusivity checks in
// release builds: under keep-alive load they were 2.7 % of lbd's user time (perf, docs/layer7.md); TLS added 21
// checks per request. Debug builds (`swift test`) and the
// fuzz builds (scripts/fuzz sets LB_FUZZ) keep them, so a conflicting access still traps where it is looked for.
let hotPathSettings: [SwiftSetting] = Context.environment["LB_FUZZ"] == nil
    ? [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
    : []

let package = Package(
    name: "lb",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "lbd", targets: ["lbd"]),
        .executable(name: "lbctl", targets: ["lbctl"]),
        .library(name: "LBConfig", targets: ["LBConfig"]),
        // For Benchmarks/ (a package of its own): the in-process l7-http path.
        .library(name: "LBProxy", targets: ["LBProxy"]),
    ],
    dependencies: [
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        // The declarative model of virtual services: YAML loading, validation, normalized views.
        .target(
            name: "LBConfig",
            dependencies: [.product(name: "Yams", package: "Yams")]
        ),
        // Runtime state as values: operator overrides, health records, and the one rule that derives each real
        // server's effective membership (weight, present) from config, health and overrides.
        .target(name: "LBRuntime", dependencies: ["LBConfig"]),
        // The system OpenSSL (libssl-dev), found with pkg-config.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // TLS for NIO channels over OpenSSL memory BIOs: termination in the proxy, https-get checks.
        .target(
            name: "LBTLS",
            dependencies: [
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: hotPathSettings
        ),
        // The files a config names (certificates, keys, CA files), checked as lbd will load them.
        .target(name: "LBConfigFiles", dependencies: ["LBConfig", "LBTLS"]),
        // libnl-3 / libnl-genl-3, found with pkg-config.
        .systemLibrary(
            name: "CNetlink",
            pkgConfig: "libnl-genl-3.0",
            providers: [.apt(["libnl-3-dev", "libnl-genl-3-dev"])]
        ),
        // The kernel's IPVS over generic netlink: pure message codec plus a libnl transport.
        .target(name: "LBIPVS", dependencies: ["LBConfig", "CNetlink"]),
        // libnl-route-3, found with pkg-config: rtnetlink for VIP addresses.
        .systemLibrary(
            name: "CNetlinkRoute",
            pkgConfig: "libnl-route-3.0",
            providers: [.apt(["libnl-route-3-dev"])]
        ),
        // VIP addresses on the load balancer's interfaces (rtnetlink) and their announcement (gratuitous ARP,
        // unsolicited neighbour advertisement).
        .target(name: "LBLinks", dependencies: ["LBConfig", "CNetlinkRoute"]),
        // lbctl ↔ lbd: the control socket's JSON messages and lbctl's client.
        .target(name: "LBControl", dependencies: ["LBConfig", "LBRuntime"]),
        // fork/exec for confined programs: what posix_spawn cannot do (switch user) with async-signal-safe C only.
        .target(name: "CSpawn"),
        // Running helper programs without a shell (iptables-restore, ip), and external health checks confined
        // (their own user, environment, process group and signal state; see ConfinedProcess).
        .target(name: "LBSystem", dependencies: ["CSpawn"]),
        // netfilter: lb's own chains (SNAT for l4-snat) and the scan for host rules that would clash.
        .target(name: "LBNetfilter", dependencies: ["LBConfig", "LBSystem"]),
        // A pair of nodes: keepalived's config and supervision, the authenticated peer channel.
        .target(
            name: "LBHighAvailability",
            dependencies: [
                "LBConfig", "LBRuntime", "LBSystem", "LBTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The Layer 7 data plane: l7-http and l7-tcp services on SwiftNIO.
        .target(
            name: "LBProxy",
            dependencies: [
                "LBConfig",
                "LBRuntime",
                "LBTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: hotPathSettings
        ),
        // Health checks of real servers; reports transitions to the agent.
        .target(
            name: "LBHealth",
            dependencies: [
                "LBConfig",
                "LBSystem",
                "LBTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The agent: the one owner of runtime state, acting on the machine only through effector protocols.
        .target(
            name: "LBAgent",
            dependencies: [
                "LBConfig",
                "LBRuntime",
                "LBHealth",
                "LBIPVS",
                "LBControl",
                "LBLinks",
                "LBNetfilter",
                "LBProxy",
                "LBTLS",
                "LBConfigFiles",
                "LBHighAvailability",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // lbd: composes the agent with the real effectors, the control socket, metrics and signals.
        .executableTarget(
            name: "lbd",
            dependencies: [
                "LBAgent",
                "LBConfig",
                "LBConfigFiles",
                "LBHealth",
                "LBIPVS",
                "LBControl",
                "LBProxy",
                "LBHighAvailability",
                "LBTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The operator's CLI.
        .executableTarget(
            name: "lbctl",
            dependencies: [
                "LBConfig",
                "LBConfigFiles",
                "LBControl",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // scripts/bench/ipvs: lb's netlink client against `ipvsadm -R`, inside the IPVS VM.
        .executableTarget(name: "lb-bench-ipvs", dependencies: ["LBConfig", "LBIPVS"], path: "Sources/lb-bench-ipvs"),
        // libFuzzer targets (scripts/fuzz TARGET SECONDS builds them with -sanitize=fuzzer,address and -DLB_FUZZ;
        // CFuzz starts libFuzzer's driver from the entry point SwiftPM names);
        // a normal build makes them replay the files given as arguments (the seed corpus, kept crashes).
        .target(name: "CFuzz"),
        // An HTTP/1.1 request reader from RFC 9112 alone: the reference the HTTP fuzz target and the proxy's tests
        // check lb's output against.
        .target(name: "LBStrictHTTP"),
        // What a fuzz target does without libFuzzer: replay the inputs it is given (the seed corpus, kept crashes).
        .target(name: "LBFuzzReplay"),
        .executableTarget(name: "lb-fuzz-config", dependencies: ["LBConfig", "CFuzz", "LBFuzzReplay"], path: "Sources/lb-fuzz-config"),
        .executableTarget(
            name: "lb-fuzz-http-request",
            dependencies: [
                "LBProxy", "LBConfig", "CFuzz", "LBStrictHTTP", "LBFuzzReplay",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/lb-fuzz-http-request"
        ),
        .executableTarget(
            name: "lb-fuzz-http-response",
            dependencies: [
                "LBProxy", "LBConfig", "CFuzz", "LBFuzzReplay",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/lb-fuzz-http-response"
        ),
        .executableTarget(name: "lb-fuzz-netlink-reply", dependencies: ["LBIPVS", "CFuzz", "LBFuzzReplay"], path: "Sources/lb-fuzz-netlink-reply"),
        .executableTarget(name: "lb-fuzz-check-reply", dependencies: ["LBConfig", "LBHealth", "CFuzz", "LBFuzzReplay"],
                          path: "Sources/lb-fuzz-check-reply"),
        .testTarget(name: "LBConfigTests", dependencies: ["LBConfig"]),
        .testTarget(name: "LBIPVSTests", dependencies: ["LBIPVS"]),
        .testTarget(name: "LBNetfilterTests", dependencies: ["LBNetfilter"]),
        .testTarget(name: "LBLinksTests", dependencies: ["LBLinks"]),
        .testTarget(name: "LBRuntimeTests", dependencies: ["LBRuntime"]),
        .testTarget(name: "LBSystemTests", dependencies: ["LBSystem"]),
        .testTarget(
            name: "LBHighAvailabilityTests",
            dependencies: [
                "LBHighAvailability", "LBTestSupport",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // Loopback backends, a raw client and config helpers shared by the test targets.
        .target(
            name: "LBTestSupport",
            dependencies: [
                "LBConfig",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/LBTestSupport"
        ),
        .testTarget(
            name: "LBProxyTests",
            dependencies: [
                "LBProxy", "LBRuntime", "LBTLS", "LBTestSupport", "LBStrictHTTP",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "LBHealthTests",
            dependencies: [
                "LBHealth", "LBTestSupport",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // The agent as a table: sequences of events against in-memory effectors (and the real proxy on loopback).
        .testTarget(
            name: "LBAgentTests",
            dependencies: [
                "LBAgent", "LBRuntime", "LBProxy", "LBHealth", "LBIPVS", "LBControl", "LBLinks", "LBNetfilter", "LBTestSupport",
                "LBHighAvailability",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Drives the built lbctl/lbd binaries as a user would (exit codes, output).
        .testTarget(name: "CLITests", dependencies: ["lbctl", "lbd", "LBTestSupport"]),
    ]
)
