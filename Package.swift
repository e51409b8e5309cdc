// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "lb",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "lbd", targets: ["lbd"]),
        .executable(name: "lbctl", targets: ["lbctl"]),
        .library(name: "LBConfig", targets: ["LBConfig"]),
    ],
    dependencies: [
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // The declarative model of virtual services: YAML loading, validation, normalized views.
        .target(
            name: "LBConfig",
            dependencies: [.product(name: "Yams", package: "Yams")]
        ),
        // The agent.
        .executableTarget(
            name: "lbd",
            dependencies: [
                "LBConfig",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The operator's CLI.
        .executableTarget(
            name: "lbctl",
            dependencies: [
                "LBConfig",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "LBConfigTests", dependencies: ["LBConfig"]),
        // Drives the built lbctl/lbd binaries as a user would (exit codes, output).
        .testTarget(name: "CLITests", dependencies: ["lbctl", "lbd"]),
    ]
)
