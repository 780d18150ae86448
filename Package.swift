// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "swift-hotplug",
    products: [
        .library(name: "Hotplug", targets: ["Hotplug"]),
        // Service types for swift-service-lifecycle: a product of its own, so the core does not force the dependency.
        .library(name: "HotplugServiceLifecycle", targets: ["HotplugServiceLifecycle"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    ],
    targets: [
        .target(
            name: "CHotplug",
            path: "CShims/CHotplug",
            cSettings: [
                .define("_GNU_SOURCE"),
            ]
        ),
        .systemLibrary(
            name: "CNuma",
            path: "CShims/CNuma",
            pkgConfig: "numa",
            providers: [.apt(["libnuma-dev"])]
        ),
        .target(
            name: "Hotplug",
            dependencies: [
                "CHotplug",
                "CNuma",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            path: "Sources/Hotplug"
        ),
        .target(
            name: "HotplugServiceLifecycle",
            dependencies: [
                "Hotplug",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/HotplugServiceLifecycle"
        ),
        // The README's Usage section as a program: the first example to read and run.
        .executableTarget(
            name: "quick-start",
            dependencies: ["Hotplug"],
            path: "Examples/quick-start"
        ),
        // Helpers shared by the examples (seeded RNG, /proc probes, output, watchdog); not a product.
        .target(
            name: "ExampleSupport",
            dependencies: [
                "Hotplug",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Examples/ExampleSupport"
        ),
        .executableTarget(
            name: "sigp-demo",
            dependencies: [
                "Hotplug",
                "ExampleSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Examples/sigp-demo"
        ),
        .executableTarget(
            name: "hotplug-torture",
            dependencies: [
                "Hotplug",
                "ExampleSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Examples/hotplug-torture"
        ),
        .executableTarget(
            name: "lpar-balancer",
            dependencies: [
                "Hotplug",
                "ExampleSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/lpar-balancer"
        ),
        .executableTarget(
            name: "numa-placement",
            dependencies: [
                "Hotplug",
                "ExampleSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Examples/numa-placement"
        ),
        // A sharded key-value store on Swift concurrency: one actor per logical CPU while CPUs come and go.
        .executableTarget(
            name: "async-shards",
            dependencies: [
                "Hotplug",
                "ExampleSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Examples/async-shards"
        ),
        .testTarget(
            name: "HotplugTests",
            dependencies: [
                "Hotplug",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            path: "Tests/HotplugTests"
        ),
        .testTarget(
            name: "HotplugServiceLifecycleTests",
            dependencies: [
                "Hotplug",
                "HotplugServiceLifecycle",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/HotplugServiceLifecycleTests"
        ),
    ]
)
