// swift-tools-version:6.1
// The benchmarks of swift-hotplug: their own package, so that the library never depends on the benchmark tooling.
//
// - `hotplug-peers`: the side-by-side peer runner (every figure beside its raw peer, in the same run).
// - `HotplugBenchmarks`: package-benchmark (ordo-one) benchmarks, run with `swift package benchmark`.
import PackageDescription

let package = Package(
    name: "swift-hotplug-benchmarks",
    dependencies: [
        // The library under test. A path dependency's identity is its directory's name, which depends on the
        // checkout; `name:` pins it to the package's own name.
        .package(name: "swift-hotplug", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        // Only the MallocInterposer trait: the default traits would also pull in the runtime interposer.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        // The executor figures' peer: NIO's event loops are serial executors.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        // The raw peers (signal handlers, futex, barriers) must be C.
        .target(
            name: "CPeers",
            path: "Sources/CPeers",
            cSettings: [
                .define("_GNU_SOURCE"),
            ],
            linkerSettings: [
                .linkedLibrary("dl"),        // Concurrency Kit is opened at run time, when it is installed
                .linkedLibrary("pthread"),
            ]
        ),
        // Shared by both executables: words in C memory, bounded spins, pinned threads.
        .target(
            name: "BenchSupport",
            dependencies: ["CPeers"],
            path: "Sources/BenchSupport"
        ),
        .executableTarget(
            name: "hotplug-peers",
            dependencies: [
                "BenchSupport",
                "CPeers",
                .product(name: "Hotplug", package: "swift-hotplug"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Sources/hotplug-peers"
        ),
        .executableTarget(
            name: "HotplugBenchmarks",
            dependencies: [
                "BenchSupport",
                "CPeers",
                .product(name: "Hotplug", package: "swift-hotplug"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/HotplugBenchmarks",
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "benchmark"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
