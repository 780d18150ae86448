// swift-tools-version:6.1
// elastic-http: an HTTP server whose handlers run on swift-hotplug's logical CPUs. Its own package, so that the
// library never depends on an HTTP framework or a metrics backend.
import PackageDescription

let package = Package(
    name: "elastic-http",
    dependencies: [
        // The library. A path dependency's identity is its directory's name, which depends on the checkout;
        // `name:` pins it to the package's own name.
        .package(name: "swift-hotplug", path: "../.."),
        // No default traits: the server needs neither swift-configuration nor full Foundation, and they add build time.
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
    ],
    targets: [
        .executableTarget(
            name: "elastic-http",
            dependencies: [
                .product(name: "Hotplug", package: "swift-hotplug"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/elastic-http"
        ),
    ],
    swiftLanguageModes: [.v6]
)
